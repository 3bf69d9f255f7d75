"""Ward telemetry of the running controller (docs/mqtt.md).

Two halves:

* `MqttPublications` builds the MQTT messages that accompany ledger rows (session,
  alarm, decision). The supervisor hands them to the ledger, which commits them to
  the outbox in the SAME transaction as the row they describe.
* `run_telemetry(ctx)` is the service task started when `[mqtt]` is configured: the
  `OutboxPublisher` draining the ledger's outbox, a sampler that appends one
  `telemetry` row per `mqtt.telemetry_hz` (also while idle, so a monitor never sees a
  silent bed), a retained `state` row whenever the bed's state changes, answers to
  backfill requests, and remote alarm acknowledgements applied through the supervisor.

Where the SQLite work happens (the event loop must never wait for an fsync):

* every WRITE (telemetry and state rows, backfill replies, deleting acknowledged rows)
  runs on the ledger's writer thread through the `Recorder`, in order with the dose
  records, with `synchronous=FULL`;
* the publisher READS pending rows through a second, read-only connection to the same
  file (SQLite WAL lets it read while the writer writes; a read never fsyncs). Rows
  whose delete is still queued are hidden from it, so nothing is published twice
  because of the hand-over.

Blinding: nothing published names a blinded arm. The state message carries the
prescription's public summary only; for a blinded subject, decision messages carry
constraint codes and volumes but no dose figures, lot or constraint sentences.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import sqlite3
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from controller.alarms import AlarmEvent, AlarmState
from controller.config import NebuliserConfig
from controller.dosing import Decision, Prescription
from controller.ledger import LEDGER_FILE_NAME, Ledger, Outbox, OutboxMessage
from controller.logging import get_logger
from controller.telemetry import (
    DeviceIdentity,
    OutboxEntry,
    OutboxPublisher,
    SentArchive,
    ledger_message,
    outbox_entry,
)
from drivers.mn1 import FaultBits, Status

from ._outbox_view import OutboxView
from ._supervisor import Publications, Supervisor
from ._ward_summary import course_fields, prescription_summary

if TYPE_CHECKING:  # a type only: no import at run time
    from ._context import ServiceContext

__all__ = [
    "PROCESS_BOOT_ID",
    "SENT_ARCHIVE_FILE_NAME",
    "MqttPublications",
    "device_identity",
    "fault_codes",
    "link_quality_pct",
    "run_telemetry",
    "telemetry_publications",
]

_log = get_logger(__name__)

#: A new random id every time the controller process starts (the `boot_id` of every
#: message). Sequence numbers come from the ledger's outbox and never repeat, so the
#: boot id only tells monitors that the controller restarted.
PROCESS_BOOT_ID: Final = secrets.token_hex(6)
#: The sent-message archive that backfill requests are answered from (data dir).
SENT_ARCHIVE_FILE_NAME: Final = "telemetry-sent.sqlite3"

#: How long a graceful stop waits for the last rows (the session end) to go out.
_SHUTDOWN_FLUSH_S: Final = 1.5
#: How long it then waits for the command intake's last publication (the shutdown
#: audit anchor, itself bounded to 5 s) on the shared connection.
_SHUTDOWN_GUESTS_S: Final = 6.0
#: How long it then waits for the publisher to say "offline (shutdown)".
_SHUTDOWN_PRESENCE_S: Final = 1.0
#: How often the outbox's drop counter (budget overflow) is read for the alarm.
_DROP_CHECK_S: Final = 5.0
#: STATUS older than this means no link for the quality figure (ICD: every 100 ms).
_STATUS_STALE_MS: Final = 300
#: Each device-side CRC error since the previous sample costs this much quality.
_QUALITY_PER_CRC_ERROR_PCT: Final = 10
#: `nebuliser.course` is republished this often without a session end (the 24 h
#: window moves); one indexed read of the subject's history on the writer thread.
_COURSE_PERIOD_S: Final = 3600.0

_CODE_UNSAFE = re.compile(r"[^A-Za-z0-9_.:-]")
_COMPLETED_REASONS: Final = frozenset({"cap_reached", "cap_predicted", "target_reached"})


def device_identity(config: NebuliserConfig) -> DeviceIdentity:
    """Who this controller publishes as: device, ward, bed and this process's boot id."""
    return DeviceIdentity(
        device_id=config.device.device_id,
        ward=config.device.ward,
        bed=config.device.bed,
        boot_id=PROCESS_BOOT_ID,
    )


