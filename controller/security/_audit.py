"""Append-only, hash-chained audit log in ``<data-dir>/audit.sqlite3``.

Record i: (index, time_utc, kind, body, prev_hash, hash) where
``hash = SHA-256(canonical([index, time_utc, kind, body, prev_hash]))`` in lowercase
hex, ``prev_hash`` of record 0 is 64 zeros, and ``body`` is stored as its canonical
JSON text. With an HMAC key, ``mac = HMAC-SHA256(key, hash)`` is stored as well.

SQLite triggers refuse UPDATE and DELETE; `verify_audit_log` recomputes the whole
chain so edits made with the triggers dropped are still found. What the chain does
NOT show on its own: removal of the newest records (tail truncation) and a whole
chain recomputed by someone with write access — see docs/security.md for anchors
and the HMAC key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Final

from controller.security._canonical import canonical_json
from controller.security._files import create_private_file

__all__ = [
    "AUDIT_DB_NAME",
    "GENESIS_HASH",
    "AuditHead",
    "AuditKind",
    "AuditLog",
    "AuditRecord",
    "AuditVerification",
    "audit_device_id",
    "read_hmac_key_file",
    "verify_audit_log",
]

#: Shortest accepted audit HMAC key (bytes, after stripping whitespace).
MIN_HMAC_KEY_BYTES: Final = 32

AUDIT_DB_NAME: Final = "audit.sqlite3"
GENESIS_HASH: Final = "0" * 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_log (
    idx INTEGER PRIMARY KEY,
    time_utc TEXT NOT NULL,
    kind TEXT NOT NULL,
    body_json TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    mac TEXT
) STRICT;
CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit log is append-only: UPDATE refused'); END;
CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit log is append-only: DELETE refused'); END;
"""
_TRIGGERS: Final = frozenset({"audit_log_no_update", "audit_log_no_delete"})


class AuditKind(StrEnum):
    """What a record is about."""

    COMMAND = "command"
    DECISION = "decision"
    OVERRIDE = "override"
    ALARM = "alarm"
    ACKNOWLEDGEMENT = "acknowledgement"
    CONFIG = "config"
    PRESCRIPTION = "prescription"
    START_REQUEST = "start_request"
    ANCHOR = "anchor"
    # Dose-ledger continuity (issue 12, controller/ledger/_continuity.py).
    LEDGER_ANCHOR = "ledger_anchor"
    LEDGER_INIT = "ledger_init"
    LEDGER_RESTORE = "ledger_restore"
    COMMAND_TALLY = "command_tally"  # messages not accepted, in aggregate (count, first/last)
    # A local control-socket request (start, confirm, stop, alarm ack, refused
    # override) mirrored from the ledger, with the kernel's peer (issue 13).
    CONTROL_REQUEST = "control_request"
    UNBLINDING = "unblinding"  # an unblinded report asked for: granted or refused (issue 20)


@dataclass(frozen=True, kw_only=True)
class AuditRecord:
    """One stored record."""

    index: int
    time_utc: str
    kind: str
    body_json: str
    prev_hash: str
    hash: str
    mac: str | None


@dataclass(frozen=True, kw_only=True)
class AuditHead:
    """Index and hash of the newest record: publish or write it down as an anchor."""

    index: int
    hash: str

    def __str__(self) -> str:
        return f"{self.index}:{self.hash}"

    @classmethod
    def parse(cls, text: str) -> AuditHead:
        """Parse ``INDEX:HASH`` (as printed by `nebuliser audit head`)."""
        index_text, sep, hash_text = text.strip().partition(":")
        if not sep or not index_text.isdigit() or len(hash_text) != 64:
            raise ValueError(f"expected INDEX:SHA256HEX (e.g. 41:3fa9...), got {text!r}")
        return cls(index=int(index_text), hash=hash_text.lower())


@dataclass(frozen=True, kw_only=True)
class AuditVerification:
    """Result of checking the whole chain."""

    ok: bool
    records_checked: int
    head: AuditHead | None
    first_bad_index: int | None = None
    problem: str | None = None


def _record_hash(index: int, time_utc: str, kind: str, body: object, prev_hash: str) -> str:
    return hashlib.sha256(canonical_json([index, time_utc, kind, body, prev_hash])).hexdigest()


