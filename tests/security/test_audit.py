"""Audit log: append-only triggers, and verification that finds edits, deletions,
reorderings and truncation even when an attacker drops the triggers."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from controller.security import (
    GENESIS_HASH,
    AuditHead,
    AuditKind,
    AuditLog,
    canonical_json,
    verify_audit_log,
)

T0 = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
KEY = b"k" * 32


def _fill(path: Path, count: int = 5, *, hmac_key: bytes | None = None) -> AuditHead:
    log = AuditLog(path=path, hmac_key=hmac_key)
    try:
        for i in range(count):
            log.append(
                AuditKind.COMMAND, {"n": i, "who": "ward-3west"}, now=T0 + timedelta(seconds=i)
            )
        head = log.head()
    finally:
        log.close()
    assert head is not None
    return head


def _attacker(path: Path) -> sqlite3.Connection:
    """An attacker with file access: drops the triggers first."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TRIGGER audit_log_no_update")
    conn.execute("DROP TRIGGER audit_log_no_delete")
    return conn


def test_intact_log_verifies_and_chain_starts_at_genesis(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    head = _fill(path)
    result = verify_audit_log(path)
    assert result.ok
    assert result.records_checked == 5
    assert result.head == head
    conn = sqlite3.connect(path)
    first_prev = conn.execute("SELECT prev_hash FROM audit_log WHERE idx = 0").fetchone()[0]
    conn.close()
    assert first_prev == GENESIS_HASH


def test_records_hash_canonical_fields(tmp_path: Path) -> None:
    log = AuditLog(path=tmp_path / "a.sqlite3")
    record = log.append(AuditKind.ALARM, {"code": "dry_cup"}, now=T0)
    log.close()
    expected = hashlib.sha256(
        canonical_json(
            [0, "2026-11-25T08:00:00.000000Z", "alarm", {"code": "dry_cup"}, GENESIS_HASH]
        )
    ).hexdigest()
    assert record.hash == expected


@pytest.mark.parametrize("sql", ["UPDATE audit_log SET kind = 'x'", "DELETE FROM audit_log"])
def test_triggers_refuse_update_and_delete(tmp_path: Path, sql: str) -> None:
    path = tmp_path / "audit.sqlite3"
    _fill(path)
    conn = sqlite3.connect(path)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute(sql)
    conn.close()


def test_edited_body_is_found_and_named(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    _fill(path)
    conn = _attacker(path)
    conn.execute("""UPDATE audit_log SET body_json = '{"n":2,"who":"nobody"}' WHERE idx = 2""")
    conn.close()
    result = verify_audit_log(path)
    assert not result.ok
    assert result.first_bad_index == 2
    assert "edited" in (result.problem or "")


def test_deleted_middle_record_is_found(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    _fill(path)
    conn = _attacker(path)
    conn.execute("DELETE FROM audit_log WHERE idx = 1")
    conn.close()
    result = verify_audit_log(path)
    assert not result.ok
    assert result.first_bad_index == 1
    assert "missing" in (result.problem or "")


def test_reordered_records_are_found(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    _fill(path)
    conn = _attacker(path)
    conn.execute("UPDATE audit_log SET idx = 100 WHERE idx = 1")
    conn.execute("UPDATE audit_log SET idx = 1 WHERE idx = 2")
    conn.execute("UPDATE audit_log SET idx = 2 WHERE idx = 100")
    conn.close()
    result = verify_audit_log(path)
    assert not result.ok
    assert result.first_bad_index == 1


def test_renumbered_log_after_deleting_first_record_is_found(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    _fill(path)
    conn = _attacker(path)
    conn.execute("DELETE FROM audit_log WHERE idx = 0")
    conn.execute("UPDATE audit_log SET idx = idx - 1")
    conn.close()
    result = verify_audit_log(path)
    assert not result.ok
    assert result.first_bad_index == 0


def test_dropped_triggers_alone_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    _fill(path)
    _attacker(path).close()
    result = verify_audit_log(path)
    assert not result.ok
    assert "triggers" in (result.problem or "")


def test_tail_truncation_is_found_only_with_an_anchor(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    anchor = _fill(path)
    conn = _attacker(path)
    conn.execute("DELETE FROM audit_log WHERE idx >= 3")
    conn.executescript(
        "CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log "
        "BEGIN SELECT RAISE(ABORT, 'x'); END;"
        "CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log "
        "BEGIN SELECT RAISE(ABORT, 'x'); END;"
    )
    conn.close()
    assert verify_audit_log(path).ok  # the documented limit of a bare hash chain
    result = verify_audit_log(path, expected_head=AuditHead.parse(str(anchor)))
    assert not result.ok
    assert "truncated" in (result.problem or "")


def test_recomputed_chain_is_found_with_hmac_key(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    _fill(path, hmac_key=KEY)
    assert verify_audit_log(path, hmac_key=KEY).ok
    # The attacker edits record 3 and recomputes every hash after it (no key).
    conn = _attacker(path)
    rows = conn.execute(
        "SELECT idx, time_utc, kind, body_json FROM audit_log ORDER BY idx"
    ).fetchall()
    prev = GENESIS_HASH
    for idx, time_utc, kind, body_json in rows:
        body = json.loads(body_json)
        if idx == 3:
            body["who"] = "nobody"
        digest = hashlib.sha256(canonical_json([idx, time_utc, kind, body, prev])).hexdigest()
        conn.execute(
            "UPDATE audit_log SET body_json = ?, prev_hash = ?, hash = ? WHERE idx = ?",
            (canonical_json(body).decode(), prev, digest, idx),
        )
        prev = digest
    conn.close()
    result = verify_audit_log(path, hmac_key=KEY)
    assert not result.ok
    assert result.first_bad_index == 3
    assert "HMAC" in (result.problem or "")


def test_missing_file_is_not_ok(tmp_path: Path) -> None:
    result = verify_audit_log(tmp_path / "nope.sqlite3")
    assert not result.ok


def test_naive_time_is_refused(tmp_path: Path) -> None:
    log = AuditLog(path=tmp_path / "a.sqlite3")
    with pytest.raises(ValueError, match="timezone-aware"):
        log.append(AuditKind.CONFIG, {}, now=T0.replace(tzinfo=None))
    log.close()


def test_anchor_text_round_trips_and_rejects_garbage() -> None:
    head = AuditHead(index=4, hash="a" * 64)
    assert AuditHead.parse(str(head)) == head
    with pytest.raises(ValueError, match="INDEX:SHA256HEX"):
        AuditHead.parse("4-abc")
