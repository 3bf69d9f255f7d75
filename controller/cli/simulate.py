"""`nebuliser simulate`: a simulated MN-1 device on a pty or TCP, and its control client.

nebuliser simulate --pty --link /tmp/mn1 --control /tmp/mn1.ctl
nebuliser simulate --pty --icd 1.1 --breathing severe --control /tmp/mn1.ctl
nebuliser simulate ctl --control /tmp/mn1.ctl fault head_disconnected
nebuliser simulate ctl --control /tmp/mn1.ctl apnoea 20
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Callable
from typing import Any

from simulators.mn1 import (
    DEFECTS,
    FAULT_NAMES,
    PATTERN_NAMES,
    BreathingModel,
    DeviceModel,
    SimulatorControlError,
    control_request_sync,
    run_simulator,
)

__all__ = ["register"]


def _fail(message: str, *, code: int = 2) -> int:
    print(f"nebuliser simulate: {message}", file=sys.stderr)
    return code


def _tcp_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:5331)")
    return host, int(port)


def _fw_version(text: str) -> tuple[int, int, int]:
    parts = text.split(".")
    if len(parts) != 3 or not all(p.isdigit() and int(p) <= 255 for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r} is not MAJOR.MINOR.PATCH with parts 0..255")
    return int(parts[0]), int(parts[1]), int(parts[2])


def register(subparsers: Any) -> None:
    """Add `simulate` (serve a device) and `simulate ctl` (control a running one)."""
    parser = subparsers.add_parser(
        "simulate",
        help="run a simulated MN-1 nebuliser head on a pty or TCP port",
        description=(
            "Serve a simulated MN-1 device in real time. With --pty the first line of "
            "stdout is the serial device path a host opens; with only --tcp it is HOST:PORT."
        ),
    )
    parser.add_argument("--pty", action="store_true", help="serve on a new pseudo-terminal")
    parser.add_argument("--link", metavar="PATH", help="also make a symlink to the pty here")
    parser.add_argument(
        "--tcp", metavar="HOST:PORT", type=_tcp_address, help="serve on TCP (socket:// URLs)"
    )
    parser.add_argument(
        "--control", metavar="PATH", help="Unix socket for fault injection (JSON lines)"
    )
    parser.add_argument("--serial", default="SIM-0001", help="IDENT serial (≤ 12 ASCII)")
    parser.add_argument("--nominal-ul-min", type=int, default=400, help="rate at 100 %% output")
    parser.add_argument("--fill-ul", type=int, default=3000, help="liquid in the cup at power-up")
    parser.add_argument("--capacity-ul", type=int, default=6000, help="cup capacity")
    parser.add_argument("--residual-ul", type=int, default=100, help="liquid the mesh cannot use")
    parser.add_argument("--seed", type=int, default=0, help="seed for output noise and link faults")
    parser.add_argument(
        "--fw-version", type=_fw_version, default=(1, 0, 0), help="IDENT firmware MAJOR.MINOR.PATCH"
    )
    parser.add_argument("--hw-rev", type=int, default=1, help="IDENT hardware revision")
    parser.add_argument(
        "--icd",
        choices=("1.0", "1.1"),
        default="1.0",
        help="1.0: a version-1 head (default); 1.1: a breath-aware head with a breathing patient",
    )
    parser.add_argument(
        "--breathing",
        choices=PATTERN_NAMES,
        default="iso27427",
        help="the patient's breathing pattern (--icd 1.1)",
    )
    parser.add_argument(
        "--trigger-ml-s", type=int, default=50, help="inspiratory trigger flow (--icd 1.1)"
    )
    parser.add_argument(
        "--detect-latency-ms", type=int, default=40, help="inspiration detection delay (--icd 1.1)"
    )
    parser.add_argument(
        "--no-breath-gating",
        action="store_true",
        help="a 1.1 head that senses breaths but NAKs START_GATED (UNSUPPORTED)",
    )
    parser.set_defaults(handler=_serve)
    actions = parser.add_subparsers(dest="simulate_action", metavar="ACTION")
    _register_ctl(actions)


def _register_ctl(actions: Any) -> None:
    ctl = actions.add_parser(
        "ctl",
        help="send a command to a running simulator's control socket",
        description="Inject faults into a running simulator and read its internal truth.",
    )
    ctl.add_argument("--control", metavar="PATH", required=True, help="the simulator's socket")
    commands = ctl.add_subparsers(dest="ctl_command", metavar="COMMAND", required=True)
    commands.add_parser("state", help="print the model's truth (JSON)")
    commands.add_parser("ping", help="check that the simulator answers")
    fault = commands.add_parser("fault", help="make a fault's cause present (or --clear it)")
    fault.add_argument("name", choices=FAULT_NAMES)
    fault.add_argument("--clear", action="store_true", help="the cause goes away")
    clog = commands.add_parser("clog", help="output drifts down while nebulising")
    clog.add_argument("drift_pct_per_min", type=float, help="%% of nominal lost per minute")
    button = commands.add_parser("button", help="press a button on the head")
    button.add_argument("name", choices=("stop", "confirm"))
    refill = commands.add_parser("refill", help="pour liquid into the cup")
    refill.add_argument("volume_ul", type=float, nargs="?", help="default: the power-up fill")
    reservoir = commands.add_parser("reservoir", help="set the liquid in the cup exactly")
    reservoir.add_argument("volume_ul", type=float)
    reboot = commands.add_parser("reboot", help="power-cycle the device")
    reboot.add_argument("--boot-ms", type=int, default=0, help="silent for this long first")
    link = commands.add_parser("link", help="link faults (options not given keep their value)")
    for direction in ("rx", "tx"):
        towards = "host→device" if direction == "rx" else "device→host"
        link.add_argument(f"--{direction}-bit-error-rate", type=float, help=f"{towards} per bit")
        link.add_argument(f"--{direction}-drop-rate", type=float, help=f"{towards} per byte")
        link.add_argument(f"--{direction}-duplicate-rate", type=float, help=f"{towards} per byte")
        link.add_argument(f"--{direction}-delay-ms", type=int, help=f"{towards} fixed delay")
    link.add_argument("--drop-answer-rate", type=float, help="IDENT/ACK/NAK never sent")
    talk = link.add_mutually_exclusive_group()
    talk.add_argument("--silent", dest="silent", action="store_true", default=None)
    talk.add_argument("--talk", dest="silent", action="store_false", help="end --silent")
    link.add_argument("--reset", action="store_true", help="every link fault off first")
    defect = commands.add_parser("defect", help="turn a firmware defect mode on or off")
    defect.add_argument("name", choices=DEFECTS)
    defect.add_argument("switch", choices=("on", "off"))
    apnoea = commands.add_parser("apnoea", help="the patient stops breathing (--icd 1.1)")
    apnoea.add_argument("seconds", type=float)
    mask = commands.add_parser("mask", help="mask or mouthpiece off / back on (--icd 1.1)")
    mask.add_argument("position", choices=("off", "on"))
    stuck = commands.add_parser("sensor-stuck", help="the flow sensor reads a constant")
    stuck.add_argument("switch", choices=("on", "off"))
    pattern = commands.add_parser("pattern", help="breathing pattern from the next breath")
    pattern.add_argument("name", choices=PATTERN_NAMES)
    raw = commands.add_parser("raw", help="send one JSON request as is")
    raw.add_argument("json", help='e.g. \'{"cmd": "state"}\'')
    ctl.set_defaults(handler=_ctl)


def _link_request(args: argparse.Namespace) -> dict[str, Any]:
    request: dict[str, Any] = {"cmd": "link"}
    for direction in ("rx", "tx"):
        channel = {
            name: value
            for name in ("bit_error_rate", "drop_rate", "duplicate_rate", "delay_ms")
            if (value := getattr(args, f"{direction}_{name}")) is not None
        }
        if channel:
            request[direction] = channel
    if args.drop_answer_rate is not None:
        request["drop_answer_rate"] = args.drop_answer_rate
    if args.silent is not None:
        request["silent"] = args.silent
    return request


def _refill_request(args: argparse.Namespace) -> dict[str, Any]:
    request: dict[str, Any] = {"cmd": "refill"}
    if args.volume_ul is not None:
        request["volume_ul"] = args.volume_ul
    return request


# `ctl` subcommand → the control request(s) it sends, in order.
_CTL_REQUESTS: dict[str, Callable[[argparse.Namespace], list[dict[str, Any]]]] = {
    "state": lambda args: [{"cmd": "state"}],
    "ping": lambda args: [{"cmd": "ping"}],
    "fault": lambda args: [{"cmd": "fault", "name": args.name, "active": not args.clear}],
    "clog": lambda args: [{"cmd": "clog", "drift_pct_per_min": args.drift_pct_per_min}],
    "button": lambda args: [{"cmd": "button", "name": args.name}],
    "refill": lambda args: [_refill_request(args)],
    "reservoir": lambda args: [{"cmd": "set_reservoir", "volume_ul": args.volume_ul}],
    "reboot": lambda args: [{"cmd": "reboot", "boot_ms": args.boot_ms}],
    "link": lambda args: [{"cmd": "link_reset"}] * args.reset + [_link_request(args)],
    "defect": lambda args: [{"cmd": "defect", "name": args.name, "enabled": args.switch == "on"}],
    "raw": lambda args: [json.loads(args.json)],
    "apnoea": lambda args: [{"cmd": "apnoea", "seconds": args.seconds}],
    "mask": lambda args: [{"cmd": "mask", "off": args.position == "off"}],
    "sensor-stuck": lambda args: [{"cmd": "sensor_stuck", "active": args.switch == "on"}],
    "pattern": lambda args: [{"cmd": "pattern", "name": args.name}],
}


def _ctl(args: argparse.Namespace) -> int:
    try:
        reply: dict[str, Any] = {}
        for request in _CTL_REQUESTS[args.ctl_command](args):
            reply = control_request_sync(args.control, request)
            if not reply.get("ok"):
                break
    except (OSError, SimulatorControlError, json.JSONDecodeError) as exc:
        return _fail(f"ctl: {exc} (is a simulator running with --control {args.control}?)")
    print(json.dumps(reply, indent=2))
    return 0 if reply.get("ok") else 1


def _serve(args: argparse.Namespace) -> int:
    if not args.pty and args.tcp is None:
        return _fail("say where to serve: --pty and/or --tcp HOST:PORT")
    if args.link and not args.pty:
        return _fail("--link needs --pty")
    if args.icd == "1.0" and args.no_breath_gating:
        return _fail("--no-breath-gating describes a 1.1 head; add --icd 1.1")
    try:
        breathing = (
            BreathingModel(
                pattern=args.breathing,
                trigger_ml_s=args.trigger_ml_s,
                detect_latency_ms=args.detect_latency_ms,
                seed=args.seed,
            )
            if args.icd == "1.1"
            else None
        )
        model = DeviceModel(
            serial=args.serial,
            nominal_ul_min=args.nominal_ul_min,
            fill_ul=args.fill_ul,
            capacity_ul=args.capacity_ul,
            residual_ul=args.residual_ul,
            seed=args.seed,
            fw_version=args.fw_version,
            hw_rev=args.hw_rev,
            breathing=breathing,
            breath_gating=not args.no_breath_gating,
        )
    except ValueError as exc:
        return _fail(str(exc))
    try:
        asyncio.run(_serve_async(args, model))
    except (FileExistsError, OSError) as exc:
        return _fail(str(exc), code=1)
    return 0


async def _serve_async(args: argparse.Namespace, model: DeviceModel) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with run_simulator(
            model, pty=args.pty, link=args.link, tcp=args.tcp, control=args.control
        ) as sim:
            if sim.pty_path is not None:
                print(sim.pty_path, flush=True)
            if sim.tcp_address is not None:
                host, port = sim.tcp_address
                print(f"{host}:{port}", flush=True)
            await stop.wait()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError, RuntimeError):
                loop.remove_signal_handler(signum)
