"""Real processes for the fault-injection suite: a simulator and a controller.

The simulator runs as `python -m controller.cli simulate --pty --control SOCK`, the
controller as `python -m controller.cli serve --config FILE`; the test talks to
both only as a user would (the simulator's control socket, the controller's local
control socket, the ledger file opened read-only).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.benchconfig import BenchPrescription, write_bench_config
from controller.config import NebuliserConfig, load_config
from controller.control import ControlClient, ControlUnavailableError
from controller.dosing import SessionRecord
from controller.ledger import LEDGER_FILE_NAME, Ledger
from simulators.mn1 import SimulatorControlClient

__all__ = [
    "FAST_UL_MIN",
    "SUBJECT",
    "ControllerProcess",
    "ScenarioReport",
    "SimulatorProcess",
    "fault_runs",
    "ledger_history",
    "record",
    "reports",
    "start_confirmed",
    "status",
    "wait_status",
    "wait_truth",
    "write_fault_config",
]

FAST_UL_MIN = 6000  # a fast simulated head: 100 µL/s, so sessions last about a second
SUBJECT = "FAULT-001"
_DEFAULT_RUNS = 20


def fault_runs(default: int = _DEFAULT_RUNS) -> int:
    """How many repetitions of a random-point scenario: `NEBULISER_FAULT_RUNS` or `default`."""
    text = os.environ.get("NEBULISER_FAULT_RUNS", "")
    return int(text) if text.strip() else default


def write_fault_config(
    directory: Path,
    *,
    port: str,
    session_ul: int = 100,
    floor_mb: int = 1,
    min_interval_s: int = 1,
    max_sessions_24h: int = 400,
    retrust_after_s: float = 60.0,
    mqtt: str = "",
) -> tuple[Path, NebuliserConfig]:
    """A controller config with room for many short sessions (limits still enforced)."""
    return write_bench_config(
        directory,
        port=port,
        prescription=BenchPrescription(
            subject_id=SUBJECT,
            lot_id="LOT-F",
            session_ul=session_ul,
            with_session_dose=False,
            min_interval_s=min_interval_s,
            rolling_24h_max_sessions=max_sessions_24h,
            rolling_24h_max_ul=12000,
            course_max_sessions=400,
            max_session_duration_s=60,
        ),
        device='device_id = "neb-fault"',
        storage=f"free_space_floor_mb = {floor_mb}",
        clock=f"retrust_after_s = {retrust_after_s}",
        extra=mqtt,
    )


@dataclass
class SimulatorProcess:
    """`nebuliser simulate --pty` as a subprocess, with its control socket."""

    process: asyncio.subprocess.Process
    pty_path: str
    link_path: Path
    control_path: Path
    ctl: SimulatorControlClient

    async def state(self) -> dict[str, Any]:
        """The simulator's truth."""
        return await self.ctl.state()

    @staticmethod
    @contextlib.asynccontextmanager
    async def running(
        directory: Path, *, fill_ul: int = 6000, seed: int = 0, extra_args: tuple[str, ...] = ()
    ) -> AsyncIterator[SimulatorProcess]:
        """Start a simulator on a new pty (symlink `directory/mn1`); SIGTERM it at the end."""
        directory.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - test set-up, instant
        link_path = directory / "mn1"
        control_path = directory / "sim.ctl"
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "controller.cli", "simulate", "--pty",
            "--link", str(link_path), "--control", str(control_path),
            "--nominal-ul-min", str(FAST_UL_MIN), "--fill-ul", str(fill_ul),
            "--capacity-ul", str(max(6000, fill_ul)), "--seed", str(seed), *extra_args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        try:
            assert process.stdout is not None
            line = await asyncio.wait_for(process.stdout.readline(), 15)
            pty_path = line.decode().strip()
            assert pty_path.startswith("/dev/"), f"simulator printed {line!r}"
            for _ in range(200):
                if control_path.exists():
                    break
                await asyncio.sleep(0.02)
            async with SimulatorControlClient(path=control_path) as ctl:
                yield SimulatorProcess(
                    process=process,
                    pty_path=pty_path,
                    link_path=link_path,
                    control_path=control_path,
                    ctl=ctl,
                )
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(process.wait(), 10)
                except TimeoutError:
                    process.kill()
                    await process.wait()


