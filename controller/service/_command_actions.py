"""What one accepted remote command does, apart from STOP and start requests (which
live with the intake): the result type shared by reply, ledger and audit, and the
storing of a verified ``prescription.update`` (never applied to the running
controller; see docs/security.md §3)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from controller.config import PrescriptionSourceError, prescription_from_toml_bytes
from controller.security import (
    Accepted,
    AuditKind,
    PrescriptionSignature,
    PrescriptionUpdateBody,
    write_prescription_signature,
)
from controller.session import START_ALLOWED_STATES

from ._audit import ServiceAudit

if TYPE_CHECKING:  # _service imports the intake, which imports this module
    from ._service import ServiceContext

__all__ = ["RECEIVED_PRESCRIPTIONS_DIR", "CommandResult", "store_prescription"]

#: Where verified `prescription.update` files are stored (inside the data dir).
RECEIVED_PRESCRIPTIONS_DIR: Final = "prescriptions"


@dataclass(frozen=True, kw_only=True)
class CommandResult:
    """What happened to one command, for the reply, the ledger and the audit log."""

    status: str  # "accepted" | "refused"
    reason_code: str | None = None
    reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def fields(self) -> dict[str, Any]:
        """The result's members as they appear in the reply and the records."""
        out: dict[str, Any] = {"status": self.status, **self.extra}
        if self.reason_code is not None:
            out["reason_code"] = self.reason_code
            out["reason"] = self.reason
        return out


async def store_prescription(
    ctx: ServiceContext, audit: ServiceAudit, accepted: Accepted
) -> CommandResult:
    """Store a verified prescription for the next restart (refused while running)."""
    body = accepted.body
    assert isinstance(body, PrescriptionUpdateBody)
    sup = ctx.supervisor
    if sup.runtime.session is not None or sup.runtime.state not in START_ALLOWED_STATES:
        return CommandResult(
            status="refused",
            reason_code="session_running",
            reason=f"controller state is {sup.runtime.state.value}: a prescription is never "
            "changed while a session may be running; send it again when idle",
        )
    data = body.prescription_toml.encode("utf-8")
    try:
        prescription = prescription_from_toml_bytes(data, Path("prescription.update"))
    except PrescriptionSourceError as exc:
        # The detail quotes the file (drug, lot, arm): it goes to the bed's audit log
        # only. Command replies are read by the ward (blinding, issue 20).
        audit.record(
            AuditKind.PRESCRIPTION,
            {
                "event": "received_invalid",
                "sha256": body.prescription_sha256,
                "signed_by": body.pharmacy_key_id,
                "sender_id": accepted.sender_id,
                "command_id": accepted.command_id,
                "error": str(exc),
            },
        )
        return CommandResult(
            status="refused",
            reason_code="invalid_prescription",
            reason="the prescription file does not pass the controller's checks; the "
            "detail is in the bed's audit log (kind prescription, event received_invalid); "
            "check the file "
            "with `nebuliser config check` before signing it",
        )
    signature = PrescriptionSignature(
        key_id=body.pharmacy_key_id,
        sha256=body.prescription_sha256,
        signature=body.prescription_signature,
    )
    stamp = ctx.clock.now().utc.strftime("%Y%m%dT%H%M%SZ")
    directory = ctx.config.storage.data_dir / RECEIVED_PRESCRIPTIONS_DIR
    path = directory / f"received-{stamp}-{body.prescription_sha256[:12]}.toml"
    # The same file (same second, same hash) sent again is already stored.
    with contextlib.suppress(FileExistsError):
        await asyncio.to_thread(_write_verified, path, data, signature)
    audit.record(
        AuditKind.PRESCRIPTION,
        {
            "event": "received_stored",
            "sha256": body.prescription_sha256,
            "signed_by": body.pharmacy_key_id,
            "sender_id": accepted.sender_id,
            "command_id": accepted.command_id,
            "stored_as": str(path),
            "subject_id": prescription.subject_id,
            "protocol_id": prescription.protocol_id,
            "applied": False,
        },
    )
    return CommandResult(
        status="accepted",
        extra={"stage": "stored_restart_required", "stored_as": path.name},
    )


def _write_verified(path: Path, data: bytes, signature: PrescriptionSignature) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("xb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    write_prescription_signature(path, signature)
