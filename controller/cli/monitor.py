"""`nebuliser monitor`: the ward monitor in a terminal (or as JSON lines).

    nebuliser monitor --broker mqtt://ward-broker:1883 --ward W7
    nebuliser monitor --broker mqtt://127.0.0.1:1883 --json | jq .

The live view lists the beds most urgent first, one terminal page at a time
(n / space: next page, p / b: previous), with each alarm's message and the age
of every bed's data. `a` lists the unacknowledged alarms and asks which one to
acknowledge (1-9); the acknowledgement is a signed `alarm.ack` (needs --key,
--sender and --counter-file, the same sender as a ward station). `q` quits.
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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console, Group
from rich.live import Live

from controller.brokerurl import add_broker_options, broker_from_args
from controller.config import ConfigError, load_config
from controller.security import KeyFileError
from controller.telemetry import (
    AckRequest,
    AckSigner,
    BedRow,
    MqttSettings,
    TlsSettings,
    WardModel,
    WardMonitor,
)
from controller.telemetry._ack_signer import AckSigningKey

from ._monitor_screen import AckChoice, Page, ack_choices, layout_page, render_rows

__all__ = [
    "RENDER_INTERVAL_S",
    "add_ward_broker_options",
    "mqtt_settings",
    "register",
    "render_ward",
    "run_live",
]

EXIT_USAGE = 2
#: The live view redraws at most this often, whatever the message rate.
RENDER_INTERVAL_S = 0.25


def register(subparsers: Any) -> None:
    """Add the `monitor` subcommand."""
    parser = subparsers.add_parser(
        "monitor",
        help="watch a ward's beds live over MQTT",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--ward", help="only this ward, or W1,W2 for several (default: every ward under the root)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per event per line")
    parser.add_argument("--root", default=None, help="topic root (default nebuliser/v1)")
    add_ward_broker_options(parser)
    parser.add_argument(
        "--sender",
        default=None,
        help="sender id: the signing key's id as configured on the beds (with --key), "
        "else a name for backfill requests (default: monitor-<host>)",
    )
    parser.add_argument("--key", type=Path, help="Ed25519 private key that signs acknowledgements")
    parser.add_argument("--counter-file", type=Path, help="file holding the sender's last counter")
    parser.add_argument(
        "--operator",
        help="your name, carried in signed acknowledgements (default: $USER)",
    )
    parser.add_argument(
        "--duration-s", type=float, default=None, help="exit after this many seconds"
    )
    parser.add_argument("--config", type=Path, help="controller configuration file (TOML)")
    parser.add_argument("--data-dir", type=Path, help="accepted for symmetry; not used")
    parser.set_defaults(handler=handler)


def add_ward_broker_options(parser: argparse.ArgumentParser) -> None:
    """--broker URL with --tls-ca/--tls-cert/--tls-key (the one convention, docs/cli.md)
    and --username (shared with `nebuliser station`)."""
    add_broker_options(parser)
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
    broker = broker_from_args(args)
    if broker is not None:
        update |= {"host": broker.host, "port": broker.port}
        if broker.tls is not None:
            if broker.tls.ca_file is None and base.tls is None:
                raise ValueError("mqtts:// needs --tls-ca FILE (the CA that signed the broker)")
            if broker.tls.ca_file is not None:
                update["tls"] = TlsSettings(
                    ca_file=broker.tls.ca_file,
                    cert_file=broker.tls.cert_file,
                    key_file=broker.tls.key_file,
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


def _signer(args: argparse.Namespace) -> AckSigner | None:
    """The signing key for `a`, or None (then `a` explains what it needs)."""
    if args.key is None:
        return None
    if args.sender is None or args.counter_file is None:
        raise ValueError("--key needs --sender (its id on the beds) and --counter-file")
    operator = args.operator or os.environ.get("USER") or None
    key = AckSigningKey(key_file=args.key, sender_id=args.sender, counter_file=args.counter_file)

    def sign(request: AckRequest) -> bytes:
        return key(replace(request, operator=request.operator or operator))

    return sign


def handler(args: argparse.Namespace) -> int:
    """Run the monitor until interrupted (or `--duration-s`)."""
    try:
        settings = mqtt_settings(args, client_id="monitor")
        model = WardModel(root_topic=settings.root_topic)
        sender = args.sender or _default_sender()
        if args.json:
            return asyncio.run(_run_json(settings, model, sender, args.ward, args.duration_s))
        signer = _signer(args)
        return asyncio.run(
            run_live(settings, model, sender, args.ward, args.duration_s, signer=signer)
        )
    except (ValueError, ConfigError, KeyFileError) as exc:
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


def render_ward(
    rows: Sequence[BedRow],
    *,
    title: str,
    status: str = "",
    now_s: float | None = None,
    width: int = 160,
) -> Group:
    """Every given row, most urgent first, for a console `width` wide (the demo's
    one-off picture of the ward; the live view pages instead)."""
    now = time.monotonic() if now_s is None else now_s
    page = layout_page(rows, height=len(rows) + 10, page=0)
    return render_rows(page.rows, now_s=now, width=width, title=title, status=status)


@contextlib.contextmanager
def _cbreak(stream: TextIO, *, enabled: bool = True) -> Iterator[bool]:
    if not enabled or not stream.isatty():
        yield False
        return
    fd = stream.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)
    try:
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


RenderHook = Callable[[list[BedRow], float], None]


def _read_keys(fd: int, keys: asyncio.Queue[str]) -> None:
    # Read the fd itself: sys.stdin.read(1) would pull several keys into Python's
    # buffer and leave all but the first unseen until the next key press.
    for key in os.read(fd, 64).decode(errors="ignore"):
        keys.put_nowait(key)


class _LiveView:
    """Key handling and paging state of the live view (the screen itself is pure:
    `controller.cli._monitor_screen`)."""

    def __init__(self, *, monitor: WardMonitor, can_sign: bool) -> None:
        self.monitor = monitor
        self.can_sign = can_sign
        self.page = 0
        self.choices: list[AckChoice] | None = None
        self.status = ""
        self.quit = False

    def key(self, key: str, rows: Sequence[BedRow]) -> None:
        """Apply one key press."""
        if self.choices is not None:
            chosen = next((c for c in self.choices if c.key == key), None)
            self.choices = None
            if chosen is not None:
                self.monitor.acknowledge(chosen.request)
                self.status = f"sent signed acknowledgement: {chosen.label[3:]}"
            else:
                self.status = "acknowledgement cancelled"
        elif key == "q":
            self.quit = True
        elif key in ("n", " ", "j"):
            self.page += 1
        elif key in ("p", "b", "k"):
            self.page = max(0, self.page - 1)
        elif key == "a":
            self.ask_which(rows)

    def ask_which(self, rows: Sequence[BedRow]) -> None:
        if not self.can_sign:
            self.status = "to acknowledge, start with --key --sender --counter-file (signed only)"
            return
        self.choices = ack_choices(rows)
        if not self.choices:
            self.status = "no unacknowledged alarm"
            self.choices = None

    def footer(self, page: Page, *, broker: str) -> str:
        """The status line: the question of `a`, or paging help and the last result."""
        if self.choices is not None:
            listed = "   ".join(c.label for c in self.choices)
            return f"acknowledge which? {listed}   (any other key: cancel)"
        keys = (
            f"page {page.number + 1}/{page.count} ({page.total_beds} beds)   "
            "n/p: page   a: acknowledge   q: quit"
        )
        return "   ".join(part for part in (self.status, keys, f"broker {broker}") if part)


async def run_live(
    settings: MqttSettings,
    model: WardModel,
    sender: str,
    ward: str | None,
    duration_s: float | None,
    *,
    signer: AckSigner | None = None,
    console: Console | None = None,
    render_interval_s: float = RENDER_INTERVAL_S,
    on_render: RenderHook | None = None,
    keyboard: bool = True,
) -> int:
    """The live view: renders the visible page at most every `render_interval_s`
    (never per message); `on_render(rows_drawn, done_at)` lets a benchmark time it
    (with `keyboard=False` it leaves the terminal's keyboard alone)."""
    console = console or Console()
    monitor = WardMonitor(settings=settings, model=model, sender=sender, ward=ward, signer=signer)
    view = _LiveView(monitor=monitor, can_sign=signer is not None)
    keys: asyncio.Queue[str] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    broker = f"{settings.host}:{settings.port}"
    deadline = None if duration_s is None else time.monotonic() + duration_s
    with (
        _cbreak(sys.stdin, enabled=keyboard) as interactive,
        Live(console=console, auto_refresh=False, screen=interactive) as live,
    ):
        if interactive:
            loop.add_reader(sys.stdin.fileno(), _read_keys, sys.stdin.fileno(), keys)
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(monitor.run())
                next_render = 0.0
                while not view.quit and (deadline is None or time.monotonic() < deadline):
                    with contextlib.suppress(TimeoutError):
                        wait_s = max(0.0, next_render - time.monotonic())
                        key = await asyncio.wait_for(keys.get(), timeout=wait_s)
                        view.key(key, model.rows(now_s=time.monotonic()))
                    if time.monotonic() < next_render and view.choices is None and not view.quit:
                        continue  # a key press redraws at the next tick, not at once
                    now_s = time.monotonic()
                    width, height = console.size
                    page = layout_page(model.rows(now_s=now_s), height=height, page=view.page)
                    view.page = page.number
                    connected = "connected" if monitor.connected.is_set() else "CONNECTING"
                    live.update(
                        render_rows(
                            page.rows,
                            now_s=now_s,
                            width=width,
                            title=f"Ward {ward or '*'} - {connected}",
                            status=view.footer(page, broker=broker),
                        ),
                        refresh=True,
                    )
                    if on_render is not None:
                        on_render(page.rows, time.time())
                    next_render = now_s + render_interval_s
                monitor.request_stop()
        finally:
            if interactive:
                loop.remove_reader(sys.stdin.fileno())
    return 0
