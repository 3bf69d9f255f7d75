"""Signed remote commands over MQTT: intake, verification, action, record, reply.

For every message on ``<root>/<ward>/<bed>/command``:

1. `verify_command` (off the event loop: it commits the sender's counter with an
   fsync *before* anything is acted on; retained messages are refused);
2. act on an accepted command — ``stop`` calls `Supervisor.stop_now` at once (safe
   state first), ``alarm.ack`` acknowledges, ``session.request_start`` admits and
   then waits for the bedside CONFIRM (`confirm_at_bedside`, within
   ``[security].confirm_window_s``), ``prescription.update`` stores the verified
   file for the next restart (never applied to the running controller);
3. record it: a ``command`` row in the ledger and an audit record (both queued,
   after acting);
4. reply on ``.../command/reply`` (QoS 1, not retained).

Nothing a remote party sends can crash this task: verification never raises, each
message is handled inside its own error boundary, and a lost broker connection is
retried with back-off. See docs/security.md §3.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import aiomqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

from controller.alarms import AlarmCode, AlarmNotActiveError
from controller.config import PrescriptionSourceError, prescription_from_toml_bytes
from controller.ledger import Ledger
from controller.logging import get_logger
from controller.security import (
    Accepted,
    AlarmAckBody,
    AuditHead,
    AuditKind,
    CommandLimits,
    CommandName,
    PendingStartRequest,
    PrescriptionSignature,
    PrescriptionUpdateBody,
    Refused,
    SecuritySettings,
    SenderRegistry,
    SqliteCounterStore,
    StartRequestStatus,
    VerifyOutcome,
    build_reply,
    canonical_json,
    command_topic,
    reply_topic,
    verify_command,
    write_prescription_signature,
)
from controller.session import START_ALLOWED_STATES
from controller.telemetry import MqttSettings, mqtt_client

from ._audit import ServiceAudit, anchor_body, config_sha256, run_audit
from ._confirm import confirm_at_bedside

if TYPE_CHECKING:  # a type only: no import at run time
    from ._context import ServiceContext

__all__ = ["RECEIVED_PRESCRIPTIONS_DIR", "CommandIntake", "IntakeStats", "security_task"]

_log = get_logger(__name__)

#: Where verified `prescription.update` files are stored (inside the data dir).
RECEIVED_PRESCRIPTIONS_DIR: Final = "prescriptions"
#: Incoming messages waiting to be checked; beyond this the client drops (a flood).
_MAX_QUEUED_COMMANDS: Final = 256


@dataclass(kw_only=True)
class IntakeStats:
    """Counters a test or a health page can read."""

    connections: int = 0
    received: int = 0
    accepted: int = 0
    refused: int = 0
    handler_errors: int = 0
    anchors_published: int = 0
    last_reply: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class _Result:
    """What happened to one command, for the reply, the ledger and the audit log."""

    status: str  # "accepted" | "refused"
    reason_code: str | None = None
    reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, **self.extra}
        if self.reason_code is not None:
            out["reason_code"] = self.reason_code
            out["reason"] = self.reason
        return out


def _payload_bytes(payload: object) -> bytes:
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    if isinstance(payload, str):
        return payload.encode("utf-8", errors="replace")
    return b""  # numbers / None: never a valid envelope; verify_command refuses b""


class CommandIntake:
    """One MQTT connection that receives this bed's signed commands and acts on them."""

    def __init__(
        self,
        *,
        ctx: ServiceContext,
        mqtt: MqttSettings,
        security: SecuritySettings,
        audit: ServiceAudit,
        counters: SqliteCounterStore,
    ) -> None:
        device = ctx.config.device
        self._ctx = ctx
        self._mqtt = mqtt
        self._security = security
        self._audit = audit
        self._counters = counters
        self._registry = SenderRegistry.from_settings(security)
        self._limits = CommandLimits.from_settings(security)
        self._device_id = device.device_id
        self._command_topic = command_topic(ward=device.ward, bed=device.bed, root=mqtt.root_topic)
        self._reply_topic = reply_topic(ward=device.ward, bed=device.bed, root=mqtt.root_topic)
        self._head_topic = f"{mqtt.root_topic}/{device.ward}/{device.bed}/audit/head"
        self._client: aiomqtt.Client | None = None
        self._pending: PendingStartRequest | None = None
        self._pending_task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        self.stats = IntakeStats()

    # ------------------------------------------------------------------ connection

    async def run(self) -> None:
        """Connect, subscribe and handle commands until cancelled; reconnect on loss.

        Start requests waiting for the bedside CONFIRM live in a task group outside
        the connection, so a broker reconnect does not cancel them.
        """
        delay_s = self._mqtt.reconnect_initial_s
        async with asyncio.TaskGroup() as starts:
            while True:
                await self._connection_with_retry(starts)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, self._mqtt.reconnect_max_s)

    async def _connection_with_retry(self, starts: asyncio.TaskGroup) -> None:
        try:
            await self._one_connection(starts)
        except aiomqtt.MqttError as exc:
            _log.warning("command intake: broker connection lost", error=str(exc))
        except OSError as exc:  # e.g. a TLS certificate file that cannot be read
            _log.error("command intake: cannot connect", error=str(exc))
        finally:
            self._client = None
            self.connected.clear()

    async def _one_connection(self, group: asyncio.TaskGroup) -> None:
        client = mqtt_client(self._mqtt, client_id=f"{self._mqtt.client_id}-cmd")
        # Bound the incoming queue so a flood is dropped by the client (logged) rather
        # than growing memory; `mqtt_client` does not take this option, aiomqtt reads
        # the attribute only after construction.
        client._queue = asyncio.Queue(maxsize=_MAX_QUEUED_COMMANDS)
        async with client:
            # Retain-as-published: a command published with the retain flag is seen as
            # retained (and refused) also by a live subscriber, not only after a resubscribe.
            await client.subscribe(
                self._command_topic, options=SubscribeOptions(qos=1, retainAsPublished=True)
            )
            self._client = client
            self.stats.connections += 1
            self.connected.set()
            _log.info("command intake subscribed", topic=self._command_topic)
            async for message in client.messages:
                self.stats.received += 1
                raw = _payload_bytes(message.payload)
                try:
                    await self._handle(raw, retained=bool(message.retain), group=group)
                except (aiomqtt.MqttError, asyncio.CancelledError):
                    raise
                except Exception as exc:  # noqa: BLE001 - one bad message must never stop intake
                    self.stats.handler_errors += 1
                    _log.error("command handling failed", error=repr(exc))

    async def publish_head(self, head: AuditHead, reason: str) -> None:
        """Publish an audit anchor (skipped while disconnected; the next one follows)."""
        client = self._client
        if client is None:
            return
        body = anchor_body(
            head, device_id=self._device_id, reason=reason, now=self._ctx.clock.now().utc
        )
        try:
            await client.publish(self._head_topic, body, qos=1)
            self.stats.anchors_published += 1
        except aiomqtt.MqttError as exc:
            _log.warning("audit head not published", error=str(exc))

    # ------------------------------------------------------------------ one command

    async def _handle(self, raw: bytes, *, retained: bool, group: asyncio.TaskGroup) -> None:
        now = self._ctx.clock.now().utc
        outcome = await asyncio.to_thread(
            verify_command,
            raw,
            retained=retained,
            now=now,
            device_id=self._device_id,
            registry=self._registry,
            counters=self._counters,
            limits=self._limits,
        )
        result: _Result | None
        if isinstance(outcome, Refused):
            result = _Result(
                status="refused", reason_code=outcome.code.value, reason=outcome.reason
            )
        else:
            try:
                result = await self._act(outcome, group)
            except Exception as exc:  # noqa: BLE001 - still recorded and answered below
                _log.error("remote command failed", command=outcome.command, error=repr(exc))
                self.stats.handler_errors += 1
                result = _Result(
                    status="refused",
                    reason_code="internal_error",
                    reason=f"the controller could not carry out {outcome.command}: {exc!r}",
                )
        if result is None:
            return  # session.request_start: its task records and replies
        self._finish(outcome, result)
        await self._reply(outcome, result)

    async def _act(self, accepted: Accepted, group: asyncio.TaskGroup) -> _Result | None:
        sup = self._ctx.supervisor
        match accepted.command:
            case CommandName.STOP:
                stopped = sup.stop_now(f"remote_stop:{accepted.sender_id}")  # safe state first
                self._cancel_pending_start("superseded by stop")
                return _Result(status="accepted", extra={"stopped": stopped})
            case CommandName.ALARM_ACK:
                return self._ack(accepted)
            case CommandName.SESSION_REQUEST_START:
                if self._pending_task is not None and not self._pending_task.done():
                    return _Result(
                        status="refused",
                        reason_code="start_request_pending",
                        reason="another start request is waiting for the bedside CONFIRM",
                    )
                self._pending_task = group.create_task(self._request_start(accepted))
                return None
            case CommandName.PRESCRIPTION_UPDATE:
                return await self._store_prescription(accepted)
            case CommandName.SESSION_OVERRIDE:  # issue 15: a credential for the bedside
                return _Result(
                    status="refused",
                    reason_code="override_at_bedside_only",
                    reason="a signed override is handed to `nebuliser session start "
                    "--override-credential FILE` at the bedside, not sent over MQTT",
                )

    def _ack(self, accepted: Accepted) -> _Result:
        body = accepted.body
        assert isinstance(body, AlarmAckBody)
        try:
            code = AlarmCode(body.alarm_code)
        except ValueError:
            return _Result(
                status="refused",
                reason_code="unknown_alarm",
                reason=f"no alarm is called {body.alarm_code!r}",
            )
        try:
            self._ctx.supervisor.acknowledge_alarm(code, f"remote:{accepted.sender_id}")
        except AlarmNotActiveError as exc:
            return _Result(status="refused", reason_code="alarm_not_active", reason=str(exc))
        return _Result(status="accepted", extra={"alarm_code": str(code)})

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
            result = _Result(
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
        decision = await sup.admit()
        refusals = sup.controller_refusals()
        if refusals or not decision.allowed:
            reasons = refusals + list(decision.refusal_reasons)
            result = _Result(
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
        waiting = _Result(
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
        decision = await sup.admit()
        outcome = await sup.start(decision)
        if outcome.started:
            result = _Result(
                status="accepted",
                extra={"stage": "started", "session_id": outcome.session_id, "confirmed_by": how},
            )
        else:
            result = _Result(
                status="refused",
                reason_code="start_refused",
                reason="; ".join(outcome.reasons),
                extra={"stage": "refused"},
            )
        self._finish(accepted, result)
        await self._reply(accepted, result)

    def _expired_result(self, window_s: int) -> _Result:
        return _Result(
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
                _Result(
                    status="refused",
                    reason_code=f"confirm_{stage}",
                    reason=f"start request {stage} without a bedside CONFIRM",
                    extra={"stage": stage},
                ),
            )

    # ------------------------------------------------------------------ prescriptions

    async def _store_prescription(self, accepted: Accepted) -> _Result:
        body = accepted.body
        assert isinstance(body, PrescriptionUpdateBody)
        sup = self._ctx.supervisor
        if sup.runtime.session is not None or sup.runtime.state not in START_ALLOWED_STATES:
            return _Result(
                status="refused",
                reason_code="session_running",
                reason=f"controller state is {sup.runtime.state.value}: a prescription is never "
                "changed while a session may be running; send it again when idle",
            )
        data = body.prescription_toml.encode("utf-8")
        try:
            prescription = prescription_from_toml_bytes(data, Path("prescription.update"))
        except PrescriptionSourceError as exc:
            return _Result(status="refused", reason_code="invalid_prescription", reason=str(exc))
        signature = PrescriptionSignature(
            key_id=body.pharmacy_key_id,
            sha256=body.prescription_sha256,
            signature=body.prescription_signature,
        )
        stamp = self._ctx.clock.now().utc.strftime("%Y%m%dT%H%M%SZ")
        directory = self._ctx.config.storage.data_dir / RECEIVED_PRESCRIPTIONS_DIR
        path = directory / f"received-{stamp}-{body.prescription_sha256[:12]}.toml"
        # The same file (same second, same hash) sent again is already stored.
        with contextlib.suppress(FileExistsError):
            await asyncio.to_thread(_write_verified, path, data, signature)
        self._audit.record(
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
        return _Result(
            status="accepted",
            extra={"stage": "stored_restart_required", "stored_as": path.name},
        )

    # ------------------------------------------------------------------ record, reply

    def _finish(self, outcome: VerifyOutcome, result: _Result) -> None:
        """Record third: the ledger row and the audit record (both queued, not awaited)."""
        if result.status == "accepted":
            self.stats.accepted += 1
        else:
            self.stats.refused += 1
        self._record_ledger(outcome, result)
        self._audit.record(AuditKind.COMMAND, {**outcome.audit_body(), "result": result.fields()})

    def _record_ledger(self, outcome: VerifyOutcome, result: _Result) -> None:
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

    async def _reply(self, outcome: VerifyOutcome, result: _Result) -> None:
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


def _write_verified(path: Path, data: bytes, signature: PrescriptionSignature) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("xb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    write_prescription_signature(path, signature)


async def security_task(ctx: ServiceContext) -> None:
    """The audit log (always) and, with [mqtt] and [security] senders, the command intake."""
    try:
        await _security_task(ctx)
    except Exception as exc:  # noqa: BLE001 - must never take dose supervision down with it
        _log.error(
            "audit log or command intake failed: remote commands are disabled until restart",
            error=repr(exc),
        )


async def _security_task(ctx: ServiceContext) -> None:
    config = ctx.config
    audit = ServiceAudit(data_dir=config.storage.data_dir, clock=ctx.clock)
    async with audit.running():
        await audit.record_startup(config, ctx.prescription_source)
        _log.info("audit log open", config_sha256=config_sha256(config))
        intake: CommandIntake | None = None
        counters: SqliteCounterStore | None = None
        if config.mqtt is not None and config.security is not None and config.security.senders:
            counters = SqliteCounterStore.in_data_dir(config.storage.data_dir)
            intake = CommandIntake(
                ctx=ctx,
                mqtt=config.mqtt,
                security=config.security,
                audit=audit,
                counters=counters,
            )
        try:
            async with asyncio.TaskGroup() as group:
                tasks: list[Coroutine[Any, Any, None]] = [
                    run_audit(
                        audit,
                        sessions_ended=lambda: ctx.supervisor.runtime.sessions_ended,
                        publish_head=intake.publish_head if intake is not None else None,
                    )
                ]
                if intake is not None:
                    tasks.append(intake.run())
                for task in tasks:
                    group.create_task(task)
        finally:
            if counters is not None:
                with contextlib.suppress(Exception):
                    counters.close()
