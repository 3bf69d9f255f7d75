"""The sent-message archive that backfill answers from.

The ledger deletes an outbox row once its PUBACK arrives, so a monitor that
missed a message can only be answered from a copy. The publisher writes each
acknowledged message here (before deleting it from the outbox) and prunes it after
a retention window. It lives in its own SQLite file (`telemetry-sent.sqlite3`) so
that it never competes with the ledger's migrations; losing it loses only the
ability to backfill, never a dose record.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from controller.telemetry._outbox import OutboxRowLike, utc_text

__all__ = ["ArchivedMessage", "SentArchive"]

_DDL = """
CREATE TABLE IF NOT EXISTS sent (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    created_utc TEXT NOT NULL,
    sent_utc TEXT NOT NULL
)
"""


@dataclass(frozen=True, kw_only=True)
class ArchivedMessage:
    """One message as it was first published."""

    seq: int
    kind: str
    topic: str
    payload: bytes


class SentArchive:
    """Acknowledged messages kept for `retention` so monitors can ask for them again.

    Backfill replies themselves are not archived (they only repeat archived
    messages); a request for a reply's seq answers it as unavailable.
    """

    def __init__(self, *, path: Path, max_rows: int = 500_000) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        self._max_rows = max_rows
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # Losing the newest archive rows on power loss only weakens backfill.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_DDL)

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()

    def record(self, rows: Sequence[OutboxRowLike], *, sent_utc: str) -> None:
        """Keep copies of acknowledged rows (replies excepted); idempotent."""
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

    def prune(self, *, sent_before_utc: str) -> int:
        """Forget messages sent before the cut-off, and the oldest beyond `max_rows`;
        returns how many were removed."""
        with self._db:
            removed = self._db.execute(
                "DELETE FROM sent WHERE sent_utc < ?", (sent_before_utc,)
            ).rowcount
            removed += self._db.execute(
                "DELETE FROM sent WHERE seq NOT IN "
                "(SELECT seq FROM sent ORDER BY seq DESC LIMIT ?)",
                (self._max_rows,),
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
