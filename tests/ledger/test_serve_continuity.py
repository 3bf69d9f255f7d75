"""Real processes: `nebuliser serve` refuses a lost, rolled-back or foreign dose history.

One data directory is used for real once per module: `serve` (a subprocess) runs a
session to its cap on the simulated head, a backup is taken before the session, and
the controller is SIGKILLed so that the session is still in `ledger.sqlite3-wal`. Each
test copies that directory, damages it as an independent tester did (issue 12's
table), starts `nebuliser serve` and checks: exit 4, the HIGH `ledger_discontinuity`
alarm in the audit log, the suspect file kept aside, a message naming the fix, and no
traceback. (The tester's session was 3000 µL at the pilot's flow; the head here is
fast and the session 200 µL, which changes nothing in what is checked.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from controller.benchconfig import BenchPrescription, write_bench_config
from controller.cli import main
from controller.config import NebuliserConfig
from controller.exitcodes import ExitCode
from controller.ledger import (
    ANCHOR_FILE_NAME,
    LEDGER_FILE_NAME,
    Ledger,
    LedgerLocation,
    init_ledger,
    open_checked,
)
from simulators.mn1 import DeviceModel, run_pty_simulator
from tests.controller.test_service_pty import FAST_UL_MIN, start_confirmed, wait_status

DEVICE_ID = "neb-test"
SUBJECT = "TEST-001"
EXIT_LEDGER = 4
_SIDECARS = ("-wal", "-shm")


@dataclass(frozen=True)
class UsedBed:
    """A data directory after one real session, and a backup taken before it."""

    data_dir: Path
    backup: Path
    delivered_ul: int


def _write_config(directory: Path, *, port: str, init: bool) -> tuple[Path, NebuliserConfig]:
    return write_bench_config(
        directory,
        port=port,
        prescription=BenchPrescription(subject_id=SUBJECT, lot_id="LOT-T", session_ul=200),
        device=f'device_id = "{DEVICE_ID}"',
        session="confirm_timeout_s = 10",
        init=init,
    )


async def _one_real_session(directory: Path) -> UsedBed:
    model = DeviceModel(nominal_ul_min=FAST_UL_MIN, fill_ul=3000)
    async with run_pty_simulator(model) as sim:
        config_path, config = _write_config(directory, port=sim.device_path, init=True)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "controller.cli", "serve", "--config", str(config_path),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        try:
            await wait_status(config, lambda s: s["link_up"] and s["device"], 20)
            backup = directory / "before-session.sqlite3"
            assert main(["ledger", "backup", str(backup), "--config", str(config_path)]) == 0
            assert (await start_confirmed(config))["started"]
            status = await wait_status(config, lambda s: s["last_session"] is not None, 20)
            # Killed, not stopped: the session's records stay in the -wal file.
            process.send_signal(signal.SIGKILL)
            await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    data_dir = config.storage.data_dir
    (data_dir / "control.sock").unlink(missing_ok=True)
    return UsedBed(
        data_dir=data_dir, backup=backup, delivered_ul=status["last_session"]["delivered_ul"]
    )


@pytest.fixture(scope="module")
def used_bed(tmp_path_factory: pytest.TempPathFactory) -> UsedBed:
    return asyncio.run(_one_real_session(tmp_path_factory.mktemp("used")))


@pytest.fixture
def bed_copy(used_bed: UsedBed, tmp_path: Path) -> tuple[Path, Path]:
    """(config, data dir): a copy of the used bed; the head's port is never reached."""
    shutil.copytree(used_bed.data_dir, tmp_path / "data")
    config_path, _ = _write_config(tmp_path, port=str(tmp_path / "no-head"), init=False)
    return config_path, tmp_path / "data"


def _serve(config_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller.cli", "serve", "--config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=20,  # a refusal takes 1-3 s; a mutant that keeps serving fails fast
        check=False,
    )


def _discontinuity_alarms(data_dir: Path) -> list[dict[str, object]]:
    with contextlib.closing(sqlite3.connect(data_dir / "audit.sqlite3")) as audit:
        rows = audit.execute("SELECT body_json FROM audit_log WHERE kind = 'alarm'").fetchall()
    bodies = [json.loads(body) for (body,) in rows]
    return [b for b in bodies if b.get("alarm_code") == "ledger_discontinuity"]


def _assert_refused(
    data_dir: Path, result: subprocess.CompletedProcess[str], *, code: str, kept: str | None
) -> None:
    assert result.returncode == EXIT_LEDGER, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    assert "nebuliser ledger restore BACKUP" in result.stdout, result.stdout
    [alarm] = _discontinuity_alarms(data_dir)
    assert alarm["priority"] == "high"
    assert alarm["code"] == code
    if kept is not None:
        aside = sorted(data_dir.glob(f"{LEDGER_FILE_NAME}.{kept}-*"))
        assert aside, list(data_dir.iterdir())
        assert alarm["quarantined_to"] == str(aside[0])
    assert not (data_dir / LEDGER_FILE_NAME).exists()  # nothing was created in its place


