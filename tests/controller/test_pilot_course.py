"""Issue 4: the pilot protocol end to end against the simulator, on an injected clock.

The prescription is the one in config/example.toml (2.0×10⁸ vesicles in 3 mL, once
daily, 5 days, course 2026-12-01..05). The controller runs in process on a
`ManualClock`; the simulated head runs in real time on a pty (a very fast head so a
3 mL session takes a few seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from controller.clock import ManualClock
from controller.config import NebuliserConfig, load_config
from controller.dosing import SessionStatus
from controller.ledger import LEDGER_FILE_NAME, Ledger, LedgerLocation, init_ledger
from controller.service import run_service
from simulators.mn1 import DeviceModel, RunningSimulator, run_pty_simulator

from .test_service_pty import start_confirmed, wait_status

REPO = Path(__file__).resolve().parents[2]
DAY_S = 86_400


@contextlib.asynccontextmanager
async def pilot_bed(
    tmp_path: Path, clock: ManualClock
) -> AsyncIterator[tuple[NebuliserConfig, RunningSimulator]]:
    model = DeviceModel(nominal_ul_min=60_000, fill_ul=3000, serial="SIM-PILOT")
    async with run_pty_simulator(model) as sim:
        config = load_config(
            REPO / "config" / "example.toml",
            overrides={
                "device": {"port": sim.device_path},
                "storage": {"data_dir": str(tmp_path / "data"), "free_space_floor_mb": 1},
                "clock": {"mode": "system"},
                "security": {"require_signed_prescriptions": False},
            },
        )
        assert config.prescription is not None
        init_ledger(  # as the installing engineer does: `nebuliser ledger init`
            LedgerLocation(data_dir=config.storage.data_dir),
            device_id=config.device.device_id,
            subject_id=config.prescription.subject_id,
        )
        stop = asyncio.Event()
        service = asyncio.create_task(run_service(config, stop_requested=stop, clock=clock))
        try:
            await wait_status(config, lambda s: s["link_up"] and s["device"], 10)
            yield config, sim
        finally:
            stop.set()
            await asyncio.wait_for(service, 10)


async def dose(config: NebuliserConfig, sim: RunningSimulator) -> dict[str, Any]:
    sim.apply(lambda m, t: m.set_reservoir(3000, now_ms=t))  # the nurse fills the cup
    # The nurse scans the wristband and the vial (the example's five-rights check).
    reply = await start_confirmed(config, subject="PILOT-001", lot="LOT-2026-0042")
    if reply.get("started"):
        sid = reply["session_id"]
        await wait_status(
            config,
            lambda s: s["last_session"] is not None and s["last_session"]["session_id"] == sid,
            20,
        )
    return reply


async def test_pilot_course_five_daily_doses_then_complete(tmp_path: Path) -> None:
    clock = ManualClock(utc=datetime(2026, 12, 1, 8, 0, tzinfo=UTC), boot_id="pi-boot-1")
    async with pilot_bed(tmp_path, clock) as (config, sim):
        assert (await dose(config, sim))["started"]

        clock.advance(23 * 3600)
        early = await dose(config, sim)
        assert not early["started"]
        assert any(r.startswith("interval:") for r in early["reasons"]), early

        clock.step_wall(2 * 3600)  # the wall clock jumps forward: still 23 h on the monotonic clock
        stepped = await dose(config, sim)
        assert not stepped["started"]
        assert any(r.startswith("interval:") for r in stepped["reasons"]), stepped

        clock.advance(3600 + 60)  # 24 h + 1 min since day 1 on the monotonic clock
        for day in range(2, 6):
            reply = await dose(config, sim)
            assert reply["started"], (day, reply)
            clock.advance(DAY_S)

        sixth = await dose(config, sim)
        assert not sixth["started"]
        assert any(r.startswith("course_sessions:") for r in sixth["reasons"]), sixth
        device_total_ul = sim.truth().total_delivered_ul

    with Ledger.open(config.storage.data_dir / LEDGER_FILE_NAME, read_only=True) as ledger:
        history = ledger.history("PILOT-001")
    assert [r.status for r in history] == [SessionStatus.COMPLETED] * 5
    ledger_total_ul = sum(r.delivered_ul or 0 for r in history)
    assert abs(ledger_total_ul - device_total_ul) <= 5  # ≤ 1 µL rounding per session
    assert all((r.delivered_ul or 0) <= 3000 for r in history)
