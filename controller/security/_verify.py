"""`verify_command`: one untrusted MQTT payload in, Accepted or Refused out. Never raises.

Checks, in order (the first failure is the reason given):
 1. size cap (before any parsing)             → too_large
 2. strict UTF-8, nesting depth (pre-scan)    → malformed_json / too_deeply_nested
 3. JSON (no duplicate keys, no NaN, no floats) → malformed_json
 4. envelope structure and types              → invalid_envelope / unsupported_version
 5. command name and body structure           → unknown_command / invalid_body
 6. retained message                          → retained
 7. sender known                              → unknown_sender
 8. Ed25519 signature                         → bad_signature
 9. addressed to this device                  → wrong_device
10. validity window ≤ limit, not early, not late → validity_too_long / not_yet_valid / expired
11. sender's role permits the command         → role_not_permitted
12. embedded prescription signature          → bad_prescription_signature
13. counter strictly increasing, id unused (durably committed) → replayed_counter /
    duplicate_command_id / counter_store_failed
"""

from __future__ import annotations

import binascii
import hashlib
import json
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Final, NoReturn

from pydantic import ValidationError

from controller.security._canonical import canonical_json, decode_signature_b64
from controller.security._counters import CounterCommit, CounterStore
from controller.security._envelope import (
    BODY_MODELS,
    CommandBody,
    CommandEnvelope,
    PrescriptionUpdateBody,
    signing_input,
)
from controller.security._prescription import (
    PrescriptionSignature,
    PrescriptionSignatureError,
    verify_prescription_signature,
)
from controller.security._registry import CommandLimits, Sender, SenderRegistry
from controller.security._settings import CommandName, Role

__all__ = [
    "MAX_JSON_DEPTH",
    "Accepted",
    "RefusalCode",
    "Refused",
    "Screened",
    "VerifyOutcome",
    "build_reply",
    "commit_screened",
    "screen_command",
    "verify_command",
]

MAX_JSON_DEPTH: Final = 8


class RefusalCode(StrEnum):
    """Machine-readable reason a command was refused."""

    TOO_LARGE = "too_large"
    MALFORMED_JSON = "malformed_json"
    TOO_DEEPLY_NESTED = "too_deeply_nested"
    INVALID_ENVELOPE = "invalid_envelope"
    UNSUPPORTED_VERSION = "unsupported_version"
    UNKNOWN_COMMAND = "unknown_command"
    INVALID_BODY = "invalid_body"
    RETAINED = "retained"
    UNKNOWN_SENDER = "unknown_sender"
    BAD_SIGNATURE = "bad_signature"
    WRONG_DEVICE = "wrong_device"
    VALIDITY_TOO_LONG = "validity_too_long"
    NOT_YET_VALID = "not_yet_valid"
    EXPIRED = "expired"
    ROLE_NOT_PERMITTED = "role_not_permitted"
    BAD_PRESCRIPTION_SIGNATURE = "bad_prescription_signature"
    REPLAYED_COUNTER = "replayed_counter"
    DUPLICATE_COMMAND_ID = "duplicate_command_id"
    COUNTER_STORE_FAILED = "counter_store_failed"
    # Given by the command intake, not by `verify_command`:
    RATE_LIMITED = "rate_limited"  # authenticated, but over the sender's rate / lane full
    UNSIGNED_ACK = "unsigned_ack"  # an unsigned cmd/ack while only signed acks count


@dataclass(frozen=True, kw_only=True)
class Accepted:
    """A command that passed every check; its counter is already durably committed."""

    sender_id: str
    role: Role
    command: CommandName
    command_id: str
    counter: int
    issued_at_ms: int
    expires_at_ms: int
    body: CommandBody
    payload_sha256: str

    accepted: bool = field(default=True, init=False)

    def audit_body(self) -> dict[str, object]:
        """JSON body for the audit log."""
        return {
            "outcome": "accepted",
            "sender_id": self.sender_id,
            "role": self.role.value,
            "command": self.command.value,
            "command_id": self.command_id,
            "counter": self.counter,
            "issued_at_ms": self.issued_at_ms,
            "expires_at_ms": self.expires_at_ms,
            "payload_sha256": self.payload_sha256,
        }


