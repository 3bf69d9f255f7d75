"""Serial-line, device and storage faults against real processes.

The simulator (`nebuliser simulate --pty --control`) injects the fault; the
controller (`nebuliser serve`) runs as a subprocess; the outcome is read from the
simulator's truth, the controller's `session.status` and the ledger (read-only).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from controller.config import NebuliserConfig
from controller.control import ControlClient
from controller.dosing import SessionStatus
from controller.ledger import LEDGER_FILE_NAME

from ._harness import (
    ControllerProcess,
    ScenarioReport,
    SimulatorProcess,
    fault_runs,
    ledger_history,
    record,
    start_confirmed,
    wait_status,
    wait_truth,
    write_fault_config,
)

CAP_UL = 100


def _ready(s: dict[str, Any]) -> bool:
    return bool(s.get("link_up") and s.get("device"))


def _idle(s: dict[str, Any]) -> bool:
    return _ready(s) and s.get("state") == "idle"


@contextlib.asynccontextmanager
async def bed(
    directory: Path, *, floor_mb: int = 1, sim_args: tuple[str, ...] = ()
) -> AsyncIterator[tuple[SimulatorProcess, ControllerProcess, NebuliserConfig]]:
    """A simulator and a controller, both as subprocesses, ready and idle."""
    async with SimulatorProcess.running(directory / "sim", extra_args=sim_args) as sim:
        config_path, config = write_fault_config(
            directory, port=str(sim.link_path), session_ul=CAP_UL, floor_mb=floor_mb
        )
        async with ControllerProcess.running(config_path) as controller:
            await controller.spawn()
            await wait_status(config, _idle, 15)
            yield sim, controller, config


def _alarm_codes(status: dict[str, Any]) -> set[str]:
    return {alarm["code"] for alarm in status.get("alarms", [])}


def _session_checks(
    truth: dict[str, Any], config: NebuliserConfig, session_id: int, label: str
) -> tuple[list[str], float]:
    """Over-delivery and record checks for one session; (violations, overshoot µL)."""
    violations: list[str] = []
    [ended] = [s for s in truth["sessions"] if s["session_id"] == session_id] or [None]
    if ended is None:
        return [f"{label}: session {session_id} not found on the device"], 0.0
    delivered = float(ended["delivered_ul"])
    overshoot = delivered - CAP_UL
    if overshoot > 1:
        violations.append(f"{label}: delivered {delivered:.1f} µL > cap {CAP_UL} µL")
    records = {r.session_id: r for r in ledger_history(config)}
    rec = records.get(session_id)
    if rec is None:
        violations.append(f"{label}: session {session_id} has no ledger record")
    elif rec.status is SessionStatus.OPEN:
        violations.append(f"{label}: session {session_id} left OPEN")
    elif rec.delivered_ul is not None and abs(rec.delivered_ul - delivered) > 1:
        violations.append(f"{label}: ledger {rec.delivered_ul} µL, device {delivered:.1f} µL")
    return violations, overshoot


_last_start: dict[Path, float] = {}


async def start_after_interval(config: NebuliserConfig) -> dict[str, Any]:
    """Start once the previous start on this bed is ≥ min_interval_s (1 s) old.

    The time is taken when the start's reply arrives, i.e. after the controller recorded
    the intent (the interval rule measures from the intent, which the controller writes
    after the confirm round trip and its anchors)."""
    loop = asyncio.get_running_loop()
    previous = _last_start.get(config.storage.data_dir)
    if previous is not None:
        await asyncio.sleep(max(0.0, previous + 1.05 - loop.time()))
    reply = await start_confirmed(config)
    _last_start[config.storage.data_dir] = loop.time()
    return reply


async def _one_session(
    sim: SimulatorProcess, config: NebuliserConfig, label: str
) -> tuple[list[str], float, dict[str, Any]]:
    reply = await start_after_interval(config)
    if not reply.get("started"):
        return [f"{label}: start refused {reply.get('reasons')}"], 0.0, reply
    final = await wait_status(config, lambda s: s["session"] is None, 20)
    truth = await sim.state()
    await _wait_recorded(config, reply["session_id"])
    violations, overshoot = _session_checks(truth, config, reply["session_id"], label)
    return violations, overshoot, final


async def _wait_recorded(config: NebuliserConfig, session_id: int, timeout_s: float = 3) -> None:
    """The end row is written by the ledger thread after the state change: give it time."""
    for _ in range(int(timeout_s / 0.05)):
        records = {r.session_id: r for r in ledger_history(config)}
        rec = records.get(session_id)
        if rec is not None and rec.status is not SessionStatus.OPEN:
            return
        await asyncio.sleep(0.05)


LINK_FAULTS: dict[str, dict[str, float]] = {
    "bit errors 1e-4": {"bit_error_rate": 1e-4},
    "bit errors 1e-3": {"bit_error_rate": 1e-3},
    "dropped bytes 1e-3": {"drop_rate": 1e-3},
    "duplicated bytes 1e-3": {"duplicate_rate": 1e-3},
}


async def test_serial_link_faults_never_over_deliver_or_lose_records(tmp_path: Path) -> None:
    """Bit errors, dropped and duplicated bytes both ways: a session may end early
    (link lost → STOP), never above its cap, and its record matches the device."""
    async with bed(tmp_path) as (sim, _controller, config):
        for label, channel in LINK_FAULTS.items():
            report = record(ScenarioReport(scenario=f"serial: {label} (both ways)"))
            await sim.ctl.reset_link()
            await sim.ctl.set_link_faults(rx=channel, tx=channel)
            worst = -CAP_UL * 1.0
            for _ in range(max(1, fault_runs() // 20)):
                violations, overshoot, _final = await _one_session(sim, config, label)
                report.violations += violations
                worst = max(worst, overshoot)
                report.runs += 1
                await sim.ctl.reset_link()
                await wait_status(config, lambda s: s["link_up"] and s["session"] is None, 10)
                truth = await sim.state()
                if truth["faults"]:
                    await sim.ctl.reboot()
                await wait_status(config, _idle, 10)
                await sim.ctl.set_link_faults(rx=channel, tx=channel)
            report.worst = f"delivered − cap {worst:+.1f} µL"
            assert not report.violations, report.violations
        await sim.ctl.reset_link()


async def test_device_ignoring_its_cap_or_stop(tmp_path: Path) -> None:
    """Host-only layer (cap ignored) and device-only layer (STOP ignored) each hold."""
    async with bed(tmp_path) as (sim, _controller, config):
        report = record(ScenarioReport(scenario="device ignores its cap"))
        await sim.ctl.set_defect("ignore_target_cap")
        violations, overshoot, final = await _one_session(sim, config, "ignore cap")
        report.runs, report.violations = 1, violations
        report.worst = f"delivered − cap {overshoot:+.1f} µL"
        assert final["last_session"]["host_reason"] in {"cap_predicted", "cap_reached"}
        assert not violations, violations
        await sim.ctl.set_defect("ignore_target_cap", enabled=False)

        report = record(ScenarioReport(scenario="device ignores STOP"))
        await sim.ctl.set_defect("ignore_stop")
        reply = await start_after_interval(config)
        assert reply["started"], reply
        await wait_truth(sim, lambda t: t["nebulising"] and t["delivered_ul"] > 5, 5)
        async with ControlClient(path=config.control_socket) as client:
            await client.call("session.stop", by="nurse A")
        # The host sees its STOP ignored for 500 ms and raises the HIGH alarm.
        alarmed = await wait_status(config, lambda s: "device_ignored_stop" in _alarm_codes(s), 3)
        truth, _ = await wait_truth(sim, lambda t: not t["nebulising"], 5)
        await wait_status(config, lambda s: s["session"] is None, 10)
        await _wait_recorded(config, reply["session_id"])
        violations, overshoot = _session_checks(truth, config, reply["session_id"], "ignore stop")
        report.runs, report.violations = 1, violations
        report.worst = f"delivered − cap {overshoot:+.1f} µL (device cap is the layer)"
        assert not violations, violations
        assert truth["sessions"][-1]["reason"] == "TARGET_REACHED"
        assert alarmed["state"] != "idle"


async def test_device_reboot_mid_session(tmp_path: Path) -> None:
    """A head that power-cycles mid-session: session UNCERTAIN (full cap counted), alarm,
    no further delivery, nothing resumed."""
    report = record(ScenarioReport(scenario="device reboots mid-session"))
    async with bed(tmp_path) as (sim, _controller, config):
        reply = await start_after_interval(config)
        assert reply["started"], reply
        await wait_truth(sim, lambda t: t["nebulising"] and t["delivered_ul"] > 10, 5)
        truth = await sim.ctl.reboot(boot_ms=300)
        delivered_at_reboot = truth["sessions"][-1]["delivered_ul"]
        status = await wait_status(
            config, lambda s: "device_rebooted" in _alarm_codes(s) and s["session"] is None, 10
        )
        await asyncio.sleep(0.5)
        truth = await sim.state()
        report.runs = 1
        if truth["nebulising"]:
            report.violations.append("device nebulising again after its reboot")
        [rec] = [r for r in ledger_history(config) if r.session_id == reply["session_id"]]
        if rec.status is not SessionStatus.UNCERTAIN or rec.counted_ul < CAP_UL:
            report.violations.append(f"after reboot the record is {rec}")
        report.worst = (
            f"{delivered_at_reboot:.0f} µL delivered before reboot; ledger counts "
            f"{rec.counted_ul} µL; state {status['state']}"
        )
        assert "delivery_uncertain" in _alarm_codes(status)
    assert not report.violations, report.violations


async def test_pty_hang_up_mid_session(tmp_path: Path) -> None:
    """The serial device disappears mid-session (the simulator process dies: the pty
    hangs up). The controller stays up, alarms, and keeps the session UNCERTAIN."""
    report = record(ScenarioReport(scenario="serial: pty hang-up mid-session"))
    async with bed(tmp_path) as (sim, controller, config):
        reply = await start_after_interval(config)
        assert reply["started"], reply
        await wait_truth(sim, lambda t: t["nebulising"], 5)
        sim.process.send_signal(signal.SIGKILL)
        await sim.process.wait()
        lost_at = asyncio.get_running_loop().time()
        status = await wait_status(
            config, lambda s: "link_lost_during_session" in _alarm_codes(s), 5
        )
        alarm_after_s = asyncio.get_running_loop().time() - lost_at
        report.runs = 1
        assert controller.process is not None
        if controller.process.returncode is not None:
            report.violations.append(f"controller exited {controller.process.returncode}")
        if status["link_up"]:
            report.violations.append("controller still reports the link up")
        records = {r.session_id: r for r in ledger_history(config)}
        if reply["session_id"] not in records:
            report.violations.append("session record missing after hang-up")
        report.worst = f"HIGH alarm {alarm_after_s * 1000:.0f} ms after hang-up"
    assert not report.violations, report.violations


async def test_storage_below_floor_refuses_start(tmp_path: Path) -> None:
    """A free-space floor above the disk's free space: no start, the reason says why."""
    report = record(ScenarioReport(scenario="disk: free space below the floor"))
    async with bed(tmp_path, floor_mb=100_000_000) as (sim, _controller, config):
        before = len((await sim.state())["sessions"])
        reply = await start_confirmed(config)
        report.runs = 1
        assert not reply["started"]
        assert any("storage" in r or "free" in r for r in reply["reasons"]), reply["reasons"]
        status = await wait_status(config, lambda s: True, 5)
        truth = await sim.state()
        if len(truth["sessions"]) != before or truth["nebulising"]:
            report.violations.append("the device started below the storage floor")
        report.worst = f"refused: {reply['reasons'][0][:60]}"
        assert "storage_low" in _alarm_codes(status) or any(
            "storage" in r for r in reply["reasons"]
        )
    assert not report.violations, report.violations


