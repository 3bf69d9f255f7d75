"""`nebuliser session start|stop|status` and `nebuliser alarm list|ack` (local control)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from controller.control import ControlClient, ControlUnavailableError

from ._common import add_service_options, config_from_args, progress_bar

__all__ = ["register"]

EXIT_REFUSED = 1
EXIT_NO_SERVICE = 3


def _print_status(reply: dict[str, Any]) -> None:
    print(
        f"state:    {reply['state']}   (subject {reply['subject_id']}, "
        f"link {'up' if reply['link_up'] else 'DOWN'})"
    )
    device = reply.get("device")
    if device:
        print(f"device:   {device['serial']} firmware {device['firmware']}")
    session = reply.get("session")
    status = reply.get("device_status") or {}
    if session:
        bar = "[" + progress_bar(session["delivered_ul"], session["cap_ul"]) + "]"
        print(
            f"session:  {session['session_id']}  {bar} "
            f"{session['delivered_ul']}/{session['cap_ul']} µL  "
            f"flow {session['flow_ul_min']} µL/min"
        )
    if status:
        print(
            f"head:     {status['state']}  reservoir {status['reservoir_ul']} µL  "
            f"mesh {status['mesh_temp_c']:.1f} °C  faults 0x{status['faults']:04x}"
        )
    _print_breathing(reply.get("breathing"))
    last = reply.get("last_session")
    if last:
        print(
            f"last:     session {last['session_id']} delivered {last['delivered_ul']} µL "
            f"({last['dose']:.3g} {last['dose_unit']}), device reason {last['device_reason']}, "
            f"host reason {last['host_reason']}"
        )
    for alarm in reply.get("alarms", []):
        ack = f" (acknowledged by {alarm['acknowledged_by']})" if alarm["acknowledged_by"] else ""
        print(f"ALARM {alarm['priority'].upper():6} {alarm['code']}: {alarm['message']}{ack}")
    for entry in reply.get("unaccounted_sessions", []):
        who = entry["acknowledged_by"]
        print(
            f"uncertain: session {entry['session_id']} ({entry['reason']}), full cap "
            f"{entry['planned_cap_ul']} µL counted; "
            + (f"accepted by {who}" if who else "NOT YET ACKNOWLEDGED")
        )
    if reply.get("state") == "idle" and reply.get("start_refusals"):
        print("a start would be refused:")
        for reason in reply["start_refusals"]:
            print(f"  - {reason}")


def _print_breathing(breathing: dict[str, Any] | None) -> None:
    """The breath-aware head's view (ICD 1.1): only when the head or prescription has one."""
    if not breathing or (
        breathing["head"] in ("unknown", "version_1") and breathing["delivery"] == "continuous"
    ):
        return
    rate = breathing.get("rate_bpm")
    line = f"breath:   {breathing['delivery']} on a {breathing['head']} head"
    if rate is not None:
        line += (
            f"  rate {rate}/min  tidal {breathing['tidal_ml']} mL  I:E 1:{breathing['ie_ratio']}"
        )
    if breathing.get("session_id") is not None:
        share = breathing.get("insp_share_pct")
        line += "  WAITING for a breath" if breathing["waiting"] else ""
        line += f"  {breathing['breaths']} breaths"
        line += f", {share} % of the aerosol in inspiration" if share is not None else ""
    print(line)


async def _call(args: argparse.Namespace, op: str, **params: Any) -> dict[str, Any]:
    config = config_from_args(args)
    async with ControlClient(path=config.control_socket) as client:
        return await client.call(op, **params)


def _run(args: argparse.Namespace, op: str, **params: Any) -> dict[str, Any] | None:
    try:
        return asyncio.run(_call(args, op, **params))
    except ControlUnavailableError as exc:
        print(f"nebuliser: {exc}", file=sys.stderr)
        return None


def _status(args: argparse.Namespace) -> int:
    reply = _run(args, "session.status")
    if reply is None:
        return EXIT_NO_SERVICE
    if args.json:
        print(json.dumps(reply, indent=2))
    else:
        _print_status(reply)
    return 0


def _stop(args: argparse.Namespace) -> int:
    reply = _run(args, "session.stop", by=args.by)
    if reply is None:
        return EXIT_NO_SERVICE
    print("STOP sent" + ("" if reply.get("stopped") else " (no session of ours was running)"))
    return 0


async def _read_terminal_confirm() -> bool:
    """Ask at the bedside terminal; True when the operator typed yes."""
    loop = asyncio.get_running_loop()
    answer = await loop.run_in_executor(None, sys.stdin.readline)
    return answer.strip().lower() in {"y", "yes"}


