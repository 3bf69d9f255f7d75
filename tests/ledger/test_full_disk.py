"""A full disk: the end record is still written, thanks to the reserve file.

The tests mount their own small tmpfs (they run as root in CI); where mounting is
impossible (no privilege, no tmpfs) they skip and say why.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.benchconfig import BenchPrescription, write_bench_config
from controller.ledger import (
    LEDGER_FILE_NAME,
    RESERVE_FILE_NAME,
    EndSource,
    EventKind,
    Ledger,
    LedgerLocation,
    LedgerWriteError,
    ReserveFile,
    StorageLevel,
    classify_storage,
    init_ledger,
    open_checked,
)
from controller.ledger._database import is_disk_full
from simulators.mn1 import DeviceModel, run_pty_simulator
from tests.controller.test_service_pty import start_confirmed, wait_status
from tests.ledger.conftest import SimClock, intent

DEVICE = "neb-disk"
_FS_BYTES = 3 * 1024 * 1024
_RESERVE_BYTES = 512 * 1024


@contextlib.contextmanager
def small_filesystem(where: Path, size_bytes: int = _FS_BYTES) -> Iterator[Path]:
    """A tmpfs of `size_bytes` mounted at `where` for the test, unmounted after."""
    where.mkdir()
    mount = shutil.which("mount")
    if mount is None:
        pytest.skip("no `mount` command on this machine: cannot make a small file system")
    result = subprocess.run(
        [mount, "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {result.stderr}")
    try:
        yield where
    finally:
        subprocess.run([shutil.which("umount") or "umount", "-l", str(where)], check=False)


def fill_disk(directory: Path) -> Path:
    """Write a filler file until the file system is full (0 bytes free)."""
    filler = directory / "filler.bin"
    block = b"\0" * 4096
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            try:
                os.write(fd, block)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
        # Also the last partial block: tmpfs may still hold a few bytes.
        with contextlib.suppress(OSError):
            while os.write(fd, b"\0"):
                pass
    finally:
        os.close(fd)
    assert shutil.disk_usage(directory).free == 0
    return filler


def _session_on_full_disk(tmp_path: Path, clock: SimClock, *, reserve_bytes: int) -> int:
    """Open a session, fill the disk, end the session; returns the recorded delivered µL."""
    with small_filesystem(tmp_path / "disk") as disk:
        location = LedgerLocation(data_dir=disk / "data")
        init_ledger(location, device_id=DEVICE, subject_id="subj-1")
        with open_checked(location, device_id=DEVICE, reserve_bytes=reserve_bytes) as ledger:
            session_id = intent(ledger, clock, cap_ul=3000)
            ledger.record_started(session_id, at=clock.advance(1))
            fill_disk(disk)
            with pytest.raises(LedgerWriteError) as full:  # the disk is really full
                ledger.record_progress(
                    session_id, delivered_ul=1500, flow_ul_min=400, reservoir_ul=1500,
                    at=clock.advance(200),
                )  # fmt: skip
            assert is_disk_full(full.value)
            ledger.record_ended(
                session_id,
                delivered_ul=2987,
                duration_ms=448_000,
                reason="TARGET_REACHED",
                source=EndSource.DEVICE,
                at=clock.advance(248),
            )
            assert not (location.data_dir / RESERVE_FILE_NAME).exists()  # spent on the end
        # Reopened from the file system: the end is durable.
        with open_checked(location, device_id=DEVICE) as reopened:
            [record] = reopened.history("subj-1")
            assert record.status.value == "completed"
            assert record.delivered_ul is not None
            return record.delivered_ul


def test_the_ended_record_is_written_on_a_full_disk(tmp_path: Path, clock: SimClock) -> None:
    assert _session_on_full_disk(tmp_path, clock, reserve_bytes=_RESERVE_BYTES) == 2987


def test_without_the_reserve_the_ended_record_is_lost(tmp_path: Path, clock: SimClock) -> None:
    """The control: it is the reserve that makes the test above pass."""
    with pytest.raises(LedgerWriteError):
        _session_on_full_disk(tmp_path, clock, reserve_bytes=0)


def test_the_reserve_is_allocated_at_open_and_reported(tmp_path: Path) -> None:
    reserve = ReserveFile(data_dir=tmp_path, size_bytes=_RESERVE_BYTES)
    intact = [reserve.intact]
    assert reserve.ensure()
    intact.append(reserve.intact)
    assert os.stat(reserve.path).st_blocks * 512 >= _RESERVE_BYTES  # really allocated
    assert reserve.release()
    intact.append(reserve.intact)
    assert intact == [False, True, False]
    assert not reserve.release()


def test_storage_levels() -> None:
    mb = 1_000_000
    level = {
        (500 * mb, True): StorageLevel.OK,
        (150 * mb, True): StorageLevel.BELOW_FLOOR,  # a running session finishes
        (10 * mb, True): StorageLevel.EMERGENCY,  # stop it while its end can be recorded
        (500 * mb, False): StorageLevel.EMERGENCY,  # the reserve is spent
    }
    for (free, intact), expected in level.items():
        got = classify_storage(
            free_bytes=free, floor_bytes=200 * mb, emergency_bytes=20 * mb, reserve_intact=intact
        )
        assert got is expected, (free, intact)
    assert (
        classify_storage(free_bytes=200 * mb, floor_bytes=200 * mb, emergency_bytes=20 * mb,
                         reserve_intact=True)
        is StorageLevel.OK
    )  # fmt: skip
    with pytest.raises(ValueError, match="must not be above the floor"):
        classify_storage(free_bytes=0, floor_bytes=1, emergency_bytes=2, reserve_intact=True)


async def test_serve_records_the_end_with_the_heads_volume_on_a_full_disk(tmp_path: Path) -> None:
    """A real `nebuliser serve`: the disk fills to 0 bytes mid-session; the session still
    ends with its `ended` record and the head's delivered volume."""
    model = DeviceModel(nominal_ul_min=2400, fill_ul=3000)
    with small_filesystem(tmp_path / "disk", 8 * 1024 * 1024) as disk:
        async with run_pty_simulator(model) as sim:
            config_path, config = write_bench_config(
                disk,
                port=sim.device_path,
                prescription=BenchPrescription(subject_id="TEST-001", session_ul=200),
                device='device_id = "neb-test"',
                storage="free_space_floor_mb = 1\nledger_reserve_mb = 1",
            )
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "controller.cli", "serve", "--config", str(config_path),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            try:
                await wait_status(config, lambda s: s["link_up"] and s["device"], 20)
                assert (await start_confirmed(config))["started"]
                await wait_status(
                    config, lambda s: s["session"] and s["session"]["delivered_ul"] > 0, 10
                )
                fill_disk(disk)
                await wait_status(config, lambda s: s["last_session"] is not None, 30)
                process.send_signal(signal.SIGTERM)
                await asyncio.wait_for(process.wait(), 20)
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
        head_delivered_ul = model.truth().sessions[-1]["delivered_ul"]
        (disk / "filler.bin").unlink()  # room to open (the check itself writes anchors)
        with Ledger.open(config.storage.data_dir / LEDGER_FILE_NAME, read_only=True) as ledger:
            [record] = ledger.history("TEST-001")
            ended = ledger.events(kinds=[EventKind.ENDED])
    assert record.status.value == "completed", record
    assert [e.session_id for e in ended] == [record.session_id]
    assert record.delivered_ul is not None
    assert abs(record.delivered_ul - head_delivered_ul) <= 1


