"""Opening the SQLite file: pragmas, integrity check, migrations, quarantine, transactions.

Everything here is synchronous. One `_Database` owns one connection; a lock makes it
safe to call from `asyncio.to_thread` workers, one call at a time.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from controller.dosing import Instant
from controller.ledger._errors import (
    LedgerCorruptError,
    LedgerError,
    LedgerQuarantinedError,
    LedgerSchemaTooNewError,
    LedgerWriteError,
)
from controller.ledger._model import OutboxKind, OutboxMessage, OutboxStamp
from controller.ledger._schema import MIGRATIONS, SCHEMA_VERSION

__all__ = [
    "Database",
    "instant_from_row",
    "json_text",
    "parse_utc",
    "quarantined_files",
    "utc_text",
]

# SQLite primary result codes that mean the file itself is damaged.
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26
_CORRUPT_CODES = frozenset({_SQLITE_CORRUPT, _SQLITE_NOTADB})
_BUSY_TIMEOUT_S = 5.0
_INTEGRITY_DETAIL_ROWS = 5
_SIDECARS = ("-wal", "-shm")


class _CorruptFileError(Exception):
    """Internal: the open sequence found the file damaged."""


def utc_text(moment: datetime) -> str:
    """The one text form of a UTC time in the database (sorts lexicographically)."""
    if moment.tzinfo is None:
        raise ValueError(f"time {moment!r} has no time zone; pass an aware UTC datetime")
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def parse_utc(text: str) -> datetime:
    """Inverse of `utc_text`."""
    return datetime.fromisoformat(text).astimezone(UTC)


def instant_from_row(utc: str, boot_id: str, monotonic_ns: int) -> Instant:
    """Rebuild an `Instant` from its three stored columns."""
    return Instant(utc=parse_utc(utc), boot_id=boot_id, monotonic_ns=monotonic_ns)


def json_text(body: Mapping[str, Any]) -> str:
    """Canonical JSON of an event body; refuses values JSON cannot represent."""
    try:
        return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"ledger event body is not plain JSON ({exc}); convert it first "
            "(e.g. with controller.ledger.decision_to_json)"
        ) from exc


def _is_corrupt(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and (code & 0xFF) in _CORRUPT_CODES


def quarantined_files(path: Path) -> tuple[Path, ...]:
    """Earlier copies of `path` moved aside as corrupt (main files only, oldest first)."""
    return tuple(
        sorted(
            p
            for p in path.parent.glob(f"{path.name}.corrupt-*")
            if not p.name.endswith(("-wal", "-shm"))
        )
    )


def _keep_sidecars(path: Path) -> dict[str, Path]:
    """Give the -wal/-shm files a second name before SQLite touches them.

    SQLite deletes (or checkpoints) the -wal when the last connection closes, even when
    the main file turned out to be damaged; the extra name keeps the evidence, and the
    WAL's committed transactions, for the quarantine.
    """
    kept: dict[str, Path] = {}
    for suffix in _SIDECARS:
        source = path.with_name(path.name + suffix)
        if not source.exists():
            continue
        keeper = path.with_name(f".{path.name}{suffix}.before-open")
        keeper.unlink(missing_ok=True)
        if suffix == "-shm":
            shutil.copy2(source, keeper)  # SQLite rewrites the -shm in place: copy it (small)
        else:
            try:
                os.link(source, keeper)  # the -wal is only ever deleted or appended: link it
            except OSError:
                shutil.copy2(source, keeper)  # file systems without hard links
        kept[suffix] = keeper
    return kept


def _drop_keepers(kept: dict[str, Path]) -> None:
    for keeper in kept.values():
        keeper.unlink(missing_ok=True)


def _quarantine(path: Path, kept: dict[str, Path]) -> Path:
    """Move `path` and its -wal/-shm aside to `<name>.corrupt-<utc>`; never deletes."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    dest = path.with_name(f"{path.name}.corrupt-{stamp}")
    if path.exists():
        path.rename(dest)
    for suffix in _SIDECARS:
        target = dest.with_name(dest.name + suffix)
        current = path.with_name(path.name + suffix)
        keeper = kept.get(suffix)
        if keeper is not None:
            keeper.rename(target)
            if current.exists():
                if current.samefile(target):
                    current.unlink()  # the same file under its old name: keep one name
                else:
                    current.rename(target.with_name(target.name + "-after-open"))
        elif current.exists():
            current.rename(target)
    _fsync_dir(path.parent)
    return dest


