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
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Final

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controller.benchconfig import BenchPrescription, bench_mqtt_section, write_bench_config
from controller.config import NebuliserConfig
from controller.security import (
    CommandName,
    RequestStartBody,
    command_topic,
    public_key_to_text,
    sign_command,
)
from controller.telemetry import MosquittoBroker, MqttSettings, mqtt_client
from simulators.mn1 import BreathingModel, DeviceModel, RunningSimulator, run_pty_simulator
from tests.controller.test_service_pty import FAST_UL_MIN, start_confirmed, wait_status

from .normalise import normalise_stream

SESSION_UL: Final = 200  # 2 s at the fast head's 6000 µL/min (longer when breath-gated)
MIN_INTERVAL_S: Final = 3
DEVICE_ID: Final = "neb-trial"
WARD: Final = "ward-3"
BED: Final = "bed-12"
#: The ward station's key: the same for both courses (its commands are the same).
WARD_STATION_KEY: Final = Ed25519PrivateKey.generate()
#: The same prescribed dose on both arms (the pilot's 2.0e8 per 3 mL for 200 µL).
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
        its figures in drug units: the concentration, the prescribed dose, and the dose
        of every volume a dose rule or record could state (each delivered volume, the
        caps, their sums), computed exactly as the controller does (`Fraction`)."""
        per_ul = Fraction(self.lot_amount) / 3 / 1000
        caps = {SESSION_UL, SESSION_UL // 2}
        volumes = delivered_ul | caps | {sum(delivered_ul)}
        volumes |= {d + c for d in delivered_ul for c in caps}
        doses = [float(v * per_ul) for v in volumes if v > 0]
        figures = [self.lot_amount, float(per_ul * 1000), SESSION_DOSE, SESSION_DOSE / 2, *doses]
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


def _monitor_settings(broker: MosquittoBroker) -> MqttSettings:
    return MqttSettings(
        host=broker.host, port=broker.port, client_id="capture", keepalive_s=2,
        reconnect_initial_s=0.05, reconnect_max_s=0.3,
    )  # fmt: skip


@contextlib.asynccontextmanager
async def _subscribed_to_everything(broker: MosquittoBroker, course: Course) -> AsyncIterator[None]:
    async with mqtt_client(_monitor_settings(broker), client_id="capture") as client:
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
    directory: Path, *, port: str, arm: Arm, broker: MosquittoBroker, breath_gated: bool
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
            session_ul=SESSION_UL // 2 if breath_gated else SESSION_UL,
            with_session_dose=True,
            min_interval_s=MIN_INTERVAL_S,
            rolling_24h_max_sessions=4,
            course_max_sessions=4,
            breath_gated=breath_gated,
        ),
        device=f'device_id = "{DEVICE_ID}"\nward = "{WARD}"\nbed = "{BED}"',
        session="confirm_timeout_s = 10",
        security=f"""[security]
require_signed_prescriptions = false  # bench: the inline prescription
[[security.senders]]
id = "ward-3-station"
public_key = "{public_key_to_text(WARD_STATION_KEY.public_key())}"
role = "ward_station"
""",
        extra=bench_mqtt_section(
            host=broker.host, port=broker.port, client_id="ctl-trial", telemetry_hz=5
        ),
    )


async def run_course(directory: Path, arm: Arm, *, breath_gated: bool) -> Course:
    """A short blinded course: a session, a start refused while it runs, a session.

    `breath_gated`: an ICD 1.1 head with a breathing patient (the `breathing` topic).
    """
    course = Course()
    workdir = directory / "mosquitto"
    workdir.mkdir(parents=True)
    model = DeviceModel(
        nominal_ul_min=FAST_UL_MIN,
        fill_ul=3000,
        serial="SIM-TRIAL",
        breathing=BreathingModel(pattern="severe") if breath_gated else None,  # 32/min: quick
    )
    log_path = directory / "serve.log"
    async with (
        MosquittoBroker(workdir=workdir) as broker,
        run_pty_simulator(model) as sim,
        _subscribed_to_everything(broker, course),
    ):
        config_path, config = _write_config(
            directory, port=sim.device_path, arm=arm, broker=broker, breath_gated=breath_gated
        )
        with log_path.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "controller.cli", "serve", "--config", str(config_path),
                stdout=log, stderr=log,
            )  # fmt: skip
            try:
                await _course_steps(config, sim, broker, course)
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


async def _course_steps(
    config: NebuliserConfig, sim: RunningSimulator, broker: MosquittoBroker, course: Course
) -> None:
    """What the nurse, the ward station and the head do during the course."""
    await wait_status(config, lambda s: s["link_up"] and s["device"], 15)
    first = await start_confirmed(config)
    first_at = asyncio.get_running_loop().time()
    assert first["started"], first
    await wait_status(config, lambda s: s["session"] is not None, 5)
    refused = await start_confirmed(config)  # a session is open: refused at the bedside
    assert not refused["started"], refused
    await _remote_start_refused(broker, course)  # ... and from the ward station
    await wait_status(config, lambda s: s["last_session"] is not None, 30)
    second = await _wait_then_start(config, first_at=first_at)
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
    # A device alarm while idle: the `alarm` and `alarms/active` topics.
    sim.apply(lambda m, t: m.set_condition("supply_low", True, now_ms=t))
    await _until(
        lambda: (
            any(t.endswith("/alarms/active") for t, _ in course.messages)
            and any(t.endswith("/telemetry") and b"supply_low" in b for t, b in course.messages)
        ),
        10,
        "the alarm messages and a telemetry sample with the fault",
    )


async def _remote_start_refused(broker: MosquittoBroker, course: Course) -> None:
    """A signed `session.request_start` from the ward station while a session is open:
    its refusal is published on `command/reply` (the refusal's reasons, blinded)."""
    payload = sign_command(
        key=WARD_STATION_KEY,
        sender_id="ward-3-station",
        device_id=DEVICE_ID,
        counter=1,
        command=CommandName.SESSION_REQUEST_START,
        body=RequestStartBody(),
        issued_at_ms=int(time.time() * 1000),
        validity_s=30,
    )
    async with mqtt_client(_monitor_settings(broker), client_id="ward-station") as client:
        await client.publish(command_topic(ward=WARD, bed=BED), payload, qos=1)
    await _until(
        lambda: any(t.endswith("/command/reply") and b'"refused"' in b for t, b in course.messages),
        10,
        "the refusal of the remote start request",
    )


async def _wait_then_start(config: NebuliserConfig, *, first_at: float) -> dict[str, Any]:
    """The interval is measured from the previous start: wait it out on the clock."""
    loop = asyncio.get_running_loop()
    until = first_at + MIN_INTERVAL_S + 0.3
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


async def _course_in(tmp_path: Path, arm: Arm, keep_as: str, *, breath_gated: bool) -> Course:
    """Run in the same directory every time (paths are in log lines), then keep it."""
    course = await run_course(tmp_path / "bed", arm, breath_gated=breath_gated)
    (tmp_path / "bed").rename(tmp_path / keep_as)
    return course


@pytest.mark.parametrize("breath_gated", [False, True], ids=["continuous", "breath_gated"])
async def test_blinded_active_and_placebo_courses_are_indistinguishable(
    tmp_path: Path, breath_gated: bool
) -> None:
    active = await _course_in(tmp_path, ACTIVE, "course-1", breath_gated=breath_gated)
    placebo = await _course_in(tmp_path, PLACEBO, "course-2", breath_gated=breath_gated)
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
