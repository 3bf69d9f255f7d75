"""`nebuliser session start|stop|status` and `nebuliser alarm list|ack` (local control)."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
import time
from pathlib import Path
from typing import Any

from controller.control import ControlClient, ControlUnavailableError
from controller.exitcodes import ExitCode

from ._common import add_service_options, control_socket_from_args, progress_bar

__all__ = ["register"]

EXIT_REFUSED = ExitCode.REFUSED
EXIT_NO_SERVICE = ExitCode.NO_SERVICE


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
    for pending in reply.get("pending_starts", []):
        print(
            f"pending:  start of {pending['cap_ul']} µL asked for by {pending['requested_by']} "
            f"({pending['channel']}, {pending['requested_utc']}), awaiting CONFIRM for "
            f"{pending['confirm_within_s']} s more; `nebuliser session stop` cancels it"
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
    async with ControlClient(path=control_socket_from_args(args)) as client:
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
    if reply.get("cancelled_starts"):
        print(f"cancelled {reply['cancelled_starts']} start(s) waiting for CONFIRM")
    print("STOP sent" + ("" if reply.get("stopped") else " (no session of ours was running)"))
    return 0


async def _read_terminal_line() -> str:
    """One line typed (or scanned: a USB barcode scanner types the label and Enter)."""
    loop = asyncio.get_running_loop()
    answer: str = await loop.run_in_executor(None, sys.stdin.readline)
    return answer.strip()


async def _read_terminal_yes() -> bool:
    """Ask at the bedside terminal; True when the operator typed yes."""
    return (await _read_terminal_line()).lower() in {"y", "yes"}


#: The bedside prompts of the five-rights check (docs/trials.md quotes them).
SCAN_SUBJECT_PROMPT = "Scan the patient's wristband (or type the subject id), then Enter: "
SCAN_LOT_PROMPT = "Scan the vial's lot label (or type the lot id), then Enter: "


async def _ask_scans(socket_path: Path, params: dict[str, Any]) -> None:
    """Ask at the terminal for the scans the protocol requires and the command line lacks."""
    async with ControlClient(path=socket_path) as client:
        checks = (await client.call("session.status")).get("checks") or {}
    for check, key, prompt in (
        ("scan_subject", "subject", SCAN_SUBJECT_PROMPT),
        ("scan_lot", "lot", SCAN_LOT_PROMPT),
    ):
        if checks.get(check) and key not in params:
            print(prompt, end="", flush=True)
            params[key] = await _read_terminal_line()


async def _attempt(
    client: ControlClient, params: dict[str, Any], *, interactive: bool
) -> dict[str, Any]:
    """One `session.start` on the socket, through CONFIRM; the final reply."""
    await client.send("session.start", **params)
    while True:
        message = await client.receive()
        if message.get("event") == "awaiting_confirm":
            continued = message.get("continues_administration")
            what = (
                f"Continue administration {continued} with {message['cap_ul']} µL"
                if continued
                else f"Start {message['cap_ul']} µL"
            )
            print(
                f"{what} for subject {message['subject_id']} (max {message['max_duration_s']} s)?"
            )
            if message.get("reduced_dose"):
                print(f"  {message['reduced_dose']}")
            scanned = message.get("scanned") or {}
            checked = [
                f"{what} {scanned[key]}"
                for what, key in (("wristband", "subject_id"), ("lot", "lot_id"))
                if scanned.get(key)
            ]
            if checked:
                print(f"  {' and '.join(checked)} checked against the prescription")
            print(
                f"Press CONFIRM on the nebuliser head within {message['timeout_s']} s"
                + (", or type 'yes' and Enter here:" if interactive else ".")
            )
            if interactive:
                confirmed = await _read_terminal_yes()
                await client.send("confirm" if confirmed else "cancel")
            continue
        if message.get("final", True):
            return message


def _start_params(args: argparse.Namespace) -> dict[str, Any]:
    """The `session.start` arguments from the command line (the credential apart)."""
    params: dict[str, Any] = {"by": args.by or f"OS user {getpass.getuser()}"}
    if args.volume_ul is not None:
        params["requested_ul"] = args.volume_ul
    if args.continue_last:
        params["continue"] = True
    if args.subject is not None:
        params["subject"] = args.subject
    if args.lot is not None:
        params["lot"] = args.lot
    if args.override_role:
        params |= {
            "override_role": args.override_role,
            "override_reason": args.override_reason,
            "override_codes": args.override,
        }
    return params


async def _start(args: argparse.Namespace) -> int:
    socket_path = control_socket_from_args(args)
    params = _start_params(args)
    if args.override_credential is not None:
        try:
            params["override_credential"] = args.override_credential.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            print(f"nebuliser: cannot read the override credential: {exc}", file=sys.stderr)
            return EXIT_REFUSED
    interactive = sys.stdin.isatty() and not args.button_only
    if interactive:
        await _ask_scans(socket_path, params)
    async with ControlClient(path=socket_path) as client:
        message = await _attempt(client, params, interactive=interactive)
    offer = message.get("reduced_dose_offer")
    if offer and interactive:
        # A smaller dose is the nurse's decision: ask, and say yes only on "y"/"yes".
        print(f"{offer['question']} [y/N] ", end="", flush=True)
        if await _read_terminal_yes():
            params["accept_reduced_ul"] = offer["allowed_ul"]
            async with ControlClient(path=socket_path) as client:
                message = await _attempt(client, params, interactive=interactive)
    if message.get("started"):
        print(
            f"session {message['session_id']} started ({message['cap_ul']} µL cap, "
            f"confirmed by {message['confirmed_by']})"
        )
        return 0
    print("not started:", file=sys.stderr)
    for reason in message.get("reasons", []) or [message.get("error", "unknown")]:
        print(f"  - {reason}", file=sys.stderr)
    offer = message.get("reduced_dose_offer")
    if offer:
        print(
            f"To give the smaller dose, run: nebuliser session start "
            f"--volume-ul {offer['allowed_ul']}",
            file=sys.stderr,
        )
    return EXIT_REFUSED


def _start_sync(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_start(args))
    except ControlUnavailableError as exc:
        print(f"nebuliser: {exc}", file=sys.stderr)
        return EXIT_NO_SERVICE


def _sign_override(args: argparse.Namespace) -> int:
    # Imported here: cryptography is not needed by the other session commands.
    from controller.security import (  # noqa: PLC0415
        KeyFileError,
        load_private_key,
        sign_override,
    )

    try:
        key = load_private_key(args.key)
        credential = sign_override(
            key=key,
            sender_id=args.sender,
            device_id=args.device,
            subject_id=args.subject,
            role=args.role,
            reason=args.reason,
            constraint_codes=list(args.override),
            issued_at_ms=int(time.time() * 1000),
            validity_s=args.valid_s,
        )
    except (KeyFileError, ValueError) as exc:
        print(f"nebuliser: override not signed: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    args.output.write_bytes(credential)
    print(
        f"override for subject {args.subject} ({', '.join(args.override)}) written to "
        f"{args.output}; valid {args.valid_s} s, for one start"
    )
    return 0


def _alarm_list(args: argparse.Namespace) -> int:
    reply = _run(args, "alarm.list")
    if reply is None:
        return EXIT_NO_SERVICE
    if args.json:
        print(json.dumps(reply["alarms"], indent=2))
        return ExitCode.OK
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


def _add_bedside_arguments(start: argparse.ArgumentParser) -> None:
    """`--subject`, `--lot` (the five-rights scans, docs/trials.md) and `--button-only`."""
    start.add_argument(
        "--subject",
        metavar="ID",
        help="the patient's wristband id, scanned or typed (five-rights check; asked at "
        "the terminal when the protocol requires it and this is not given)",
    )
    start.add_argument(
        "--lot",
        metavar="LOT",
        help="the vial's lot label, scanned or typed (five-rights check; asked at the "
        "terminal when the protocol requires it and this is not given)",
    )
    start.add_argument(
        "--button-only",
        action="store_true",
        help="do not ask at this terminal; wait for the head's CONFIRM button",
    )


def register(subparsers: Any) -> None:
    """Add `session`, `alarm` and `device`."""
    session = subparsers.add_parser("session", help="start, stop or show the bedside session")
    sub = session.add_subparsers(dest="session_command", metavar="ACTION", required=True)
    start = sub.add_parser("start", help="request a session; needs the bedside CONFIRM")
    add_service_options(start)
    start.add_argument(
        "--volume-ul",
        type=int,
        help="give this volume (µL) instead of the prescribed one; how a nurse asks "
        "for a smaller dose when less remains (recorded)",
    )
    start.add_argument(
        "--by", help="who asks for the start (shown by `session status`; default: OS user)"
    )
    start.add_argument(
        "--continue",
        dest="continue_last",
        action="store_true",
        help="give the rest of the last, interrupted administration as a further run "
        "(within its window; the refusal of a plain start says when one is available)",
    )
    _add_bedside_arguments(start)
    start.add_argument(
        "--override-credential",
        type=Path,
        metavar="FILE",
        help="an investigator's signed override (from `session sign-override`); "
        "without it no override is accepted",
    )
    start.add_argument(
        "--override-role", help="role overriding soft limits; needs --override-credential"
    )
    start.add_argument("--override-reason", default="", help="why (recorded)")
    start.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="CODE",
        help="soft constraint code to override (repeatable)",
    )
    start.set_defaults(handler=_start_sync)
    sign = sub.add_parser(
        "sign-override",
        help="(investigator) sign a soft-limit override for one start, valid 60 s",
    )
    sign.add_argument("--key", type=Path, required=True, help="your Ed25519 private key (PEM)")
    sign.add_argument("--sender", required=True, help="your sender id in [security] senders")
    sign.add_argument("--device", required=True, help="the controller's [device] device_id")
    sign.add_argument("--subject", required=True, help="the subject the start is for")
    sign.add_argument("--role", default="investigator", help="the prescription's override role")
    sign.add_argument("--reason", required=True, help="why (recorded with your name)")
    sign.add_argument(
        "--override", action="append", required=True, metavar="CODE", help="soft code to lift"
    )
    sign.add_argument("--valid-s", type=int, default=60, help="validity, at most 60 s")
    sign.add_argument("-o", "--output", type=Path, required=True, help="credential file")
    sign.set_defaults(handler=_sign_override)
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
    listing.add_argument("--json", action="store_true", help="machine-readable output")
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
