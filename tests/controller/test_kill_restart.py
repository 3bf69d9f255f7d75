"""Real subprocesses: a controller killed mid-session, then restarted (safety rule 4)."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from controller.dosing import SessionStatus
from controller.ledger import LEDGER_FILE_NAME, Ledger
from simulators.mn1 import DeviceModel, run_pty_simulator

from ._setup import write_config
from .test_service_pty import start_confirmed, wait_status


async def _spawn(config_path: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "controller.cli", "serve", "--config", str(config_path),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


async def test_sigkill_mid_session_then_restart(tmp_path: Path) -> None:
    model = DeviceModel(nominal_ul_min=400, fill_ul=3000)
    async with run_pty_simulator(model) as sim:
        config_path, config = write_config(tmp_path, port=sim.device_path, session_ul=1000)
        process = await _spawn(config_path)
        try:
            await wait_status(config, lambda s: s["link_up"] and s["device"], 10)
            assert (await start_confirmed(config))["started"]
            await wait_status(
                config, lambda s: s["session"] and s["session"]["delivered_ul"] >= 5, 5
            )
            process.send_signal(signal.SIGKILL)
            killed_at = asyncio.get_running_loop().time()
            await process.wait()
            while model.truth().nebulising:  # noqa: ASYNC110 - polling the simulator's truth
                await asyncio.sleep(0.01)
            stopped_after_s = asyncio.get_running_loop().time() - killed_at
            # ICD §5.5: the device's 1000 ms watchdog stops it without the host.
            assert stopped_after_s <= 1.1
            assert model.truth().last_stop == "WATCHDOG"
            delivered_on_device = model.truth().sessions[-1]["delivered_ul"]

            (config.storage.data_dir / "control.sock").unlink(missing_ok=True)
            process = await _spawn(config_path)
            status = await wait_status(config, lambda s: s["link_up"] and s["device"], 10)
            # The device still has the session: reconciled from its figures.
            status = await wait_status(config, lambda s: not s["uncertain_sessions"], 5)
            assert status["state"] in {"idle", "fault"}
            with Ledger.open(config.storage.data_dir / LEDGER_FILE_NAME, read_only=True) as led:
                [record] = led.history("TEST-001")
            assert record.status is SessionStatus.RECONCILED
            assert record.delivered_ul is not None
            assert abs(record.delivered_ul - delivered_on_device) <= 1
            assert not model.truth().nebulising
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                await asyncio.wait_for(process.wait(), 10)


async def test_sigterm_stops_the_running_session_first(tmp_path: Path) -> None:
    model = DeviceModel(nominal_ul_min=400, fill_ul=3000)
    async with run_pty_simulator(model) as sim:
        config_path, config = write_config(tmp_path, port=sim.device_path, session_ul=1000)
        process = await _spawn(config_path)
        await wait_status(config, lambda s: s["link_up"] and s["device"], 10)
        assert (await start_confirmed(config))["started"]
        await wait_status(config, lambda s: s["session"] is not None, 5)
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 10) == 0
        assert not model.truth().nebulising
        assert model.truth().last_stop == "HOST_STOP"
        with Ledger.open(config.storage.data_dir / LEDGER_FILE_NAME, read_only=True) as led:
            [record] = led.history("TEST-001")
        assert record.status is SessionStatus.COMPLETED
