"""`nebuliser monitor`: the ward monitor in a terminal (or as JSON lines).

    nebuliser monitor --broker mqtt://ward-broker:1883 --ward W7
    nebuliser monitor --broker mqtt://127.0.0.1:1883 --json | jq .

Keys in the live view: `a` acknowledges the most urgent unacknowledged alarm of
the ward (over MQTT; the controller applies it and every monitor sees it), `q` quits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import sys
import termios
import time
import tty
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from controller.config import ConfigError, load_config
from controller.telemetry import (
    AckRequest,
    BedRow,
    MqttSettings,
    TlsSettings,
    WardModel,
    WardMonitor,
)

__all__ = [
    "add_broker_options",
    "most_urgent_unacknowledged",
    "mqtt_settings",
    "parse_broker_url",
    "register",
    "render_ward",
]

EXIT_USAGE = 2


def register(subparsers: Any) -> None:
    """Add the `monitor` subcommand."""
    parser = subparsers.add_parser(
        "monitor",
        help="watch a ward's beds live over MQTT",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--broker",
        help="mqtt://HOST:PORT or mqtts://HOST:PORT (default: the [mqtt] section of --config)",
    )
    parser.add_argument("--ward", help="only this ward (default: every ward under the root)")
    parser.add_argument("--json", action="store_true", help="one JSON object per event per line")
    parser.add_argument("--root", default=None, help="topic root (default nebuliser/v1)")
    add_broker_options(parser)
    parser.add_argument(
        "--sender",
        default=None,
        help="your name as recorded with alarm acknowledgements (default: monitor-<host>)",
    )
    parser.add_argument(
        "--duration-s", type=float, default=None, help="exit after this many seconds"
    )
    parser.add_argument("--config", type=Path, help="controller configuration file (TOML)")
    parser.add_argument("--data-dir", type=Path, help="accepted for symmetry; not used")
    parser.set_defaults(handler=handler)


def parse_broker_url(url: str) -> tuple[str, int, bool]:
    """`mqtt://host:port` -> (host, port, tls). Raises ValueError naming the fix."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError(
            f"--broker {url!r} is not a broker URL; use mqtt://HOST:PORT or mqtts://HOST:PORT"
        )
    tls = parts.scheme == "mqtts"
    return parts.hostname, parts.port or (8883 if tls else 1883), tls


def add_broker_options(parser: argparse.ArgumentParser) -> None:
    """--ca, --mqtt-cert/--mqtt-key and --username (shared with `nebuliser station`)."""
    parser.add_argument("--ca", type=Path, help="CA certificate (PEM) for mqtts://")
    parser.add_argument(
        "--mqtt-cert", type=Path, help="client certificate (PEM) for brokers that require mTLS"
    )
    parser.add_argument("--mqtt-key", type=Path, help="key of --mqtt-cert (PEM)")
    parser.add_argument(
        "--username", help="broker user name; the password is read from NEBULISER_MQTT_PASSWORD"
    )


def mqtt_settings(args: argparse.Namespace, *, client_id: str) -> MqttSettings:
    """The broker settings from --broker/--config and the options of `add_broker_options`."""
    base = MqttSettings()
    if args.config is not None:
        configured = load_config(args.config).mqtt
        base = configured if configured is not None else base
    update: dict[str, Any] = {"client_id": client_id}
    if args.broker:
        host, port, tls = parse_broker_url(args.broker)
        update |= {"host": host, "port": port}
        if tls:
            if args.ca is None and base.tls is None:
                raise ValueError("mqtts:// needs --ca FILE (the CA that signed the broker)")
            if args.ca is not None:
                update["tls"] = TlsSettings(
                    ca_file=args.ca, cert_file=args.mqtt_cert, key_file=args.mqtt_key
                )
    if args.root:
        update["root_topic"] = args.root
    if args.username:
        update["username"] = args.username
        update["password"] = os.environ.get("NEBULISER_MQTT_PASSWORD")
    return MqttSettings.model_validate(base.model_dump() | update)


def _default_sender() -> str:
    host = "".join(c if c.isalnum() or c in "-_." else "-" for c in socket.gethostname())
    return f"monitor-{host}"[:64]


