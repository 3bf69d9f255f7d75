"""The sent-message archive that backfill answers from, and the last retained
message of every retained topic (republished on every reconnect).

The ledger deletes an outbox row once its PUBACK arrives, so a monitor that
missed a message can only be answered from a copy. Each acknowledged message is
written here (before its outbox row is deleted) and pruned after a retention
window. It lives in its own SQLite file (`telemetry-sent.sqlite3`) so that it never
competes with the ledger's migrations; losing it loses only the ability to
backfill, never a dose record.

Cost model (issue 14: nothing on the event loop may grow with uptime). `seq` is the
table's INTEGER PRIMARY KEY (SQLite's rowid), so every statement here is a range
walk on that index: `record` is O(rows recorded), `fetch` O(rows asked for),
`max_seq` O(log n), and `prune` removes at most `batch_rows` of the lowest seqs per
call, whatever the archive's size. In the controller the writing connection lives
on the ledger's writer thread (record and prune run there); the event loop holds a
second, read-only connection for backfill.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from controller.telemetry._outbox import OutboxRowLike, utc_text

__all__ = ["PRUNE_BATCH_ROWS", "ArchivePruner", "ArchivedMessage", "SentArchive"]

_DDL = (
    """
CREATE TABLE IF NOT EXISTS sent (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    created_utc TEXT NOT NULL,
    sent_utc TEXT NOT NULL
)
""",
    # The newest acknowledged message of each retained topic (state, session,
    # alarms/active): what the controller republishes after a broker restart. Kept
    # apart from `sent` so that pruning never forgets the current state.
    """
