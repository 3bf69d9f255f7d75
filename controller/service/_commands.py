"""Signed remote commands over MQTT: intake, triage, action, record, reply.

Every message on this bed's command topics (``<root>/<ward>/<bed>/command``, and the
unsigned ``.../cmd/ack`` of older monitors) is handed to `CommandIntake._triage` the
moment the MQTT client reads it: the intake rides on the bed's ONE MQTT connection,
which the telemetry publisher owns (`BedConnection`, docs/decisions/0013), and that
connection routes these topics to the triage instead of queueing them, so the client
never drops. Triage runs on the event loop with no disk I/O:

1. `screen_command` — every check of `verify_command` except the durable counter
   commit (size, JSON, envelope, retained, sender, signature, device, time, role,
   embedded prescription signature) — and an in-memory replay check
   (`IntakeGate.claim_counter`);
2. an authenticated ``stop`` is carried out *there and then* (`Supervisor.stop_now`:
   safe state first; the arrival-to-stop time is recorded) and then queued in the
   urgent lane for its counter commit, record and reply; an authenticated
   ``alarm.ack`` goes to the urgent lane too. The urgent lane is never bounded or
   rate-limited: only a key holder can fill it, with a fresh counter each time;
3. other authenticated commands wait in the bounded routine lane (per-sender rate);
4. anything refused is tallied (`IntakeGate.tally`) and, while its sender's and the
   global token buckets allow, also gets its own ledger row, audit record and
   reply; beyond that it is counted only. Once a second the tallies become
   ``command_tally`` audit records (count, topic, sender, reason, first/last time),
   so the audit log accounts for every message; a persisting flood raises the
   COMMAND_FLOOD alarm (through `Supervisor.command_flood`).

The worker then takes the urgent lane first: commit the counter (off the loop,
fsync), act (``alarm.ack``, ``session.request_start`` — which waits for the bedside
CONFIRM —, ``prescription.update`` — stored, never applied), record (ledger row and
audit record, queued) and reply on ``.../command/reply`` (QoS 1).

Nothing a remote party sends can crash this task: screening never raises, each
message is handled inside its own error boundary, and a lost broker connection is
re-established by the publisher (its `ReconnectBackoff`); the intake subscribes again
on each new connection. See docs/security.md §3.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from typing import TYPE_CHECKING, Final

import aiomqtt
from paho.mqtt.subscribeoptions import SubscribeOptions
from pydantic import ValidationError

from controller.alarms import AlarmCode, AlarmNotActiveError
from controller.logging import get_logger
from controller.security import (
    Accepted,
    AlarmAckBody,
    AuditHead,
    AuditKind,
    CommandLimits,
    CommandName,
    IntakeGate,
    RefusalCode,
    Refused,
    SecuritySettings,
    SenderRegistry,
    SqliteCounterStore,
    TallyDisposition,
    command_topic,
    commit_screened,
    reply_topic,
    screen_command,
)
from controller.telemetry import AlarmAckCommand, BedConnection, BedTopics, MqttSettings

from ._audit import ServiceAudit, anchor_body, config_sha256, load_audit_hmac_key, run_audit
from ._command_actions import RECEIVED_PRESCRIPTIONS_DIR, CommandResult, store_prescription
from ._command_replies import CommandReplies, IntakeStats
from ._command_triage import (
    Arrival,
    payload_bytes,
    refusal_of,
    refused_result,
    unsigned_refusal,
)

if TYPE_CHECKING:  # a type only: no import at run time
    from ._context import ServiceContext

__all__ = ["RECEIVED_PRESCRIPTIONS_DIR", "CommandIntake", "IntakeStats", "security_task"]

_log = get_logger(__name__)

#: Refusals waiting for their own record and reply; the token buckets keep this
#: short, the bound only guards memory (beyond it a refusal is counted only).
_MAX_WAITING_RECORDS: Final = 512
#: How often tallies go to the audit log and the flood alarm input is updated.
_TALLY_INTERVAL_S: Final = 1.0


class CommandIntake(CommandReplies):
    """Receives this bed's commands on the bed's one MQTT connection and acts on the
    signed ones."""

    def __init__(
        self,
        *,
        ctx: ServiceContext,
        mqtt: MqttSettings,
        security: SecuritySettings,
        audit: ServiceAudit,
        counters: SqliteCounterStore,
        connection: BedConnection,
    ) -> None:
        device = ctx.config.device
        super().__init__(
            ctx=ctx,
            security=security,
            audit=audit,
            reply_topic=reply_topic(ward=device.ward, bed=device.bed, root=mqtt.root_topic),
        )
        self._mqtt = mqtt
        self._connection = connection
        self._counters = counters
        self._registry = SenderRegistry.from_settings(security)
        self._limits = CommandLimits.from_settings(security)
        self._gate = IntakeGate(known_senders=frozenset(s.id for s in security.senders))
        self._command_topic = command_topic(ward=device.ward, bed=device.bed, root=mqtt.root_topic)
        self._ack_topic = BedTopics(root=mqtt.root_topic, ward=device.ward, bed=device.bed).cmd_ack
        self._head_topic = f"{mqtt.root_topic}/{device.ward}/{device.bed}/audit/head"
        self._urgent: deque[Arrival] = deque()
        self._routine: deque[Arrival] = deque()
        self._records: deque[Arrival] = deque()
        self._work = asyncio.Event()
        self._unpublished_head: tuple[AuditHead, str] | None = None
        self.connected = asyncio.Event()

    # ------------------------------------------------------------------ connection

    async def run(self) -> None:
        """Subscribe on every connection the bed's one MQTT connection makes (the
        telemetry publisher owns it, `BedConnection`) and handle commands until
        cancelled.

        The worker and the tally flush outlive a connection (a STOP triaged just
        before a disconnect is still committed and recorded); start requests waiting
        for the bedside CONFIRM live in a task group outside the connection too.
        """
        # Routed before any subscription: no command reaches the publisher's queue.
        self._connection.route(self._command_topic, self._on_message)
        self._connection.route(self._ack_topic, self._on_message)
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._worker(group))
                group.create_task(self._flush_tallies_every())
                client: aiomqtt.Client | None = None
                while True:
                    client = await self._connection.next_connection(after=client)
                    await self._serve(client)
        finally:
            self.flush_tallies()

    async def _serve(self, client: aiomqtt.Client) -> None:
        """Subscribe on `client` and stay until its connection ends (the publisher
        reconnects, with its back-off; we are told of the next connection)."""
        try:
            while not await self._subscribe(client):
                # The connection may still be up (a SUBACK that timed out): try again
                # shortly, unless the connection ends first.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._mqtt.reconnect_max_s):
                        await self._connection.wait_lost(client)
                    return
            self._client = client
            self.stats.connections += 1
            self.connected.set()
            await self._publish_head(client)  # an anchor made while disconnected
            _log.info("command intake subscribed", topic=self._command_topic)
            await self._connection.wait_lost(client)
        finally:
            self._client = None
            self.connected.clear()

    async def _subscribe(self, client: aiomqtt.Client) -> bool:
        # Retain-as-published: a command published with the retain flag is seen as
        # retained (and refused) also by a live subscriber, not only after a resubscribe.
        options = SubscribeOptions(qos=1, retainAsPublished=True)
        try:
            for topic in (self._command_topic, self._ack_topic):
                # (Mosquitto 2.0 grants every subscription; its ACL acts on delivery.)
                await client.subscribe(topic, options=options)
        except aiomqtt.MqttError as exc:
            _log.warning("command intake: subscription failed", error=str(exc))
            return False
        return True

    async def publish_head(self, head: AuditHead, reason: str) -> None:
        """Publish an audit anchor, retained, QoS 1. While disconnected (or when the
        publish fails) the newest anchor is kept and published on (re)connection."""
        self._unpublished_head = (head, reason)
        client = self._client
        if client is not None:
            await self._publish_head(client)

    async def _publish_head(self, client: aiomqtt.Client) -> None:
        pending = self._unpublished_head
        if pending is None:
            return
        head, reason = pending
        device = self._ctx.config.device
        body = anchor_body(
            head,
            device_id=self._device_id,
            ward=device.ward,
            bed=device.bed,
            reason=reason,
            now=self._ctx.clock.now().utc,
        )
        try:
            # Retained: a ward station that connects later still gets the newest head.
            await client.publish(self._head_topic, body, qos=1, retain=True)
        except aiomqtt.MqttError as exc:
            _log.warning("audit head not published; retried on reconnection", error=str(exc))
            return
        self.stats.anchors_published += 1
        if self._unpublished_head == pending:  # a newer one may have come meanwhile
            self._unpublished_head = None

    # ------------------------------------------------------------------ triage

    def _on_message(self, message: aiomqtt.Message) -> None:
        arrived_ns = time.monotonic_ns()
        self.stats.received += 1
        try:
            self._triage(message, arrived_ns)
        except Exception as exc:  # noqa: BLE001 - must never reach the MQTT client's loop
            self.stats.handler_errors += 1
            _log.error("command triage failed", error=repr(exc))
        self._work.set()

    def _triage(self, message: aiomqtt.Message, arrived_ns: int) -> None:
        topic = str(message.topic)
        raw = payload_bytes(message.payload)
        if topic == self._ack_topic:
            self._triage_unsigned_ack(topic, raw, retained=bool(message.retain), at_ns=arrived_ns)
            return
        outcome = screen_command(
            raw,
            retained=bool(message.retain),
            now=self._ctx.clock.now().utc,
            device_id=self._device_id,
            registry=self._registry,
            limits=self._limits,
        )
        if isinstance(outcome, Refused):
            self._refuse(topic, outcome, arrived_ns)
            return
        pending = outcome.pending
        if not self._gate.claim_counter(
            pending.sender_id, pending.counter, self._counters.last_counter
        ):
            self._refuse(topic, refusal_of(pending, RefusalCode.REPLAYED_COUNTER), arrived_ns)
            return
        match pending.command:
            case CommandName.STOP:
                stopped = self._ctx.supervisor.stop_now(f"remote_stop:{pending.sender_id}")
                latency_ms = (time.monotonic_ns() - arrived_ns) / 1e6
                self.stats.last_stop_latency_ms = latency_ms
                # Every start waiting for CONFIRM goes too, the bedside's included.
                cancelled = self._ctx.pending_starts.cancel_all(
                    f"remote stop by {pending.sender_id}"
                )
                self._cancel_pending_start("superseded by stop")  # one still being admitted
                done = CommandResult(
                    status="accepted",
                    extra={
                        "stopped": stopped,
                        "cancelled_starts": cancelled,
                        "arrival_to_stop_ms": round(latency_ms, 3),
                    },
                )
                self._urgent.append(Arrival(topic=topic, outcome=outcome, arrived_ns=arrived_ns,
                                             stop_result=done))  # fmt: skip
            case CommandName.ALARM_ACK:
                self._urgent.append(Arrival(topic=topic, outcome=outcome, arrived_ns=arrived_ns))
            case _:
                now_s = arrived_ns / 1e9
                if self._gate.may_queue_routine(pending.sender_id, len(self._routine), now_s):
                    self._routine.append(
                        Arrival(topic=topic, outcome=outcome, arrived_ns=arrived_ns)
                    )
                else:
                    self._refuse(
                        topic, refusal_of(pending, RefusalCode.RATE_LIMITED), arrived_ns,
                        dropped=True,
                    )  # fmt: skip

    def _triage_unsigned_ack(self, topic: str, raw: bytes, *, retained: bool, at_ns: int) -> None:
        command: AlarmAckCommand | None = None
        with contextlib.suppress(ValidationError, ValueError):
            command = AlarmAckCommand.model_validate_json(raw)
        allowed = self._security.allow_unsigned_alarm_ack
        if (
            allowed
            and command is not None
            and not retained
            and command.device_id == self._device_id
            and self._gate.may_queue_routine("(unsigned cmd/ack)", len(self._urgent), at_ns / 1e9)
        ):
            outcome = unsigned_refusal(raw, command, "applied (bench setting)")
            self._urgent.append(
                Arrival(topic=topic, outcome=outcome, arrived_ns=at_ns, unsigned_ack=command)
            )
            return
        why = (
            "unsigned alarm acknowledgements are ignored: send a signed alarm.ack command"
            if not allowed
            else "unsigned alarm acknowledgement not applied (retained, malformed, another "
            "device, or over the rate limit)"
        )
        self._refuse(topic, unsigned_refusal(raw, command, why), at_ns)

    def _refuse(self, topic: str, refused: Refused, at_ns: int, *, dropped: bool = False) -> None:
        now_s = at_ns / 1e9
        gate = self._gate
        key = gate.sender_key(refused.claimed_sender_id)
        record = len(self._records) < _MAX_WAITING_RECORDS and gate.may_record(key, now_s)
        if record:
            disposition = TallyDisposition.RECORDED
            self._records.append(Arrival(topic=topic, outcome=refused, arrived_ns=at_ns))
        elif dropped:
            disposition = TallyDisposition.DROPPED
            self.stats.dropped += 1
        else:
            disposition = TallyDisposition.AGGREGATED
            self.stats.refused_not_recorded += 1
        gate.tally(
            topic=topic,
            sender=key,
            reason=refused.code.value,
            disposition=disposition,
            now_s=now_s,
            now_utc=self._ctx.clock.now().utc.isoformat(timespec="milliseconds"),
        )

    def flush_tallies(self) -> None:
        """Hand the tallies so far to the audit log (`command_tally` records)."""
        for tally in self._gate.take_tallies():
            self._audit.record(AuditKind.COMMAND_TALLY, tally.audit_body())

    async def _flush_tallies_every(self) -> None:
        while True:
            await asyncio.sleep(_TALLY_INTERVAL_S)
            self.flush_tallies()
            self._ctx.supervisor.command_flood(
                active=self._gate.flood_active(time.monotonic()),
                unrecorded_total=self._gate.unrecorded_total,
            )

    # ------------------------------------------------------------------ worker

    def _next_arrival(self) -> Arrival | None:
        for lane in (self._urgent, self._routine, self._records):
            if lane:
                return lane.popleft()
        return None

    async def _worker(self, group: asyncio.TaskGroup) -> None:
        while True:
            arrival = self._next_arrival()
            if arrival is None:
                self._work.clear()
                await self._work.wait()
                continue
            try:
                await self._handle(arrival, group)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - one bad message must never stop intake
                self.stats.handler_errors += 1
                _log.error("command handling failed", error=repr(exc))

    async def _handle(self, arrival: Arrival, group: asyncio.TaskGroup) -> None:
        outcome = arrival.outcome
        if arrival.unsigned_ack is not None:
            assert isinstance(outcome, Refused)
            self._apply_unsigned_ack(outcome, arrival.unsigned_ack)
            return
        if isinstance(outcome, Refused):
            self._finish(outcome, refused_result(outcome))
            if arrival.topic == self._command_topic:  # cmd/ack has no reply topic
                await self._reply(outcome, refused_result(outcome))
            return
        committed = await asyncio.to_thread(commit_screened, outcome, self._counters)
        result: CommandResult | None
        if isinstance(committed, Refused):
            result = refused_result(committed)
            if arrival.stop_result is not None:  # acted on before the durable check
                result = CommandResult(
                    status="refused",
                    reason_code=result.reason_code,
                    reason=result.reason,
                    extra=arrival.stop_result.extra,
                )
        elif arrival.stop_result is not None:
            result = arrival.stop_result
        else:
            try:
                result = await self._act(committed, group)
            except Exception as exc:  # noqa: BLE001 - still recorded and answered below
                _log.error("remote command failed", command=committed.command, error=repr(exc))
                self.stats.handler_errors += 1
                result = CommandResult(
                    status="refused",
                    reason_code="internal_error",
                    reason=f"the controller could not carry out {committed.command}: {exc!r}",
                )
        if result is None:
            return  # session.request_start: its task records and replies
        self._finish(committed, result)
        await self._reply(committed, result)

    def _apply_unsigned_ack(self, refused: Refused, command: AlarmAckCommand) -> None:
        result: CommandResult
        try:
            code = AlarmCode(command.alarm_code)
            # "." not ":": the published alarm's acknowledged_by allows [A-Za-z0-9_.-].
            self._ctx.supervisor.acknowledge_alarm(code, f"unsigned.{command.sender}"[:64])
            result = CommandResult(
                status="accepted", extra={"alarm_code": str(code), "signed": False}
            )
        except (ValueError, AlarmNotActiveError) as exc:
            result = CommandResult(
                status="refused", reason_code="alarm_not_active", reason=str(exc)
            )
        self._finish(refused, result)

    async def _act(self, accepted: Accepted, group: asyncio.TaskGroup) -> CommandResult | None:
        match accepted.command:
            case CommandName.STOP:  # triage stops at once; this is only a fallback
                stopped = self._ctx.supervisor.stop_now(f"remote_stop:{accepted.sender_id}")
                cancelled = self._ctx.pending_starts.cancel_all(
                    f"remote stop by {accepted.sender_id}"
                )
                self._cancel_pending_start("superseded by stop")  # one still being admitted
                return CommandResult(
                    status="accepted", extra={"stopped": stopped, "cancelled_starts": cancelled}
                )
            case CommandName.ALARM_ACK:
                return self._ack(accepted)
            case CommandName.SESSION_REQUEST_START:
                if self._pending_task is not None and not self._pending_task.done():
                    return CommandResult(
                        status="refused",
                        reason_code="start_request_pending",
                        reason="another start request is waiting for the bedside CONFIRM",
                    )
                self._pending_task = group.create_task(self._request_start(accepted))
                return None
            case CommandName.PRESCRIPTION_UPDATE:
                return await store_prescription(self._ctx, self._audit, accepted)
            case CommandName.SESSION_OVERRIDE | CommandName.REPORT_UNBLIND:
                return _credential_not_a_command(accepted.command)

    def _ack(self, accepted: Accepted) -> CommandResult:
        body = accepted.body
        assert isinstance(body, AlarmAckBody)
        try:
            code = AlarmCode(body.alarm_code)
        except ValueError:
            return CommandResult(
                status="refused",
                reason_code="unknown_alarm",
                reason=f"no alarm is called {body.alarm_code!r}",
            )
        try:
            self._ctx.supervisor.acknowledge_alarm(code, body.acknowledged_by)
        except AlarmNotActiveError as exc:
            return CommandResult(status="refused", reason_code="alarm_not_active", reason=str(exc))
        return CommandResult(
            status="accepted",
            extra={"alarm_code": str(code), "acknowledged_by": body.acknowledged_by},
        )


async def security_task(ctx: ServiceContext) -> None:
    """The audit log (always) and, with [mqtt], the command intake."""
    try:
        await _security_task(ctx)
    except Exception as exc:  # noqa: BLE001 - must never take dose supervision down with it
        _log.error(
            "audit log or command intake failed: remote commands are disabled until restart",
            error=repr(exc),
        )


async def _security_task(ctx: ServiceContext) -> None:
    config = ctx.config
    security = config.effective_security
    audit = ServiceAudit(
        data_dir=config.storage.data_dir,
        clock=ctx.clock,
        hmac_key=load_audit_hmac_key(security.audit_hmac_key_file),
    )
    async with audit.running():
        await audit.record_startup(config, ctx.prescription_source)
        _log.info("audit log open", config_sha256=config_sha256(config))
        intake: CommandIntake | None = None
        counters: SqliteCounterStore | None = None
        # With [mqtt], the intake always listens: without senders every command is
        # refused (and audited), and unsigned acks are ignored unless the bench allows them.
        if config.mqtt is not None:
            counters = SqliteCounterStore.in_data_dir(config.storage.data_dir)
            intake = CommandIntake(
                ctx=ctx,
                mqtt=config.mqtt,
                security=security,
                audit=audit,
                counters=counters,
                connection=ctx.mqtt_connection,
            )
        try:
            # Held while the audit runs: at a graceful stop the bed's connection stays up
            # (bounded) until the shutdown anchor below has been published on it.
            with ctx.mqtt_connection.hold():
                async with asyncio.TaskGroup() as group:
                    listening = None if intake is None else group.create_task(intake.run())
                    try:
                        # In this task: on shutdown its last anchor is published while the
                        # intake's connection is still up; only then does the intake stop.
                        await run_audit(
                            audit,
                            sessions_ended=lambda: ctx.supervisor.runtime.sessions_ended,
                            publish_head=intake.publish_head if intake is not None else None,
                            before_shutdown_anchor=intake.flush_tallies if intake else None,
                        )
                    finally:
                        if listening is not None:
                            listening.cancel()
        finally:
            if counters is not None:
                with contextlib.suppress(Exception):
                    counters.close()


def _credential_not_a_command(command: CommandName) -> CommandResult:
    """Signed credentials handed to a bedside command, never acted on from MQTT."""
    if command is CommandName.SESSION_OVERRIDE:  # issue 15: a credential for the bedside
        return CommandResult(
            status="refused",
            reason_code="override_at_bedside_only",
            reason="a signed override is handed to `nebuliser session start "
            "--override-credential FILE` at the bedside, not sent over MQTT",
        )
    return CommandResult(  # issue 20: a credential for `nebuliser report`
        status="refused",
        reason_code="unblinding_not_a_command",
        reason="an unblinding credential is handed to `nebuliser report ... "
        "--unblinded --unblind-credential FILE`, not sent over MQTT",
    )