def _mac(key: bytes, record_hash: str) -> str:
    return hmac.new(key, record_hash.encode("ascii"), hashlib.sha256).hexdigest()


def _format_time(now: datetime) -> str:
    if now.tzinfo is None:
        raise ValueError("audit records need a timezone-aware time (UTC)")
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, timeout=5.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


class AuditLog:
    """Appender for the audit log. One instance per process; appends are serialised
    by SQLite (`BEGIN IMMEDIATE`) so several processes may append safely."""

    def __init__(self, *, path: Path, hmac_key: bytes | None = None) -> None:
        create_private_file(path)
        self._path = path
        self._hmac_key = hmac_key
        self._conn = _connect(path)
        self._conn.executescript(_SCHEMA)

    @classmethod
    def in_data_dir(cls, data_dir: Path, *, hmac_key: bytes | None = None) -> AuditLog:
        """Open ``<data_dir>/audit.sqlite3``."""
        return cls(path=data_dir / AUDIT_DB_NAME, hmac_key=hmac_key)

    def append(self, kind: AuditKind, body: Mapping[str, object], *, now: datetime) -> AuditRecord:
        """Append one record and commit it durably before returning."""
        time_utc = _format_time(now)
        body_obj = dict(body)
        body_json = canonical_json(body_obj).decode("utf-8")
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute(
                "SELECT idx, hash FROM audit_log ORDER BY idx DESC LIMIT 1"
            ).fetchone()
            index = 0 if row is None else int(row[0]) + 1
            prev_hash = GENESIS_HASH if row is None else str(row[1])
            record_hash = _record_hash(index, time_utc, kind.value, body_obj, prev_hash)
            mac = None if self._hmac_key is None else _mac(self._hmac_key, record_hash)
            conn.execute(
                "INSERT INTO audit_log (idx, time_utc, kind, body_json, prev_hash, hash, mac) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (index, time_utc, kind.value, body_json, prev_hash, record_hash, mac),
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return AuditRecord(
            index=index,
            time_utc=time_utc,
            kind=kind.value,
            body_json=body_json,
            prev_hash=prev_hash,
            hash=record_hash,
            mac=mac,
        )

    def head(self) -> AuditHead | None:
        """The newest record's index and hash (None for an empty log)."""
        row = self._conn.execute(
            "SELECT idx, hash FROM audit_log ORDER BY idx DESC LIMIT 1"
        ).fetchone()
        return None if row is None else AuditHead(index=int(row[0]), hash=str(row[1]))

    def close(self) -> None:
        """Close the database."""
        self._conn.close()


def _check_record(  # noqa: PLR0911 - one early return per distinct tamper finding
    row: tuple[object, ...], *, expected_index: int, prev_hash: str, hmac_key: bytes | None
) -> str | None:
    index, time_utc, kind, body_json, stored_prev, stored_hash, mac = row
    if index != expected_index:
        if isinstance(index, int) and index > expected_index:
            return f"record {expected_index} is missing (deleted); next present is {index}"
        return f"record index {index!r} where {expected_index} was expected"
    if not (
        isinstance(time_utc, str)
        and isinstance(kind, str)
        and isinstance(body_json, str)
        and isinstance(stored_hash, str)
    ):
        return "a column has the wrong type (edited outside the program)"
    if stored_prev != prev_hash:
        return "prev_hash does not match the previous record (reordered, inserted or deleted)"
    try:
        body = json.loads(body_json)
        canonical_ok = canonical_json(body).decode("utf-8") == body_json
    except ValueError:
        return "body is not valid JSON (edited)"
    if not canonical_ok:
        return "body is not in canonical form (edited)"
    if _record_hash(expected_index, time_utc, kind, body, prev_hash) != stored_hash:
        return "hash does not match the record's content (edited)"
    if hmac_key is not None and (
        not isinstance(mac, str) or not hmac.compare_digest(mac, _mac(hmac_key, stored_hash))
    ):
        return "HMAC does not match (record rewritten without the key, or wrong key)"
    return None


def verify_audit_log(  # noqa: PLR0911 - each return names a different failure
    path: Path,
    *,
    hmac_key: bytes | None = None,
    expected_head: AuditHead | None = None,
    anchors: Sequence[AuditHead] = (),
) -> AuditVerification:
    """Recompute the whole chain; report the first bad record.

    `expected_head` and every one of `anchors` is a previously recorded head: the
    log must still contain that record with that hash. A missing one means the
    newest records were removed (tail truncation); a different hash means the
    history was rewritten (even a chain recomputed from scratch cannot match).
    """
    expected: dict[int, str] = {}
    for anchor in (*anchors, *(() if expected_head is None else (expected_head,))):
        if expected.setdefault(anchor.index, anchor.hash) != anchor.hash:
            return AuditVerification(
                ok=False,
                records_checked=0,
                head=None,
                first_bad_index=anchor.index,
                problem=f"two anchors name record {anchor.index} with different hashes: "
                "the log was rewritten between them (or the anchor file was edited)",
            )
    if not path.exists():
        return AuditVerification(
            ok=False, records_checked=0, head=None, problem=f"{path} does not exist"
        )
    conn = _connect(path)
    try:
        conn.execute("PRAGMA query_only=ON")
        try:
            triggers = {
                str(name)
                for (name,) in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'trigger' "
                    "AND tbl_name = 'audit_log'"
                )
            }
            cursor = conn.execute(
                "SELECT idx, time_utc, kind, body_json, prev_hash, hash, mac "
                "FROM audit_log ORDER BY idx"
            )
        except sqlite3.Error as exc:
            return AuditVerification(
                ok=False, records_checked=0, head=None, problem=f"cannot read audit log: {exc}"
            )
        prev_hash = GENESIS_HASH
        checked = 0
        head: AuditHead | None = None
        for row in cursor:
            problem = _check_record(
                tuple(row), expected_index=checked, prev_hash=prev_hash, hmac_key=hmac_key
            )
            if problem is not None:
                return AuditVerification(
                    ok=False,
                    records_checked=checked,
                    head=head,
                    first_bad_index=checked,
                    problem=problem,
                )
            prev_hash = str(row[5])
            head = AuditHead(index=checked, hash=prev_hash)
            anchored = expected.get(checked)
            if anchored is not None and anchored != prev_hash:
                return AuditVerification(
                    ok=False,
                    records_checked=checked,
                    head=head,
                    first_bad_index=checked,
                    problem="record does not match the recorded anchor hash (history rewritten)",
                )
            checked += 1
    finally:
        conn.close()
    beyond = [index for index in expected if index >= checked]
    if beyond:
        return AuditVerification(
            ok=False,
            records_checked=checked,
            head=head,
            first_bad_index=checked,
            problem=f"log ends at {checked} records but an anchor names record "
            f"{max(beyond)}: the newest records were removed (truncated)",
        )
    if not triggers >= _TRIGGERS:
        return AuditVerification(
            ok=False,
            records_checked=checked,
            head=head,
            problem="append-only triggers are missing: the database schema was tampered with",
        )
    return AuditVerification(ok=True, records_checked=checked, head=head)


