"""The controller process dies (SIGKILL) or hangs (SIGSTOP) at random points of a session.

Real processes: the simulator on a pty, the controller as `python -m controller.cli
serve`. Outcome by observation only: the simulator's truth (control socket), the
controller's `session.status`, and the ledger file opened read-only.

Properties checked on every run:
- the device stops within 1.1 s of the kill (its 1000 ms watchdog, or the restarted
  controller's STOP, whichever comes first);
- no session on the device delivered more than its cap (+1 µL rounding), and the
  total stays inside the rolling 24 h limit;
- no ledger row lost: every session the device ran has a ledger record with the same
  id, and its delivered figure (when known) matches the device's truth within 1 µL;
- after a restart no session is left OPEN (UNCERTAIN, RECONCILED or COMPLETED only),
  and a device still nebulising when the restarted controller answers is stopped
  within 1 s.

`NEBULISER_FAULT_RUNS=200 uv run pytest tests/faults -k sigkill` for a longer run.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
from pathlib import Path
from typing import Any

from controller.config import NebuliserConfig
from controller.dosing import SessionStatus

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

SESSION_UL = 250  # 2.5 s at 100 µL/s: a kill mid-session leaves the watchdog to act
WATCHDOG_LIMIT_S = 1.1  # ICD 1000 ms watchdog + one 100 ms STATUS period of observation
RESTART_STOP_LIMIT_S = 1.0
RUNS_PER_BED = 40  # a fresh ledger before uncertain caps fill the rolling 24 h limit


def _ready(s: dict[str, Any]) -> bool:
    return bool(s.get("link_up") and s.get("device"))


def _idle(s: dict[str, Any]) -> bool:
    return _ready(s) and s.get("state") == "idle"


async def settle_and_power_cycle(sim: SimulatorProcess, config: NebuliserConfig) -> int:
    """Wait until the controller has recorded what it can, then clear a latched fault.

    The controller has no way to send CLEAR_FAULTS (see `test_controller_can_clear_a_
    latched_device_fault`), so, as a nurse would, the head is power-cycled. Before that,
    an uncertain session the device still holds is reconciled from its STATUS.
    Returns 1 if the device had to be power-cycled.
    """
    truth = await sim.state()
    device_sid = truth["session_id"]
    await wait_status(
        config,
        lambda s: (
            s["state"] in ("idle", "fault")
            and s["session"] is None
            and device_sid not in s["uncertain_sessions"]
        ),
        15,
    )
    if not truth["faults"] and not (await sim.state())["faults"]:
        return 0
    await sim.ctl.reboot()
    await wait_status(config, _idle, 15)
    return 1


async def _start_quietly(config: NebuliserConfig) -> dict[str, Any]:
    """A start request whose controller may die under it."""
    try:
        return await start_confirmed(config)
    except (ConnectionError, OSError, AssertionError, ValueError, KeyError) as exc:
        return {"started": False, "error": repr(exc)}


def check_device_against_ledger(
    truth: dict[str, Any],
    config: NebuliserConfig,
    *,
    first_session_id: int,
    cap_ul: int = SESSION_UL,
) -> list[str]:
    """Limits and lost rows: every device session of this bed against the ledger."""
    violations: list[str] = []
    sessions = [s for s in truth["sessions"] if s["session_id"] >= first_session_id]
    records = {r.session_id: r for r in ledger_history(config)}
    total_ul = 0.0
    for session in sessions:
        sid, delivered_ul = session["session_id"], float(session["delivered_ul"])
        total_ul += delivered_ul
        if delivered_ul > cap_ul + 1:
            violations.append(f"session {sid} delivered {delivered_ul:.1f} µL > cap {cap_ul}")
        rec = records.get(sid)
        if rec is None:
            violations.append(f"session {sid} ran on the device but has no ledger record")
            continue
        if rec.status is SessionStatus.OPEN:
            violations.append(f"session {sid} still OPEN in the ledger after restart")
        if rec.delivered_ul is not None and abs(rec.delivered_ul - delivered_ul) > 1:
            violations.append(
                f"session {sid}: ledger {rec.delivered_ul} µL, device {delivered_ul:.1f} µL"
            )
    if total_ul > 12000:
        violations.append(f"rolling 24 h total {total_ul:.0f} µL > 12000 µL")
    return violations


async def _one_bed(
    directory: Path,
    runs: int,
    rng: random.Random,
    report: ScenarioReport,
    worst: dict[str, float],
    stopped_by: dict[str, int],
) -> None:
    async with SimulatorProcess.running(directory / "sim", seed=rng.randrange(1000)) as sim:
        config_path, config = write_fault_config(
            directory, port=str(sim.link_path), session_ul=SESSION_UL
        )
        first_sid = (await sim.state())["session_id"] + 1
        async with ControllerProcess.running(config_path) as controller:
            await controller.spawn()
            await wait_status(config, _idle, 15)
            last_start = 0.0
            for run in range(runs):
                truth = await sim.state()
                if truth["reservoir_ul"] < 1000:
                    await sim.ctl.refill()
                # The previous intent must be ≥ min_interval_s (1 s) old.
                await asyncio.sleep(
                    max(0.0, 1.05 - (asyncio.get_running_loop().time() - last_start))
                )
                last_start = asyncio.get_running_loop().time()
                delay_s = rng.uniform(0.0, 1.6)
                async with asyncio.TaskGroup() as group:
                    group.create_task(_start_quietly(config))
                    await asyncio.sleep(delay_s)
                    controller.signal(signal.SIGKILL)
                    await controller.wait_exit(5)
                loop = asyncio.get_running_loop()
                killed_at = loop.time()
                fast_restart = run % 2 == 1
                if fast_restart:
                    await controller.spawn()
                stopped, _ = await wait_truth(sim, lambda t: not t["nebulising"], 5)
                stop_s = loop.time() - killed_at
                stopped_by[stopped["last_stop"]] = stopped_by.get(stopped["last_stop"], 0) + 1
                worst["stop_after_kill_s"] = max(worst["stop_after_kill_s"], stop_s)
                if stop_s > WATCHDOG_LIMIT_S:
                    report.violations.append(
                        f"run {run}: device still nebulising {stop_s:.2f} s after SIGKILL"
                    )
                if not fast_restart:
                    await controller.spawn()
                # Restarted: does it STOP a device it finds nebulising, within 1 s?
                await wait_status(config, bool, 30)  # a restart on a loaded machine
                answered_at = loop.time()
                truth = await sim.state()
                if truth["nebulising"]:
                    _, late_s = await wait_truth(sim, lambda t: not t["nebulising"], 5)
                    worst["stop_after_restart_s"] = max(worst["stop_after_restart_s"], late_s)
                    if late_s > RESTART_STOP_LIMIT_S:
                        report.violations.append(
                            f"run {run}: restarted controller let the device run {late_s:.2f} s"
                        )
                worst["restart_to_answer_s"] = max(
                    worst["restart_to_answer_s"], answered_at - controller.spawned_at
                )
                worst["power_cycles"] += await settle_and_power_cycle(sim, config)
                settled = await wait_status(config, _idle, 15)
                if settled["session"] is not None:
                    report.violations.append(f"run {run}: restarted controller resumed a session")
                report.runs += 1
            truth = await sim.state()
            await controller.terminate()
        report.violations.extend(
            check_device_against_ledger(truth, config, first_session_id=first_sid)
        )
        uncertain = [r for r in ledger_history(config) if r.status is SessionStatus.UNCERTAIN]
        worst["uncertain_left"] += len(uncertain)


async def test_sigkill_at_random_points_of_a_session(tmp_path: Path) -> None:
    runs = fault_runs()
    rng = random.Random(8)
    report = record(ScenarioReport(scenario="controller SIGKILL at a random point"))
    worst = {
        "stop_after_kill_s": 0.0,
        "stop_after_restart_s": 0.0,
        "restart_to_answer_s": 0.0,
        "uncertain_left": 0.0,
        "power_cycles": 0.0,
    }
    stopped_by: dict[str, int] = {}
    beds = (runs + RUNS_PER_BED - 1) // RUNS_PER_BED
    for bed in range(beds):
        await _one_bed(
            tmp_path / f"bed{bed}",
            min(RUNS_PER_BED, runs - bed * RUNS_PER_BED),
            rng,
            report,
            worst,
            stopped_by,
        )
    report.worst = (
        f"device stopped {worst['stop_after_kill_s'] * 1000:.0f} ms after kill; "
        f"restart STOP {worst['stop_after_restart_s'] * 1000:.0f} ms after answering; "
        f"restart answers {worst['restart_to_answer_s']:.2f} s after spawn; "
        f"last stop by {stopped_by}; head power-cycled {worst['power_cycles']:.0f}×"
    )
    assert report.runs == runs
    assert not report.violations, "\n".join(report.violations)


async def test_sigstop_hung_controller(tmp_path: Path) -> None:
    """A hung (not dead) controller: the device's watchdog stops it; on SIGCONT the
    controller records the session from the device's figures and nothing is lost."""
    runs = max(2, fault_runs() // 10)
    rng = random.Random(9)
    report = record(ScenarioReport(scenario="controller SIGSTOP (hung) then SIGCONT"))
    worst_stop_s = 0.0
    async with SimulatorProcess.running(tmp_path / "sim") as sim:
        config_path, config = write_fault_config(
            tmp_path, port=str(sim.link_path), session_ul=SESSION_UL * 3
        )
        first_sid = (await sim.state())["session_id"] + 1
        async with ControllerProcess.running(config_path) as controller:
            await controller.spawn()
            await wait_status(config, _idle, 15)
            for run in range(runs):
                if run:
                    await asyncio.sleep(1.05)  # min_interval_s
                reply = await start_confirmed(config)
                assert reply["started"], reply
                await wait_truth(sim, lambda t: t["nebulising"], 3)
                await asyncio.sleep(rng.uniform(0.05, 1.0))
                controller.signal(signal.SIGSTOP)
                stopped_at = asyncio.get_running_loop().time()
                try:
                    truth, _ = await wait_truth(sim, lambda t: not t["nebulising"], 5)
                finally:
                    stop_s = asyncio.get_running_loop().time() - stopped_at
                    controller.signal(signal.SIGCONT)
                worst_stop_s = max(worst_stop_s, stop_s)
                if truth["last_stop"] == "WATCHDOG" and stop_s > WATCHDOG_LIMIT_S:
                    report.violations.append(f"run {run}: watchdog after {stop_s:.2f} s")
                after = await wait_status(config, lambda s: s["session"] is None, 10)
                last = after["last_session"]
                if last is None or last["session_id"] != reply["session_id"]:
                    report.violations.append(f"run {run}: session not recorded: {after}")
                await settle_and_power_cycle(sim, config)
                report.runs += 1
            truth = await sim.state()
            with contextlib.suppress(TimeoutError):
                await controller.terminate()
        report.violations.extend(
            check_device_against_ledger(
                truth, config, first_session_id=first_sid, cap_ul=SESSION_UL * 3
            )
        )
    report.worst = f"device stopped {worst_stop_s * 1000:.0f} ms after SIGSTOP"
    assert not report.violations, "\n".join(report.violations)
