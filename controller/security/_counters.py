"""Replay protection: the highest counter accepted from each sender, kept on disk.

`SqliteCounterStore.commit` checks and advances a sender's counter in one
`BEGIN IMMEDIATE` transaction with `synchronous=FULL`, and returns only after the
commit: a command is never acted on before its counter is durable, so the same
envelope is refused after a crash or restart.
"""

from __future__ import annotations

import sqlite3
import threading
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from controller.security._files import create_private_file

__all__ = ["COUNTER_DB_NAME", "CounterCommit", "CounterStore", "SqliteCounterStore"]

COUNTER_DB_NAME = "security.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sender_counter (
    sender_id TEXT PRIMARY KEY,
    last_counter INTEGER NOT NULL,
    last_command_id TEXT NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS seen_command (
    sender_id TEXT NOT NULL,
    command_id TEXT NOT NULL,
    counter INTEGER NOT NULL,
    PRIMARY KEY (sender_id, command_id)
) STRICT;
"""


class CounterCommit(StrEnum):
    """Outcome of trying to advance a sender's counter."""

    COMMITTED = "committed"
    REPLAYED = "replayed"
    DUPLICATE_COMMAND_ID = "duplicate_command_id"


class CounterStore(Protocol):
    """What `verify_command` needs from a counter store."""

    def last_counter(self, sender_id: str) -> int | None:
        """The highest counter accepted from `sender_id`, or None if none yet."""
        ...

    def commit(self, *, sender_id: str, counter: int, command_id: str) -> CounterCommit:
        """Durably advance the counter if `counter` is higher and `command_id` is new."""
        ...


class SqliteCounterStore:
    """Counter store in ``<data-dir>/security.sqlite3`` (WAL, synchronous=FULL)."""

    def __init__(self, *, path: Path) -> None:
        create_private_file(path)
        # Usable from any one thread at a time (e.g. asyncio.to_thread); the lock
        # serialises callers inside this process, BEGIN IMMEDIATE across processes.
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(
            path, isolation_level=None, timeout=5.0, check_same_thread=False
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(_SCHEMA)

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> SqliteCounterStore:
        """Open ``<data_dir>/security.sqlite3``."""
        return cls(path=data_dir / COUNTER_DB_NAME)

    def last_counter(self, sender_id: str) -> int | None:
        """The highest counter accepted from `sender_id`, or None if none yet."""
        with self._lock:
            row = self._conn.execute(
                "SELECT last_counter FROM sender_counter WHERE sender_id = ?", (sender_id,)
            ).fetchone()
        return None if row is None else int(row[0])

    def commit(self, *, sender_id: str, counter: int, command_id: str) -> CounterCommit:
        """Advance atomically; the transaction is committed before this returns."""
        with self._lock:
            return self._commit_locked(sender_id=sender_id, counter=counter, command_id=command_id)

    def _commit_locked(self, *, sender_id: str, counter: int, command_id: str) -> CounterCommit:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute(
                "SELECT last_counter FROM sender_counter WHERE sender_id = ?", (sender_id,)
            ).fetchone()
            if row is not None and counter <= int(row[0]):
                conn.execute("ROLLBACK")
                return CounterCommit.REPLAYED
            seen = conn.execute(
                "SELECT 1 FROM seen_command WHERE sender_id = ? AND command_id = ?",
                (sender_id, command_id),
            ).fetchone()
            if seen is not None:
                conn.execute("ROLLBACK")
                return CounterCommit.DUPLICATE_COMMAND_ID
            conn.execute(
                "INSERT INTO sender_counter (sender_id, last_counter, last_command_id) "
                "VALUES (?, ?, ?) ON CONFLICT(sender_id) DO UPDATE SET "
                "last_counter = excluded.last_counter, last_command_id = excluded.last_command_id",
                (sender_id, counter, command_id),
            )
            conn.execute(
                "INSERT INTO seen_command (sender_id, command_id, counter) VALUES (?, ?, ?)",
                (sender_id, command_id, counter),
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return CounterCommit.COMMITTED

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._conn.close()
