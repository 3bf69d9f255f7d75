"""Unblinding credentials: a coordinator's Ed25519 key signs each unblinded report.

The credential is a command envelope (`_envelope.py`: the same format, checks and
replay counters as remote commands and signed overrides) with command
`report.unblind` and an `UnblindBody` (subject, which report, why). The key must be
one of the signed prescription's `unblinding_keys`: the pharmacy's signature vouches
for who may unblind, so editing the controller's configuration cannot add anyone.
One credential unblinds one report, once, within its validity (at most 60 s).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from controller.dosing import UnblindingKey
from controller.security._counters import CounterStore
from controller.security._envelope import UnblindBody, UnblindReport, sign_command
from controller.security._keys import KeyFileError, public_key_from_text
from controller.security._registry import CommandLimits, Sender, SenderRegistry
from controller.security._settings import CommandName, Role
from controller.security._verify import Refused, verify_command

if TYPE_CHECKING:  # cryptography is imported only where a key is used (_keys.py)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = [
    "Unblinding",
    "UnblindingRefusedError",
    "sign_unblinding",
    "unblinding_registry",
    "verify_unblinding",
]


class UnblindingRefusedError(ValueError):
    """The unblinding credential is not valid; the message says why and how to fix it.

    `code` is machine-readable (the `verify_command` refusal code, or `no_credential`,
    `no_unblinding_keys`, `wrong_command`, `wrong_subject`, `wrong_report`).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True, kw_only=True)
class Unblinding:
    """A granted unblinding: who signed it and which credential (for the audit log)."""

    signed_by: str
    """`<person> (key <id>)`, as overrides are recorded."""
    key_id: str
    credential_id: str
    report: UnblindReport
    reason: str


def sign_unblinding(
    *,
    key: Ed25519PrivateKey,
    key_id: str,
    device_id: str,
    subject_id: str,
    report: UnblindReport,
    reason: str,
    issued_at_ms: int,
    validity_s: int = 60,
    counter: int | None = None,
) -> bytes:
    """The coordinator's signed unblinding credential (canonical JSON bytes).

    `counter` defaults to `issued_at_ms`: strictly increasing for one signer without a
    counter file, as the replay check needs.
    """
    return sign_command(
        key=key,
        sender_id=key_id,
        device_id=device_id,
        counter=issued_at_ms if counter is None else counter,
        command=CommandName.REPORT_UNBLIND,
        body=UnblindBody(subject_id=subject_id, report=report, reason=reason),
        issued_at_ms=issued_at_ms,
        validity_s=validity_s,
    )


def unblinding_registry(keys: Sequence[UnblindingKey]) -> SenderRegistry:
    """The senders allowed to unblind: the prescription's `unblinding_keys`, and no one else."""
    senders = []
    for entry in keys:
        try:
            public_key = public_key_from_text(entry.public_key)
        except KeyFileError as exc:
            raise UnblindingRefusedError(
                "no_unblinding_keys",
                f"prescription unblinding_keys entry {entry.id!r}: {exc}",
            ) from exc
        senders.append(
            Sender(sender_id=entry.id, public_key=public_key, role=Role.UNBLINDING, name=entry.name)
        )
    return SenderRegistry(senders=senders)


def verify_unblinding(
    raw: bytes,
    *,
    now: datetime,
    device_id: str,
    subject_id: str,
    report: UnblindReport,
    keys: Sequence[UnblindingKey],
    counters: CounterStore,
    limits: CommandLimits | None = None,
) -> Unblinding:
    """Check a credential for this device, subject and report; the `Unblinding` it grants.

    Every check of a remote command applies (signature, sender, role, device, validity
    window, replay counter: one credential unblinds one report). Raises
    `UnblindingRefusedError` with the reason otherwise.
    """
    if not keys:
        raise UnblindingRefusedError(
            "no_unblinding_keys",
            "the prescription lists no unblinding_keys: nobody may unblind this subject's "
            "reports on this controller (the pharmacy adds [[prescription.unblinding_keys]])",
        )
    outcome = verify_command(
        raw,
        retained=False,
        now=now,
        device_id=device_id,
        registry=unblinding_registry(keys),
        counters=counters,
        limits=limits,
    )
    if isinstance(outcome, Refused):
        raise UnblindingRefusedError(
            str(outcome.code), f"unblinding credential refused ({outcome.code}): {outcome.reason}"
        )
    body = outcome.body
    if outcome.command is not CommandName.REPORT_UNBLIND or not isinstance(body, UnblindBody):
        raise UnblindingRefusedError(
            "wrong_command",
            f"the credential is a signed {outcome.command.value} command, not a "
            f"{CommandName.REPORT_UNBLIND.value}; sign one with `nebuliser report sign-unblinding`",
        )
    if body.subject_id != subject_id:
        raise UnblindingRefusedError(
            "wrong_subject",
            f"the credential unblinds subject {body.subject_id!r}; this bed's prescription is "
            f"for {subject_id!r}",
        )
    if body.report != report:
        raise UnblindingRefusedError(
            "wrong_report",
            f"the credential unblinds `report {body.report}`, not `report {report}`; sign one "
            f"for {report}",
        )
    person = next((k.name for k in keys if k.id == outcome.sender_id), outcome.sender_id)
    return Unblinding(
        signed_by=f"{person} (key {outcome.sender_id})",
        key_id=outcome.sender_id,
        credential_id=outcome.command_id,
        report=body.report,
        reason=body.reason,
    )