@dataclass(frozen=True, kw_only=True)
class Refused:
    """A refused command. `claimed_*` fields are unauthenticated unless the refusal
    came after the signature check; they are for the audit log and reply only."""

    code: RefusalCode
    reason: str
    payload_sha256: str
    claimed_sender_id: str | None = None
    command_id: str | None = None
    command: str | None = None

    accepted: bool = field(default=False, init=False)

    def audit_body(self) -> dict[str, object]:
        """JSON body for the audit log."""
        return {
            "outcome": "refused",
            "code": self.code.value,
            "reason": self.reason,
            "claimed_sender_id": self.claimed_sender_id,
            "command_id": self.command_id,
            "command": self.command,
            "payload_sha256": self.payload_sha256,
        }


VerifyOutcome = Accepted | Refused


class _Refusal(Exception):  # noqa: N818 - internal control flow, never escapes this module
    def __init__(self, code: RefusalCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _refuse(code: RefusalCode, reason: str) -> NoReturn:
    raise _Refusal(code, reason)


def _check_depth(text: str, max_depth: int) -> None:
    """Linear pre-scan so the JSON parser never recurses deeply."""
    depth = 0
    in_string = False
    escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > max_depth:
                _refuse(
                    RefusalCode.TOO_DEEPLY_NESTED,
                    f"payload nests deeper than {max_depth} levels",
                )
        elif char in "]}":
            depth -= 1


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            _refuse(RefusalCode.MALFORMED_JSON, f"member {key[:40]!r} appears twice")
        result[key] = value
    return result


def _no_float(text: str) -> NoReturn:
    _refuse(
        RefusalCode.MALFORMED_JSON,
        f"number {text[:20]} is not an integer; envelopes contain integers only",
    )


def _no_constant(text: str) -> NoReturn:
    _refuse(RefusalCode.MALFORMED_JSON, f"{text} is not valid JSON")


def _parse(raw: bytes, limits: CommandLimits) -> dict[str, object]:
    if len(raw) > limits.max_command_bytes:
        _refuse(
            RefusalCode.TOO_LARGE,
            f"payload has {len(raw)} bytes, the limit is {limits.max_command_bytes}",
        )
    try:
        text = raw.decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        _refuse(RefusalCode.MALFORMED_JSON, "payload is not valid UTF-8")
    _check_depth(text, MAX_JSON_DEPTH)
    try:
        parsed = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_float=_no_float,
            parse_constant=_no_constant,
        )
    except (ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError and integers with too many digits.
        _refuse(RefusalCode.MALFORMED_JSON, f"payload is not valid JSON: {str(exc)[:120]}")
    if not isinstance(parsed, dict):
        _refuse(RefusalCode.INVALID_ENVELOPE, "payload is not a JSON object")
    return parsed


def _first_error(exc: ValidationError) -> str:
    error = exc.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(part) for part in error["loc"]) or "(top level)"
    return f"{where}: {error['msg']}"


def _check_structure(
    parsed: dict[str, object],
) -> tuple[CommandEnvelope, CommandName, CommandBody]:
    version = parsed.get("v")
    if type(version) is int and version != 1:
        _refuse(RefusalCode.UNSUPPORTED_VERSION, f"envelope version {version} is not 1")
    try:
        envelope = CommandEnvelope.model_validate(parsed)
    except ValidationError as exc:
        _refuse(RefusalCode.INVALID_ENVELOPE, f"envelope field {_first_error(exc)}")
    try:
        command = CommandName(envelope.command)
    except ValueError:
        _refuse(RefusalCode.UNKNOWN_COMMAND, f"command {envelope.command[:64]!r} is unknown")
    try:
        body = BODY_MODELS[command].model_validate(envelope.body)
    except ValidationError as exc:
        _refuse(RefusalCode.INVALID_BODY, f"{command} body field {_first_error(exc)}")
    return envelope, command, body


def _check_signature(
    parsed: dict[str, object], envelope: CommandEnvelope, registry: SenderRegistry
) -> Sender:
    sender = registry.get(envelope.sender_id)
    if sender is None:
        _refuse(RefusalCode.UNKNOWN_SENDER, f"sender {envelope.sender_id!r} is not configured")
    unsigned = {k: v for k, v in parsed.items() if k != "signature"}
    from cryptography.exceptions import InvalidSignature  # noqa: PLC0415 - see the imports

    try:
        signature = decode_signature_b64(envelope.signature)
        sender.public_key.verify(signature, signing_input(unsigned))
    except (binascii.Error, ValueError, InvalidSignature):
        # ValueError includes UnicodeEncodeError: lone surrogates cannot have been signed.
        _refuse(
            RefusalCode.BAD_SIGNATURE,
            f"signature does not verify with the public key of sender {sender.sender_id!r}",
        )
    return sender


