"""The small outbox contract the publisher depends on, and a plain SQLite
implementation of it for tests and tools.

The controller passes the ledger's own outbox (`Ledger.outbox`, which satisfies
`OutboxReader`) and, for backfill replies, `append_reply` built with
`ledger_appender`. `SqliteOutbox` uses the same table shape as the ledger:

    outbox(seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT CHECK(kind IN
           ('telemetry','state','session','alarm','decision','reply')),
           topic TEXT, payload BLOB, qos INTEGER, retain INTEGER, created_utc TEXT)

AUTOINCREMENT makes `seq` never repeat, even after the newest rows were deleted.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from controller.telemetry._builders import OutboxEntry

__all__ = [
    "OUTBOX_DDL",
    "OutboxReader",
    "OutboxRow",
    "OutboxRowLike",
    "ReplyAppender",
    "SqliteOutbox",
    "utc_text",
]

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


def utc_text(moment: datetime) -> str:
    """`2026-11-25T12:00:00.000Z`: the one spelling of a UTC time in this package."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class OutboxRowLike(Protocol):
    """What the publisher reads from one outbox row (the ledger's `OutboxRow` fits)."""

    @property
    def seq(self) -> int: ...
    @property
    def kind(self) -> str: ...
    @property
    def topic(self) -> str: ...
    @property
    def payload(self) -> bytes: ...
    @property
    def retain(self) -> bool: ...
    @property
    def created_utc(self) -> datetime: ...


class OutboxReader(Protocol):
    """What the publisher needs from the outbox (the ledger's `Outbox` fits)."""

    def pending(self, *, limit: int = 100, after_seq: int = 0) -> Sequence[OutboxRowLike]:
        """Up to `limit` rows with seq > `after_seq`, in seq order."""
        ...

    def delete(self, seqs: Iterable[int]) -> object:
        """Delete rows (called only after their PUBACK)."""
        ...


# Commits one backfill reply to the outbox and returns its seq.
ReplyAppender = Callable[[OutboxEntry], int]


@dataclass(frozen=True, kw_only=True)
class OutboxRow:
    """One queued MQTT message (as `SqliteOutbox` returns it)."""

    seq: int
    kind: str
    topic: str
    payload: bytes
    qos: int
    retain: bool
    created_utc: datetime


class SqliteOutbox:
    """`OutboxReader` over an `outbox` table in a SQLite file, plus `append`."""

    def __init__(self, *, path: Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.execute(OUTBOX_DDL)

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()

    def append(self, entry: OutboxEntry, *, created_utc: datetime | None = None) -> int:
        """Insert one message in its own transaction; the payload is built from the
        seq SQLite assigns. Returns the seq."""
        (seq,) = self.append_many([entry], created_utc=created_utc)
        return seq

    def append_many(
        self, entries: Sequence[OutboxEntry], *, created_utc: datetime | None = None
    ) -> list[int]:
        """Insert several messages in one transaction; returns their seqs in order."""
        stamp = utc_text(created_utc or datetime.now(UTC))
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

    def pending(self, *, limit: int = 100, after_seq: int = 0) -> list[OutboxRow]:
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
                created_utc=datetime.fromisoformat(created_utc),
            )
            for seq, kind, topic, payload, qos, retain, created_utc in rows
        ]

    def delete(self, seqs: Iterable[int]) -> int:
        """Delete rows by seq in one transaction; returns how many existed."""
        with self._db:
            cursor = self._db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])
        return int(cursor.rowcount)

    def count(self) -> int:
        """How many rows are waiting."""
        (n,) = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()
        return int(n)
