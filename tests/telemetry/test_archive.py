"""The sent-message archive stays cheap whatever its size (issue 14: nothing on the
event loop grows with uptime), and its writes run on the ledger's writer thread."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from controller.ledger import Ledger
from controller.service._outbox_view import OutboxView
from controller.service._recorder import Recorder
from controller.telemetry import PRUNE_BATCH_ROWS, ArchivePruner, SentArchive, utc_text
from controller.telemetry._outbox import OutboxRowLike
from tests.support.outbox import LedgerBackedOutbox
from tests.telemetry.helpers import telemetry

OLD = "2026-11-24T12:00:00.000Z"
NEW = "2026-11-25T12:00:00.000Z"
CUTOFF = "2026-11-25T00:00:00.000Z"


@dataclass(frozen=True, kw_only=True)
class Row:
    seq: int
    kind: str = "telemetry"
    topic: str = "nebuliser/v1/W7/B03/telemetry"
    payload: bytes = b'{"x":1}'
    retain: bool = False
    created_utc: datetime = datetime(2026, 11, 25, tzinfo=UTC)


def fill(archive: SentArchive, seqs: range, *, sent_utc: str) -> None:
    archive.record([Row(seq=s) for s in seqs], sent_utc=sent_utc)


def test_prune_statements_walk_the_seq_index_never_scan(tmp_path: Path) -> None:
    archive = SentArchive(path=tmp_path / "sent.sqlite3", max_rows=1000)
    fill(archive, range(1, 3001), sent_utc=OLD)
    statements: list[str] = []
    archive._db.set_trace_callback(statements.append)
    archive.prune(sent_before_utc=CUTOFF)
    archive.max_seq()
    archive.fetch(from_seq=10, to_seq=20, limit=5)
    archive._db.set_trace_callback(None)
    checked = [s for s in statements if s.lstrip().upper().startswith(("SELECT", "DELETE"))]
    assert len(checked) >= 4
    probe = sqlite3.connect(tmp_path / "sent.sqlite3")
    for statement in checked:
        plan = " / ".join(row[3] for row in probe.execute("EXPLAIN QUERY PLAN " + statement))
        assert "SCAN sent" not in plan, f"{statement!r} scans the archive: {plan}"


def test_prune_is_bounded_per_call_and_finishes_over_calls(tmp_path: Path) -> None:
    archive = SentArchive(path=tmp_path / "sent.sqlite3", max_rows=1_000_000)
    total = 2 * PRUNE_BATCH_ROWS + 500
    fill(archive, range(1, total + 1), sent_utc=OLD)
    fill(archive, range(total + 1, total + 101), sent_utc=NEW)
    removed = [archive.prune(sent_before_utc=CUTOFF) for _ in range(4)]
    assert removed == [PRUNE_BATCH_ROWS, PRUNE_BATCH_ROWS, 500, 0]
    assert archive.count() == 100, "messages newer than the window are kept"


def test_row_budget_keeps_the_newest_seqs(tmp_path: Path) -> None:
    archive = SentArchive(path=tmp_path / "sent.sqlite3", max_rows=300)
    fill(archive, range(1, 1001), sent_utc=NEW)
    assert archive.prune(sent_before_utc=CUTOFF) == 700
    assert [m.seq for m in archive.fetch(from_seq=1, to_seq=1000, limit=1)] == [701]


def test_retained_copy_survives_prune_and_only_moves_forward(tmp_path: Path) -> None:
    archive = SentArchive(path=tmp_path / "sent.sqlite3")
    state = "nebuliser/v1/W7/B03/state"
    archive.record([Row(seq=5, topic=state, retain=True, payload=b"five")], sent_utc=OLD)
    # A replayed older state (backlog sent after a newer one) must not win.
    archive.record([Row(seq=3, topic=state, retain=True, payload=b"three")], sent_utc=OLD)
    assert archive.prune(sent_before_utc=CUTOFF) == 2
    latest = archive.retained_latest()
    assert [(m.topic, m.seq, m.payload) for m in latest] == [(state, 5, b"five")]


def test_pruner_runs_rarely_and_sooner_after_a_full_batch(tmp_path: Path) -> None:
    archive = SentArchive(path=tmp_path / "sent.sqlite3")
    fill(archive, range(1, 3 * PRUNE_BATCH_ROWS + 1), sent_utc=OLD)
    pruner = ArchivePruner(interval_s=60, retention_s=3600)
    now_utc = datetime(2026, 11, 25, 12, tzinfo=UTC)
    assert pruner.prune_if_due(archive, now_s=0, now_utc=now_utc) == PRUNE_BATCH_ROWS
    assert pruner.prune_if_due(archive, now_s=0.5, now_utc=now_utc) == 0
    assert pruner.prune_if_due(archive, now_s=1.0, now_utc=now_utc) == PRUNE_BATCH_ROWS
    assert pruner.prune_if_due(archive, now_s=2.0, now_utc=now_utc) == PRUNE_BATCH_ROWS
    assert pruner.prune_if_due(archive, now_s=3.0, now_utc=now_utc) == 0  # empty
    assert not pruner.due(30.0)
    assert pruner.due(63.0)


class ThreadNotingArchive(SentArchive):
    """A real archive that notes which thread wrote to it."""

    threads: set[str]

    def record(self, rows: Sequence[OutboxRowLike], *, sent_utc: str) -> None:
        self.threads.add(threading.current_thread().name)
        super().record(rows, sent_utc=sent_utc)

    def prune(self, *, sent_before_utc: str, batch_rows: int = PRUNE_BATCH_ROWS) -> int:
        self.threads.add(threading.current_thread().name)
        return super().prune(sent_before_utc=sent_before_utc, batch_rows=batch_rows)


async def test_controller_settles_and_prunes_on_the_writer_thread(tmp_path: Path) -> None:
    ledger_path = tmp_path / "ledger.sqlite3"
    producer = LedgerBackedOutbox(path=ledger_path)
    seqs = producer.append_many([telemetry(n) for n in range(50)])
    recorder: Recorder[Ledger] = Recorder(
        opener=lambda: Ledger.open(ledger_path), closer=Ledger.close
    )
    async with recorder.running():
        writer = await recorder.call(
            lambda _ledger: ThreadNotingArchive(path=tmp_path / "sent.sqlite3")
        )
        writer.threads = set()
        with Ledger.open(ledger_path, read_only=True) as reader:
            view = OutboxView(reader=reader.outbox, recorder=recorder, archive_writer=writer)
            rows = view.pending(limit=100)
            assert [r.seq for r in rows] == seqs
            view.settle(rows, datetime.now(UTC))
            assert view.pending(limit=100) == [], "rows being settled are hidden at once"
            await recorder.drain()
            assert reader.outbox.count() == 0
        assert writer.max_seq() == seqs[-1]
        await recorder.call(lambda _ledger: writer.close())
    assert writer.threads, "the archive was never written"
    assert all(name.startswith("ledger-writer") for name in writer.threads), writer.threads
    producer.close()


def test_cutoff_text_sorts_like_time() -> None:
    # Retention compares sent_utc as text: the one UTC spelling must sort by time.
    earlier = datetime(2026, 11, 25, 9, tzinfo=UTC)
    assert utc_text(earlier) < utc_text(earlier + timedelta(milliseconds=1))


def test_reconnect_reads_of_the_outbox_do_not_walk_the_backlog(tmp_path: Path) -> None:
    """At every reconnect the publisher asks for the backlog ceiling and the newest
    retained rows: index probes, not a pass over hours of queued telemetry."""
    outbox = LedgerBackedOutbox(path=tmp_path / "ledger.sqlite3")
    outbox.append_many([telemetry(n) for n in range(2000)])
    probe = sqlite3.connect(tmp_path / "ledger.sqlite3")
    statements: list[str] = []
    ledger = outbox._ledger
    ledger._db.connection.set_trace_callback(statements.append)
    assert outbox.high_seq() == 2000
    assert outbox.newest_retained() == []
    ledger._db.connection.set_trace_callback(None)
    checked = [s for s in statements if "FROM outbox" in s]
    assert len(checked) == 2
    for statement in checked:
        plan = " / ".join(row[3] for row in probe.execute("EXPLAIN QUERY PLAN " + statement))
        assert "SCAN outbox" not in plan, f"{statement!r} walks the outbox: {plan}"
    outbox.close()
