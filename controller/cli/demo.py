"""`nebuliser demo`: simulated heads, controllers with the pilot protocol, a private
Mosquitto and a ward view: one full session per bed with a live progress line read
from MQTT, a dose-limit refusal, an injected fault whose alarm the ward station
acknowledges over MQTT, and a summary that counts every published message and gap.

Everything runs in this process on real ptys, a private broker on a free loopback
port and temporary data directories; the heads are fast simulated ones
(`--nominal-ul-min`, default 6000 µL/min) so the 3 mL pilot dose takes about 30 s
instead of 7.5 minutes. Without the `mosquitto` binary the demo says how to install
it and runs without ward telemetry.

On a terminal the story, each bed's progress and the ward table form one live view
(`_demo_view.py`); the controllers' log lines go to a file whose path is printed.
The demo exits 1, and says why, when a pilot session did not deliver its volume,
when the second dose was not refused, or when telemetry had gaps.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from controller.benchconfig import BenchPrescription, bench_mqtt_section, write_bench_config
from controller.config import NebuliserConfig
from controller.control import ControlClient, ControlUnavailableError
from controller.exitcodes import ExitCode
from controller.logging import configure_logging
from controller.service import run_service
from controller.telemetry import (
    MosquittoBroker,
    MosquittoMissingError,
    MqttSettings,
    WardModel,
    WardMonitor,
)
from simulators.mn1 import BreathingModel, DeviceModel, RunningSimulator, run_pty_simulator

from ._bench_station import BenchStation
from ._demo_station import demo_station, linger
from ._demo_view import BedProgress, DemoView
from .monitor import render_ward

__all__ = ["register"]

_POLL_S = 0.2
_WARD = "demo-ward"
_ROOT = "nebuliser/v1"
_MAX_BEDS = 8
#: Breathing patterns of the demo patients, bed by bed (docs/simulator.md).
_DEMO_PATTERNS = ("adult", "severe", "iso27427", "slow-deep")
_SESSION_UL = 3000
# A session "reached its volume" at ≥ 95 % of the cap: the host stops ahead of the
# cap by flow × stop latency (≤ 100 µL at the fastest demo head, 30000 µL/min).
_REACHED_FRACTION = 0.95
#: The ward station's signing key for this run (alarm acks are signed commands).
_STATION = BenchStation()


@dataclass(frozen=True, kw_only=True)
class _Bed:
    """One simulated bed: its head and its controller's configuration."""

    number: int
    sim: RunningSimulator
    config: NebuliserConfig

    @property
    def name(self) -> str:
        return f"bed-{self.number:02d}"

    @property
    def device_id(self) -> str:
        return f"neb-demo-{self.number:02d}"


def _mqtt_table(broker: MosquittoBroker | None, bed: str) -> str:
    if broker is None:
        return ""
    return bench_mqtt_section(
        host=broker.host,
        port=broker.port,
        client_id=f"ctl-{bed}",
        keepalive_s=5,
        telemetry_hz=2,
        reconnect_initial_s=0.1,
        reconnect_max_s=1.0,
    )


def _demo_config(
    directory: Path, port: str, *, number: int, broker: MosquittoBroker | None
) -> NebuliserConfig:
    """The pilot protocol (2.0×10⁸ vesicles in 3 mL, once daily, 5 days from today)."""
    bed = f"bed-{number:02d}"
    _, config = write_bench_config(
        directory,
        port=port,
        file_name="demo.toml",
        prescription=BenchPrescription(
            subject_id=f"PILOT-{number:03d}",
            lot_id="LOT-2026-0042",
            session_ul=_SESSION_UL,
            min_interval_s=86400,
            rolling_24h_max_sessions=1,
            course_max_sessions=5,
            course_max_dose=1.0e9,
            course_first_day=0,
            course_days=5,
            max_session_duration_s=1200,
            fill_ul=_SESSION_UL,  # the pilot's form: 3 mL in the cup, nebulised to dryness
        ),
        device=f'device_id = "neb-demo-{number:02d}"\nward = "{_WARD}"\nbed = "{bed}"',
        session="confirm_timeout_s = 30",
        security=_STATION.security_toml(),
        extra=_mqtt_table(broker, bed),
    )
    return config


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


async def _start(bed: _Bed, view: DemoView) -> dict[str, Any]:
    async with ControlClient(path=bed.config.control_socket) as client:
        await client.send("session.start")
        message = await client.receive()
        if message.get("event") == "awaiting_confirm":
            view.say(
                f"  {bed.name}: start {message['cap_ul']} µL requested; "
                "pressing CONFIRM on the head…"
            )
            bed.sim.apply(lambda model, now: model.press_confirm_button(now_ms=now))
            message = await client.receive()
        return message


