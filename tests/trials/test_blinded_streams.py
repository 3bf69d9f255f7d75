"""Blinding holds on every channel that leaves the bed (issue 20, item 1).

Two blinded courses run with the real controller (`nebuliser serve` as a subprocess,
its JSON log lines as journald would receive them), the simulator on a real pty and
a private Mosquitto: one on the active arm, one on the placebo arm (another product,
lot, concentration, arm and cohort; the same volumes and limits). A subscriber on
`#` records every message. After the documented normaliser (`normalise`) the two
streams must be identical, and neither may contain any of the arm's own strings.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from controller.benchconfig import BenchPrescription, bench_mqtt_section, write_bench_config
from controller.config import NebuliserConfig
from controller.telemetry import MosquittoBroker, MqttSettings, mqtt_client
from simulators.mn1 import DeviceModel, run_pty_simulator
from tests.controller.test_service_pty import FAST_UL_MIN, start_confirmed, wait_status

from .normalise import normalise_stream

SESSION_UL: Final = 100  # 1 s at the fast head's 6000 µL/min
MIN_INTERVAL_S: Final = 3
#: The same prescribed dose on both arms (the pilot's 2.0e8 per 3 mL for 100 µL).
SESSION_DOSE: Final = SESSION_UL * 2.0e8 / 3000


@dataclass(frozen=True, slots=True, kw_only=True)
class Arm:
    """What differs between the two blinded arms (everything that must not leave)."""

    arm_id: str
    cohort: str
    drug: str
    lot_id: str
    lot_amount: float  # per 3 mL

    def secrets(self, delivered_ul: set[int]) -> list[str]:
        """Strings that would name this arm if any channel carried them: its names and
        its figures in drug units (concentration, the dose of each delivered volume)."""
        per_ml = self.lot_amount / 3.0
        doses = [d * per_ml / 1000 for d in delivered_ul if d > 0]
        figures = [self.lot_amount, per_ml, SESSION_DOSE, *doses]
        return [
            self.arm_id,
            self.cohort,
            self.drug,
            self.lot_id,
            *(text for f in figures for text in (repr(f), f"{f:g}", f"{f:.4g}", f"{f:.3e}")),
        ]


ACTIVE: Final = Arm(
    arm_id="arm-A-exo",
    cohort="cohort-2",
    drug="exosome vesicles (inhaled)",
    lot_id="LOT-2026-0042",
    lot_amount=2.0e8,
)
PLACEBO: Final = Arm(
    arm_id="arm-B-saline",
    cohort="cohort-4",
    drug="isotonic saline vehicle",
    lot_id="PLB-2026-0007",
    lot_amount=1.2e8,
)


@dataclass
class Course:
    """Everything that left the bed during one course."""

    messages: list[tuple[str, bytes]] = field(default_factory=list)
    log_lines: list[str] = field(default_factory=list)


@contextlib.asynccontextmanager
async def _subscribed_to_everything(broker: MosquittoBroker, course: Course) -> AsyncIterator[None]:
    settings = MqttSettings(
        host=broker.host, port=broker.port, client_id="capture", keepalive_s=2,
        reconnect_initial_s=0.05, reconnect_max_s=0.3,
    )  # fmt: skip
    async with mqtt_client(settings, client_id="capture") as client:
        await client.subscribe("#", qos=1)

        async def read() -> None:
            async for message in client.messages:
                payload = message.payload if isinstance(message.payload, bytes) else b""
                course.messages.append((str(message.topic), payload))

        async with asyncio.TaskGroup() as group:
            reader = group.create_task(read())
            try:
                yield
            finally:
                reader.cancel()


async def _until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.02)


def _write_config(
    directory: Path, *, port: str, arm: Arm, broker: MosquittoBroker
) -> tuple[Path, NebuliserConfig]:
    return write_bench_config(
        directory,
        port=port,
        prescription=BenchPrescription(
            subject_id="TRIAL-007",
            lot_id=arm.lot_id,
            drug=arm.drug,
            lot_amount=arm.lot_amount,
            arm_id=arm.arm_id,
            cohort=arm.cohort,
            blinded=True,
            session_ul=SESSION_UL,
            with_session_dose=True,
            min_interval_s=MIN_INTERVAL_S,
            rolling_24h_max_sessions=4,
            course_max_sessions=4,
        ),
        device='device_id = "neb-trial"\nward = "ward-3"\nbed = "bed-12"',
        session="confirm_timeout_s = 10",
        extra=bench_mqtt_section(
            host=broker.host, port=broker.port, client_id="ctl-trial", telemetry_hz=5
        ),
    )


async def run_course(directory: Path, arm: Arm) -> Course:
    """A short blinded course: a session, a start refused by the interval, a session."""
    course = Course()
    workdir = directory / "mosquitto"
    workdir.mkdir(parents=True)
    model = DeviceModel(nominal_ul_min=FAST_UL_MIN, fill_ul=3000, serial="SIM-TRIAL")
    log_path = directory / "serve.log"
    async with (
        MosquittoBroker(workdir=workdir) as broker,
        run_pty_simulator(model) as sim,
        _subscribed_to_everything(broker, course),
    ):
        config_path, config = _write_config(directory, port=sim.device_path, arm=arm, broker=broker)
        with log_path.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "controller.cli", "serve", "--config", str(config_path),
                stdout=log, stderr=log,
            )  # fmt: skip
            try:
                await wait_status(config, lambda s: s["link_up"] and s["device"], 15)
                first = await start_confirmed(config)
                assert first["started"], first
                await wait_status(config, lambda s: s["last_session"] is not None, 15)
                refused = await start_confirmed(config)
                assert not refused["started"], refused  # the interval: a refusal decision
                second = await _wait_then_start(config)
                assert second["started"], second
                await wait_status(
                    config,
                    lambda s: (
                        s["state"] == "idle"
                        and s["last_session"] is not None
                        and s["last_session"]["session_id"] != first.get("session_id")
                    ),
                    15,
                )
            finally:
                if process.returncode is None:
                    process.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(process.wait(), 15) == 0
        await _until(
            lambda: any(
                t.endswith("/presence") and b'"online":false' in b for t, b in course.messages
            ),
            5,
            "presence offline after shutdown",
        )
    course.log_lines = log_path.read_text(encoding="utf-8").splitlines()
    (directory / "messages.txt").write_text("\n".join(_dump(course)), encoding="utf-8")
    return course


async def _wait_then_start(config: NebuliserConfig) -> dict[str, Any]:
    """The interval is measured from the previous start: wait it out on the clock."""
    loop = asyncio.get_running_loop()
    until = loop.time() + MIN_INTERVAL_S + 0.5
    while loop.time() < until:  # noqa: ASYNC110 - waiting for the prescription's interval
        await asyncio.sleep(0.05)
    return await start_confirmed(config)


def _dump(course: Course) -> list[str]:
    return [f"{topic} {payload.decode()}" for topic, payload in course.messages] + course.log_lines


def _delivered(course: Course) -> set[int]:
    return {
        int(body["delivered_ul"])
        for topic, payload in course.messages
        if topic.endswith("/session") and (body := json.loads(payload)).get("delivered_ul")
    }


async def _course_in(tmp_path: Path, arm: Arm, keep_as: str) -> Course:
    """Run in the same directory every time (paths are in log lines), then keep it."""
    course = await run_course(tmp_path / "bed", arm)
    (tmp_path / "bed").rename(tmp_path / keep_as)
    return course


async def test_blinded_active_and_placebo_courses_are_indistinguishable(tmp_path: Path) -> None:
    active = await _course_in(tmp_path, ACTIVE, "course-1")
    placebo = await _course_in(tmp_path, PLACEBO, "course-2")
    for course, arm in ((active, ACTIVE), (placebo, PLACEBO)):
        everything = _dump(course)
        assert len(_delivered(course)) >= 1, "both sessions ran and ended"
        secrets = arm.secrets(_delivered(course))
        leaks = [(secret, line) for line in everything for secret in secrets if secret in line]
        assert not leaks, f"{arm.arm_id} leaked: {leaks[:5]}"
    active_stream = normalise_stream(active.messages, active.log_lines)
    placebo_stream = normalise_stream(placebo.messages, placebo.log_lines)
    assert active_stream.keys() == placebo_stream.keys()
    for channel, lines in active_stream.items():
        only_active = sorted(lines - placebo_stream[channel])
        only_placebo = sorted(placebo_stream[channel] - lines)
        assert not only_active, f"{channel}: only in the active arm's stream: {only_active}"
        assert not only_placebo, f"{channel}: only in the placebo arm's stream: {only_placebo}"
