"""Issue 3 scenarios: the controller over a real pty (or TCP) against the simulator with
faults injected while a session runs. Real time, fast simulated head."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from controller.config import NebuliserConfig
from controller.control import ControlClient
from controller.ledger import LEDGER_FILE_NAME, EventKind, Ledger
from simulators.mn1 import (
    FAULT_NAMES,
    ChannelFaults,
    DeviceModel,
    LinkFaults,
    RunningSimulator,
    run_simulator,
)

from ._setup import write_config
from .test_service_pty import bed, running_controller, start_confirmed, wait_status

SLOW_UL_MIN = 600  # 10 µL/s: long enough to inject a fault mid-session


def alarm_codes(config: NebuliserConfig) -> set[str]:
    with Ledger.open(config.storage.data_dir / LEDGER_FILE_NAME, read_only=True) as ledger:
        return {str(e.body["alarm_code"]) for e in ledger.events(kinds=[EventKind.ALARM])}


def only_summary(config: NebuliserConfig) -> Any:
    with Ledger.open(config.storage.data_dir / LEDGER_FILE_NAME, read_only=True) as ledger:
        [summary] = ledger.summaries()
    return summary


async def running_session(config: NebuliserConfig, *, min_delivered_ul: int = 5) -> None:
    reply = await start_confirmed(config)
    assert reply["started"], reply
    await wait_status(
        config,
        lambda s: s["session"] and s["session"]["delivered_ul"] >= min_delivered_ul,
        10,
    )


async def ended(config: NebuliserConfig, timeout_s: float = 10) -> dict[str, Any]:
    status = await wait_status(config, lambda s: s["last_session"] is not None, timeout_s)
    last: dict[str, Any] = status["last_session"]
    return last


async def test_stop_button_on_the_head(tmp_path: Path) -> None:
    model = DeviceModel(nominal_ul_min=SLOW_UL_MIN)
    async with bed(tmp_path, model) as (config, sim):
        await running_session(config)
        sim.apply(lambda m, t: m.press_stop_button(now_ms=t))
        last = await ended(config)
        assert last["device_reason"] == "BUTTON_STOP"
        assert last["host_reason"] is None
    assert only_summary(config).end_reason == "BUTTON_STOP"


@pytest.mark.parametrize("fault", [f for f in FAULT_NAMES if f != "reservoir_empty"])
async def test_every_fault_bit_mid_session_stops_and_alarms(tmp_path: Path, fault: str) -> None:
    model = DeviceModel(nominal_ul_min=SLOW_UL_MIN)
    async with bed(tmp_path, model) as (config, sim):
        await running_session(config)
        sim.apply(lambda m, t: m.set_condition(fault, True, now_ms=t))
        last = await ended(config)
        assert not sim.truth().nebulising
        assert last["delivered_ul"] <= 200
        status = await wait_status(
            config, lambda s: any(a["code"] == f"device_{fault}" for a in s["alarms"]), 2
        )
        assert status["state"] == "fault"
    assert f"device_{fault}" in alarm_codes(config)


async def test_dry_cup_ends_the_session_and_alarms(tmp_path: Path) -> None:
    # 150 µL in the cup, 100 µL residual: only 50 µL can be nebulised.
    model = DeviceModel(nominal_ul_min=3000, fill_ul=150, residual_ul=100)
    async with bed(tmp_path, model) as (config, _sim):
        assert (await start_confirmed(config))["started"]
        last = await ended(config)
        assert last["device_reason"] == "RESERVOIR_EMPTY"
        assert last["delivered_ul"] <= 51
        await wait_status(
            config, lambda s: any(a["code"] == "device_reservoir_empty" for a in s["alarms"]), 2
        )
    assert "device_reservoir_empty" in alarm_codes(config)


async def test_clog_drift_raises_output_low_before_max_duration(tmp_path: Path) -> None:
    model = DeviceModel(nominal_ul_min=SLOW_UL_MIN)
    thresholds = "output_low_pct = 95\noutput_low_s = 1\n"
    async with bed(tmp_path, model, session_extra=thresholds) as (config, sim):
        await running_session(config)
        sim.apply(lambda m, t: m.set_clog_drift(100.0, now_ms=t))  # the maximum drift
        status = await wait_status(
            config, lambda s: any(a["code"] == "output_low" for a in s["alarms"]), 10
        )
        # Raised while the session still runs, long before its 600 s maximum duration.
        assert status["state"] == "nebulising"
        async with ControlClient(path=config.control_socket) as client:
            await client.call("session.stop", by="nurse C")
        await ended(config)
    assert "output_low" in alarm_codes(config)


async def test_device_ignoring_stop_alarms_and_stop_is_repeated(tmp_path: Path) -> None:
    model = DeviceModel(nominal_ul_min=SLOW_UL_MIN)
    async with bed(tmp_path, model) as (config, sim):
        await running_session(config)
        sim.apply(lambda m, t: m.set_defect("ignore_stop", True, now_ms=t))
        async with ControlClient(path=config.control_socket) as client:
            await client.call("session.stop", by="nurse B")
        status = await wait_status(
            config, lambda s: any(a["code"] == "device_ignored_stop" for a in s["alarms"]), 5
        )
        assert status["state"] == "stopping"
        frames_before = sim.truth().host_frames_received
        await asyncio.sleep(1.0)
        # STOP keeps going out every 100 ms (about 10 in a second; ≥ 5 allows a loaded CI).
        assert sim.truth().host_frames_received - frames_before >= 5
        sim.apply(lambda m, t: m.set_defect("ignore_stop", False, now_ms=t))
        last = await ended(config)
        assert last["host_reason"] == "operator_stop:nurse B"
        assert not sim.truth().nebulising


async def test_link_silence_device_watchdog_and_host_alarm(tmp_path: Path) -> None:
    model = DeviceModel(nominal_ul_min=SLOW_UL_MIN)
    async with bed(tmp_path, model) as (config, sim):
        await running_session(config)
        deaf_and_mute = LinkFaults(rx=ChannelFaults(drop_rate=1.0), silent=True)
        sim.apply(lambda m, t: m.set_link_faults(deaf_and_mute, now_ms=t))
        await asyncio.sleep(1.3)  # > 1000 ms device watchdog
        assert not sim.truth().nebulising
        assert sim.truth().last_stop == "WATCHDOG"
        sim.apply(lambda m, t: m.set_link_faults(LinkFaults(), now_ms=t))
        last = await ended(config)
        assert last["device_reason"] == "WATCHDOG"
        assert last["host_reason"] == "status_silent"  # 1 s of silence: the host stops it
        await wait_status(
            config,
            lambda s: any(a["code"] == "session_stopped_by_watchdog" for a in s["alarms"]),
            2,
        )
    codes = alarm_codes(config)
    assert "link_lost_during_session" in codes
    assert "session_stopped_by_watchdog" in codes


async def test_device_reboot_mid_session_makes_the_session_uncertain(tmp_path: Path) -> None:
    model = DeviceModel(nominal_ul_min=SLOW_UL_MIN)
    async with bed(tmp_path, model) as (config, sim):
        await running_session(config)
        sim.apply(lambda m, t: m.reboot(now_ms=t))
        status = await wait_status(
            config, lambda s: any(a["code"] == "device_rebooted" for a in s["alarms"]), 5
        )
        assert status["session"] is None
    summary = only_summary(config)
    assert str(summary.status) == "uncertain"
    assert "device_rebooted" in alarm_codes(config)


async def test_dropped_ack_to_start_gives_exactly_one_session(tmp_path: Path) -> None:
    model = DeviceModel(nominal_ul_min=3000)
    async with bed(tmp_path, model) as (config, sim):
        sim.apply(lambda m, t: m.set_link_faults(LinkFaults(drop_answer_rate=1.0), now_ms=t))
        reply = await start_confirmed(config)
        assert reply["started"], reply
        sim.apply(lambda m, t: m.set_link_faults(LinkFaults(), now_ms=t))
        await ended(config)
        assert len(sim.truth().sessions) == 1
    assert only_summary(config).delivered_ul is not None


async def test_bit_errors_1e3_whole_session_completes(tmp_path: Path) -> None:
    """At 1e-3 about a quarter of STATUS frames are corrupt, so the host's 300 ms
    silence rule (ICD §6) may end the session early: either way the session must be
    exactly one, never above its cap, and recorded with the device's own figure."""
    model = DeviceModel(nominal_ul_min=3000, seed=7)
    noisy = LinkFaults(rx=ChannelFaults(bit_error_rate=1e-3), tx=ChannelFaults(bit_error_rate=1e-3))
    model.set_link_faults(noisy, now_ms=0)
    async with bed(tmp_path, model) as (config, sim):
        assert (await start_confirmed(config))["started"]
        last = await ended(config, 20)
        assert last["host_reason"] in {"cap_predicted", "cap_reached", "status_silent", "link_lost"}
        truth = sim.truth()
        assert len(truth.sessions) == 1
        assert last["delivered_ul"] <= 200
        assert abs(truth.sessions[0]["delivered_ul"] - last["delivered_ul"]) <= 1
    assert only_summary(config).delivered_ul == last["delivered_ul"]