def audit_device_id(path: Path) -> str | None:
    """The device id named by the newest `config` record of the log (None if none)."""
    conn = _connect(path)
    try:
        row = conn.execute(
            "SELECT json_extract(body_json, '$.device_id') FROM audit_log "
            "WHERE kind = ? ORDER BY idx DESC LIMIT 1",
            (AuditKind.CONFIG.value,),
        ).fetchone()
    except sqlite3.Error:
        return None
    finally:
        conn.close()
    return None if row is None or row[0] is None else str(row[0])


def read_hmac_key_file(path: Path) -> bytes:
    """Read an audit HMAC key file (surrounding whitespace stripped).

    Raises ValueError (naming the file and the fix) for a key shorter than 32 bytes
    or a file that others can read; OSError when it cannot be read."""
    mode = path.stat().st_mode
    if mode & 0o077 and not str(path).startswith(os.environ.get("CREDENTIALS_DIRECTORY", "\0")):
        raise ValueError(
            f"{path} is readable by group or others (mode {mode & 0o777:o}); run: chmod 600 {path}"
        )
    key = path.read_bytes().strip()
    if len(key) < MIN_HMAC_KEY_BYTES:
        raise ValueError(
            f"{path} holds a {len(key)}-byte key; use at least {MIN_HMAC_KEY_BYTES} random "
            f"bytes, e.g. `head -c 32 /dev/urandom | base64 > {path}`"
        )
    return key
