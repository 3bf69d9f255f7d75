"""The small outbox contract the publisher depends on, and a plain SQLite
implementation of it (used by tests and usable until the ledger offers its own).

The table is the ledger's `outbox` table, byte for byte:

    outbox(seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT CHECK(kind IN
           ('telemetry','state','session','alarm','decision','reply')),
           topic TEXT, payload BLOB, qos INTEGER, retain INTEGER, created_utc TEXT)

AUTOINCREMENT makes `seq` never repeat, even after the newest rows were deleted.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from controller.telemetry._builders import OutboxEntry

__all__ = ["OUTBOX_DDL", "OutboxReader", "OutboxRow", "OutboxWriter", "SqliteOutbox"]

OUTBOX_DDL = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL
        CHECK (kind IN ('telemetry','state','session','alarm','decision','reply')),
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    created_utc TEXT NOT NULL
)
"""


@dataclass(frozen=True, kw_only=True)
class OutboxRow:
    """One queued MQTT message."""

    seq: int
    kind: str
    topic: str
    payload: bytes
    qos: int
    retain: bool
    created_utc: str


class OutboxReader(Protocol):
    """What the publisher needs from the outbox."""

    def pending(self, limit: int, after_seq: int = 0) -> Sequence[OutboxRow]:
        """Up to `limit` rows with seq > `after_seq`, in seq order."""
        ...

    def delete(self, seqs: Iterable[int]) -> None:
        """Delete rows (called only after their PUBACK)."""
        ...


class OutboxWriter(Protocol):
    """What the backfill answerer needs: append one message, get its seq."""

    def append(self, entry: OutboxEntry) -> int:
        """Insert the entry in its own transaction and return its seq."""
        ...


def _utc_now_text() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class SqliteOutbox:
    """`OutboxReader` and `OutboxWriter` over the `outbox` table of a SQLite file."""

    def __init__(self, *, path: Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.execute(OUTBOX_DDL)

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()

    def append(self, entry: OutboxEntry, *, created_utc: str | None = None) -> int:
        """Insert one message in its own transaction; the payload is built from the
        seq SQLite assigns. Returns the seq."""
        (seq,) = self.append_many([entry], created_utc=created_utc)
        return seq

    def append_many(
        self, entries: Sequence[OutboxEntry], *, created_utc: str | None = None
    ) -> list[int]:
        """Insert several messages in one transaction; returns their seqs in order."""
        stamp = created_utc or _utc_now_text()
        seqs: list[int] = []
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            for entry in entries:
                cursor = self._db.execute(
                    "INSERT INTO outbox(kind, topic, payload, qos, retain, created_utc) "
                    "VALUES (?, ?, x'', ?, ?, ?)",
                    (entry.kind, entry.topic, entry.qos, int(entry.retain), stamp),
                )
                seq = cursor.lastrowid
                assert seq is not None
                self._db.execute(
                    "UPDATE outbox SET payload = ? WHERE seq = ?", (entry.build(seq), seq)
                )
                seqs.append(seq)
        return seqs

    def pending(self, limit: int, after_seq: int = 0) -> list[OutboxRow]:
        """Up to `limit` rows with seq > `after_seq`, in seq order."""
        rows = self._db.execute(
            "SELECT seq, kind, topic, payload, qos, retain, created_utc FROM outbox "
            "WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        ).fetchall()
        return [
            OutboxRow(
                seq=seq,
                kind=kind,
                topic=topic,
                payload=bytes(payload),
                qos=qos,
                retain=bool(retain),
                created_utc=created_utc,
            )
            for seq, kind, topic, payload, qos, retain, created_utc in rows
        ]

    def delete(self, seqs: Iterable[int]) -> None:
        """Delete rows by seq in one transaction."""
        with self._db:
            self._db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])

    def count(self) -> int:
        """How many rows are waiting."""
        (n,) = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()
        return int(n)