def test_the_untouched_copy_is_accepted(bed_copy: tuple[Path, Path]) -> None:
    """The control: the refusals below come from the damage, not from the copying."""
    _, data_dir = bed_copy
    with open_checked(LedgerLocation(data_dir=data_dir), device_id=DEVICE_ID) as ledger:
        [session] = ledger.summaries()
    assert session.delivered_ul is not None
    assert session.delivered_ul > 0


def test_deleted_wal_and_shm_are_refused(bed_copy: tuple[Path, Path]) -> None:
    config_path, data_dir = bed_copy
    for suffix in _SIDECARS:
        sidecar = data_dir / (LEDGER_FILE_NAME + suffix)
        assert sidecar.exists()  # the session is only in the WAL: the row is meaningful
        sidecar.unlink()
    _assert_refused(data_dir, _serve(config_path), code="ledger_older_than_anchor", kept="suspect")


def test_deleted_ledger_with_audit_log_present_is_refused(bed_copy: tuple[Path, Path]) -> None:
    config_path, data_dir = bed_copy
    for path in data_dir.glob(f"{LEDGER_FILE_NAME}*"):
        path.unlink()
    result = _serve(config_path)
    _assert_refused(data_dir, result, code="ledger_missing", kept=None)
    assert "ledger init" not in result.stdout  # not a new install: restore, never init


def test_deleted_ledger_and_anchor_file_still_refused_from_the_audit_log(
    bed_copy: tuple[Path, Path],
) -> None:
    config_path, data_dir = bed_copy
    for path in [*data_dir.glob(f"{LEDGER_FILE_NAME}*"), data_dir / ANCHOR_FILE_NAME]:
        path.unlink()
    _assert_refused(data_dir, _serve(config_path), code="ledger_missing", kept=None)


def test_ledger_truncated_to_zero_bytes_is_refused(bed_copy: tuple[Path, Path]) -> None:
    config_path, data_dir = bed_copy
    for suffix in _SIDECARS:
        (data_dir / (LEDGER_FILE_NAME + suffix)).unlink()
    (data_dir / LEDGER_FILE_NAME).write_bytes(b"")
    _assert_refused(data_dir, _serve(config_path), code="ledger_empty", kept="suspect")


def test_an_altered_view_is_refused_without_a_traceback(bed_copy: tuple[Path, Path]) -> None:
    config_path, data_dir = bed_copy
    with contextlib.closing(sqlite3.connect(data_dir / LEDGER_FILE_NAME)) as raw:
        raw.executescript(
            "DROP VIEW session_status;"
            "CREATE VIEW session_status AS SELECT session_id, subject_id FROM sessions;"
        )
    _assert_refused(data_dir, _serve(config_path), code="ledger_unreadable", kept="corrupt")


def test_a_rolled_back_backup_is_refused(used_bed: UsedBed, bed_copy: tuple[Path, Path]) -> None:
    config_path, data_dir = bed_copy
    for path in data_dir.glob(f"{LEDGER_FILE_NAME}*"):
        path.unlink()
    shutil.copy2(used_bed.backup, data_dir / LEDGER_FILE_NAME)  # a valid, older ledger
    _assert_refused(data_dir, _serve(config_path), code="ledger_older_than_anchor", kept="suspect")


def test_another_devices_ledger_is_refused(bed_copy: tuple[Path, Path], tmp_path: Path) -> None:
    config_path, data_dir = bed_copy
    other = LedgerLocation(data_dir=tmp_path / "other-bed")
    init_ledger(other, device_id="neb-other", subject_id=SUBJECT)
    for path in data_dir.glob(f"{LEDGER_FILE_NAME}*"):
        path.unlink()
    shutil.copy2(other.ledger_path, data_dir / LEDGER_FILE_NAME)
    result = _serve(config_path)
    _assert_refused(data_dir, result, code="ledger_from_other_device", kept="suspect")
    assert "neb-other" in result.stdout


def test_a_new_install_without_init_is_refused_and_told_to_init(tmp_path: Path) -> None:
    config_path, _ = _write_config(tmp_path, port=str(tmp_path / "no-head"), init=False)
    result = _serve(config_path)
    assert result.returncode == EXIT_LEDGER, result.stdout
    assert "nebuliser ledger init" in result.stdout
    assert not (tmp_path / "data" / LEDGER_FILE_NAME).exists()


