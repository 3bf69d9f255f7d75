"""Audit anchors kept off the bed (docs/security.md C27): `AnchorStore` keeps every
published head, and `nebuliser audit verify --anchors FILE` finds tail truncation,
a full rewrite and the deletion of one row, with the triggers dropped and re-created
and the chain recomputed by the attacker, none of which the chain alone can show."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from controller.cli import main
from controller.security import (
    GENESIS_HASH,
    AnchorStore,
    AuditKind,
    AuditLog,
    canonical_json,
    load_anchors,
    verify_audit_log,
)
from controller.service._audit import load_audit_hmac_key

T0 = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)
DEVICE = "neb-0007"
_TRIGGERS = """
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit log is append-only: UPDATE refused'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit log is append-only: DELETE refused'); END;
"""


def _bed_with_anchors(tmp_path: Path, records: int = 40) -> tuple[Path, Path]:
    """An audit log whose head was anchored (stored by a 'ward station') after every
    batch of 4 records, the way the running controller publishes it."""
    data = tmp_path / "data"
    log = AuditLog.in_data_dir(data)
    store = AnchorStore(path=tmp_path / "station" / "anchors.jsonl")
    log.append(AuditKind.CONFIG, {"device_id": DEVICE}, now=T0)
    for i in range(records):
        log.append(AuditKind.COMMAND, {"n": i}, now=T0 + timedelta(seconds=i))
        if i % 4 == 3:
            head = log.head()
            assert head is not None
            store.add(
                device_id=DEVICE, ward="3west", bed="07", head=str(head),
                utc=T0.isoformat(), reason="batch",
            )  # fmt: skip
    log.close()
    return data / "audit.sqlite3", store.path


def _verify(audit: Path, anchors: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["audit", "verify", "--data-dir", str(audit.parent), "--anchors", str(anchors)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _recompute_chain(conn: sqlite3.Connection) -> None:
    """What an attacker with write access does after editing: rehash everything."""
    rows = conn.execute("SELECT idx, time_utc, kind, body_json FROM audit_log ORDER BY idx")
    prev = GENESIS_HASH
    for idx, time_utc, kind, body_json in rows.fetchall():
        body = json.loads(body_json)
        digest = hashlib.sha256(canonical_json([idx, time_utc, kind, body, prev])).hexdigest()
        conn.execute(
            "UPDATE audit_log SET prev_hash = ?, hash = ? WHERE idx = ?", (prev, digest, idx)
        )
        prev = digest


def _attack(audit: Path, sql: list[str], *, recompute: bool) -> None:
    conn = sqlite3.connect(audit, isolation_level=None)
    conn.execute("DROP TRIGGER audit_log_no_update")
    conn.execute("DROP TRIGGER audit_log_no_delete")
    for statement in sql:
        conn.execute(statement)
    if recompute:
        _recompute_chain(conn)
    conn.executescript(_TRIGGERS)  # put the triggers back: the schema looks untouched
    conn.close()


def test_intact_log_matches_every_stored_anchor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    audit, anchors = _bed_with_anchors(tmp_path)
    code, out = _verify(audit, anchors, capsys)
    assert code == 0, out
    assert "10 anchors match" in out


def test_tail_truncation_is_detected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    audit, anchors = _bed_with_anchors(tmp_path)
    _attack(audit, ["DELETE FROM audit_log WHERE idx > 24"], recompute=False)
    assert verify_audit_log(audit).ok  # the chain alone cannot see it
    code, out = _verify(audit, anchors, capsys)
    assert code == 1
    assert "truncated" in out


def test_full_rewrite_is_detected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    audit, anchors = _bed_with_anchors(tmp_path)
    _attack(
        audit,
        ["UPDATE audit_log SET body_json = '{\"n\":\"rewritten\"}' WHERE kind = 'command'"],
        recompute=True,
    )
    assert verify_audit_log(audit).ok  # a consistent, entirely new chain
    code, out = _verify(audit, anchors, capsys)
    assert code == 1
    assert "rewritten" in out
    assert "at record 4" in out  # the first anchored record


def test_deleting_one_row_is_detected_even_when_renumbered_and_rehashed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    audit, anchors = _bed_with_anchors(tmp_path)
    _attack(
        audit,
        [
            "DELETE FROM audit_log WHERE idx = 30",
            "UPDATE audit_log SET idx = idx - 1 WHERE idx > 30",
        ],
        recompute=True,
    )
    assert verify_audit_log(audit).ok
    code, out = _verify(audit, anchors, capsys)
    assert code == 1
    assert "rewritten" in out or "truncated" in out


def test_anchor_store_keeps_each_head_once_and_is_not_world_readable(tmp_path: Path) -> None:
    store = AnchorStore(path=tmp_path / "anchors.jsonl")
    head = "3:" + "ab" * 32

    def add(target: AnchorStore, device_id: str, head: str) -> object:
        return target.add(
            device_id=device_id, ward="3west", bed="07", head=head,
            utc=T0.isoformat(), reason="batch",
        )  # fmt: skip

    assert add(store, DEVICE, head) is not None
    assert add(store, DEVICE, head) is None  # retained re-delivery
    assert add(store, "neb-0008", head) is not None
    assert add(AnchorStore(path=store.path), DEVICE, head) is None  # reopened
    assert [str(a.head) for a in load_anchors(store.path, device_id=DEVICE)] == [head]
    assert stat.S_IMODE(store.path.stat().st_mode) & 0o007 == 0
    with pytest.raises(ValueError, match="INDEX:SHA256HEX"):
        add(store, DEVICE, "not-a-head")


def test_verify_refuses_an_unreadable_anchor_file_and_unknown_device(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    audit, anchors = _bed_with_anchors(tmp_path)
    with anchors.open("a") as handle:
        handle.write("{not json\n")
    code, out = _verify(audit, anchors, capsys)
    assert code == 2
    assert "line 11 is not an anchor" in out
    other = tmp_path / "other.jsonl"
    AnchorStore(path=other).add(
        device_id="neb-0099", ward="3west", bed="99", head="1:" + "00" * 32,
        utc=T0.isoformat(), reason="batch",
    )  # fmt: skip
    code, out = _verify(audit, other, capsys)
    assert code == 2
    assert "no anchor of device 'neb-0007'" in out


def test_serve_reads_the_hmac_key_from_the_config_file_or_the_systemd_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    assert load_audit_hmac_key(None) is None  # no key configured: no HMAC
    key_file = tmp_path / "audit-hmac.key"
    key_file.write_bytes(b"k" * 40 + b"\n")
    key_file.chmod(0o644)
    with pytest.raises(ValueError, match="chmod 600"):
        load_audit_hmac_key(key_file)
    key_file.chmod(0o600)
    assert load_audit_hmac_key(key_file) == b"k" * 40
    short = tmp_path / "short.key"
    short.write_bytes(b"too short")
    short.chmod(0o600)
    with pytest.raises(ValueError, match="at least 32"):
        load_audit_hmac_key(short)
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "audit-hmac-key").write_bytes(b"c" * 32)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    assert load_audit_hmac_key(None) == b"c" * 32