def _fsync_dir(directory: Path) -> None:
    """Make a file creation or rename in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Database:
    """One open ledger file: a connection, a lock, and write transactions."""

    def __init__(
        self, *, connection: sqlite3.Connection, path: Path, read_only: bool, budget_bytes: int
    ) -> None:
        self.connection = connection
        self.path = path
        self.read_only = read_only
        self.budget_bytes = budget_bytes
        self.lock = threading.RLock()

    @classmethod
    def open(cls, path: Path, *, read_only: bool, budget_bytes: int) -> Database:
        """Open (creating and migrating unless `read_only`) and check the file."""
        kept: dict[str, Path] = {}
        created = False
        if read_only:
            if not path.exists():
                raise LedgerError(f"no ledger database at {path}; check --data-dir")
            connection = sqlite3.connect(
                f"{path.resolve().as_uri()}?mode=ro",
                uri=True,
                isolation_level=None,
                check_same_thread=False,
            )
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            created = not path.exists()
            if created and (earlier := quarantined_files(path)):
                raise LedgerQuarantinedError(path=path, quarantined=earlier)
            kept = _keep_sidecars(path)
            connection = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=_BUSY_TIMEOUT_S
            )
        try:
            cls._prepare(connection, path=path, read_only=read_only)
        except _CorruptFileError as exc:
            connection.close()
            moved = None if read_only else _quarantine(path, kept)
            raise LedgerCorruptError(path=path, detail=str(exc), quarantined_to=moved) from None
        except sqlite3.Error as exc:
            connection.close()
            if _is_corrupt(exc):
                moved = None if read_only else _quarantine(path, kept)
                raise LedgerCorruptError(path=path, detail=str(exc), quarantined_to=moved) from exc
            _drop_keepers(kept)
            raise LedgerError(f"cannot open ledger database {path}: {exc}") from exc
        except BaseException:
            connection.close()
            _drop_keepers(kept)
            raise
        _drop_keepers(kept)
        if not read_only and created:
            _fsync_dir(path.parent)
        return cls(connection=connection, path=path, read_only=read_only, budget_bytes=budget_bytes)

    @staticmethod
    def _prepare(connection: sqlite3.Connection, *, path: Path, read_only: bool) -> None:
        if read_only:
            connection.execute("PRAGMA query_only = ON")
        else:
            mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise LedgerError(
                    f"ledger database {path} cannot use WAL journaling (got {mode!r}); "
                    "put the data directory on a local file system"
                )
        # FULL: every commit fsyncs the WAL before COMMIT returns.
        connection.execute("PRAGMA synchronous = FULL")
        connection.execute("PRAGMA foreign_keys = ON")
        check = "quick_check" if read_only else "integrity_check"
        rows = connection.execute(f"PRAGMA {check}").fetchall()
        if rows != [("ok",)]:
            detail = "; ".join(str(row[0]) for row in rows[:_INTEGRITY_DETAIL_ROWS])
            raise _CorruptFileError(f"{check} failed: {detail}")
        version = _schema_version(connection)
        if version > SCHEMA_VERSION:
            raise LedgerSchemaTooNewError(path=path, found=version, supported=SCHEMA_VERSION)
        if read_only:
            if version < SCHEMA_VERSION:
                raise LedgerError(
                    f"ledger database {path} has schema version {version}, older than "
                    f"{SCHEMA_VERSION}; start the controller once to migrate it"
                )
            return
        _migrate(connection, version)

    def close(self) -> None:
        """Close the connection (checkpoints the WAL into the main file)."""
        with self.lock:
            self.connection.close()

    @contextlib.contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """The connection, held exclusively for a read (consistent snapshot)."""
        with self.lock:
            self.connection.execute("BEGIN")
            try:
                yield self.connection
            finally:
                self.connection.execute("COMMIT")

    @contextlib.contextmanager
    def writing(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed (and fsynced) when the block ends, else rolled back.

        SQLite errors become `LedgerWriteError` (or `LedgerCorruptError`); nothing of the
        block is recorded when any exception leaves it.
        """
        if self.read_only:
            raise LedgerError(f"ledger {self.path} was opened read-only; writes are not allowed")
        with self.lock:
            connection = self.connection
            try:
                connection.execute("BEGIN IMMEDIATE")
                yield connection
                connection.execute("COMMIT")
            except BaseException as exc:
                if connection.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        connection.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    if _is_corrupt(exc):
                        raise LedgerCorruptError(
                            path=self.path, detail=str(exc), quarantined_to=None
                        ) from exc
                    raise LedgerWriteError(
                        f"ledger write to {self.path} failed and was rolled back: {exc}"
                    ) from exc
                raise

    def insert_event(
        self,
        connection: sqlite3.Connection,
        *,
        kind: str,
        at: Instant,
        body: Mapping[str, Any],
        session_id: int | None = None,
        subject_id: str | None = None,
        delivered_ul: int | None = None,
    ) -> int:
        """Append one event row inside the caller's transaction; returns its event id."""
        cursor = connection.execute(
            "INSERT INTO events (kind, session_id, subject_id, utc, boot_id, monotonic_ns,"
            " delivered_ul, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                kind,
                session_id,
                subject_id,
                utc_text(at.utc),
                at.boot_id,
                at.monotonic_ns,
                delivered_ul,
                json_text(body),
            ),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def insert_outbox(
        self,
        connection: sqlite3.Connection,
        messages: Sequence[OutboxMessage],
        *,
        at: Instant,
        event_id: int | None,
        session_id: int | None,
    ) -> list[int]:
        """Insert messages with explicitly allocated seqs, then apply the byte budget."""
        seqs: list[int] = []
        for message in messages:
            row = connection.execute(
                "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'outbox'), 0),"
                " coalesce((SELECT max(seq) FROM outbox), 0))"
            ).fetchone()
            seq = int(row[0]) + 1
            payload = message.payload
            if not isinstance(payload, bytes):
                payload = payload(OutboxStamp(seq=seq, event_id=event_id, session_id=session_id))
                if not isinstance(payload, bytes):
                    raise TypeError(f"outbox payload builder returned {type(payload).__name__}")
            connection.execute(
                "INSERT INTO outbox (seq, kind, topic, payload, qos, retain, created_utc)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    seq,
                    str(message.kind),
                    message.topic,
                    payload,
                    message.qos,
                    int(message.retain),
                    utc_text(at.utc),
                ),
            )
            seqs.append(seq)
        if messages:
            self._enforce_budget(connection, at=at)
        return seqs

    def _enforce_budget(self, connection: sqlite3.Connection, *, at: Instant) -> None:
        total = int(connection.execute("SELECT byte_count FROM outbox_stats").fetchone()[0])
        excess = total - self.budget_bytes
        if excess <= 0:
            return
        dropped: list[int] = []
        freed = 0
        rows = connection.execute(
            "SELECT seq, length(payload) + length(CAST(topic AS BLOB)) FROM outbox"
            " WHERE kind = ? ORDER BY seq",
            (str(OutboxKind.TELEMETRY),),
        )
        for seq, size in rows:
            dropped.append(int(seq))
            freed += int(size)
            if freed >= excess:
                break
        if not dropped:
            return  # only undroppable messages: the controller alarms on outbox bytes
        connection.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in dropped])
        # The outbox's own counters (schema 2), in the same transaction: no ledger
        # event per drop, so a long outage cannot grow the ledger with drop records.
        connection.execute(
            "UPDATE outbox_stats SET dropped_count = dropped_count + ?,"
            " dropped_bytes = dropped_bytes + ?, last_dropped_seq = max(last_dropped_seq, ?)"
            " WHERE id = 1",
            (len(dropped), freed, dropped[-1]),
        )


def _schema_version(connection: sqlite3.Connection) -> int:
    tables = {
        str(row[0])
        for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    }
    if "schema_version" not in tables:
        if tables - {"sqlite_sequence"}:
            raise _CorruptFileError(
                "the file holds tables but no schema_version: not a ledger database"
            )
        return 0
    row = connection.execute("SELECT max(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


def _migrate(connection: sqlite3.Connection, current: int) -> None:
    for version, statements in MIGRATIONS:
        if version <= current:
            continue
        connection.execute("BEGIN IMMEDIATE")
        try:
            for statement in statements:
                connection.execute(statement)
            connection.execute(
                "INSERT INTO schema_version (version, applied_utc) VALUES (?, ?)",
                (version, utc_text(datetime.now(UTC))),
            )
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