@contextlib.asynccontextmanager
async def _private_broker(
    directory: Path, view: DemoView, *, wanted: bool
) -> AsyncIterator[MosquittoBroker | None]:
    """A private Mosquitto on a free loopback port, or None (not wanted / not installed)."""
    if not wanted:
        yield None
        return
    workdir = directory / "mosquitto"
    workdir.mkdir()
    try:
        broker = MosquittoBroker(workdir=workdir)
    except MosquittoMissingError as exc:
        view.say(f"note: {exc}.\n      The demo runs without ward telemetry (MQTT).")
        yield None
        return
    broker.start()
    try:
        view.say(f"private MQTT broker (Mosquitto) on {broker.url}")
        yield broker
    finally:
        broker.stop()


@contextlib.asynccontextmanager
async def _ward_monitor(broker: MosquittoBroker | None) -> AsyncIterator[WardMonitor | None]:
    """The ward station: a monitor subscribed to the demo ward (None without MQTT)."""
    if broker is None:
        yield None
        return
    settings = MqttSettings(
        host=broker.host,
        port=broker.port,
        client_id="demo-station",
        reconnect_initial_s=0.1,
        reconnect_max_s=1.0,
    )
    monitor = WardMonitor(
        settings=settings, model=WardModel(root_topic=_ROOT), sender="ward-station", ward=_WARD
    )
    async with asyncio.TaskGroup() as group:
        group.create_task(monitor.run())
        await asyncio.wait_for(monitor.connected.wait(), 10)
        try:
            yield monitor
        finally:
            monitor.request_stop()


async def _run_demo(args: argparse.Namespace, view: DemoView) -> int:
    count = args.beds
    with tempfile.TemporaryDirectory(prefix="nebuliser-demo-") as tmp:
        root = Path(tmp)
        async with (
            _private_broker(root, view, wanted=not args.no_mqtt) as broker,
            _ward_monitor(broker) as monitor,
            demo_station(broker, wanted=args.station, ward=_WARD) as station_url,
            contextlib.AsyncExitStack() as stack,
        ):
            beds = []
            for number in range(1, count + 1):
                pattern = _DEMO_PATTERNS[(number - 1) % len(_DEMO_PATTERNS)]
                model = DeviceModel(
                    nominal_ul_min=args.nominal_ul_min,
                    fill_ul=args.fill_ul,
                    serial=f"SIM-DEMO-{number:02d}",
                    seed=number,
                    # An addendum-1.1 head senses breaths (the ward shows rate and share);
                    # the pilot's delivery stays continuous.
                    breathing=BreathingModel(pattern=pattern, seed=number)
                    if args.icd == "1.1"
                    else None,
                )
                sim = await stack.enter_async_context(run_pty_simulator(model))
                config = _demo_config(
                    root / f"bed-{number:02d}", sim.device_path, number=number, broker=broker
                )
                beds.append(_Bed(number=number, sim=sim, config=config))
                view.say(
                    f"{_WARD}/bed-{number:02d}: simulated MN-1 head on {sim.device_path} "
                    f"({args.nominal_ul_min} µL/min, {args.fill_ul} µL in the cup, ICD {args.icd}"
                    + (f", patient breathing '{pattern}')" if args.icd == "1.1" else ")")
                )
            stop = asyncio.Event()
            async with asyncio.TaskGroup() as group:
                services = [
                    group.create_task(run_service(bed.config, stop_requested=stop)) for bed in beds
                ]
                try:
                    for bed in beds:
                        await _wait_ready(bed.config)
                    code = await _scenario(beds, monitor, view)
                    if broker is not None:
                        await linger(station_url)
                finally:
                    stop.set()
                for service in services:
                    await service
            if monitor is not None:
                await asyncio.sleep(0.5)  # the last messages and "offline (shutdown)"
                code = _telemetry_summary(beds, monitor, view) or code
        return code


async def _run_sessions(
    beds: list[_Bed], monitor: WardMonitor | None, view: DemoView
) -> list[dict[str, Any]]:
    replies = await asyncio.gather(*(_start(bed, view) for bed in beds))
    for bed, reply in zip(beds, replies, strict=True):
        if not reply.get("started"):
            raise RuntimeError(f"{bed.name}: not started: {reply.get('reasons')}")
    ended: dict[int, dict[str, Any]] = {}
    while len(ended) < len(beds):
        progress = []
        for bed in beds:
            status = await _status(bed.config)
            if status.get("session") is None and status.get("last_session"):
                ended.setdefault(bed.number, status["last_session"])
            progress.append(_progress(bed, status, monitor))
        view.show_progress(progress)
        if monitor is not None and view.is_live:
            view.show_ward(_ward_table(monitor))
        await asyncio.sleep(_POLL_S)
    return [ended[bed.number] for bed in beds]