def _check_time(envelope: CommandEnvelope, *, now_ms: int, limits: CommandLimits) -> None:
    validity_ms = envelope.expires_at_ms - envelope.issued_at_ms
    if validity_ms <= 0 or validity_ms > limits.max_validity_s * 1000:
        _refuse(
            RefusalCode.VALIDITY_TOO_LONG,
            f"validity window is {validity_ms} ms; it must be 1..{limits.max_validity_s * 1000}",
        )
    skew_ms = limits.clock_skew_s * 1000
    if now_ms < envelope.issued_at_ms - skew_ms:
        _refuse(
            RefusalCode.NOT_YET_VALID,
            f"issued {envelope.issued_at_ms - now_ms} ms in the future (allowed skew "
            f"{skew_ms} ms); check the sender's clock",
        )
    if now_ms > envelope.expires_at_ms + skew_ms:
        _refuse(
            RefusalCode.EXPIRED,
            f"expired {now_ms - envelope.expires_at_ms} ms ago (allowed skew {skew_ms} ms)",
        )


def _check_prescription(body: CommandBody, registry: SenderRegistry) -> None:
    if not isinstance(body, PrescriptionUpdateBody):
        return
    try:
        verify_prescription_signature(
            body.prescription_toml.encode("utf-8"),
            PrescriptionSignature(
                key_id=body.pharmacy_key_id,
                sha256=body.prescription_sha256,
                signature=body.prescription_signature,
            ),
            pharmacy_keys=registry.pharmacy_keys(),
        )
    except (PrescriptionSignatureError, ValidationError, UnicodeEncodeError) as exc:
        _refuse(RefusalCode.BAD_PRESCRIPTION_SIGNATURE, str(exc)[:300])


def _commit_counter(
    *, sender_id: str, counter: int, command_id: str, counters: CounterStore
) -> None:
    try:
        committed = counters.commit(sender_id=sender_id, counter=counter, command_id=command_id)
    except sqlite3.Error as exc:
        _refuse(
            RefusalCode.COUNTER_STORE_FAILED,
            f"replay counter could not be stored ({exc}); refusing rather than risk a replay",
        )
    if committed is CounterCommit.REPLAYED:
        _refuse(
            RefusalCode.REPLAYED_COUNTER,
            f"counter {counter} is not above the last accepted counter of "
            f"sender {sender_id!r}; replay or out-of-order delivery",
        )
    if committed is CounterCommit.DUPLICATE_COMMAND_ID:
        _refuse(
            RefusalCode.DUPLICATE_COMMAND_ID,
            f"command id {command_id!r} was already used by {sender_id!r}",
        )


def _verify(
    parsed: dict[str, object],
    *,
    retained: bool,
    now_ms: int,
    device_id: str,
    registry: SenderRegistry,
    counters: CounterStore | None,
    limits: CommandLimits,
    payload_sha256: str,
) -> Accepted:
    envelope, command, body = _check_structure(parsed)
    if retained:
        _refuse(
            RefusalCode.RETAINED,
            "retained MQTT messages are never acted on; publish commands with retain=false",
        )
    sender = _check_signature(parsed, envelope, registry)
    if envelope.device_id != device_id:
        _refuse(
            RefusalCode.WRONG_DEVICE,
            f"command is for device {envelope.device_id!r}, this is {device_id!r}",
        )
    _check_time(envelope, now_ms=now_ms, limits=limits)
    if not sender.may_issue(command):
        _refuse(
            RefusalCode.ROLE_NOT_PERMITTED,
            f"role {sender.role.value} may not issue {command.value}",
        )
    _check_prescription(body, registry)
    if counters is not None:  # last: durable before we return Accepted
        _commit_counter(
            sender_id=sender.sender_id,
            counter=envelope.counter,
            command_id=envelope.command_id,
            counters=counters,
        )
    return Accepted(
        sender_id=sender.sender_id,
        role=sender.role,
        command=command,
        command_id=envelope.command_id,
        counter=envelope.counter,
        issued_at_ms=envelope.issued_at_ms,
        expires_at_ms=envelope.expires_at_ms,
        body=body,
        payload_sha256=payload_sha256,
    )