async def test_corrupted_ledger_between_runs_refuses_delivery(tmp_path: Path) -> None:
    """The ledger file is damaged while the controller is down: the next start exits 4,
    keeps the damaged file aside, and the device never starts."""
    report = record(ScenarioReport(scenario="disk: ledger corrupted between runs"))
    async with bed(tmp_path) as (sim, controller, config):
        reply = await start_after_interval(config)
        assert reply["started"], reply
        await wait_status(config, lambda s: s["session"] is None, 15)
        assert await controller.terminate() == 0
        path = config.storage.data_dir / LEDGER_FILE_NAME
        raw = bytearray(path.read_bytes())
        for offset in range(4096, min(len(raw), 4096 * 4), 97):  # trash pages after the header
            raw[offset] ^= 0x5A
        path.write_bytes(bytes(raw))
        sessions_before = len((await sim.state())["sessions"])
        await controller.spawn()
        code = await controller.wait_exit(15)
        report.runs = 1
        if code != 4:
            report.violations.append(f"exit code {code}, expected 4: {controller.stdout_text}")
        truth = await sim.state()
        if len(truth["sessions"]) != sessions_before or truth["nebulising"]:
            report.violations.append("the device ran a session on a corrupt ledger")
        kept = [p for p in config.storage.data_dir.iterdir() if p.name != LEDGER_FILE_NAME]
        report.worst = f"exit {code}; files kept: {sorted(p.name for p in kept)}"
        assert "ledger" in controller.stdout_text
    assert not report.violations, report.violations


async def test_controller_can_clear_a_latched_device_fault(tmp_path: Path) -> None:
    """After the device's watchdog stopped a session (controller hung), the operator
    clears the latched WATCHDOG bit from the controller and the bed is usable again."""
    slow_head = ("--nominal-ul-min", "600")  # 10 s for the cap: the watchdog trips first
    async with bed(tmp_path, sim_args=slow_head) as (sim, controller, config):
        assert (await start_after_interval(config))["started"]
        await wait_truth(sim, lambda t: t["nebulising"], 5)
        controller.signal(signal.SIGSTOP)
        try:
            await wait_truth(sim, lambda t: "watchdog" in t["faults"], 5)
        finally:
            controller.signal(signal.SIGCONT)
        await wait_status(config, lambda s: s["state"] == "fault", 5)
        async with ControlClient(path=config.control_socket) as client:
            await client.call("device.clear_faults", by="nurse A")
        await wait_status(config, _idle, 5)