def _progress(bed: _Bed, status: dict[str, Any], monitor: WardMonitor | None) -> BedProgress:
    """One bed's progress, as the ward station sees it over MQTT when there is one."""
    delivered = cap = 0
    rows = monitor.model.rows(now_s=time.monotonic()) if monitor is not None else []
    row = next((r for r in rows if r.bed == bed.name), None)
    if status.get("session") is None and status.get("last_session"):
        delivered = cap = status["last_session"]["delivered_ul"]
        cap = status["last_session"].get("cap_ul", cap)
    elif row is not None and row.cap_ul:
        delivered, cap = row.delivered_ul or 0, row.cap_ul
    elif status.get("session"):
        delivered, cap = status["session"]["delivered_ul"], status["session"]["cap_ul"]
    return BedProgress(
        bed=bed.name, delivered_ul=delivered, cap_ul=cap, state=str(status.get("state", "?"))
    )


def _shortfalls(beds: list[_Bed], endings: list[dict[str, Any]]) -> list[str]:
    """Why each pilot session that did not deliver its volume fell short."""
    reasons = []
    for bed, last in zip(beds, endings, strict=True):
        cap_ul = int(last.get("cap_ul") or _SESSION_UL)
        if last["delivered_ul"] < cap_ul * _REACHED_FRACTION:
            reasons.append(
                f"{bed.name} delivered {last['delivered_ul']} of {cap_ul} µL "
                f"(expected at least {int(cap_ul * _REACHED_FRACTION)}): stopped with "
                f"device reason {last['device_reason']}, host reason {last['host_reason']}"
            )
    return reasons


async def _scenario(beds: list[_Bed], monitor: WardMonitor | None, view: DemoView) -> int:
    first = beds[0]
    view.say(f"1. pilot session on {len(beds)} bed(s): 2.0×10⁸ vesicles in {_SESSION_UL} µL each")
    try:
        endings = await _run_sessions(beds, monitor, view)
    except RuntimeError as exc:
        view.say(f"  {exc}")
        return ExitCode.REFUSED
    for bed, last in zip(beds, endings, strict=True):
        view.say(
            f"  {bed.name} ended: {last['delivered_ul']} µL = {last['dose']:.3g} "
            f"{last['dose_unit']}, device reason {last['device_reason']}, "
            f"host reason {last['host_reason']}"
        )
    view.say(f"2. a second dose the same day on {first.name} (the dose engine must refuse it)")
    refused = await _start(first, view)
    for reason in refused.get("reasons", []):
        view.say(f"  refused: {reason}")
    view.say(f"3. injected fault on {first.name}: nebuliser head disconnected")
    first.sim.apply(lambda model, now: model.set_condition("head_disconnected", True, now_ms=now))
    await asyncio.sleep(0.5)
    alarms = (await _status(first.config))["alarms"]
    for alarm in alarms:
        view.say(f"  ALARM {alarm['priority'].upper()} {alarm['code']}: {alarm['message']}")
    if monitor is not None and alarms:
        await _acknowledge_from_ward(monitor, first, alarms[0]["code"], view)
        view.show_ward(_ward_table(monitor), final=True)
    last = endings[0]
    truth = first.sim.truth()
    view.say(
        f"summary: delivered {last['delivered_ul']} µL (device truth "
        f"{truth.total_delivered_ul:.0f} µL), dose {last['dose']:.3g} vesicles, "
        f"second dose refused: {not refused.get('started')}"
    )
    failures = _shortfalls(beds, endings)
    if any(e["delivered_ul"] > e.get("cap_ul", _SESSION_UL) for e in endings):
        failures.append("a session delivered more than its cap")
    if refused.get("started"):
        failures.append("the second dose the same day was not refused")
    for failure in failures:
        view.say(f"DEMO FAILED: {failure}")
    return ExitCode.REFUSED if failures else ExitCode.OK


