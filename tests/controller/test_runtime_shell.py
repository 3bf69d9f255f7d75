"""The asyncio shell around the session runtime, as real processes: what only the
shell can get wrong (shutdown, condition readings, exit codes)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.dosing import SessionStatus
from controller.ledger import LEDGER_FILE_NAME, Ledger
from controller.service import EXIT_STOP_UNCONFIRMED
from simulators.mn1 import DeviceModel, run_pty_simulator

from ._setup import write_config
from .test_service_pty import start_confirmed, wait_status


async def _spawn(config_path: Path, log: Path) -> asyncio.subprocess.Process:
    with log.open("wb") as log_file:  # a file, not a pipe: a full pipe would block it
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "controller.cli", "serve", "--config", str(config_path),
            stdout=asyncio.subprocess.DEVNULL, stderr=log_file,
        )  # fmt: skip


async def test_sigterm_with_a_head_that_ignores_stop_is_honest(tmp_path: Path) -> None:
    """SIGTERM while the head ignores STOP: not exit 0 and an open session, but the
    session recorded UNCERTAIN, the HIGH alarm recorded, an error log, exit code 9."""
    model = DeviceModel(nominal_ul_min=400, fill_ul=3000)
    async with run_pty_simulator(model) as sim:
        config_path, config = write_config(tmp_path, port=sim.device_path, session_ul=1000)
        process = await _spawn(config_path, tmp_path / "serve.log")
        try:
            await wait_status(config, lambda s: s["link_up"] and s["device"], 10)
            assert (await start_confirmed(config))["started"]
            await wait_status(config, lambda s: s["session"] is not None, 5)
            model.set_defect("ignore_stop", True, now_ms=model.now_ms)
            process.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(process.wait(), 20)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    log = (tmp_path / "serve.log").read_text()
    assert code == EXIT_STOP_UNCONFIRMED, log[-2000:]
    assert "session the head did not confirm stopped" in log
    with Ledger.open(config.storage.data_dir / LEDGER_FILE_NAME, read_only=True) as ledger:
        [record] = ledger.history("TEST-001")
        [summary] = ledger.summaries(subject_id="TEST-001")
    assert record.status is SessionStatus.UNCERTAIN
    assert summary.uncertain_reason == "shutdown_stop_unconfirmed"
    assert any(
        a.alarm_code == "stop_unconfirmed_at_shutdown" and a.priority == "high"
        for a in summary.alarms
    )


@contextlib.contextmanager
def _small_filesystem(path: Path, size_mib: int) -> Iterator[None]:
    path.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


async def test_storage_crossing_the_floor_is_alarmed_within_a_second(tmp_path: Path) -> None:
    """The storage alarm used to wait for a 30 s poll; the shell now reads free space
    every 0.5 s. A 5 s bound here cannot flake and fails against the old poll."""
    with _small_filesystem(tmp_path / "data", size_mib=64):
        model = DeviceModel(nominal_ul_min=400, fill_ul=3000)
        async with run_pty_simulator(model) as sim:
            config_path, config = write_config(
                tmp_path, port=sim.device_path, free_space_floor_mb=32
            )
            assert config.storage.data_dir == tmp_path / "data"
            process = await _spawn(config_path, tmp_path / "serve.log")
            try:
                status = await wait_status(config, lambda s: s["link_up"] and s["device"], 10)
                assert not any(a["code"] == "storage_low" for a in status["alarms"])
                filler = config.storage.data_dir / "filler.bin"
                free_mib = shutil.disk_usage(config.storage.data_dir).free // 2**20
                filler.write_bytes(b"\0" * ((free_mib - 24) * 2**20))  # 24 MiB left < 32
                os.sync()
                loop = asyncio.get_running_loop()
                filled_at = loop.time()
                await wait_status(
                    config, lambda s: any(a["code"] == "storage_low" for a in s["alarms"]), 5
                )
                assert loop.time() - filled_at < 5
            finally:
                process.send_signal(signal.SIGTERM)
                await asyncio.wait_for(process.wait(), 10)


#: How long the controller process is stopped: a stall well inside the head's 1 s watchdog.
_STALL_S = 0.5


async def test_a_500_ms_stall_of_the_controller_neither_ends_the_session_nor_passes_the_cap(
    tmp_path: Path,
) -> None:
    model = DeviceModel(nominal_ul_min=3000, fill_ul=5000)
    async with run_pty_simulator(model) as sim:
        config_path, config = write_config(tmp_path, port=sim.device_path, session_ul=1000)
        process = await _spawn(config_path, tmp_path / "serve.log")
        try:
            await wait_status(config, lambda s: s["link_up"] and s["device"], 10)
            assert (await start_confirmed(config))["started"]
            await wait_status(
                config, lambda s: s["session"] and s["session"]["delivered_ul"] >= 200, 10
            )
            process.send_signal(signal.SIGSTOP)
            await asyncio.sleep(_STALL_S)  # the stimulus itself, not a wait for a condition
            process.send_signal(signal.SIGCONT)
            await wait_status(config, lambda s: s["session"] is None, 30)
        finally:
            process.send_signal(signal.SIGCONT)
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), 10)
    with Ledger.open(config.storage.data_dir / LEDGER_FILE_NAME, read_only=True) as ledger:
        [summary] = ledger.summaries(subject_id="TEST-001")
    assert summary.status is SessionStatus.COMPLETED
    assert summary.host_reason in {"cap_predicted", "cap_reached", None}, summary
    assert summary.delivered_ul is not None
    assert summary.delivered_ul <= summary.planned_cap_ul
    assert model.truth().total_delivered_ul <= summary.planned_cap_ul