def telemetry_publications(config: NebuliserConfig) -> Publications | None:
    """The supervisor's `Publications` for this configuration (None without `[mqtt]`)."""
    if config.mqtt is None or config.prescription is None:
        return None
    return MqttPublications(
        identity=device_identity(config),
        root_topic=config.mqtt.root_topic,
        prescription=config.prescription,
    )


def _code(text: str) -> str:
    """A free-form reason (e.g. `operator_stop:nurse kim`) as a schema-safe code."""
    return _CODE_UNSAFE.sub("_", text)[:64] or "unknown"


def fault_codes(faults: int) -> list[str]:
    """STATUS fault bits as codes (`head_disconnected`, …; unknown bits as `bit_<n>`)."""
    codes = []
    for bit in range(16):
        mask = 1 << bit
        if faults & mask:
            try:
                name = FaultBits(mask).name
            except ValueError:
                name = None
            codes.append(name.lower() if name else f"bit_{bit}")
    return codes


def link_quality_pct(*, link_up: bool, status_age_ms: int | None, new_crc_errors: int) -> int:
    """0-100: 0 without a link or a fresh STATUS; otherwise 100 less 10 per CRC error
    the device counted since the previous sample (a noisy cable shows before it fails)."""
    if not link_up or status_age_ms is None or status_age_ms > _STATUS_STALE_MS:
        return 0
    return max(0, 100 - _QUALITY_PER_CRC_ERROR_PCT * max(0, new_crc_errors))


class MqttPublications(Publications):
    """Builds the outbox messages of session, alarm and decision ledger rows."""

    def __init__(
        self, *, identity: DeviceIdentity, root_topic: str, prescription: Prescription
    ) -> None:
        self._identity = identity
        self._root = root_topic
        self._blinded = prescription.arm.blinded
        self._caps: dict[int, int] = {}
        self._wake_publisher: Callable[[], None] | None = None
        self._course_due = False

    def take_course_due(self) -> bool:
        """True once after a run ended (or turned uncertain / was reconciled): the
        sampler then publishes a fresh `nebuliser.course`."""
        due, self._course_due = self._course_due, False
        return due

    def bind_publisher(self, notify: Callable[[], None] | None) -> None:
        """Wake this publisher whenever rows carrying messages are committed."""
        self._wake_publisher = notify

    def committed(self) -> None:
        """Rows with messages were committed: wake the publisher now, not at its next poll."""
        if self._wake_publisher is not None:
            self._wake_publisher()

    def _message(self, schema: str, utc: datetime, **fields: Any) -> OutboxMessage:
        entry = outbox_entry(
            self._identity, root_topic=self._root, schema=schema, utc=utc, **fields
        )
        return ledger_message(entry)

    def session(self, body: dict[str, Any]) -> Sequence[OutboxMessage]:
        """`session` message: started, or ended (also uncertain / reconciled outcomes)."""
        utc = _utc_now()
        sid = int(body["session_id"])
        event = str(body["event"])
        if event == "started":
            cap = int(body["cap_ul"])
            self._caps[sid] = cap
            return (
                self._message(
                    "nebuliser.session",
                    utc,
                    event="started",
                    session_id=sid,
                    dose_cap_ul=cap,
                    reasons=[{"code": "started"}],
                    administration_id=body.get("administration_id"),
                ),
            )
        cap = int(body.get("cap_ul", body.get("planned_cap_ul", self._caps.get(sid, 0))))
        delivered = body.get("delivered_ul")
        if event == "ended":
            host_reason = body.get("host_reason")
            reason = _code(str(host_reason or body.get("device_reason", "unknown")).lower())
            outcome = "completed" if reason in _COMPLETED_REASONS else "stopped"
        else:  # uncertain / reconciled: the delivery was (or is still) not known
            reason = _code(str(body.get("reason", body.get("source", event))))
            outcome = event
        self._caps.pop(sid, None)
        self._course_due = True
        return (
            self._message(
                "nebuliser.session",
                utc,
                event="ended",
                session_id=sid,
                dose_cap_ul=cap,
                delivered_ul=int(delivered) if delivered is not None else None,
                outcome=outcome,
                reasons=[{"code": reason}],
            ),
        )

    def alarm(self, event: AlarmEvent, active: AlarmState) -> Sequence[OutboxMessage]:
        """`alarm` (what changed) and the retained `alarms/active` (the whole set)."""
        utc = _utc_now()
        alarm = self._message(
            "nebuliser.alarm",
            utc,
            event=str(event.kind),
            alarm_code=str(event.code),
            priority=str(event.priority),
            text=event.message,
            acknowledged_by=_name(event.by),
        )
        alarms = [
            {
                "alarm_code": str(a.code),
                "priority": str(a.priority),
                "text": a.message,
                # raised_at_ms is on the supervisor's monotonic clock, like event.at_ms.
                "raised_utc": utc - timedelta(milliseconds=max(0, event.at_ms - a.raised_at_ms)),
                "acknowledged": a.acknowledged_by is not None,
                "acknowledged_by": _name(a.acknowledged_by),
            }
            for a in active.active
        ]
        return (alarm, self._message("nebuliser.alarms_active", utc, alarms=alarms))

    def decision(self, decision: Decision, body: dict[str, Any]) -> Sequence[OutboxMessage]:
        """`decision`: allow or refuse with every constraint (blinded: codes and volumes)."""
        constraints = []
        for c in decision.constraints:
            figures = not self._blinded or c.arm_neutral
            constraints.append(
                {
                    "code": _code(c.code),
                    "ok": c.passed,
                    "limit": c.limit if figures else None,
                    "value": c.current if figures else None,
                    "text": "" if self._blinded else c.reason,
                }
            )
        reasons = [
            {"code": _code(c.code), "text": "" if self._blinded else c.reason}
            for c in decision.constraints
            if not c.passed
        ]
        return (
            self._message(
                "nebuliser.decision",
                _utc_now(),
                decision="allow" if decision.allowed else "refuse",
                request="start",
                granted_cap_ul=decision.session_cap_ul if decision.allowed else None,
                constraints=constraints,
                reasons=reasons,
            ),
        )


