"""Recording and answering remote commands, and remote start requests waiting for
the bedside CONFIRM: the half of the command intake that runs after triage.

`CommandReplies` is the base of `CommandIntake` (`_commands.py`): record third (a
ledger row and an audit record, both queued, never awaited on the STOP path), then
reply on ``.../command/reply`` (QoS 1, not retained)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiomqtt

from controller.dosing import BedsideScan, Decision
from controller.ledger import Ledger
from controller.logging import get_logger
from controller.security import (
    Accepted,
    AuditKind,
    PendingStartRequest,
    RequestStartBody,
    SecuritySettings,
    StartRequestStatus,
    VerifyOutcome,
    build_reply,
    canonical_json,
)

from ._audit import ServiceAudit
from ._command_actions import CommandResult
from ._confirm import confirm_at_bedside

if TYPE_CHECKING:  # _service imports the intake, which imports this module
    from ._service import ServiceContext

__all__ = ["CommandReplies", "IntakeStats", "published_refusal_reasons"]

_log = get_logger(__name__)


@dataclass(kw_only=True)
class IntakeStats:
    """Counters a test or a health page can read."""

    connections: int = 0
    received: int = 0
    accepted: int = 0
    refused: int = 0
    refused_not_recorded: int = 0
    dropped: int = 0
    handler_errors: int = 0
    anchors_published: int = 0
    #: Arrival (the MQTT client handing the message over) to `stop_now` returning.
    last_stop_latency_ms: float | None = None
    last_reply: dict[str, Any] = field(default_factory=dict)


class CommandReplies:
    """Records and replies for one bed's commands; runs remote start requests."""

    def __init__(
        self,
        *,
        ctx: ServiceContext,
        security: SecuritySettings,
        audit: ServiceAudit,
        reply_topic: str,
    ) -> None:
        self._ctx = ctx
        self._security = security
        self._audit = audit
        self._device_id = ctx.config.device.device_id
        self._reply_topic = reply_topic
        self._client: aiomqtt.Client | None = None
        self._pending: PendingStartRequest | None = None
        self._pending_task: asyncio.Task[None] | None = None
        self.stats = IntakeStats()

    # ------------------------------------------------------------------ start requests

    def _cancel_pending_start(self, why: str) -> None:
        task = self._pending_task
        if task is not None and not task.done():
            task.cancel(why)

    async def _request_start(self, accepted: Accepted) -> None:
        try:
            await self._request_start_unguarded(accepted)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a failed request must not stop the intake
            self.stats.handler_errors += 1
            _log.error("remote start request failed", error=repr(exc))
            self._pending = None
            result = CommandResult(
                status="refused",
                reason_code="start_failed",
                reason=f"the start request failed inside the controller ({exc!r}); "
                "check `nebuliser session status` at the bedside",
                extra={"stage": "refused"},
            )
            self._finish(accepted, result)
            await self._reply(accepted, result)

    async def _request_start_unguarded(self, accepted: Accepted) -> None:
        sup = self._ctx.supervisor
        window_s = self._security.confirm_window_s
        pending = PendingStartRequest(
            command_id=accepted.command_id,
            sender_id=accepted.sender_id,
            requested_at_s=time.monotonic(),
            confirm_window_s=window_s,
        )
        body = accepted.body
        assert isinstance(body, RequestStartBody)
        scan = BedsideScan(subject_id=body.subject_id, lot_id=body.lot_id)  # issue 20
        decision = await sup.admit(scan=scan)
        refusals = sup.controller_refusals()
        if refusals or not decision.allowed:
            reasons = published_refusal_reasons(
                [*refusals, *decision.refusal_reasons],
                decision,
                blinded=sup.prescription.arm.blinded,
            )
            result = CommandResult(
                status="refused",
                reason_code="start_refused",
                reason="; ".join(reasons),
                extra={"stage": "refused"},
            )
            self._finish(accepted, result)
            await self._reply(accepted, result)
            return
        self._pending = pending
        self._audit.record(AuditKind.START_REQUEST, pending.audit_body())
        waiting = CommandResult(
            status="accepted",
            extra={
                "stage": "awaiting_confirm",
                "confirm_window_s": window_s,
                "cap_ul": decision.session_cap_ul,
            },
        )
        self._finish(accepted, waiting)
        try:
            with self._ctx.pending_starts.waiting(  # `session status` shows it, `stop` cancels
                requested_by=f"remote sender {accepted.sender_id}",
                channel="remote command",
                cap_ul=decision.session_cap_ul,
                timeout_s=window_s,
                cancel=self._cancel_pending_start,
            ):
                async with asyncio.TaskGroup() as group:
                    confirm = group.create_task(confirm_at_bedside(sup, timeout_s=window_s))
                    await asyncio.sleep(0)  # the button watch is armed before anyone is told
                    await self._reply(accepted, waiting)
            how = confirm.result()
        except asyncio.CancelledError:
            self._close_start(accepted, pending.cancel(time.monotonic()), "cancelled")
            raise
        now_s = time.monotonic()
        # confirm_at_bedside returns None only once its window has run out.
        closed = (
            pending.confirm(now_s)
            if how is not None
            else pending.expire(max(now_s, pending.deadline_s + 1e-3))
        )
        if closed.status is not StartRequestStatus.CONFIRMED:
            self._close_start(accepted, closed, "expired")
            await self._reply(accepted, self._expired_result(window_s))
            return
        self._close_start(accepted, closed, "confirmed")
        decision = await sup.admit(scan=scan)
        outcome = await sup.start(decision)
        if outcome.started:
            result = CommandResult(
                status="accepted",
                extra={"stage": "started", "session_id": outcome.session_id, "confirmed_by": how},
            )
        else:
            result = CommandResult(
                status="refused",
                reason_code="start_refused",
                reason="; ".join(
                    published_refusal_reasons(
                        outcome.reasons, outcome.decision, blinded=sup.prescription.arm.blinded
                    )
                ),
                extra={"stage": "refused"},
            )
        self._finish(accepted, result)
        await self._reply(accepted, result)

    def _expired_result(self, window_s: int) -> CommandResult:
        return CommandResult(
            status="refused",
            reason_code="confirm_expired",
            reason=f"not confirmed at the bedside within {window_s} s; nothing started",
            extra={"stage": "expired"},
        )

    def _close_start(self, accepted: Accepted, closed: PendingStartRequest, stage: str) -> None:
        self._pending = None
        self._audit.record(AuditKind.START_REQUEST, closed.audit_body())
        if stage != "confirmed":
            self._record_ledger(
                accepted,
                CommandResult(
                    status="refused",
                    reason_code=f"confirm_{stage}",
                    reason=f"start request {stage} without a bedside CONFIRM",
                    extra={"stage": stage},
                ),
            )

    # ------------------------------------------------------------------ record, reply

    def _finish(self, outcome: VerifyOutcome, result: CommandResult) -> None:
        """Record third: the ledger row and the audit record (both queued, not awaited)."""
        if result.status == "accepted":
            self.stats.accepted += 1
        else:
            self.stats.refused += 1
        self._record_ledger(outcome, result)
        self._audit.record(AuditKind.COMMAND, {**outcome.audit_body(), "result": result.fields()})

    def _record_ledger(self, outcome: VerifyOutcome, result: CommandResult) -> None:
        if isinstance(outcome, Accepted):
            command, sender = outcome.command.value, outcome.sender_id
            extra: dict[str, Any] = {"counter": outcome.counter}
        else:
            command = outcome.command or "(unparsed)"
            sender = f"unverified:{outcome.claimed_sender_id or '?'}"
            extra = {}
        body = {
            "command_id": outcome.command_id,
            "payload_sha256": outcome.payload_sha256,
            **extra,
            **result.fields(),
        }
        at = self._ctx.clock.now()
        self._ctx.recorder.submit(
            lambda ledger: _record_command(ledger, command, f"mqtt:{sender}", body, at),
            what="remote command",
        )

    async def _reply(self, outcome: VerifyOutcome, result: CommandResult) -> None:
        now = self._ctx.clock.now().utc
        reply: dict[str, Any] = json.loads(build_reply(outcome, device_id=self._device_id, now=now))
        if isinstance(outcome, Accepted) and result.status == "refused":
            reply["status"] = "refused"
        reply.update(result.fields())
        payload = canonical_json(reply)
        self.stats.last_reply = reply
        client = self._client
        if client is None:
            return  # the connection went away; the record stands, the sender times out
        try:
            await client.publish(self._reply_topic, payload, qos=1)
        except aiomqtt.MqttError as exc:
            _log.warning("command reply not published", error=str(exc))


def _record_command(
    ledger: Ledger, command: str, origin: str, body: dict[str, Any], at: Any
) -> int:
    return ledger.record_command(command=command, origin=origin, body=body, at=at)


def published_refusal_reasons(
    reasons: Sequence[str], decision: Decision | None, *, blinded: bool
) -> tuple[str, ...]:
    """A refused start's reasons as the published reply carries them (issue 20).

    For a blinded arm the decision's sentences (a constraint in drug units names the
    dose and the lot) are replaced by its constraint codes, as in the decision message;
    the controller's own refusals (state, link, storage) stay.
    """
    if not blinded or decision is None:
        return tuple(reasons)
    own = set(decision.refusal_reasons)
    controller_reasons = tuple(r for r in reasons if r not in own)
    return controller_reasons + decision.public_refusal_reasons(blinded=True)
