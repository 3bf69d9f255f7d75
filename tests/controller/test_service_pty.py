"""The controller service against the simulator on a real pty, in real time."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from controller.config import NebuliserConfig
from controller.control import ControlClient, ControlUnavailableError
from controller.ledger import LEDGER_FILE_NAME, EventKind, Ledger
from controller.service import run_service
from simulators.mn1 import DeviceModel, RunningSimulator, run_pty_simulator

from ._setup import write_config

FAST_UL_MIN = 6000  # a fast simulated head: 100 µL/s


@contextlib.asynccontextmanager
async def running_controller(config: NebuliserConfig) -> AsyncIterator[asyncio.Task[int]]:
    stop = asyncio.Event()
    task = asyncio.create_task(run_service(config, stop_requested=stop))
    try:
        for _ in range(200):
            if config.control_socket.exists():
                break
            await asyncio.sleep(0.02)
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def wait_status(config: NebuliserConfig, predicate: Any, timeout_s: float) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout_s
    status: dict[str, Any] = {}
    while True:
        try:
            async with ControlClient(path=config.control_socket) as client:
                status = await client.call("session.status")
        except ControlUnavailableError:
            status = {}
        if status and predicate(status):
            return status
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met; last status {status}")
        await asyncio.sleep(0.05)


async def start_confirmed(config: NebuliserConfig, **params: Any) -> dict[str, Any]:
    async with ControlClient(path=config.control_socket) as client:
        await client.send("session.start", **params)
        first = await client.receive()
        if first.get("final"):
            return first
        assert first["event"] == "awaiting_confirm"
        await client.send("confirm")
        return await client.receive()


def ledger_summaries(config: NebuliserConfig) -> list[Any]:
    with Ledger.open(config.storage.data_dir / LEDGER_FILE_NAME, read_only=True) as ledger:
        return list(ledger.summaries())


@contextlib.asynccontextmanager
async def bed(
    tmp_path: Path, model: DeviceModel, **kwargs: Any
) -> AsyncIterator[tuple[NebuliserConfig, RunningSimulator]]:
    async with run_pty_simulator(model) as sim:
        _, config = write_config(tmp_path, port=sim.device_path, **kwargs)
        async with running_controller(config):
            await wait_status(config, lambda s: s["link_up"] and s["device"], 5)
            yield config, sim


async def test_session_runs_to_cap_and_is_recorded(tmp_path: Path) -> None:
    model = DeviceModel(nominal_ul_min=FAST_UL_MIN, fill_ul=3000, serial="SIM-E2E")
    async with bed(tmp_path, model) as (config, _sim):
        reply = await start_confirmed(config)
        assert reply["started"], reply
        status = await wait_status(config, lambda s: s["last_session"] is not None, 15)
        last = status["last_session"]
        assert status["state"] == "idle"
        # Host predictive stop: never above the cap, at most one stop latency of flow below.
        assert 200 - 30 <= last["delivered_ul"] <= 200
        assert model.truth().delivered_ul <= 200 + 1
        assert last["dose"] == pytest.approx(last["delivered_ul"] * 2.0e8 / 3000)
    summaries = ledger_summaries(config)
    assert len(summaries) == 1
    assert summaries[0].delivered_ul == last["delivered_ul"]


async def test_device_ignoring_its_cap_is_stopped_by_the_host(tmp_path: Path) -> None:
    model = DeviceModel(nominal_ul_min=FAST_UL_MIN, fill_ul=3000)
    model.set_defect("ignore_target_cap", True, now_ms=0)
    async with bed(tmp_path, model) as (config, _sim):
        assert (await start_confirmed(config))["started"]
        status = await wait_status(config, lambda s: s["last_session"] is not None, 15)
        assert status["last_session"]["delivered_ul"] <= 200
        assert model.truth().delivered_ul <= 200 + 1


async def test_second_start_refused_by_interval(tmp_path: Path) -> None:
    model = DeviceModel(nominal_ul_min=FAST_UL_MIN, fill_ul=3000)
    async with bed(tmp_path, model) as (config, _sim):
        assert (await start_confirmed(config))["started"]
        await wait_status(config, lambda s: s["last_session"] is not None, 15)
        refused = await start_confirmed(config)
        assert not refused["started"]
        assert any("interval" in reason for reason in refused["reasons"]), refused


async def test_operator_stop_mid_session(tmp_path: Path) -> None:
    model = DeviceModel(nominal_ul_min=400, fill_ul=3000)
    async with bed(tmp_path, model) as (config, _sim):
        assert (await start_confirmed(config))["started"]
        await wait_status(config, lambda s: s["session"] and s["session"]["delivered_ul"] > 0, 5)
        async with ControlClient(path=config.control_socket) as client:
            assert (await client.call("session.stop", by="nurse A"))["stopped"]
        status = await wait_status(config, lambda s: s["last_session"] is not None, 5)
        assert status["last_session"]["host_reason"] == "operator_stop:nurse A"
        assert not model.truth().nebulising


async def test_progress_samples_and_session_alarms_are_in_the_ledger(tmp_path: Path) -> None:
    model = DeviceModel(nominal_ul_min=600, fill_ul=3000)
    async with bed(tmp_path, model, session_extra="progress_sample_s = 0.5") as (config, sim):
        assert (await start_confirmed(config))["started"]
        await asyncio.sleep(1.6)
        sim.apply(lambda m, t: m.set_condition("supply_low", True, now_ms=t))
        await wait_status(
            config, lambda s: any(a["code"] == "device_supply_low" for a in s["alarms"]), 5
        )
    with Ledger.open(config.storage.data_dir / LEDGER_FILE_NAME, read_only=True) as ledger:
        progress = ledger.events(kinds=[EventKind.PROGRESS])
        alarms = ledger.events(kinds=[EventKind.ALARM])
    assert len(progress) >= 2
    assert all(event.session_id == 1 for event in progress)
    assert [e.session_id for e in alarms if e.body["alarm_code"] == "device_supply_low"] == [1]