def _claimed(parsed: dict[str, object] | None, key: str) -> str | None:
    if parsed is None:
        return None
    value = parsed.get(key)
    return value[:64] if isinstance(value, str) else None


def verify_command(
    raw: bytes,
    *,
    retained: bool,
    now: datetime,
    device_id: str,
    registry: SenderRegistry,
    counters: CounterStore,
    limits: CommandLimits | None = None,
) -> VerifyOutcome:
    """Check one command payload; return Accepted (counter committed) or Refused.

    `now` is the controller's trusted UTC wall-clock time (timezone-aware). Never
    raises for any payload; time per call is bounded by the size cap (linear scans
    and one signature check).
    """
    outcome = _check_all(
        raw, retained=retained, now=now, device_id=device_id, registry=registry,
        counters=counters, limits=limits,
    )  # fmt: skip
    return outcome.pending if isinstance(outcome, Screened) else outcome


@dataclass(frozen=True, kw_only=True)
class Screened:
    """A command that passed every check except the durable counter commit.

    Only `commit_screened` turns it into an `Accepted`; the command intake screens
    on the event loop (no disk I/O) so that an authenticated STOP can act at once,
    and commits the counter afterwards on a worker thread (docs/security.md §3).
    """

    pending: Accepted


def screen_command(
    raw: bytes,
    *,
    retained: bool,
    now: datetime,
    device_id: str,
    registry: SenderRegistry,
    limits: CommandLimits | None = None,
) -> Screened | Refused:
    """Checks 1-12 of `verify_command` (no counter commit, no disk I/O). Never raises."""
    outcome = _check_all(
        raw, retained=retained, now=now, device_id=device_id, registry=registry,
        counters=None, limits=limits,
    )  # fmt: skip
    assert not isinstance(outcome, Accepted)  # without a counter store nothing is committed
    return outcome


def commit_screened(screened: Screened, counters: CounterStore) -> VerifyOutcome:
    """Check 13 for a screened command: durably advance the sender's counter."""
    pending = screened.pending
    try:
        _commit_counter(
            sender_id=pending.sender_id,
            counter=pending.counter,
            command_id=pending.command_id,
            counters=counters,
        )
    except _Refusal as refusal:
        return Refused(
            code=refusal.code,
            reason=refusal.reason,
            payload_sha256=pending.payload_sha256,
            claimed_sender_id=pending.sender_id,
            command_id=pending.command_id,
            command=pending.command.value,
        )
    return pending


def _check_all(
    raw: bytes,
    *,
    retained: bool,
    now: datetime,
    device_id: str,
    registry: SenderRegistry,
    counters: CounterStore | None,
    limits: CommandLimits | None,
) -> Accepted | Screened | Refused:
    if now.tzinfo is None:
        raise ValueError("verify_command needs a timezone-aware `now` (UTC)")
    active_limits = limits or CommandLimits()
    payload_sha256 = hashlib.sha256(raw).hexdigest()
    now_ms = int(now.timestamp() * 1000)
    parsed: dict[str, object] | None = None
    try:
        parsed = _parse(raw, active_limits)
        accepted = _verify(
            parsed,
            retained=retained,
            now_ms=now_ms,
            device_id=device_id,
            registry=registry,
            counters=counters,
            limits=active_limits,
            payload_sha256=payload_sha256,
        )
    except _Refusal as refusal:
        return Refused(
            code=refusal.code,
            reason=refusal.reason,
            payload_sha256=payload_sha256,
            claimed_sender_id=_claimed(parsed, "sender_id"),
            command_id=_claimed(parsed, "command_id"),
            command=_claimed(parsed, "command"),
        )
    return accepted if counters is not None else Screened(pending=accepted)


def build_reply(outcome: VerifyOutcome, *, device_id: str, now: datetime) -> bytes:
    """The JSON reply published on the bed's reply topic (``.../command/reply``)."""
    reply: dict[str, object] = {
        "schema": "nebuliser.command_reply",
        "version": 1,
        "device_id": device_id,
        "time_utc": now.astimezone(UTC).isoformat(timespec="milliseconds"),
        "command_id": outcome.command_id,
        "status": "accepted" if isinstance(outcome, Accepted) else "refused",
    }
    if isinstance(outcome, Refused):
        reply["reason_code"] = outcome.code.value
        reply["reason"] = outcome.reason
    else:
        reply["command"] = outcome.command.value
        reply["counter"] = outcome.counter
    return canonical_json(reply)