CREATE TABLE IF NOT EXISTS retained (
    topic TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    payload BLOB NOT NULL
)
""",
)

#: Rows removed by one `prune` call at most (a few ms on a Raspberry Pi 4).
PRUNE_BATCH_ROWS = 2000


@dataclass(frozen=True, kw_only=True)
class ArchivedMessage:
    """One message as it was first published."""

    seq: int
    kind: str
    topic: str
    payload: bytes


class SentArchive:
    """Acknowledged messages kept for a retention window so monitors can ask for
    them again, and the newest retained message per topic.

    Backfill replies themselves are not archived (they only repeat archived
    messages); a request for a reply's seq answers it as unavailable.
    `read_only=True` opens an existing archive for backfill reads only.
    """

    def __init__(self, *, path: Path, max_rows: int = 500_000, read_only: bool = False) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        self._max_rows = max_rows
        if read_only:
            self._db = sqlite3.connect(
                f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
            )
            return
        # check_same_thread=False: the controller opens it on the ledger's writer thread
        # and uses it only there; the tests use it from one thread too.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # Losing the newest archive rows on power loss only weakens backfill.
        self._db.execute("PRAGMA synchronous=NORMAL")
        for statement in _DDL:
            self._db.execute(statement)

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()

    def record(self, rows: Sequence[OutboxRowLike], *, sent_utc: str) -> None:
        """Keep copies of acknowledged rows (replies excepted); idempotent.

        A retained row also becomes its topic's republish copy unless a newer seq
        of that topic was recorded already.
        """
        kept = [r for r in rows if r.kind != "reply"]
        if not kept:
            return
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO sent(seq, kind, topic, payload, created_utc, sent_utc) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (r.seq, str(r.kind), r.topic, r.payload, utc_text(r.created_utc), sent_utc)
                    for r in kept
                ],
            )
            self._db.executemany(
                "INSERT INTO retained(topic, seq, payload) VALUES (?, ?, ?) "
                "ON CONFLICT(topic) DO UPDATE SET seq = excluded.seq, payload = excluded.payload "
                "WHERE excluded.seq > retained.seq",
                [(r.topic, r.seq, r.payload) for r in kept if r.retain],
            )

    def prune(self, *, sent_before_utc: str, batch_rows: int = PRUNE_BATCH_ROWS) -> int:
        """Forget messages among the `batch_rows` lowest seqs that are beyond
        `max_rows` or were sent before the cut-off; returns how many were removed.

        Bounded and indexed: MIN/MAX of the rowid, then one delete over the seq range
        [lowest, lowest + batch_rows), so its cost does not grow with the archive.
        Call it again while it keeps removing. A message replayed late (an old seq sent
        after newer ones) may outlive the window a little: retention is "at least".
        """
        if batch_rows < 1:
            raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
        with self._db:
            low, high = self._db.execute(
                # Two scalar subqueries: each is one rowid-index probe (MIN and MAX in
                # a single SELECT would scan the table).
                "SELECT COALESCE((SELECT MIN(seq) FROM sent), 0),"
                " COALESCE((SELECT MAX(seq) FROM sent), 0)"
            ).fetchone()
            window_end = int(low) + batch_rows - 1
            # Seqs are allocated densely (gaps only for replies and dropped rows), so
            # everything at or below high - max_rows is beyond the row budget.
            over_budget_to = min(window_end, int(high) - self._max_rows)
            removed = 0
            if over_budget_to >= low:
                removed += self._db.execute(
                    "DELETE FROM sent WHERE seq BETWEEN ? AND ?", (low, over_budget_to)
                ).rowcount
            removed += self._db.execute(
                "DELETE FROM sent WHERE seq BETWEEN ? AND ? AND sent_utc < ?",
                (low, window_end, sent_before_utc),
            ).rowcount
        return int(removed)

    def fetch(self, *, from_seq: int, to_seq: int, limit: int) -> list[ArchivedMessage]:
        """Archived messages with from_seq <= seq <= to_seq, in seq order."""
        rows = self._db.execute(
            "SELECT seq, kind, topic, payload FROM sent WHERE seq BETWEEN ? AND ? "
            "ORDER BY seq LIMIT ?",
            (from_seq, to_seq, limit),
        ).fetchall()
        return [
            ArchivedMessage(seq=seq, kind=kind, topic=topic, payload=bytes(payload))
            for seq, kind, topic, payload in rows
        ]

    def max_seq(self) -> int:
        """The highest archived seq (0 when empty)."""
        (high,) = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM sent").fetchone()
        return int(high)

    def count(self) -> int:
        """Rows in the archive (a full count: for tests and tools, not the loop)."""
        (rows,) = self._db.execute("SELECT count(*) FROM sent").fetchone()
        return int(rows)

    def retained_latest(self) -> list[ArchivedMessage]:
        """The newest acknowledged message of every retained topic, in seq order."""
        rows = self._db.execute("SELECT seq, topic, payload FROM retained ORDER BY seq").fetchall()
        return [
            ArchivedMessage(seq=int(seq), kind="retained", topic=str(topic), payload=bytes(p))
            for seq, topic, p in rows
        ]


class ArchivePruner:
    """When to prune: rarely (every `interval_s`), sooner while a batch came back full.

    Pure bookkeeping on a monotonic clock passed in; `SentArchive.prune` does the work.
    """

    def __init__(self, *, interval_s: float = 60.0, retention_s: float = 24 * 3600.0) -> None:
        self.interval_s = interval_s
        self.retention_s = retention_s
        self._next_at_s: float | None = None

    def due(self, now_s: float) -> bool:
        """Whether a prune batch should run at monotonic time `now_s`."""
        if self._next_at_s is None:
            self._next_at_s = now_s  # first call: prune once soon after start-up
        return now_s >= self._next_at_s

    def ran(self, now_s: float, *, removed: int, batch_rows: int) -> None:
        """Record a prune; a batch at least half full means more is probably waiting
        (after a long outage, or a first start on an old archive): come back in 1 s."""
        self._next_at_s = now_s + (1.0 if removed * 2 >= batch_rows else self.interval_s)

    def prune_if_due(self, archive: SentArchive, *, now_s: float, now_utc: datetime) -> int:
        """Run one bounded prune batch on `archive` if one is due; rows removed."""
        if not self.due(now_s):
            return 0
        cutoff = datetime.fromtimestamp(now_utc.timestamp() - self.retention_s, now_utc.tzinfo)
        removed = archive.prune(sent_before_utc=utc_text(cutoff))
        self.ran(now_s, removed=removed, batch_rows=PRUNE_BATCH_ROWS)
        return removed