async def _acknowledge_from_ward(
    monitor: WardMonitor, bed: _Bed, code: str, view: DemoView
) -> None:
    """The ward station acknowledges over MQTT; the controller applies it and says so."""
    view.say(f"  the ward station acknowledges {code} over MQTT (signed, as nurse.demo)…")
    assert bed.config.mqtt is not None
    await _STATION.acknowledge(
        bed.config.mqtt,
        ward=_WARD,
        bed=bed.name,
        device_id=bed.device_id,
        alarm_code=code,
        person="nurse.demo",
    )
    for _ in range(50):
        row = next(
            (r for r in monitor.model.rows(now_s=time.monotonic()) if r.bed == bed.name), None
        )
        acked = [a for a in (row.alarms if row else []) if a.alarm_code == code and a.acknowledged]
        if acked:
            view.say(f"  {bed.name} confirms: {code} acknowledged by {acked[0].acknowledged_by}")
            return
        await asyncio.sleep(0.1)
    view.say(f"  {bed.name} did not confirm the acknowledgement within 5 s")


def _ward_table(monitor: WardMonitor) -> Any:
    """The ward as the ward station sees it (the terminal monitor's table)."""
    rows = monitor.model.rows(now_s=time.monotonic())
    return render_ward(rows, title=f"ward {_WARD} (as the ward station sees it)")


def _telemetry_summary(beds: list[_Bed], monitor: WardMonitor, view: DemoView) -> int:
    """Counted by the subscriber: messages per bed, gaps, duplicates, offline at the end."""
    view.say("ward telemetry (counted by the ward station's subscriber):")
    failed = 0
    rows = {r.bed: r for r in monitor.model.rows(now_s=time.monotonic())}
    for bed in beds:
        tracker = monitor.model.tracker(bed.device_id)
        gaps = len(tracker.missing_since_s) + tracker.unrecoverable
        row = rows.get(bed.name)
        online = "offline" if row is not None and row.online is False else "online?"
        view.say(
            f"  {bed.name}: {len(tracker.seen)} messages published and received, "
            f"gaps {gaps}, duplicates dropped {tracker.duplicates}, now {online}"
        )
        if gaps != 0 or not tracker.seen:
            failed = 1
            view.say(f"DEMO FAILED: {bed.name}'s telemetry had gaps or never arrived")
    return ExitCode.REFUSED if failed else ExitCode.OK


def _log_file(args: argparse.Namespace) -> tuple[Path, TextIO]:
    if args.log_file is not None:
        path = Path(args.log_file)
    else:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        path = Path(tempfile.gettempdir()) / f"nebuliser-demo-{stamp}.log"
    return path, path.open("a", encoding="utf-8")


def _demo(args: argparse.Namespace) -> int:
    if not 1 <= args.beds <= _MAX_BEDS:
        print(f"nebuliser demo: --beds must be 1 to {_MAX_BEDS}, got {args.beds}")
        return ExitCode.USAGE
    path, log = _log_file(args)
    # The controllers' log lines go to the file, never between the story's lines.
    configure_logging(level=args.log_level, stream=log, json=True)
    try:
        with DemoView() as view:
            view.say(f"controller logs: {path}")
            code = asyncio.run(_run_demo(args, view))
            view.say(f"{'demo passed' if code == ExitCode.OK else 'demo FAILED'}; logs: {path}")
            return code
    finally:
        configure_logging(level=args.log_level)  # back to stderr before the file closes
        log.close()


def register(subparsers: Any) -> None:
    """Add `demo`."""
    parser = subparsers.add_parser(
        "demo",
        help="one-command demo: simulated heads + controllers + a private MQTT broker "
        "and ward view + a full pilot session",
    )
    parser.add_argument(
        "--nominal-ul-min",
        type=int,
        default=6000,
        help="simulated head output (µL/min); default 6000 = accelerated",
    )
    parser.add_argument(
        "--beds",
        type=int,
        default=1,
        help=f"simulated beds on the demo ward (1-{_MAX_BEDS}; each its own head, "
        "controller and data directory)",
    )
    parser.add_argument(
        "--fill-ul",
        type=int,
        default=3000,
        help="liquid in each simulated head's cup (µL); the pilot fills 3000 µL and "
        "nebulises to dryness (the mesh leaves 100 µL); well below that the cup runs dry "
        "early and the demo fails, saying why",
    )
    parser.add_argument(
        "--icd",
        choices=("1.0", "1.1"),
        default="1.1",
        help="simulated heads' ICD version: 1.1 (default) heads sense the patient's breathing "
        "and the ward shows it; 1.0 heads have no breath sensor",
    )
    parser.add_argument(
        "--log-file",
        metavar="FILE",
        help="where the controllers' log lines go (default: a new file in the "
        "temporary directory; its path is printed)",
    )
    parser.add_argument(
        "--no-mqtt",
        action="store_true",
        help="skip the private broker and the ward view (no 'mosquitto' needed)",
    )
    parser.add_argument(
        "--station",
        action="store_true",
        help="also serve the ward station web page (prints its URL; the ward stays up until Enter)",
    )
    parser.set_defaults(handler=_demo)
