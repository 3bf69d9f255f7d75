"""The security CLI tools, run as a user would (in-process `main`, plus one real subprocess)."""

from __future__ import annotations

import sqlite3
import stat
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from controller.cli import main
from controller.security import (
    Accepted,
    AuditKind,
    AuditLog,
    RefusalCode,
    Refused,
    Role,
    SecuritySettings,
    SenderConfig,
    SenderRegistry,
    SqliteCounterStore,
    load_public_key_file,
    public_key_to_text,
    verify_command,
)

_NEBULISER = str(Path(sys.executable).with_name("nebuliser"))  # the installed console script


def _keys(tmp_path: Path, name: str) -> tuple[Path, Path]:
    assert main(["keys", "generate", "--out", str(tmp_path / "keys"), "--name", name]) == 0
    return tmp_path / "keys" / f"{name}.key", tmp_path / "keys" / f"{name}.pub"


def _registry(pub: Path, sender: str, role: Role) -> SenderRegistry:
    text = public_key_to_text(load_public_key_file(pub))
    settings = SecuritySettings(senders=(SenderConfig(id=sender, public_key=text, role=role),))
    return SenderRegistry.from_settings(settings)


def test_keys_generate_writes_private_key_0600_and_never_overwrites(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    private, public = _keys(tmp_path, "ward-3west")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert public.read_text().startswith("ed25519:")
    assert 'role = "ward_station"' in capsys.readouterr().out
    assert main(["keys", "generate", "--out", str(tmp_path / "keys"), "--name", "ward-3west"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err


def test_signed_command_from_cli_is_accepted_and_counter_file_advances(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    private, public = _keys(tmp_path, "ward-3west")
    capsys.readouterr()
    counter_file = tmp_path / "ward.counter"
    argv = [
        "command", "sign", "--key", str(private), "--sender", "ward-3west",
        "--device", "neb-0001", "--counter-file", str(counter_file), "stop", "--reason", "test",
    ]  # fmt: skip
    assert main(argv) == 0
    first = capsys.readouterr().out.strip().encode()
    assert main(argv) == 0
    second = capsys.readouterr().out.strip().encode()
    assert counter_file.read_text().strip() == "2"
    registry = _registry(public, "ward-3west", Role.WARD_STATION)
    store = SqliteCounterStore.in_data_dir(tmp_path)
    now = datetime.now(UTC)
    try:
        outcomes = [
            verify_command(
                raw,
                retained=False,
                now=now,
                device_id="neb-0001",
                registry=registry,
                counters=store,
            )
            for raw in (first, second, first)
        ]
    finally:
        store.close()
    assert isinstance(outcomes[0], Accepted)
    assert isinstance(outcomes[1], Accepted)
    assert isinstance(outcomes[2], Refused)
    assert outcomes[2].code is RefusalCode.REPLAYED_COUNTER


def test_prescription_sign_verify_and_tamper(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    private, public = _keys(tmp_path, "pharmacy-1")
    rx = tmp_path / "rx.toml"
    rx.write_text("volume_ul = 2500\n")
    assert (
        main(["prescription", "sign", "--key", str(private), "--key-id", "pharmacy-1", str(rx)])
        == 0
    )
    verify = ["prescription", "verify", "--pharmacy-key", f"pharmacy-1={public}", str(rx)]
    assert main(verify) == 0
    rx.write_text("volume_ul = 9500\n")
    capsys.readouterr()
    assert main(verify) == 1
    assert "changed after the pharmacy signed" in capsys.readouterr().err
    sign_update = [
        "command", "sign", "--key", str(private), "--sender", "pharmacy-1", "--device", "neb-0001",
        "--counter", "1", "prescription.update", str(rx),
    ]  # fmt: skip
    assert main(sign_update) == 2  # the signing tool refuses a tampered prescription too


def test_audit_verify_exit_codes_and_names_bad_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = AuditLog.in_data_dir(tmp_path)
    for n in range(4):
        log.append(AuditKind.DECISION, {"n": n}, now=datetime.now(UTC))
    log.close()
    assert main(["audit", "verify", "--data-dir", str(tmp_path)]) == 0
    assert "4 records, chain intact" in capsys.readouterr().out
    assert main(["audit", "head", "--data-dir", str(tmp_path)]) == 0
    head = capsys.readouterr().out.strip()
    assert head.startswith("3:")
    conn = sqlite3.connect(tmp_path / "audit.sqlite3", isolation_level=None)
    conn.execute("DROP TRIGGER audit_log_no_update")
    conn.execute("""UPDATE audit_log SET body_json = '{"n":9}' WHERE idx = 2""")
    conn.close()
    assert main(["audit", "verify", "--data-dir", str(tmp_path)]) == 1
    assert "at record 2" in capsys.readouterr().err
    argv = ["audit", "verify", "--data-dir", str(tmp_path), "--expect-head", head]
    assert main(argv) == 1


def test_audit_verify_runs_as_a_real_subprocess(tmp_path: Path) -> None:
    log = AuditLog.in_data_dir(tmp_path)
    log.append(AuditKind.CONFIG, {"sha256": "0" * 64}, now=datetime.now(UTC))
    log.close()
    done = subprocess.run(
        [_NEBULISER, "audit", "verify", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("OK:")
