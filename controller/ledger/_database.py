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
from typing import Any, Final

from controller.dosing import Instant
from controller.ledger._chain import ChainHead, next_chain_hash, schema_differences
from controller.ledger._errors import (
    LedgerCorruptError,
    LedgerError,
    LedgerExistsError,
    LedgerMissingError,
    LedgerQuarantinedError,
    LedgerSchemaTooNewError,
    LedgerSchemaUnexpectedError,
    LedgerWriteError,
)
from controller.ledger._model import OutboxKind, OutboxMessage, OutboxStamp
from controller.ledger._schema import MIGRATIONS, SCHEMA_VERSION
from controller.security import create_private_file

__all__ = [
    "Database",
    "fsync_dir",
    "instant_from_row",
    "json_text",
    "parse_utc",
    "quarantine",
    "quarantined_files",
    "utc_text",
]

# SQLite primary result codes that mean the file itself is damaged.
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26
_SQLITE_FULL = 13
_CORRUPT_CODES = frozenset({_SQLITE_CORRUPT, _SQLITE_NOTADB})
_BUSY_TIMEOUT_S = 5.0
_INTEGRITY_DETAIL_ROWS = 5
_SIDECARS = ("-wal", "-shm")


class _CorruptFileError(Exception):
    """Internal: the open sequence found the file damaged."""


class _UnexpectedSchemaError(_CorruptFileError):
    """Internal: the schema is not what the migrations produce."""


def is_disk_full(exc: BaseException) -> bool:
    """True when `exc` (or its cause) is SQLite's 'database or disk is full'."""
    cause = exc if isinstance(exc, sqlite3.Error) else exc.__cause__
    code = getattr(cause, "sqlite_errorcode", None)
    return code is not None and (code & 0xFF) == _SQLITE_FULL


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


#: Labels of files moved aside: damaged ones, and ones that contradict their anchors.
QUARANTINE_LABELS = ("corrupt", "suspect")


