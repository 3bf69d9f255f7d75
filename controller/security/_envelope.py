"""Signed command envelopes: the wire format and the signer.

Envelope (a JSON object, every field required, no others allowed)::

    {"v": 1,
     "device_id": "neb-0001",            # the controller it is meant for
     "sender_id": "ward-3west",          # a configured sender
     "command_id": "8f0c...",            # unique id, echoed in the reply
     "counter": 42,                      # per sender, strictly increasing
     "issued_at_ms": 1795610730000,      # Unix time in ms (UTC)
     "expires_at_ms": 1795610760000,     # at most 60 s after issued_at_ms
     "command": "stop",                  # see CommandName
     "body": {...},                      # command-specific, see the *Body models
     "signature": "<base64>"}            # Ed25519, see below

signature = Ed25519(private key, b"nebuliser-command-v1\\x00" + canonical(envelope
without the "signature" member)), canonical as in `canonical_json`. No floats
are allowed anywhere, so the canonical form is unambiguous across languages.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final, Literal

if TYPE_CHECKING:  # cryptography is imported only where a key is used (_keys.py)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pydantic import BaseModel, ConfigDict, Field

from controller.security._canonical import COMMAND_DOMAIN, canonical_json
from controller.security._settings import CommandName

__all__ = [
    "BODY_MODELS",
    "MAX_COUNTER",
    "AlarmAckBody",
    "CommandBody",
    "CommandEnvelope",
    "OverrideBody",
    "PrescriptionUpdateBody",
    "RequestStartBody",
    "StopBody",
    "UnblindBody",
    "UnblindReport",
    "new_command_id",
    "sign_command",
    "signing_input",
]

ENVELOPE_VERSION: Final = 1
MAX_COUNTER: Final = 2**53 - 1  # exact in every JSON implementation
_ID = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
_PRINTABLE = r"^[^\x00-\x1f\x7f]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class StopBody(_Strict):
    """`stop`: stop any running dose now."""

    reason: str = Field(default="", max_length=200, pattern=_PRINTABLE)


class AlarmAckBody(_Strict):
    """`alarm.ack`: acknowledge (silence) one active alarm by its code, naming the
    person who acknowledges it (signed by their station's key; recorded as who)."""

    alarm_code: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    acknowledged_by: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,47}$",
        description="Staff id of the person acknowledging, e.g. nurse.kim",
    )


class RequestStartBody(_Strict):
    """`session.request_start`: ask for a start; the bedside CONFIRM must follow.

    `subject_id` and `lot_id`: the wristband and vial lot scanned for this start (the
    five-rights check, docs/trials.md); a protocol with `[prescription.checks]` on
    refuses a request without them."""

    note: str = Field(default="", max_length=200, pattern=_PRINTABLE)
    subject_id: str | None = Field(
        default=None, pattern=_ID, description="the patient's wristband id, as scanned"
    )
    lot_id: str | None = Field(
        default=None, pattern=_ID, description="the vial's lot label, as scanned"
    )


class PrescriptionUpdateBody(_Strict):
    """`prescription.update`: a new prescription (TOML text) with its pharmacy signature."""

    prescription_toml: str = Field(min_length=1, max_length=32768)
    pharmacy_key_id: str = Field(pattern=_ID)
    prescription_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    prescription_signature: str = Field(min_length=86, max_length=88)


class OverrideBody(_Strict):
    """`session.override`: an investigator lifts soft limits for one start of one subject."""

    subject_id: str = Field(pattern=_ID)
    role: str = Field(pattern=_ID, description="the prescription's override role")
    reason: str = Field(min_length=1, max_length=200, pattern=_PRINTABLE)
    constraint_codes: list[str] = Field(min_length=1, max_length=8)


#: The reports a coordinator may ask unblinded (`nebuliser report <name>`).
UnblindReport = Literal["sessions", "fhir", "plot"]


class UnblindBody(_Strict):
    """`report.unblind`: a coordinator unblinds one report of one subject, once."""

    subject_id: str = Field(pattern=_ID)
    report: UnblindReport
    reason: str = Field(min_length=1, max_length=200, pattern=_PRINTABLE)


CommandBody = (
    StopBody | AlarmAckBody | RequestStartBody | PrescriptionUpdateBody | OverrideBody | UnblindBody
)

BODY_MODELS: Final[Mapping[CommandName, type[CommandBody]]] = {
    CommandName.STOP: StopBody,
    CommandName.ALARM_ACK: AlarmAckBody,
    CommandName.SESSION_REQUEST_START: RequestStartBody,
    CommandName.PRESCRIPTION_UPDATE: PrescriptionUpdateBody,
    CommandName.SESSION_OVERRIDE: OverrideBody,
    CommandName.REPORT_UNBLIND: UnblindBody,
}


class CommandEnvelope(_Strict):
    """The structure of a command envelope (body still untyped until `command` is known)."""

    v: int = Field(ge=ENVELOPE_VERSION, le=ENVELOPE_VERSION)
    device_id: str = Field(pattern=_ID)
    sender_id: str = Field(pattern=_ID)
    command_id: str = Field(pattern=_ID)
    counter: int = Field(ge=1, le=MAX_COUNTER)
    issued_at_ms: int = Field(ge=0, le=MAX_COUNTER)
    expires_at_ms: int = Field(ge=0, le=MAX_COUNTER)
    command: str = Field(max_length=64)
    body: dict[str, object]
    signature: str = Field(min_length=86, max_length=88)


def signing_input(envelope_without_signature: Mapping[str, object]) -> bytes:
    """The exact bytes that are signed: domain prefix + canonical JSON."""
    return COMMAND_DOMAIN + canonical_json(dict(envelope_without_signature))


def new_command_id() -> str:
    """A fresh random command id (UUID4 hex)."""
    return uuid.uuid4().hex


def sign_command(
    *,
    key: Ed25519PrivateKey,
    sender_id: str,
    device_id: str,
    counter: int,
    command: CommandName,
    body: CommandBody,
    issued_at_ms: int,
    validity_s: int = 30,
    command_id: str | None = None,
) -> bytes:
    """Build and sign an envelope; returns its canonical JSON bytes (ready to publish)."""
    if not isinstance(body, BODY_MODELS[command]):
        raise TypeError(f"command {command} takes a {BODY_MODELS[command].__name__} body")
    unsigned: dict[str, object] = {
        "v": ENVELOPE_VERSION,
        "device_id": device_id,
        "sender_id": sender_id,
        "command_id": command_id or new_command_id(),
        "counter": counter,
        "issued_at_ms": issued_at_ms,
        "expires_at_ms": issued_at_ms + validity_s * 1000,
        "command": command.value,
        "body": body.model_dump(mode="json", exclude_none=True),
    }
    signature = key.sign(signing_input(unsigned))
    signed = {**unsigned, "signature": base64.b64encode(signature).decode("ascii")}
    CommandEnvelope.model_validate(signed)  # the signer never emits what the verifier refuses
    return canonical_json(signed)