def test_restore_end_to_end_after_a_lost_wal(
    used_bed: UsedBed, bed_copy: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The documented procedure: refused start, restore with a name, start accepted."""
    config_path, data_dir = bed_copy
    for suffix in _SIDECARS:
        (data_dir / (LEDGER_FILE_NAME + suffix)).unlink()
    assert _serve(config_path).returncode == EXIT_LEDGER
    config = ["--config", str(config_path)]

    assert main(["ledger", "restore", str(used_bed.backup), "--dry-run", *config]) == 0
    dry = capsys.readouterr().out
    assert "MISSING" in dry
    assert "session #1 TEST-001" in dry
    assert "dry run: nothing was changed" in dry
    assert not (data_dir / LEDGER_FILE_NAME).exists()

    assert main(["ledger", "restore", str(used_bed.backup), *config]) == 2  # who?
    assert "--by NAME" in capsys.readouterr().err
    restored = [
        "ledger", "restore", str(used_bed.backup), "--by", "CE J. Smith",
        "--reason", "WAL lost after power cut", *config,
    ]  # fmt: skip
    assert main(restored) == 0
    out = capsys.readouterr().out
    assert "restored as UNCERTAIN, counts its full cap until reconciled" in out

    with contextlib.closing(sqlite3.connect(data_dir / "audit.sqlite3")) as audit:
        [(body,)] = audit.execute(
            "SELECT body_json FROM audit_log WHERE kind = 'ledger_restore'"
        ).fetchall()
    record = json.loads(body)
    assert record["by"] == "CE J. Smith"
    assert record["reason"] == "WAL lost after power cut"
    assert record["backup"] == str(used_bed.backup)
    assert len(record["backup_sha256"]) == 64
    assert record["sessions_restored_uncertain"] == [1]

    # The restored ledger continues its (new) anchors; the lost session counts its cap.
    with open_checked(LedgerLocation(data_dir=data_dir), device_id=DEVICE_ID) as ledger:
        [session] = ledger.history(SUBJECT)
    assert session.session_id == 1
    assert session.status.value == "uncertain"
    assert session.counted_ul == 200
    assert main(["ledger", "show", *config]) == 0
    assert "NOT reconciled: counts its full planned cap of 200 uL" in capsys.readouterr().out
    # And a real controller on the restored ledger: it starts, and the lost session
    # still blocks the next dose (interval), as the lost history would have.
    reply = asyncio.run(_start_on(config_path.parent))
    assert not reply["started"], reply
    assert any("interval" in reason for reason in reply["reasons"]), reply


async def _start_on(directory: Path) -> dict[str, Any]:
    model = DeviceModel(nominal_ul_min=FAST_UL_MIN, fill_ul=3000)
    async with run_pty_simulator(model) as sim:
        config_path, config = _write_config(directory, port=sim.device_path, init=False)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "controller.cli", "serve", "--config", str(config_path),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        try:
            await wait_status(config, lambda s: s["link_up"] and s["device"], 20)
            return await start_confirmed(config)
        finally:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), 20)


def test_restore_refuses_another_devices_backup_and_changes_nothing(
    bed_copy: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_path, data_dir = bed_copy
    other = LedgerLocation(data_dir=tmp_path / "other-bed")
    init_ledger(other, device_id="neb-other", subject_id=SUBJECT)
    for path in data_dir.glob(f"{LEDGER_FILE_NAME}*"):
        path.unlink()
    args = ["ledger", "restore", str(other.ledger_path), "--by", "CE", "--config", str(config_path)]
    assert main(args) == ExitCode.LEDGER
    assert "belongs to device 'neb-other'" in capsys.readouterr().err
    assert sorted(p.name for p in data_dir.glob(f"*{LEDGER_FILE_NAME}*")) == []


def test_restore_refuses_a_backup_with_an_altered_event(
    used_bed: UsedBed, bed_copy: tuple[Path, Path], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    config_path, data_dir = bed_copy
    tampered = tmp_path / "tampered.sqlite3"
    with Ledger.open(data_dir / LEDGER_FILE_NAME, read_only=True) as ledger:
        ledger.backup(tampered)  # a full backup: it holds the session's intent
        [session] = ledger.summaries()
    for path in data_dir.glob(f"{LEDGER_FILE_NAME}*"):
        path.unlink()
    with contextlib.closing(sqlite3.connect(tampered)) as raw:
        raw.executescript(
            "DROP TRIGGER events_no_update;"
            "UPDATE events SET body = json_set(body, '$.planned_cap_ul', 50)"
            f" WHERE session_id = {session.session_id} AND kind = 'intent';"
            "CREATE TRIGGER events_no_update BEFORE UPDATE ON events BEGIN "
            "SELECT RAISE(ABORT, 'ledger table events is append-only: UPDATE is not allowed');"
            " END;"
        )
    args = ["ledger", "restore", str(tampered), "--by", "CE", "--config", str(config_path)]
    assert main(args) == ExitCode.LEDGER
    err = capsys.readouterr().err
    assert "hash chain is broken" in err or "differs from the anchor" in err, err
    assert not (data_dir / LEDGER_FILE_NAME).exists()


def test_another_ledger_of_this_device_is_refused(
    bed_copy: tuple[Path, Path], tmp_path: Path
) -> None:
    """A swapped file: same device, but not the ledger the anchors describe."""
    config_path, data_dir = bed_copy
    other = LedgerLocation(data_dir=tmp_path / "second-ledger")
    init_ledger(other, device_id=DEVICE_ID, subject_id=SUBJECT)
    for path in data_dir.glob(f"{LEDGER_FILE_NAME}*"):
        path.unlink()
    shutil.copy2(other.ledger_path, data_dir / LEDGER_FILE_NAME)
    _assert_refused(data_dir, _serve(config_path), code="ledger_replaced", kept="suspect")
