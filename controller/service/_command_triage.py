"""Pieces of the command intake's triage: the triaged message and the refusals the
intake gives itself (see `_commands.py`)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from controller.security import Accepted, RefusalCode, Refused, Screened
from controller.telemetry import AlarmAckCommand

from ._command_actions import CommandResult

__all__ = [
    "Arrival",
    "payload_bytes",
    "refusal_of",
    "refused_result",
    "unsigned_refusal",
]


@dataclass(frozen=True, kw_only=True)
class Arrival:
    """One triaged message waiting for the worker."""

    topic: str
    outcome: Screened | Refused
    arrived_ns: int
    stop_result: CommandResult | None = None  # a STOP already carried out at triage
    unsigned_ack: AlarmAckCommand | None = None  # bench setting only


def payload_bytes(payload: object) -> bytes:
    """An MQTT payload as bytes (anything else becomes b"", which is refused)."""
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    if isinstance(payload, str):
        return payload.encode("utf-8", errors="replace")
    return b""  # numbers / None: never a valid envelope; verify_command refuses b""


def refusal_of(pending: Accepted, code: RefusalCode) -> Refused:
    """A refusal given by the intake itself (replay seen in memory, over the rate)."""
    reasons = {
        RefusalCode.REPLAYED_COUNTER: f"counter {pending.counter} is not above the last "
        f"counter of sender {pending.sender_id!r}; replay or out-of-order delivery",
        RefusalCode.RATE_LIMITED: f"sender {pending.sender_id!r} is over its command rate "
        "or the intake's queue is full; sign it again (new counter) and resend later",
    }
    return Refused(
        code=code,
        reason=reasons[code],
        payload_sha256=pending.payload_sha256,
        claimed_sender_id=pending.sender_id,
        command_id=pending.command_id,
        command=pending.command.value,
    )


def unsigned_refusal(raw: bytes, command: AlarmAckCommand | None, why: str) -> Refused:
    """The record of an unsigned ``cmd/ack`` (ignored, or applied on a bench)."""
    return Refused(
        code=RefusalCode.UNSIGNED_ACK,
        reason=why,
        payload_sha256=hashlib.sha256(raw).hexdigest(),
        claimed_sender_id=None if command is None else command.sender[:64],
        command_id=None if command is None else command.command_id[:64],
        command="cmd/ack",
    )


def refused_result(refused: Refused) -> CommandResult:
    """The reply/record result of a refusal."""
    return CommandResult(status="refused", reason_code=refused.code.value, reason=refused.reason)