def _name(who: str | None) -> str | None:
    """Who acknowledged, as the schema's name (1-64 of A-Z a-z 0-9 _ . -)."""
    if who is None:
        return None
    return re.sub(r"[^A-Za-z0-9_.-]", "_", who)[:64] or "unknown"


def _utc_now() -> datetime:
    return datetime.now(UTC)


class _Sampler:
    """Appends `telemetry` rows at the configured rate and `state` rows on change."""

    def __init__(self, *, ctx: ServiceContext, identity: DeviceIdentity, notify: Any) -> None:
        assert ctx.config.mqtt is not None
        self._ctx = ctx
        self._sup: Supervisor = ctx.supervisor
        self._identity = identity
        self._root = ctx.config.mqtt.root_topic
        self._hz = ctx.config.mqtt.telemetry_hz
        self._notify = notify
        prescription = ctx.config.prescription
        assert prescription is not None
        self._rx = prescription
        self._prescription = prescription_summary(prescription)
        self._course_reason: str | None = "startup"
        self._course_next_s: float | None = None
        self._last_state: tuple[Any, ...] | None = None
        self._last_crc_errors: int | None = None
        self._status_seen: Status | None = None
        self._status_seen_at_s = 0.0
        self.samples = 0

    async def run(self) -> None:
        """Sample until cancelled (drift-free schedule at `telemetry_hz`)."""
        loop = asyncio.get_running_loop()
        interval_s = 1.0 / self._hz
        next_at = loop.time()
        while True:
            await self._sample(loop.time())
            next_at += interval_s
            delay_s = next_at - loop.time()
            if delay_s < 0:  # the writer was slow: skip, do not burst to catch up
                next_at = loop.time()
                delay_s = 0
            await asyncio.sleep(delay_s)

    def _entries(self, now_s: float) -> list[OutboxEntry]:
        sup = self._sup.runtime
        utc = _utc_now()
        status = sup.last_status
        if status is not self._status_seen:
            self._status_seen = status
            self._status_seen_at_s = now_s
        crc = status.crc_errors if status is not None else None
        new_crc = 0 if crc is None or self._last_crc_errors is None else crc - self._last_crc_errors
        self._last_crc_errors = crc
        age_ms = None if status is None else int((now_s - self._status_seen_at_s) * 1000)
        session = sup.session
        running = sup.running
        # Idle: the last session's figures, so the ward view shows how it ended.
        last = sup.last_ended if session is None else None
        if session is not None:
            session_id, delivered_ul, cap_ul = (
                session.session_id,
                session.delivered_ul,
                session.cap_ul,
            )
        elif last is not None:
            session_id, delivered_ul, cap_ul = last.session_id, last.delivered_ul, last.cap_ul
        else:
            session_id, delivered_ul, cap_ul = None, 0, 0
        entries = [
            outbox_entry(
                self._identity,
                root_topic=self._root,
                schema="nebuliser.telemetry",
                utc=utc,
                session_id=session_id,
                running=running,
                delivered_ul=max(0, delivered_ul),
                cap_ul=max(0, cap_ul),
                flow_ul_min=max(0, status.flow_ul_min) if status is not None else 0,
                reservoir_ul=max(0, status.reservoir_ul) if status is not None else None,
                temperature_cC=status.mesh_temp_cC if status is not None else None,
                faults=fault_codes(int(status.faults)) if status is not None else [],
                link_quality_pct=link_quality_pct(
                    link_up=bool(self._ctx.link.link_up),
                    status_age_ms=age_ms,
                    new_crc_errors=new_crc,
                ),
            )
        ]
        ident = sup.ident
        key = (
            ident.serial if ident else None,
            ident.firmware if ident else "",
            sup.state.value,
            session.session_id if session is not None else None,
        )
        if key != self._last_state:
            self._last_state = key
            entries.insert(
                0,
                outbox_entry(
                    self._identity,
                    root_topic=self._root,
                    schema="nebuliser.state",
                    utc=utc,
                    firmware=str(key[1]),
                    prescription=self._prescription,
                    session_state=sup.state.value,
                    session_id=key[3],
                    telemetry_hz=self._hz,
                ),
            )
        return entries + self._breathing_entries(utc)

    def _breathing_entries(self, utc: datetime) -> list[OutboxEntry]:
        """`nebuliser.breathing` (ICD 1.1 heads): every 10 s and at each state change."""
        fields = self._sup.breathing_message()
        if fields is None:
            return []
        return [
            outbox_entry(
                self._identity,
                root_topic=self._root,
                schema="nebuliser.breathing",
                utc=utc,
                **fields,
            )
        ]

    def _course_due(self, now_s: float) -> str | None:
        """Why a `nebuliser.course` message is due now (None: not due)."""
        publications = self._sup.publications
        if isinstance(publications, MqttPublications) and publications.take_course_due():
            self._course_reason = self._course_reason or "session_end"
        if self._course_reason is None and (
            self._course_next_s is not None and now_s >= self._course_next_s
        ):
            self._course_reason = "periodic"  # the 24 h window moves on
        reason, self._course_reason = self._course_reason, None
        if reason is not None:
            self._course_next_s = now_s + _COURSE_PERIOD_S
        return reason

    def _course_message(self, ledger: Ledger, reason: str) -> OutboxMessage:
        """On the writer thread: one read of the subject's history, as admission does."""
        at = self._ctx.clock.now()
        history = ledger.history(self._rx.subject_id)
        fields = course_fields(self._rx, history, now=at, reason=reason)
        return ledger_message(
            outbox_entry(
                self._identity,
                root_topic=self._root,
                schema="nebuliser.course",
                utc=at.utc,
                **fields,
            )
        )

    async def _sample(self, now_s: float) -> None:
        messages = [ledger_message(entry) for entry in self._entries(now_s)]
        at = self._ctx.clock.now()
        course_reason = self._course_due(now_s)

        def _append(ledger: Ledger) -> None:
            for message in messages:
                ledger.outbox.append(message, at=at)
            if course_reason is None:
                return
            try:
                course = self._course_message(ledger, course_reason)
            except (sqlite3.Error, ValueError) as exc:  # a summary never stops the telemetry
                _log.error("course summary not published", reason=course_reason, error=repr(exc))
                return
            ledger.outbox.append(course, at=at)

        await self._ctx.recorder.call(_append)
        self.samples += 1
        self._notify()