class _UnpluggableCable:
    """A TCP hop between controller and simulator that can be pulled and re-plugged."""

    def __init__(self, target: tuple[str, int]) -> None:
        self._target = target
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self.port = 0

    async def plug(self) -> None:
        self._server = await asyncio.start_server(self._on_client, "127.0.0.1", self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def unplug(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        self._writers.clear()
        await self._server.wait_closed()

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._target)
        self._writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(4096):
                    dst.write(data)
            dst.close()

        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(pipe(reader, up_writer))
                group.create_task(pipe(up_reader, writer))
        finally:
            for end in (writer, up_writer):
                end.close()
                with contextlib.suppress(ConnectionError):
                    await end.wait_closed()


@contextlib.asynccontextmanager
async def tcp_bed(
    tmp_path: Path, model: DeviceModel
) -> AsyncIterator[tuple[NebuliserConfig, RunningSimulator, _UnpluggableCable]]:
    async with run_simulator(model, pty=False, tcp=("127.0.0.1", 0)) as sim:
        assert sim.tcp_address is not None
        cable = _UnpluggableCable(sim.tcp_address)
        await cable.plug()
        _, config = write_config(tmp_path, port=f"socket://127.0.0.1:{cable.port}")
        try:
            async with running_controller(config):
                await wait_status(config, lambda s: s["link_up"] and s["device"], 5)
                yield config, sim, cable
        finally:
            await cable.unplug()


async def test_unplug_and_replug_mid_session(tmp_path: Path) -> None:
    """Re-plugged within the head's 1 s watchdog: the dose goes on to its cap (it used
    to end with `link_lost` and cost the patient the day's dose)."""
    model = DeviceModel(nominal_ul_min=SLOW_UL_MIN)
    async with tcp_bed(tmp_path, model) as (config, sim, cable):
        await running_session(config)
        await cable.unplug()
        await wait_status(config, lambda s: not s["link_up"], 2)
        await asyncio.sleep(0.3)
        await cable.plug()
        last = await ended(config, 40)
        assert last["host_reason"] in {"cap_predicted", "cap_reached"}, last
        assert not sim.truth().nebulising
        assert last["delivered_ul"] <= 200
    assert "link_lost_during_session" in alarm_codes(config)


async def test_unplugged_longer_than_the_watchdog_ends_the_session(tmp_path: Path) -> None:
    model = DeviceModel(nominal_ul_min=SLOW_UL_MIN)
    async with tcp_bed(tmp_path, model) as (config, sim, cable):
        await running_session(config)
        await cable.unplug()
        await wait_status(config, lambda s: s["state"] != "nebulising", 5)
        await cable.plug()
        last = await ended(config, 10)
        assert last["host_reason"] == "status_silent"
        assert last["device_reason"] == "WATCHDOG"
        assert not sim.truth().nebulising
        assert last["delivered_ul"] <= 200


async def test_storage_below_floor_alarms_while_idle_and_refuses_starts(tmp_path: Path) -> None:
    model = DeviceModel(nominal_ul_min=SLOW_UL_MIN)
    async with bed(tmp_path, model, free_space_floor_mb=10**9) as (config, _sim):
        await wait_status(config, lambda s: any(a["code"] == "storage_low" for a in s["alarms"]), 5)
        refused = await start_confirmed(config)
        assert not refused["started"]
        assert any(reason.startswith("storage") for reason in refused["reasons"]), refused


async def test_a_head_with_another_serial_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEBULISER_DEVICE__EXPECTED_SERIAL", "MN1-00042")
    model = DeviceModel(nominal_ul_min=SLOW_UL_MIN, serial="SIM-OTHER")
    async with bed(tmp_path, model) as (config, sim):
        assert config.device.expected_serial == "MN1-00042"
        refused = await start_confirmed(config)
        assert not refused["started"]
        assert any("SIM-OTHER" in r and "MN1-00042" in r for r in refused["reasons"]), refused
        assert sim.truth().sessions == []