@dataclass
class ControllerProcess:
    """`nebuliser serve --config FILE` as a subprocess."""

    config_path: Path
    config: NebuliserConfig
    process: asyncio.subprocess.Process | None = None
    spawned_at: float = 0.0
    stdout_text: str = ""

    async def spawn(self) -> None:
        """Start the controller (a stale control socket of a killed one is removed first)."""
        self.config.control_socket.unlink(missing_ok=True)
        self.spawned_at = asyncio.get_running_loop().time()
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "controller.cli", "serve", "--config", str(self.config_path),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip

    async def wait_exit(self, timeout_s: float) -> int:
        """Wait for the process to end; its exit code (stdout kept in `stdout_text`)."""
        assert self.process is not None
        out, _ = await asyncio.wait_for(self.process.communicate(), timeout_s)
        self.stdout_text = out.decode(errors="replace")
        assert self.process.returncode is not None
        return self.process.returncode

    def signal(self, signum: int) -> None:
        """Send a signal (SIGKILL, SIGSTOP, SIGCONT, SIGTERM)."""
        assert self.process is not None
        self.process.send_signal(signum)

    async def kill(self) -> None:
        """SIGKILL and reap."""
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
            await self.wait_exit(10)

    async def terminate(self) -> int:
        """SIGTERM (graceful: stops a running session first) and reap."""
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        return await self.wait_exit(15)

    @staticmethod
    @contextlib.asynccontextmanager
    async def running(config_path: Path) -> AsyncIterator[ControllerProcess]:
        """A controller that is killed at the end if still alive."""
        controller = ControllerProcess(config_path=config_path, config=load_config(config_path))
        try:
            yield controller
        finally:
            if controller.process is not None and controller.process.returncode is None:
                controller.process.send_signal(signal.SIGCONT)
                await controller.kill()


async def status(config: NebuliserConfig) -> dict[str, Any]:
    """`session.status` from the controller; {} when it does not answer."""
    try:
        async with asyncio.timeout(2), ControlClient(path=config.control_socket) as client:
            reply: dict[str, Any] = await client.call("session.status")
            return reply
    except (ControlUnavailableError, TimeoutError, ConnectionError, OSError):
        return {}


async def wait_status(
    config: NebuliserConfig, predicate: Callable[[dict[str, Any]], Any], timeout_s: float
) -> dict[str, Any]:
    """Poll `session.status` until `predicate` holds; AssertionError with the last status."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    last: dict[str, Any] = {}
    while True:
        last = await status(config)
        if last and predicate(last):
            return last
        if loop.time() > deadline:
            raise AssertionError(f"controller condition not met in {timeout_s} s; last {last}")
        await asyncio.sleep(0.03)


async def wait_truth(
    sim: SimulatorProcess, predicate: Callable[[dict[str, Any]], Any], timeout_s: float
) -> tuple[dict[str, Any], float]:
    """Poll the simulator's truth until `predicate` holds; (truth, seconds waited)."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    while True:
        truth = await sim.state()
        if predicate(truth):
            return truth, loop.time() - began
        if loop.time() - began > timeout_s:
            raise AssertionError(f"simulator condition not met in {timeout_s} s; truth {truth}")
        await asyncio.sleep(0.01)


async def start_confirmed(config: NebuliserConfig) -> dict[str, Any]:
    """`session.start` confirmed at the bedside terminal; the final reply."""
    async with ControlClient(path=config.control_socket) as client:
        await client.send("session.start")
        first: dict[str, Any] = await client.receive()
        if first.get("final"):
            return first
        assert first["event"] == "awaiting_confirm", first
        await client.send("confirm")
        final: dict[str, Any] = await client.receive()
        return final


def ledger_history(config: NebuliserConfig) -> list[SessionRecord]:
    """Every session of the subject, from the ledger file opened read-only."""
    with Ledger.open(config.storage.data_dir / LEDGER_FILE_NAME, read_only=True) as ledger:
        return ledger.history(SUBJECT)


@dataclass
class ScenarioReport:
    """One line of the reliability table."""

    scenario: str
    runs: int = 0
    violations: list[str] = field(default_factory=list)
    worst: str = ""


reports: list[ScenarioReport] = []


def record(report: ScenarioReport) -> ScenarioReport:
    """Register a scenario's line for the summary table printed at the end of the run."""
    reports.append(report)
    return report