async def _watch_drops(reader: Outbox, supervisor: Supervisor) -> None:
    """Feed the outbox's drop counter to the alarm rules (TELEMETRY_DROPPED)."""
    while True:
        supervisor.telemetry_dropped(reader.dropped_total())
        await asyncio.sleep(_DROP_CHECK_S)


async def run_telemetry(ctx: ServiceContext) -> None:
    """The MQTT service task (only when `[mqtt]` is configured); runs until cancelled.

    On cancellation (the service is stopping) it gives the last rows — usually the
    session end recorded by the graceful stop — a moment to go out, publishes
    presence offline ("shutdown") and returns.
    """
    settings = ctx.config.mqtt
    if settings is None:
        return
    identity = device_identity(ctx.config)
    data_dir = ctx.config.storage.data_dir
    # The service's writer opened and fully checked this file before telemetry starts:
    # a second page check would only cost start-up time (seconds on a large ledger).
    reader_ledger = await asyncio.to_thread(
        Ledger.open, data_dir / LEDGER_FILE_NAME, read_only=True, check=False
    )
    archive_path = data_dir / SENT_ARCHIVE_FILE_NAME
    # The writing connection lives on the ledger's writer thread (record, prune); the
    # loop keeps a read-only one for backfill and republish (indexed reads only).
    archive_writer = await ctx.recorder.call(lambda _ledger: SentArchive(path=archive_path))
    archive = SentArchive(path=archive_path, read_only=True)
    try:
        view = OutboxView(
            reader=reader_ledger.outbox, recorder=ctx.recorder, archive_writer=archive_writer
        )
        wake: list[Callable[[], None]] = []

        def wake_publisher() -> None:
            for notify in wake:
                notify()

        def append_reply(entry: OutboxEntry) -> int:
            message, at = ledger_message(entry), ctx.clock.now()
            ctx.recorder.submit(
                lambda ledger: ledger.outbox.append(message, at=at),
                what="backfill reply",
                then=wake_publisher,  # committed: the publisher can see it now
            )
            return 0  # the seq is assigned on the writer thread; the publisher ignores it

        publisher = OutboxPublisher(
            settings=settings,
            identity=identity,
            outbox=view,
            archive=archive,
            append_reply=append_reply,
            # Alarm acks (signed, or unsigned on a bench that allows them) are handled
            # and audited by the command intake (controller/service/_commands.py).
            on_alarm_ack=None,
            settle=view.settle,
            # The bed's one MQTT connection: the command intake rides on it.
            connection=ctx.mqtt_connection,
        )
        wake.append(publisher.notify)
        sampler = _Sampler(ctx=ctx, identity=identity, notify=publisher.notify)
        publications = ctx.supervisor.publications
        if isinstance(publications, MqttPublications):
            publications.bind_publisher(publisher.notify)
        await _serve_telemetry(ctx, publisher, sampler, view, reader_ledger.outbox)
    finally:
        archive.close()
        await ctx.recorder.call(lambda _ledger: archive_writer.close())
        reader_ledger.close()


async def _serve_telemetry(
    ctx: ServiceContext,
    publisher: OutboxPublisher,
    sampler: _Sampler,
    view: OutboxView,
    reader: Outbox,
) -> None:
    cancelled = False
    async with asyncio.TaskGroup() as group:
        publishing = group.create_task(publisher.run())
        helpers = [
            group.create_task(sampler.run()),
            group.create_task(_watch_drops(reader, ctx.supervisor)),
        ]
        try:
            await asyncio.Event().wait()  # until the service cancels us
        except asyncio.CancelledError:
            cancelled = True
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
        for helper in helpers:
            helper.cancel()
        # Graceful stop: let the last rows out (bounded), then presence offline.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_SHUTDOWN_FLUSH_S):
                await ctx.recorder.drain()
                while publisher.stats.connected and view.waiting():  # noqa: ASYNC110 - another connection commits; no event to wait on
                    await asyncio.sleep(0.05)
        # The command intake publishes the shutdown audit anchor on this connection.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_SHUTDOWN_GUESTS_S):
                await ctx.mqtt_connection.wait_released()
        publisher.request_stop()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_SHUTDOWN_PRESENCE_S):
                await asyncio.shield(publishing)
        publishing.cancel()
    if cancelled:
        raise asyncio.CancelledError
