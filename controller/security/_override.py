"""Accountable overrides: an investigator's Ed25519 key signs each soft-limit override.

The credential is a command envelope (`_envelope.py`, the same format, checks and
replay counters as remote commands) with command `session.override` and an
`OverrideBody`; the sender must have the role `investigator`, and its configured
`name` (a real person) is recorded with the override. A role typed at the bedside
without such a credential lifts nothing.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # cryptography is imported only where a key is used (_keys.py)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


from controller.dosing import Override
from controller.security._counters import CounterStore
from controller.security._envelope import OverrideBody, sign_command
from controller.security._registry import CommandLimits, SenderRegistry
from controller.security._settings import CommandName
from controller.security._verify import Refused, verify_command

__all__ = ["OverrideRefusedError", "sign_override", "verify_override"]


class OverrideRefusedError(ValueError):
    """The override credential is not valid; the message says why and how to fix it."""


def sign_override(
    *,
    key: Ed25519PrivateKey,
    sender_id: str,
    device_id: str,
    subject_id: str,
    role: str,
    reason: str,
    constraint_codes: list[str],
    issued_at_ms: int,
    validity_s: int = 60,
    counter: int | None = None,
) -> bytes:
    """The investigator's signed override (canonical JSON bytes, ready to hand over).

    `counter` defaults to `issued_at_ms`: strictly increasing for one signer without a
    counter file, as the replay check needs.
    """
    return sign_command(
        key=key,
        sender_id=sender_id,
        device_id=device_id,
        counter=issued_at_ms if counter is None else counter,
        command=CommandName.SESSION_OVERRIDE,
        body=OverrideBody(
            subject_id=subject_id, role=role, reason=reason, constraint_codes=constraint_codes
        ),
        issued_at_ms=issued_at_ms,
        validity_s=validity_s,
    )


def verify_override(
    raw: bytes,
    *,
    now: datetime,
    device_id: str,
    subject_id: str,
    registry: SenderRegistry,
    counters: CounterStore,
    limits: CommandLimits | None = None,
) -> Override:
    """Check a signed override for this device and subject; the `Override` it grants.

    Every check of a remote command applies (signature, sender, role, device, validity
    window, replay counter: one credential admits one start). Raises
    `OverrideRefusedError` with the reason otherwise.
    """
    outcome = verify_command(
        raw,
        retained=False,
        now=now,
        device_id=device_id,
        registry=registry,
        counters=counters,
        limits=limits,
    )
    if isinstance(outcome, Refused):
        raise OverrideRefusedError(
            f"override credential refused ({outcome.code}): {outcome.reason}"
        )
    body = outcome.body
    if outcome.command is not CommandName.SESSION_OVERRIDE or not isinstance(body, OverrideBody):
        raise OverrideRefusedError(
            f"the credential is a signed {outcome.command.value} command, not a "
            f"{CommandName.SESSION_OVERRIDE.value}; sign one with `nebuliser session sign-override`"
        )
    if body.subject_id != subject_id:
        raise OverrideRefusedError(
            f"the override was signed for subject {body.subject_id!r}, this bed treats "
            f"{subject_id!r}"
        )
    sender = registry.get(outcome.sender_id)
    person = sender.name if sender is not None and sender.name else outcome.sender_id
    return Override(
        role=body.role,
        reason=body.reason,
        constraint_codes=frozenset(body.constraint_codes),
        signed_by=f"{person} (key {outcome.sender_id})",
        credential_id=outcome.command_id,
    )