def quarantined_files(path: Path) -> tuple[Path, ...]:
    """Earlier copies of `path` moved aside as corrupt or suspect (main files, oldest first)."""
    return tuple(
        sorted(
            p
            for label in QUARANTINE_LABELS
            for p in path.parent.glob(f"{path.name}.{label}-*")
            if not p.name.endswith(("-wal", "-shm", "-after-open"))
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


def quarantine(
    path: Path, kept: Mapping[str, Path] | None = None, *, label: str = "corrupt"
) -> Path:
    """Move `path` and its -wal/-shm aside to `<name>.<label>-<utc>`; never deletes."""
    kept = kept or {}
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    dest = path.with_name(f"{path.name}.{label}-{stamp}")
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
    fsync_dir(path.parent)
    return dest


def fsync_dir(directory: Path) -> None:
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
        self.head: ChainHead | None = None
        """The newest committed event (seq and chain hash); set by `writing`."""
        self._pending_head: ChainHead | None = None
        self._batching = False

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        read_only: bool,
        budget_bytes: int,
        create_meta: Mapping[str, str] | None = None,
        check: bool = True,
    ) -> Database:
        """Open (migrating unless `read_only`) and check the file.

        `check=False` skips the page check (never the schema check): only for a
        second, read-only connection of a process whose writer opened and checked
        the same file first (the service's telemetry and audit readers).

        A ledger is created only when `create_meta` is given (the `ledger_meta` rows
        of a new ledger: device id, subject); then the file must not exist yet.
        Without it a missing file is `LedgerMissingError`, never a new empty ledger.
        """
        kept: dict[str, Path] = {}
        created = False
        _check_file(path, read_only=read_only, create=create_meta is not None)
        if read_only:
            connection = sqlite3.connect(
                f"{path.resolve().as_uri()}?mode=ro",
                uri=True,
                isolation_level=None,
                check_same_thread=False,
            )
        else:
            created = create_meta is not None
            if created:
                # SQLite would make it 0644 less the umask; its -wal/-shm follow it.
                create_private_file(path, LEDGER_FILE_MODE)
            kept = _keep_sidecars(path)
            connection = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=_BUSY_TIMEOUT_S
            )
        try:
            cls._prepare(connection, path=path, read_only=read_only, check=check)
            if created:
                _insert_meta(connection, create_meta or {})
        except _UnexpectedSchemaError as exc:
            connection.close()
            moved = None if read_only else quarantine(path, kept)
            raise LedgerSchemaUnexpectedError(
                path=path, detail=str(exc), quarantined_to=moved
            ) from None
        except _CorruptFileError as exc:
            connection.close()
            moved = None if read_only else quarantine(path, kept)
            raise LedgerCorruptError(path=path, detail=str(exc), quarantined_to=moved) from None
        except sqlite3.Error as exc:
            connection.close()
            if _is_corrupt(exc):
                moved = None if read_only else quarantine(path, kept)
                raise LedgerCorruptError(path=path, detail=str(exc), quarantined_to=moved) from exc
            _drop_keepers(kept)
            raise LedgerError(f"cannot open ledger database {path}: {exc}") from exc
        except BaseException:
            connection.close()
            _drop_keepers(kept)
            raise
        _drop_keepers(kept)
        if not read_only and created:
            fsync_dir(path.parent)
        return cls(connection=connection, path=path, read_only=read_only, budget_bytes=budget_bytes)

    @staticmethod
    def _prepare(
        connection: sqlite3.Connection, *, path: Path, read_only: bool, check: bool
    ) -> None:
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
        if check:
            # Full check for the writer: it also proves every index agrees with its
            # table, which admission's indexed reads rely on (docs/decisions/0018).
            pragma = "quick_check" if read_only else "integrity_check"
            rows = connection.execute(f"PRAGMA {pragma}").fetchall()
            if rows != [("ok",)]:
                detail = "; ".join(str(row[0]) for row in rows[:_INTEGRITY_DETAIL_ROWS])
                raise _CorruptFileError(f"{pragma} failed: {detail}")
        version = _schema_version(connection)
        if version > SCHEMA_VERSION:
            raise LedgerSchemaTooNewError(path=path, found=version, supported=SCHEMA_VERSION)
        if read_only:
            if version < SCHEMA_VERSION:
                raise LedgerError(
                    f"ledger database {path} has schema version {version}, older than "
                    f"{SCHEMA_VERSION}; start the controller once to migrate it"
                )
        else:
            _check_schema(connection, before_migration=version)
            _migrate(connection, version)
        _check_schema(connection, before_migration=None)

    def close(self) -> None:
        """Close the connection (checkpoints the WAL into the main file)."""
        with self.lock:
            self.connection.close()

    @contextlib.contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """The connection, held exclusively for a read (consistent snapshot)."""
        with self.lock:
            if self._batching:  # inside `batch()` (this thread): its transaction is the snapshot
                yield self.connection
                return
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
            if self._batching:  # inside `batch()`: part of its one transaction
                yield connection
                return
            try:
                self._pending_head = None
                connection.execute("BEGIN IMMEDIATE")
                yield connection
                connection.execute("COMMIT")
                self._commit_head()
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

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Several `writing` blocks (on this thread) as one transaction: one commit and
        one fsync for all of them, and all of them recorded or none (a crash between
        them cannot keep one without the others)."""
        with self.lock, self.writing():
            if self._batching:
                raise LedgerError("ledger batches do not nest")
            self._batching = True
            try:
                yield
            finally:
                self._batching = False

    def _commit_head(self) -> None:
        if self._pending_head is not None:
            self.head = self._pending_head

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
        """Append one event row (with its chain hash) inside the caller's transaction.

        Returns its event id.
        """
        row = connection.execute(
            "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0),"
            " coalesce((SELECT max(event_id) FROM events), 0))"
        ).fetchone()
        columns = (
            int(row[0]) + 1,
            kind,
            session_id,
            subject_id,
            utc_text(at.utc),
            at.boot_id,
            at.monotonic_ns,
            delivered_ul,
            json_text(body),
        )
        chain_hash = next_chain_hash(connection, columns)
        connection.execute(
            "INSERT INTO events (event_id, kind, session_id, subject_id, utc, boot_id,"
            " monotonic_ns, delivered_ul, body, chain_hash)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (*columns, chain_hash),
        )
        self._pending_head = ChainHead(seq=columns[0], hash=chain_hash)
        return columns[0]

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
        # The outbox's own counters (schema 3), in the same transaction: no ledger
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


def _check_file(path: Path, *, read_only: bool, create: bool) -> None:
    """Refuse before SQLite touches the path: a ledger is created only on purpose."""
    if create and (path.exists() or quarantined_files(path)):
        raise LedgerExistsError(
            f"a ledger already exists at {path} (or earlier ones were moved aside next "
            "to it); `ledger init` creates a ledger only where there never was one"
        )
    if create:
        if not path.parent.is_dir():
            raise LedgerMissingError(path=path, detail="the data directory does not exist")
        return
    if not path.exists():
        if quarantined_files(path) and not read_only:
            raise LedgerQuarantinedError(path=path, quarantined=quarantined_files(path))
        raise LedgerMissingError(path=path)
    if path.stat().st_size == 0:
        # SQLite would take a zero-length file for a new, empty database.
        moved = None if read_only else quarantine(path, _keep_sidecars(path), label="suspect")
        raise LedgerCorruptError(
            path=path, detail="the file is empty (0 bytes)", quarantined_to=moved
        )


def _check_schema(connection: sqlite3.Connection, *, before_migration: int | None) -> None:
    """Refuse any schema the migrations did not produce (an altered view, a dropped trigger).

    Before migrating, a file at an older version is compared with what that version's
    migrations produce; after, with the current schema.
    """
    if before_migration is not None and before_migration != SCHEMA_VERSION:
        if before_migration == 0:
            return
        problems = schema_differences(connection, upto_version=before_migration)
    else:
        problems = schema_differences(connection)
    if problems:
        raise _UnexpectedSchemaError(
            "the schema is not the one the migrations create: " + "; ".join(problems[:5])
        )


def _insert_meta(connection: sqlite3.Connection, meta: Mapping[str, str]) -> None:
    connection.execute("BEGIN IMMEDIATE")
    try:
        connection.executemany(
            "INSERT INTO ledger_meta (key, value) VALUES (?, ?)", sorted(meta.items())
        )
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise


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


#: A new ledger's mode whatever the umask: the service account reads and writes it, its
#: group (backups, the clinical engineer's reports) reads it, nobody else sees it.
LEDGER_FILE_MODE: Final = 0o640
