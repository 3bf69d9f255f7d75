"""`nebuliser command sign|send`: signed remote commands for one bed.

    nebuliser command sign --key K --sender S --device D --counter-file F stop --reason "..."
    nebuliser command send --broker mqtts://broker:8883 --ward 3west --bed 07 \\
        --tls-ca ca.crt --tls-cert ward.crt --tls-key ward.key \\
        --key K --sender S --device D --counter-file F alarm.ack dry_cup --by nurse.kim

`send` publishes on ``<root>/<ward>/<bed>/command`` (QoS 1, never retained), waits
for the matching reply on ``.../command/reply`` and prints it. Exit codes: 0
accepted, 1 refused, 2 bad arguments or key, 7 no reply in time or broker error
(controller/exitcodes.py).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import ssl
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiomqtt

from controller.brokerurl import BrokerAddress, BrokerUrlError, add_broker_options, broker_from_args
from controller.exitcodes import ExitCode
from controller.security import (
    DEFAULT_TOPIC_ROOT,
    AlarmAckBody,
    CommandBody,
    CommandName,
    KeyFileError,
    PrescriptionSignature,
    PrescriptionSignatureError,
    PrescriptionUpdateBody,
    RequestStartBody,
    StopBody,
    command_topic,
    load_private_key,
    new_command_id,
    reply_topic,
    sign_command,
    signature_path_for,
)

__all__ = ["next_counter", "register"]


def next_counter(path: Path) -> int:
    """Read the last counter from `path`, add one, store it durably, return it.

    A missing file starts at 1. Use one counter file per sender key.
    """
    try:
        last = int(path.read_text(encoding="ascii").strip() or "0")
    except FileNotFoundError:
        last = 0
    except ValueError as exc:
        raise KeyFileError(f"counter file {path} does not hold an integer: {exc}") from exc
    value = last + 1
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="ascii") as handle:
        handle.write(f"{value}\n")
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)
    return value


def _body(args: argparse.Namespace) -> tuple[CommandName, CommandBody]:
    command = CommandName(args.command_name)
    if command is CommandName.STOP:
        return command, StopBody(reason=args.reason)
    if command is CommandName.ALARM_ACK:
        return command, AlarmAckBody(alarm_code=args.alarm_code, acknowledged_by=args.by)
    if command is CommandName.SESSION_REQUEST_START:
        return command, RequestStartBody(note=args.note, subject_id=args.subject, lot_id=args.lot)
    rx_path = Path(args.prescription)
    rx_bytes = rx_path.read_bytes()
    sig = PrescriptionSignature.model_validate_json(signature_path_for(rx_path).read_bytes())
    if hashlib.sha256(rx_bytes).hexdigest() != sig.sha256:
        raise PrescriptionSignatureError(
            f"{rx_path} was changed after it was signed; have the pharmacy sign it again"
        )
    toml_text = rx_bytes.decode("utf-8")
    return command, PrescriptionUpdateBody(
        prescription_toml=toml_text,
        pharmacy_key_id=sig.key_id,
        prescription_sha256=sig.sha256,
        prescription_signature=sig.signature,
    )


def _signed_envelope(args: argparse.Namespace) -> bytes:
    key = load_private_key(Path(args.key))
    command, body = _body(args)
    counter = args.counter if args.counter is not None else next_counter(Path(args.counter_file))
    return sign_command(
        key=key,
        sender_id=args.sender,
        device_id=args.device,
        counter=counter,
        command=command,
        body=body,
        issued_at_ms=int(time.time() * 1000),
        validity_s=args.validity_s,
        command_id=args.command_id or new_command_id(),
    )


def _sign(args: argparse.Namespace) -> int:
    try:
        envelope = _signed_envelope(args)
    except (KeyFileError, PrescriptionSignatureError, OSError, ValueError) as exc:
        print(f"command sign: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    sys.stdout.write(envelope.decode("utf-8") + "\n")
    return 0


async def _send_and_wait(
    args: argparse.Namespace, broker: BrokerAddress, envelope: bytes
) -> dict[str, Any] | None:
    command_id = json.loads(envelope)["command_id"]
    out_topic = command_topic(ward=args.ward, bed=args.bed, root=args.root)
    in_topic = reply_topic(ward=args.ward, bed=args.bed, root=args.root)
    async with aiomqtt.Client(
        broker.host,
        broker.port,
        protocol=aiomqtt.ProtocolVersion.V5,
        # An explicit id: the hardened broker refuses zero-length client ids.
        identifier=f"nebuliser-cli-{uuid.uuid4().hex[:12]}",
        tls_context=None if broker.tls is None else broker.tls.ssl_context(),
        timeout=args.timeout_s,
    ) as client:
        await client.subscribe(in_topic, qos=1)
        await client.publish(out_topic, envelope, qos=1, retain=False)
        async with asyncio.timeout(args.timeout_s):
            async for message in client.messages:
                if message.retain or not isinstance(message.payload, bytes | bytearray):
                    continue
                try:
                    reply = json.loads(message.payload)
                except ValueError:
                    continue
                if isinstance(reply, dict) and reply.get("command_id") == command_id:
                    return reply
    return None


def _send(args: argparse.Namespace) -> int:
    try:
        broker = broker_from_args(args)
    except BrokerUrlError as exc:
        print(f"command send: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    assert broker is not None  # --broker is required
    try:
        envelope = _signed_envelope(args)
    except (KeyFileError, PrescriptionSignatureError, OSError, ValueError) as exc:
        print(f"command send: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    try:
        reply = asyncio.run(_send_and_wait(args, broker, envelope))
    except TimeoutError:
        reply = None
    except (aiomqtt.MqttError, OSError, ssl.SSLError) as exc:
        print(f"command send: broker {args.broker}: {exc}", file=sys.stderr)
        return ExitCode.BROKER
    if reply is None:
        print(f"command send: no reply within {args.timeout_s} s", file=sys.stderr)
        return ExitCode.BROKER
    print(json.dumps(reply, indent=2, sort_keys=True))
    return 0 if reply.get("status") == "accepted" else ExitCode.REFUSED


def _add_signing_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--key", required=True, help="sender's private key file (NAME.key)")
    parser.add_argument("--sender", required=True, help="sender id configured on the controller")
    parser.add_argument("--device", required=True, help="device id of the target controller")
    counter = parser.add_mutually_exclusive_group(required=True)
    counter.add_argument("--counter", type=int, help="explicit counter (must exceed the last)")
    counter.add_argument(
        "--counter-file", help="file holding this sender's last counter; incremented durably"
    )
    parser.add_argument(
        "--validity-s", type=int, default=30, help="seconds until the command expires (max 60)"
    )
    parser.add_argument("--command-id", help="command id (default: a random UUID)")
    commands = parser.add_subparsers(dest="command_name", metavar="COMMAND", required=True)
    stop = commands.add_parser("stop", help="stop any running dose")
    stop.add_argument("--reason", default="", help="free text for the record")
    ack = commands.add_parser("alarm.ack", help="acknowledge an alarm")
    ack.add_argument("alarm_code", help="alarm code, e.g. dry_cup")
    ack.add_argument(
        "--by", required=True, help="staff id of the person acknowledging, e.g. nurse.kim"
    )
    start = commands.add_parser(
        "session.request_start", help="request a start (bedside CONFIRM needed)"
    )
    start.add_argument("--note", default="", help="free text for the record")
    start.add_argument(
        "--subject", help="the patient's wristband id as scanned (five-rights check)"
    )
    start.add_argument("--lot", help="the vial's lot label as scanned (five-rights check)")
    rx = commands.add_parser("prescription.update", help="send a pharmacy-signed prescription")
    rx.add_argument("prescription", help="prescription TOML file with its .sig next to it")


def register(subparsers: Any) -> None:
    """Add `command sign` and `command send`."""
    parser = subparsers.add_parser("command", help="sign or send remote commands")
    sub = parser.add_subparsers(dest="command_action", metavar="ACTION", required=True)
    sign = sub.add_parser("sign", help="print a signed command envelope (JSON)")
    _add_signing_options(sign)
    sign.set_defaults(handler=_sign)
    send = sub.add_parser("send", help="publish a signed command and print the bed's reply")
    add_broker_options(send, required=True)
    send.add_argument("--ward", required=True, help="ward id")
    send.add_argument("--bed", required=True, help="bed id")
    send.add_argument("--root", default=DEFAULT_TOPIC_ROOT, help="MQTT topic root")
    send.add_argument(
        "--timeout-s", type=float, default=10.0, help="how long to wait for the reply"
    )
    _add_signing_options(send)
    send.set_defaults(handler=_send)
