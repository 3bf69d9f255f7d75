"""The outbox: same-transaction atomicity, seq allocation, never-reused seqs, the byte budget."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from controller.ledger import (
    AlarmAction,
    EventKind,
    Ledger,
    OutboxKind,
    OutboxMessage,
    OutboxStamp,
)
from tests.ledger.conftest import SimClock, create_ledger, intent


def _telemetry(n: int, size: int = 100) -> OutboxMessage:
    return OutboxMessage(
        kind=OutboxKind.TELEMETRY,
        topic="ward/bed/telemetry",
        payload=bytes([n % 256]) * size,
        qos=0,
    )


def _row_counts(db_path: Path) -> tuple[int, int, int]:
    raw = sqlite3.connect(db_path)
    try:
        sessions = raw.execute("SELECT count(*) FROM sessions").fetchone()[0]
        events = raw.execute("SELECT count(*) FROM events").fetchone()[0]
        outbox = raw.execute("SELECT count(*) FROM outbox").fetchone()[0]
    finally:
        raw.close()
    return int(sessions), int(events), int(outbox)


def test_payload_builder_sees_its_own_seq_and_the_session(ledger: Ledger, clock: SimClock) -> None:
    def build(stamp: OutboxStamp) -> bytes:
        return json.dumps(
            {"seq": stamp.seq, "session_id": stamp.session_id, "event_id": stamp.event_id}
        ).encode()

    ledger.outbox.append(_telemetry(1), at=clock.now())  # seq 1
    session_id = ledger.record_intent(
        subject_id="s",
        planned_cap_ul=300,
        device_target_ul=300,
        device_max_duration_s=60,
        output_pct=80,
        decision_trace={"allowed": True},
        at=clock.advance(1),
        publish=[
            OutboxMessage(kind=OutboxKind.SESSION, topic="ward/bed/session", payload=build),
            OutboxMessage(kind=OutboxKind.DECISION, topic="ward/bed/decision", payload=build),
        ],
    )
    rows = ledger.outbox.pending()
    intent_event = ledger.events(session_id=session_id)[0]
    assert [r.seq for r in rows] == [1, 2, 3]
    assert [json.loads(r.payload) for r in rows[1:]] == [
        {"seq": 2, "session_id": session_id, "event_id": intent_event.event_id},
        {"seq": 3, "session_id": session_id, "event_id": intent_event.event_id},
    ]
    assert rows[1].kind is OutboxKind.SESSION
    assert rows[1].qos == 1
    assert rows[1].created_utc == clock.now().utc


def test_failure_mid_transaction_leaves_neither_ledger_row_nor_message(
    ledger: Ledger, clock: SimClock, db_path: Path
) -> None:
    def explode(stamp: OutboxStamp) -> bytes:
        raise RuntimeError(f"payload for seq {stamp.seq} cannot be built")

    before = _row_counts(db_path)
    with pytest.raises(RuntimeError, match="cannot be built"):
        ledger.record_intent(
            subject_id="s",
            planned_cap_ul=300,
            device_target_ul=300,
            device_max_duration_s=60,
            output_pct=80,
            decision_trace={},
            at=clock.now(),
            publish=[
                OutboxMessage(kind=OutboxKind.SESSION, topic="t", payload=b"first is fine"),
                OutboxMessage(kind=OutboxKind.SESSION, topic="t", payload=explode),
            ],
        )
    assert _row_counts(db_path) == before
    assert ledger.history("s") == []
    # The ledger stays usable, and the failed attempt consumed no seq or session id.
    assert intent(ledger, clock) == 1
    assert ledger.outbox.append(_telemetry(1), at=clock.now()) == 1


def test_seq_is_never_reused_after_delete_and_reopen(db_path: Path, clock: SimClock) -> None:
    with create_ledger(db_path) as ledger:
        seqs = [ledger.outbox.append(_telemetry(i), at=clock.now()) for i in range(5)]
        assert ledger.outbox.delete(seqs) == 5  # all PUBACKed
        assert ledger.outbox.count() == 0
        assert ledger.outbox.bytes() == 0
    with Ledger.open(db_path) as ledger:
        assert ledger.outbox.last_seq() == 5
        assert ledger.outbox.append(_telemetry(9), at=clock.now()) == 6


def test_pending_pages_by_seq_and_delete_counts_only_existing(
    ledger: Ledger, clock: SimClock
) -> None:
    seqs = [ledger.outbox.append(_telemetry(i, size=10), at=clock.now()) for i in range(7)]
    assert [r.seq for r in ledger.outbox.pending(limit=3)] == seqs[:3]
    assert [r.seq for r in ledger.outbox.pending(limit=3, after_seq=seqs[4])] == seqs[5:]
    assert ledger.outbox.delete([seqs[0], seqs[0], 999]) == 1
    assert ledger.outbox.count() == 6
    assert ledger.outbox.bytes() == 6 * (10 + len("ward/bed/telemetry"))


def test_budget_drops_oldest_telemetry_only_and_counts_it(db_path: Path, clock: SimClock) -> None:
    row_bytes = 100 + len("ward/bed/telemetry")
    with create_ledger(db_path, outbox_budget_bytes=10 * row_bytes) as ledger:
        alarm = OutboxMessage(kind=OutboxKind.ALARM, topic="ward/bed/telemetry", payload=b"a" * 100)
        session = OutboxMessage(
            kind=OutboxKind.SESSION, topic="ward/bed/telemetry", payload=b"s" * 100
        )
        ledger.record_alarm(
            alarm_code="output_low",
            action=AlarmAction.RAISED,
            actor="controller",
            at=clock.now(),
            publish=[alarm],
        )
        telemetry = [ledger.outbox.append(_telemetry(i), at=clock.now()) for i in range(8)]
        intent(ledger, clock)  # no publish
        ledger.record_decision(
            subject_id="subj-1", allowed=False, trace={}, at=clock.now(), publish=[session]
        )
        assert ledger.outbox.count() == 10  # exactly at the budget: nothing dropped yet
        assert ledger.outbox.dropped_total() == 0

        more = [ledger.outbox.append(_telemetry(100 + i), at=clock.now()) for i in range(3)]

        kept = ledger.outbox.pending(limit=100)
        assert ledger.outbox.bytes() <= ledger.outbox.budget_bytes
        assert [r.seq for r in kept if r.kind is OutboxKind.TELEMETRY] == telemetry[3:] + more
        assert {r.kind for r in kept} >= {OutboxKind.ALARM, OutboxKind.SESSION}
        assert ledger.outbox.dropped_total() == 3
        assert ledger.outbox.drops() == (3, 3 * row_bytes, telemetry[2])
        # Counted in the outbox's own counters, never as dose-ledger rows.
        assert ledger.events(kinds=[EventKind.OUTBOX_DROP]) == []

        # Only undroppable messages left over budget: they stay (the controller alarms).
        ledger.outbox.delete(r.seq for r in kept if r.kind is OutboxKind.TELEMETRY)
        for _ in range(12):
            ledger.record_decision(
                subject_id="subj-1", allowed=False, trace={}, at=clock.now(), publish=[session]
            )
        assert ledger.outbox.bytes() > ledger.outbox.budget_bytes
        assert ledger.outbox.count() == 14
        assert ledger.outbox.dropped_total() == 3
