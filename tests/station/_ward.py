"""A real ward for the station tests: a private Mosquitto, simulated MN-1 heads on
real ptys, a controller (the real service) per bed with the station's public key
as a `ward_station` sender, and the station itself, in this process."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from controller.benchconfig import BenchPrescription, bench_mqtt_section, write_bench_config
from controller.config import NebuliserConfig
from controller.control import ControlClient, ControlUnavailableError
from controller.security import generate_key_files, load_public_key_file, public_key_to_text
from controller.service import run_service
from controller.station import Station, StationOptions, UsersFile
from controller.telemetry import MqttSettings
from controller.telemetry._ack_signer import AckSigningKey
from simulators.mn1 import BreathingModel, DeviceModel, RunningSimulator, run_pty_simulator
from tests.support.mosquitto import MosquittoBroker

__all__ = [
    "NURSE",
    "PASSWORD",
    "SENDER",
    "WARD",
    "Ward",
    "WardBed",
    "running_ward",
    "start_session",
]

WARD = "3west"
SENDER = "station-3west"
NURSE = "j.smith"
PASSWORD = "correct horse battery"


@dataclass(frozen=True, kw_only=True)
class WardBed:
    """One bed: its simulated head, its controller's configuration, and the event
    that shuts its controller down (cleanly: it publishes itself offline)."""

    name: str
    sim: RunningSimulator
    config: NebuliserConfig
    stop: asyncio.Event


@dataclass(frozen=True, kw_only=True)
class Ward:
    """The running ward and its station."""

    broker: MosquittoBroker
    beds: list[WardBed]
    station: Station


def _security(public_key: str) -> str:
    return f"""[security]
require_signed_prescriptions = false  # bench: the test prescription is inline
[[security.senders]]
id = "{SENDER}"
public_key = "{public_key}"
role = "ward_station"
"""


async def _wait_ready(config: NebuliserConfig) -> None:
    async with asyncio.timeout(30):
        while True:
            try:
                async with ControlClient(path=config.control_socket) as client:
                    status = await client.call("session.status")
                if status.get("link_up") and status.get("device"):
                    return
            except ControlUnavailableError:
                pass
            await asyncio.sleep(0.05)


async def start_session(bed: WardBed) -> None:
    """Start a dose at the bedside: request, then the head's CONFIRM button."""
    async with ControlClient(path=bed.config.control_socket) as client:
        await client.send("session.start")
        message = await client.receive()
        if message.get("event") == "awaiting_confirm":
            bed.sim.apply(lambda model, now: model.press_confirm_button(now_ms=now))
            message = await client.receive()
    assert message.get("started"), message


@contextlib.asynccontextmanager
async def running_ward(
    tmp_path: Path,
    broker: MosquittoBroker,
    *,
    beds: int = 3,
    breathing_beds: frozenset[int] = frozenset(),
    blinded_beds: frozenset[int] = frozenset(),
) -> AsyncIterator[Ward]:
    """`beds` controllers on simulated heads and a signing station on loopback.

    Beds numbered in `breathing_beds` have a breath-aware (ICD 1.1) head with an
    adult breathing pattern; those in `blinded_beds` a blinded prescription."""
    private_key, public_key = generate_key_files(out_dir=tmp_path, name=SENDER)
    public_text = public_key_to_text(load_public_key_file(public_key))
    users = UsersFile.load(tmp_path / "station-users")
    users.set_password(NURSE, PASSWORD)
    options = StationOptions(
        mqtt=MqttSettings(
            host=broker.host,
            port=broker.port,
            client_id="station-test",
            reconnect_initial_s=0.1,
            reconnect_max_s=1.0,
        ),
        listen_host="127.0.0.1",
        listen_port=0,
        ward=WARD,
        users_file=users.path,
        signer=AckSigningKey(
            key_file=private_key, sender_id=SENDER, counter_file=tmp_path / "counter"
        ),
        title="Ward 3west",
        push_interval_s=0.25,
    )
    station = Station(options)
    async with contextlib.AsyncExitStack() as stack:
        ward_beds = []
        for number in range(1, beds + 1):
            name = f"bed-{number:02d}"
            model = DeviceModel(
                nominal_ul_min=600,
                fill_ul=3000,
                serial=f"SIM-{number:02d}",
                seed=number,
                breathing=BreathingModel(pattern="adult", seed=number)
                if number in breathing_beds
                else None,
            )
            sim = await stack.enter_async_context(run_pty_simulator(model))
            directory = tmp_path / name
            directory.mkdir()
            _, config = write_bench_config(
                directory,
                port=sim.device_path,
                prescription=BenchPrescription(
                    subject_id=f"WARD-{number:03d}",
                    session_ul=200,
                    blinded=number in blinded_beds,
                ),
                device=f'device_id = "neb-{number:02d}"\nward = "{WARD}"\nbed = "{name}"',
                session="confirm_timeout_s = 10",
                security=_security(public_text),
                extra=bench_mqtt_section(
                    host=broker.host, port=broker.port, client_id=f"ctl-{name}", telemetry_hz=1
                ),
            )
            ward_beds.append(WardBed(name=name, sim=sim, config=config, stop=asyncio.Event()))
        async with asyncio.TaskGroup() as group:
            services = [
                group.create_task(run_service(bed.config, stop_requested=bed.stop))
                for bed in ward_beds
            ]
            serving = group.create_task(station.run())
            try:
                await asyncio.wait_for(station.started.wait(), 30)
                for bed in ward_beds:
                    await _wait_ready(bed.config)
                yield Ward(broker=broker, beds=ward_beds, station=station)
            finally:
                for bed in ward_beds:
                    bed.stop.set()
                station.request_stop()
            for task in (*services, serving):
                await task