def handler(args: argparse.Namespace) -> int:
    """Run the monitor until interrupted (or `--duration-s`)."""
    try:
        settings = mqtt_settings(args, client_id="monitor")
        model = WardModel(root_topic=settings.root_topic)
        sender = args.sender or _default_sender()
        if args.json:
            return asyncio.run(_run_json(settings, model, sender, args.ward, args.duration_s))
        return asyncio.run(_run_live(settings, model, sender, args.ward, args.duration_s))
    except (ValueError, ConfigError) as exc:
        print(f"nebuliser monitor: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 0


async def _run_json(
    settings: MqttSettings,
    model: WardModel,
    sender: str,
    ward: str | None,
    duration_s: float | None,
) -> int:
    def emit(events: list[dict[str, Any]]) -> None:
        for event in events:
            sys.stdout.write(json.dumps(event, separators=(",", ":")) + "\n")
        sys.stdout.flush()

    monitor = WardMonitor(settings=settings, model=model, sender=sender, ward=ward, on_events=emit)
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(monitor.run())
        if duration_s is not None:
            await asyncio.sleep(duration_s)
            monitor.request_stop()
    return 0


def most_urgent_unacknowledged(rows: Sequence[BedRow]) -> AckRequest | None:
    """The alarm `a` acknowledges: highest priority, then oldest, across the ward."""
    rank = {"high": 0, "medium": 1, "low": 2}
    candidates = [
        (rank[alarm.priority], alarm.raised_utc, row, alarm)
        for row in rows
        if row.device_id is not None
        for alarm in row.alarms
        if not alarm.acknowledged
    ]
    if not candidates:
        return None
    _, _, row, alarm = min(candidates, key=lambda c: (c[0], c[1]))
    assert row.device_id is not None
    return AckRequest(
        ward=row.ward, bed=row.bed, device_id=row.device_id, alarm_code=alarm.alarm_code
    )


def _volume(ul: int | None) -> str:
    return "-" if ul is None else f"{ul / 1000:.2f} mL"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


def render_ward(rows: Sequence[BedRow], *, title: str, status: str = "") -> Group:
    """The table a nurse sees: one row per bed (pure: rows in, renderable out)."""
    table = Table(title=title, expand=True)
    for column in (
        "Bed",
        "State",
        "Progress",
        "Delivered / cap",
        "Flow",
        "Reservoir",
        "Left",
        "Link",
        "Alarms",
        "Seq",
    ):
        table.add_column(column)
    for row in rows:
        if row.online is False:
            state = Text("OFFLINE", style="bold white on red")
        elif row.stale:
            state = Text("NO DATA", style="bold black on yellow")
        else:
            state = Text(row.session_state or "-")
        if row.cap_ul:
            progress: Any = ProgressBar(
                total=row.cap_ul, completed=min(row.delivered_ul or 0, row.cap_ul), width=14
            )
        else:
            progress = Text("-")
        dose = Text(f"{_volume(row.delivered_ul)} / {_volume(row.cap_ul)}")
        alarms = Text()
        for alarm in row.alarms:
            style = {"high": "bold white on red", "medium": "black on yellow", "low": "cyan"}[
                alarm.priority
            ]
            label = alarm.alarm_code + (" (ack)" if alarm.acknowledged else "")
            alarms.append(label + " ", style="dim" if alarm.acknowledged else style)
        seq_text = Text(f"gaps {row.gaps} dup {row.duplicates}")
        if row.unrecoverable:
            seq_text.append(f" lost {row.unrecoverable}", style="red")
        table.add_row(
            f"{row.ward}/{row.bed}",
            state,
            progress,
            dose,
            "-" if row.flow_ul_min is None else f"{row.flow_ul_min} uL/min",
            _volume(row.reservoir_ul),
            _duration(row.time_left_s),
            "-" if row.link_quality_pct is None else f"{row.link_quality_pct}%",
            alarms,
            seq_text,
        )
    return Group(table, Text(status, style="dim"))


@contextlib.contextmanager
def _cbreak(stream: TextIO) -> Iterator[bool]:
    if not stream.isatty():
        yield False
        return
    fd = stream.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)
    try:
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def _run_live(
    settings: MqttSettings,
    model: WardModel,
    sender: str,
    ward: str | None,
    duration_s: float | None,
) -> int:
    monitor = WardMonitor(settings=settings, model=model, sender=sender, ward=ward)
    keys: asyncio.Queue[str] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    status = f"broker {settings.host}:{settings.port}   a: acknowledge top alarm   q: quit"
    deadline = None if duration_s is None else time.monotonic() + duration_s
    with (
        _cbreak(sys.stdin) as interactive,
        Live(
            render_ward([], title="Ward monitor"), console=Console(), refresh_per_second=4
        ) as live,
    ):
        if interactive:
            loop.add_reader(sys.stdin.fileno(), lambda: keys.put_nowait(sys.stdin.read(1)))
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(monitor.run())
                while deadline is None or time.monotonic() < deadline:
                    with contextlib.suppress(TimeoutError):
                        key = await asyncio.wait_for(keys.get(), timeout=0.25)
                        if key == "q":
                            break
                        if key == "a":
                            request = most_urgent_unacknowledged(model.rows(now_s=time.monotonic()))
                            if request is not None:
                                monitor.acknowledge(request)
                                status = f"sent ack for {request.alarm_code} at {request.bed}"
                    connected = "connected" if monitor.connected.is_set() else "CONNECTING"
                    live.update(
                        render_ward(
                            model.rows(now_s=time.monotonic()),
                            title=f"Ward {ward or '*'} - {connected}",
                            status=status,
                        )
                    )
                monitor.request_stop()
        finally:
            if interactive:
                loop.remove_reader(sys.stdin.fileno())
    return 0