def test_the_storage_report_gives_the_level_the_runtime_acts_on(tmp_path: Path) -> None:
    from controller.ledger import check_storage_floor  # noqa: PLC0415 - local to this test

    reserve = ReserveFile(data_dir=tmp_path, size_bytes=4096)
    huge = 1 << 60
    assert check_storage_floor(tmp_path, floor_bytes=0).level is StorageLevel.OK
    assert check_storage_floor(tmp_path, floor_bytes=0, reserve=reserve).level is (
        StorageLevel.EMERGENCY  # reserve not allocated
    )
    assert reserve.ensure()
    report = check_storage_floor(tmp_path, floor_bytes=huge, reserve=reserve)
    assert report.level is StorageLevel.BELOW_FLOOR
    assert not report.ok
    emergency = check_storage_floor(tmp_path, floor_bytes=huge, emergency_bytes=huge)
    assert emergency.level is StorageLevel.EMERGENCY


def test_the_emergency_level_may_not_be_above_the_floor(tmp_path: Path) -> None:
    from controller.config import ConfigError, load_config  # noqa: PLC0415 - local to this test

    path = tmp_path / "c.toml"
    path.write_text("[storage]\nfree_space_floor_mb = 100\nemergency_free_mb = 150\n")
    with pytest.raises(ConfigError, match="emergency_free_mb"):
        load_config(path)
    path.write_text("[storage]\nfree_space_floor_mb = 100\n")
    storage = load_config(path).storage
    assert (storage.effective_emergency_free_mb, storage.ledger_reserve_mb) == (10, 8)
