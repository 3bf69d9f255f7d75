"""`nebuliser demo`: a simulated head, a controller with the pilot protocol, one full
session with a live progress bar, a dose-limit refusal and an injected fault.

Everything runs in this process on a real pty and a temporary data directory; the
head is a fast simulated one (`--nominal-ul-min`, default 6000 µL/min) so the
3 mL pilot dose takes about 30 s instead of 7.5 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from controller.config import NebuliserConfig, load_config
from controller.control import ControlClient, ControlUnavailableError
from controller.service import run_service
from simulators.mn1 import DeviceModel, RunningSimulator, run_pty_simulator

from ._common import progress_bar

__all__ = ["register"]

_POLL_S = 0.2
_BAR = 40


def _demo_config(directory: Path, port: str) -> NebuliserConfig:
    today = datetime.now(UTC).date()
    text = f"""
[device]
port = "{port}"
device_id = "neb-demo"
ward = "demo-ward"
bed = "bed-01"
[storage]
data_dir = "{directory / "data"}"
free_space_floor_mb = 1
[session]
confirm_timeout_s = 30
[clock]
mode = "system"   # demo only: a Pi at the bedside uses "ntp"
[prescription]
subject_id = "PILOT-001"
protocol_id = "EXO-PILOT-01"
drug = "exosome vesicles (inhaled)"
timezone = "UTC"
[prescription.lot]
lot_id = "LOT-2026-0042"
amount = 2.0e8
unit = "vesicles"
per_volume_ml = 3.0
[prescription.arm]
arm_id = "active"
cohort = "pilot"
blinded = false
[prescription.limits]
session_ul = 3000
session_dose = 2.0e8
min_interval_s = 86400
rolling_24h_max_sessions = 1
rolling_24h_max_ul = 3000
course_max_sessions = 5
course_max_dose = 1.0e9
course_start = {today}
course_end = {today + timedelta(days=4)}
max_session_duration_s = 1200
output_pct = 100
"""
    path = directory / "demo.toml"
    path.write_text(text, encoding="utf-8")
    return load_config(path)


async def _status(config: NebuliserConfig) -> dict[str, Any]:
    async with ControlClient(path=config.control_socket) as client:
        return await client.call("session.status")


async def _wait_ready(config: NebuliserConfig) -> None:
    for _ in range(250):
        try:
            status = await _status(config)
        except ControlUnavailableError:
            status = {}
        if status.get("link_up") and status.get("device"):
            return
        await asyncio.sleep(_POLL_S / 4)
    raise RuntimeError("the controller did not come up within 5 s")


async def _start(config: NebuliserConfig, sim: RunningSimulator) -> dict[str, Any]:
    async with ControlClient(path=config.control_socket) as client:
        await client.send("session.start")
        message = await client.receive()
        if message.get("event") == "awaiting_confirm":
            print(f"  start {message['cap_ul']} µL requested; pressing CONFIRM on the head…")
            sim.apply(lambda model, now: model.press_confirm_button(now_ms=now))
            message = await client.receive()
        return message


async def _run_demo(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="nebuliser-demo-") as tmp:
        model = DeviceModel(
            nominal_ul_min=args.nominal_ul_min, fill_ul=3200, serial="SIM-DEMO", seed=1
        )
        async with run_pty_simulator(model) as sim:
            config = _demo_config(Path(tmp), sim.device_path)
            print(f"simulated MN-1 head on {sim.device_path} ({args.nominal_ul_min} µL/min)")
            stop = asyncio.Event()
            async with asyncio.TaskGroup() as group:
                service = group.create_task(run_service(config, stop_requested=stop))
                try:
                    await _wait_ready(config)
                    code = await _scenario(config, sim)
                finally:
                    stop.set()
                await service
        return code


async def _scenario(config: NebuliserConfig, sim: RunningSimulator) -> int:
    print("1. pilot session: 2.0×10⁸ vesicles in 3000 µL")
    reply = await _start(config, sim)
    if not reply.get("started"):
        print(f"  not started: {reply.get('reasons')}")
        return 1
    while True:
        status = await _status(config)
        session = status.get("session")
        if session is None and status.get("last_session"):
            break
        if session:
            bar = progress_bar(
                session["delivered_ul"], session["cap_ul"], width=_BAR, fill="█", empty="·"
            )
            print(
                f"\r  [{bar}] "
                f"{session['delivered_ul']:5d}/{session['cap_ul']} µL "
                f"{session['flow_ul_min']:5d} µL/min",
                end="",
                flush=True,
            )
        await asyncio.sleep(_POLL_S)
    last = status["last_session"]
    print(
        f"\n  ended: {last['delivered_ul']} µL = {last['dose']:.3g} {last['dose_unit']}, "
        f"device reason {last['device_reason']}, host reason {last['host_reason']}"
    )
    print("2. a second dose the same day (the dose engine must refuse it)")
    refused = await _start(config, sim)
    for reason in refused.get("reasons", []):
        print(f"  refused: {reason}")
    print("3. injected fault: nebuliser head disconnected")
    sim.apply(lambda model, now: model.set_condition("head_disconnected", True, now_ms=now))
    await asyncio.sleep(0.5)
    for alarm in (await _status(config))["alarms"]:
        print(f"  ALARM {alarm['priority'].upper()} {alarm['code']}: {alarm['message']}")
    truth = sim.truth()
    print(
        f"summary: delivered {last['delivered_ul']} µL (device truth "
        f"{truth.total_delivered_ul:.0f} µL), dose {last['dose']:.3g} vesicles, "
        f"second dose refused: {not refused.get('started')}"
    )
    return 0 if last["delivered_ul"] <= last["cap_ul"] and not refused.get("started") else 1


def _demo(args: argparse.Namespace) -> int:
    return asyncio.run(_run_demo(args))


def register(subparsers: Any) -> None:
    """Add `demo`."""
    parser = subparsers.add_parser(
        "demo", help="one-command demo: simulated head + controller + a full pilot session"
    )
    parser.add_argument(
        "--nominal-ul-min",
        type=int,
        default=6000,
        help="simulated head output (µL/min); default 6000 = accelerated",
    )
    parser.set_defaults(handler=_demo)