async def _start(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    params: dict[str, Any] = {}
    if args.volume_ul is not None:
        params["requested_ul"] = args.volume_ul
    if args.override_role:
        params |= {
            "override_role": args.override_role,
            "override_reason": args.override_reason,
            "override_codes": args.override,
        }
    interactive = sys.stdin.isatty() and not args.button_only
    async with ControlClient(path=config.control_socket) as client:
        await client.send("session.start", **params)
        while True:
            message = await client.receive()
            if message.get("event") == "awaiting_confirm":
                print(
                    f"Start {message['cap_ul']} µL for subject {message['subject_id']} "
                    f"(max {message['max_duration_s']} s)?"
                )
                print(
                    f"Press CONFIRM on the nebuliser head within {message['timeout_s']} s"
                    + (", or type 'yes' and Enter here:" if interactive else ".")
                )
                if interactive:
                    confirmed = await _read_terminal_confirm()
                    await client.send("confirm" if confirmed else "cancel")
                continue
            if message.get("final", True):
                break
    if message.get("started"):
        print(
            f"session {message['session_id']} started ({message['cap_ul']} µL cap, "
            f"confirmed by {message['confirmed_by']})"
        )
        return 0
    print("not started:", file=sys.stderr)
    for reason in message.get("reasons", []) or [message.get("error", "unknown")]:
        print(f"  - {reason}", file=sys.stderr)
    return EXIT_REFUSED


def _start_sync(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_start(args))
    except ControlUnavailableError as exc:
        print(f"nebuliser: {exc}", file=sys.stderr)
        return EXIT_NO_SERVICE


def _alarm_list(args: argparse.Namespace) -> int:
    reply = _run(args, "alarm.list")
    if reply is None:
        return EXIT_NO_SERVICE
    if not reply["alarms"]:
        print("no active alarms")
    for alarm in reply["alarms"]:
        print(f"{alarm['priority'].upper():6} {alarm['code']}: {alarm['message']}")
    return 0


def _alarm_ack(args: argparse.Namespace) -> int:
    reply = _run(args, "alarm.ack", code=args.code, by=args.by)
    if reply is None:
        return EXIT_NO_SERVICE
    if not reply.get("ok"):
        print(f"not acknowledged: {reply.get('error')}", file=sys.stderr)
        return EXIT_REFUSED
    print(f"acknowledged {args.code} as {args.by}")
    return 0


def _clear_faults(args: argparse.Namespace) -> int:
    reply = _run(args, "device.clear_faults", by=args.by)
    if reply is None:
        return EXIT_NO_SERVICE
    print(reply.get("reason") or reply.get("error"))
    return 0 if reply.get("cleared") else EXIT_REFUSED


def register(subparsers: Any) -> None:
    """Add `session`, `alarm` and `device`."""
    session = subparsers.add_parser("session", help="start, stop or show the bedside session")
    sub = session.add_subparsers(dest="session_command", metavar="ACTION", required=True)
    start = sub.add_parser("start", help="request a session; needs the bedside CONFIRM")
    add_service_options(start)
    start.add_argument("--volume-ul", type=int, help="ask for less than the prescribed volume")
    start.add_argument(
        "--button-only",
        action="store_true",
        help="do not ask at this terminal; wait for the head's CONFIRM button",
    )
    start.add_argument("--override-role", help="role overriding soft limits (recorded)")
    start.add_argument("--override-reason", default="", help="why (recorded)")
    start.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="CODE",
        help="soft constraint code to override (repeatable)",
    )
    start.set_defaults(handler=_start_sync)
    stop = sub.add_parser("stop", help="stop the running session now")
    add_service_options(stop)
    stop.add_argument("--by", default="local operator", help="who stops (recorded)")
    stop.set_defaults(handler=_stop)
    status = sub.add_parser("status", help="state, progress, head, alarms")
    add_service_options(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=_status)

    alarm = subparsers.add_parser("alarm", help="list or acknowledge alarms")
    alarm_sub = alarm.add_subparsers(dest="alarm_command", metavar="ACTION", required=True)
    listing = alarm_sub.add_parser("list", help="active alarms by priority")
    add_service_options(listing)
    listing.set_defaults(handler=_alarm_list)
    ack = alarm_sub.add_parser("ack", help="acknowledge an alarm (recorded with who and when)")
    add_service_options(ack)
    ack.add_argument("code", help="alarm code, as shown by `alarm list`")
    ack.add_argument("--by", required=True, help="your name or role (recorded)")
    ack.set_defaults(handler=_alarm_ack)

    device = subparsers.add_parser("device", help="act on the nebuliser head")
    device_sub = device.add_subparsers(dest="device_command", metavar="ACTION", required=True)
    clear = device_sub.add_parser(
        "clear-faults",
        help="send CLEAR_FAULTS: clears latched fault bits whose cause has gone (recorded)",
    )
    add_service_options(clear)
    clear.add_argument("--by", required=True, help="your name or role (recorded)")
    clear.set_defaults(handler=_clear_faults)
