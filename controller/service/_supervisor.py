"""The session supervisor: admit → intent → START → watch → STOP → record.

Order of work on every input (design guide, safety rule 2): **safe state first**
(STOP bytes are written synchronously by `SerialLink.send_stop_now` before any
other work), **alarm second** (the pure alarm evaluator), **record third** (the
ledger write is queued on the `Recorder`'s writer thread and never awaited on
the stop path).

Inputs are link events (`handle_event`, synchronous), a supervision tick every
`TICK_MS` (`tick`, synchronous: the predictive stop between STATUS frames, STOP
repetition), and requests from the control interface (`admit`, `start`, `stop`,
`acknowledge_alarm`: async because admission reads the ledger).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from controller.alarms import (
    AlarmCode,
    AlarmEvent,
    AlarmInputs,
    AlarmSettings,
    AlarmState,
    SessionProgress,
    acknowledge,
    evaluate,
)
from controller.clock import Clock, ClockTrustMonitor
from controller.dosing import (
    Decision,
    DoseRequest,
    Override,
    Prescription,
    StorageStatus,
    TrustedTime,
    decide,
)
from controller.ledger import (
    AlarmAction,
    EndSource,
    Ledger,
    OutboxMessage,
    ReconcileSource,
    StorageReport,
    check_storage_floor,
    decision_to_json,
)
from controller.logging import bind_session, get_logger, unbind_session
from controller.session import (
    ASSUMED_STOP_LATENCY_MS,
    SESSION_OPEN_STATES,
    START_ALLOWED_STATES,
    STOP_SENDING_STATES,
    SessionEvent,
    SessionState,
    estimate_delivered_ul,
    host_stop_reason,
    transition,
)
from drivers.mn1 import (
    Ack,
    ClearFaults,
    CommandAnswered,
    DeviceRebooted,
    DeviceState,
    DeviceSwapped,
    Ident,
    Identified,
    LinkEvent,
    LinkLost,
    LinkPhase,
    LinkRestored,
    Nak,
    PortClosed,
    PortOpened,
    SessionEndReceived,
    Start,
    Status,
    StatusReceived,
    StopReason,
)

from ._recorder import Recorder

__all__ = ["TICK_MS", "Publications", "StartOutcome", "Supervisor"]

_log = get_logger(__name__)

#: The supervision tick; the stop rule requires at most HOST_CHECK_PERIOD_MS (25 ms).
TICK_MS: Final = 20
#: While STOP must be sent, repeat it this often until the device shows it stopped.
STOP_REPEAT_MS: Final = 100
#: After START is ACKed, STATUS must show our session nebulising within this time.
CONFIRM_NEBULISING_MS: Final = 1000
#: After an unanswered START, wait this long for a STATUS that tells the outcome.
RESOLVE_START_MS: Final = 700
#: States in which our START was ACKed or our session seen running: a device then
#: idle under another session id means the delivery is unknown (not "never started").
_ACKED_OR_SEEN_RUNNING: Final = frozenset(
    {SessionState.NEBULISING, SessionState.STOPPING, SessionState.LINK_LOST}
)
#: An alarm raised this soon after a session ended is recorded against that session.
_ALARM_AFTER_END_MS: Final = 2000
#: The actor named on alarm events the controller raises or clears itself.
_HOST = "controller"


class Publications:
    """Builds the MQTT messages that accompany ledger rows (None: MQTT not configured)."""

    def session(self, body: dict[str, Any]) -> Sequence[OutboxMessage]:
        """Messages for a session event (started/ended/uncertain/reconciled)."""
        return ()

    def alarm(self, event: AlarmEvent, active: AlarmState) -> Sequence[OutboxMessage]:
        """Messages for an alarm event and the new active set."""
        return ()

    def decision(self, decision: Decision, body: dict[str, Any]) -> Sequence[OutboxMessage]:
        """Message for an allow/refuse/stop decision."""
        return ()

    def committed(self) -> None:
        """Called on the event loop once rows carrying messages are committed."""


@dataclass(slots=True)
class _Session:
    session_id: int
    subject_id: str
    cap_ul: int
    max_duration_s: int
    output_pct: int
    expected_flow_ul_min: int
    start_sent_ms: int
    nebulising_since_ms: int | None = None
    delivered_ul: int = 0
    flow_ul_min: int = 0
    status_at_ms: int | None = None
    host_reason: str | None = None
    stop_sent_ms: int | None = None
    last_stop_tx_ms: int | None = None
    progress_recorded_ms: int | None = None
    dose: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class StartOutcome:
    """What happened to a start request (the control interface prints it)."""

    started: bool
    session_id: int | None
    reasons: tuple[str, ...]
    decision: Decision | None = None


@dataclass(slots=True)
class _Facts:
    """Facts the alarm evaluator needs that are not in STATUS."""

    link_lost: bool = False
    watchdog_stop: bool = False
    uncertain_session_id: int | None = None
    swapped_to_serial: str | None = None
    rebooted_mid_session: bool = False
    storage_low: bool = False
    storage_free_mib: int = 0
    clock_trusted: bool = True
    telemetry_dropped_total: int = 0
    # Set by the command intake (issue 13): a flood of refused/dropped commands.
    command_flood: bool = False
    command_unrecorded_total: int = 0


class Supervisor:
    """Owns the device session for one bed."""

    def __init__(
        self,
        *,
        link: Any,
        recorder: Recorder[Ledger],
        prescription: Prescription,
        clock: Clock,
        trust: ClockTrustMonitor,
        data_dir_for_storage: Any,
        free_space_floor_mb: int,
        stop_latency_ms: int = ASSUMED_STOP_LATENCY_MS,
        alarm_settings: AlarmSettings | None = None,
        publications: Publications | None = None,
        expected_serial: str | None = None,
        now_ms: Callable[[], int] | None = None,
        progress_interval_ms: int = 5000,
    ) -> None:
        self._link = link
        self._recorder = recorder
        self.prescription = prescription
        self._clock = clock
        self._trust = trust
        self._data_dir = data_dir_for_storage
        self._floor_bytes = free_space_floor_mb * 1024 * 1024
        self._stop_latency_ms = max(stop_latency_ms, ASSUMED_STOP_LATENCY_MS)
        self._alarm_settings = alarm_settings or AlarmSettings()
        self._pub = publications or Publications()
        self._expected_serial = expected_serial
        self._progress_interval_ms = progress_interval_ms
        self._now_ms = now_ms or (lambda: time.monotonic_ns() // 1_000_000)

        self.state = SessionState.IDLE
        self.session: _Session | None = None
        self.last_status: Status | None = None
        self.ident: Ident | None = None
        self.alarms = AlarmState()
        self.facts = _Facts()
        self.uncertain: dict[int, int] = {}  # session id → planned cap, awaiting device figures
        self.sessions_ended: list[dict[str, Any]] = []
        self._changed = asyncio.Event()
        self._confirm_baseline: int | None = None
        self._confirm_seen = asyncio.Event()
        self._stop_everything_at_open = False
        self._start_lock = asyncio.Lock()
        self._last_end: tuple[int, int] | None = None  # (session id, loop ms) of the last end

    # ------------------------------------------------------------------ restart

    async def recover(self) -> None:
        """At start-up: any session left open by a crash is never resumed.

        It is marked UNCERTAIN (its full planned cap counts), and STOP goes out as
        soon as the port opens; the device's own figures reconcile it later.
        """
        open_sessions = await self._recorder.call(lambda ledger: ledger.open_sessions())
        pending = await self._recorder.call(lambda ledger: ledger.uncertain_sessions())
        at = self._clock.now()
        for record in open_sessions:
            sid = record.session_id
            publish = self._pub.session(
                {
                    "event": "uncertain",
                    "session_id": sid,
                    "reason": "controller_restart",
                    "planned_cap_ul": record.planned_cap_ul,
                }
            )

            def _mark(ledger: Ledger, sid: int = sid, publish: Any = publish) -> int:
                return ledger.mark_uncertain(
                    sid, reason="controller_restart", at=at, publish=publish
                )

            await self._recorder.call(_mark)
            self.uncertain[sid] = record.planned_cap_ul
        for record in pending:
            self.uncertain[record.session_id] = record.planned_cap_ul
        if self.uncertain:
            self._stop_everything_at_open = True
            self._apply(SessionEvent.RESTART_WITH_OPEN_SESSION)
            self.facts.uncertain_session_id = max(self.uncertain)
            _log.warning(
                "unfinished sessions found at start-up: marked uncertain, STOP at once",
                sessions=sorted(self.uncertain),
            )

    # ------------------------------------------------------------------ events

    def handle_event(self, event: LinkEvent) -> None:  # noqa: PLR0912 - one arm per event type
        """React to one link event (synchronous: safe state first)."""
        now = self._now_ms()
        match event:
            case PortOpened():
                if self._stop_everything_at_open or self.state in STOP_SENDING_STATES:
                    self._link.send_stop_now(0)  # whatever runs (ICD §3)
            case StatusReceived(status=status):
                self._on_status(status, now)
            case SessionEndReceived(session_end=end):
                self._on_session_end(
                    end.session_id, end.delivered_ul, end.duration_ms, end.reason, now
                )
            case LinkLost():
                self.facts.link_lost = True
                if self.session is not None and self.session.host_reason is None:
                    self.session.host_reason = "link_lost"
                if self.state in SESSION_OPEN_STATES:
                    self._apply(SessionEvent.LINK_LOST)
            case LinkRestored():
                self.facts.link_lost = False
                if self.state in SESSION_OPEN_STATES:
                    self._apply(SessionEvent.LINK_RESTORED)
                if self.state in STOP_SENDING_STATES or self._stop_everything_at_open:
                    self._send_stop(now)
            case DeviceRebooted():
                self.facts.rebooted_mid_session = self.session is not None
                self._on_device_lost_session(SessionEvent.DEVICE_REBOOTED, "device_rebooted")
            case DeviceSwapped(current=ident):
                self.facts.swapped_to_serial = ident.serial
                self._on_device_lost_session(SessionEvent.DEVICE_SWAPPED, "device_swapped")
            case Identified(ident=ident):
                self.ident = ident
                _log.info(
                    "device identified",
                    serial=ident.serial,
                    firmware=ident.firmware,
                    hw_rev=ident.hw_rev,
                )
            case PortClosed(reason=reason):
                _log.warning("serial port closed", reason=reason)
            case _:
                pass
        self._evaluate_alarms(now)

    def tick(self) -> None:
        """Every TICK_MS: predictive stop between STATUS frames; STOP repetition."""
        now = self._now_ms()
        session = self.session
        if session is not None and self.state in (
            SessionState.NEBULISING,
            SessionState.CONFIRMING,
        ):
            self._check_stop_rules(session, now)
        if self.state in STOP_SENDING_STATES and self._device_may_be_nebulising(session):
            last = session.last_stop_tx_ms if session is not None else None
            if last is None or now - last >= STOP_REPEAT_MS:
                self._send_stop(now)

    # ------------------------------------------------------------------ STATUS

    def _on_status(self, status: Status, now: int) -> None:
        previous = self.last_status
        self.last_status = status
        if self._confirm_baseline is not None and status.confirm_count != self._confirm_baseline:
            self._confirm_seen.set()
        session = self.session
        ours = session is not None and status.session_id == session.session_id
        if ours and session is not None:
            session.delivered_ul = status.delivered_ul
            session.flow_ul_min = status.flow_ul_min
            session.status_at_ms = now
        self._on_fault_bits(previous, status, ours=ours, now=now)
        if status.state is DeviceState.NEBULISING:
            if ours:
                if session is not None and session.nebulising_since_ms is None:
                    session.nebulising_since_ms = now
                self._apply(SessionEvent.STATUS_NEBULISING_OUR_SESSION)
            else:
                self._apply(SessionEvent.STATUS_NEBULISING_OTHER_SESSION)
        elif ours and session is not None and session.nebulising_since_ms is not None:
            # Idle (or fault) and the most recent session is ours: its final figures.
            self._on_session_end(
                status.session_id, status.delivered_ul, None, status.last_stop, now
            )
        elif status.session_id in self.uncertain:
            self._reconcile(status.session_id, status.delivered_ul, ReconcileSource.DEVICE_STATUS)
        elif not ours:
            self._on_idle_other_session(status)
        if session is not None and self.session is session:
            self._supervise_running(session, status, now)

    def _supervise_running(self, session: _Session, status: Status, now: int) -> None:
        """On each STATUS of a running session: stop rules first, then the progress record."""
        if self.state not in (SessionState.NEBULISING, SessionState.CONFIRMING):
            return
        self._check_stop_rules(session, now)
        if status.session_id == session.session_id and status.state is DeviceState.NEBULISING:
            self._record_progress(session, status, now)

    def _record_progress(self, session: _Session, status: Status, now: int) -> None:
        """A progress sample in the ledger every `progress_interval_ms` while nebulising."""
        last = session.progress_recorded_ms
        if last is not None and now - last < self._progress_interval_ms:
            return
        session.progress_recorded_ms = now
        at = self._clock.now()
        sid = session.session_id
        delivered, flow, reservoir = status.delivered_ul, status.flow_ul_min, status.reservoir_ul
        self._recorder.submit(
            lambda ledger: ledger.record_progress(
                sid, delivered_ul=delivered, flow_ul_min=flow, reservoir_ul=reservoir, at=at
            ),
            what="progress",
        )

    def _on_fault_bits(
        self, previous: Status | None, status: Status, *, ours: bool, now: int
    ) -> None:
        """Fault bits first: STOP at once if ours runs (the device also stops by itself)."""
        had_faults = bool(previous.faults) if previous is not None else False
        if status.faults and not had_faults:
            if ours and self.state in (SessionState.NEBULISING, SessionState.CONFIRMING):
                self.stop_now("device_fault", now=now)  # safe state first, not next tick
            self._apply(SessionEvent.FAULT_RAISED)
        elif not status.faults and had_faults:
            self._apply(SessionEvent.FAULTS_CLEARED)

    def _on_idle_other_session(self, status: Status) -> None:
        """The device is idle and its most recent session is not our open one."""
        if self.session is not None and self.state in _ACKED_OR_SEEN_RUNNING:
            # Our START was ACKed (or our session seen running), yet the device is idle
            # under another session id: the figures do not add up.
            self._on_device_lost_session(SessionEvent.DELIVERY_UNKNOWN, "delivery_unknown")
            return
        self._settle_uncertain_not_on_device(status)
        self._apply(SessionEvent.STATUS_IDLE)

    def _settle_uncertain_not_on_device(self, status: Status) -> None:
        """Uncertain sessions the device does not have (rebooted since): keep their cap.

        The ledger keeps them UNCERTAIN (full planned cap counted); the supervisor may
        leave its UNCERTAIN state so that the dose engine, which counts that cap, can
        decide on new starts.
        """
        if self.state is not SessionState.UNCERTAIN or self.session is not None:
            return
        if status.session_id in self.uncertain or status.state is DeviceState.NEBULISING:
            return
        self._stop_everything_at_open = False
        self._apply(SessionEvent.RECONCILED)

    # ------------------------------------------------------------------ stopping

    def _check_stop_rules(self, session: _Session, now: int) -> None:
        if session.status_at_ms is None or session.host_reason is not None:
            return
        status = self.last_status
        reason = host_stop_reason(
            delivered_ul=session.delivered_ul,
            flow_ul_min=session.flow_ul_min,
            session_cap_ul=session.cap_ul,
            status_age_ms=max(0, now - session.status_at_ms),
            elapsed_ms=max(0, now - session.start_sent_ms),
            max_duration_ms=session.max_duration_s * 1000,
            faults=int(status.faults) if status is not None else 0,
            stop_latency_ms=self._stop_latency_ms,
        )
        if reason is not None:
            self.stop_now(reason.value, now=now)

    def stop_now(self, reason: str, *, now: int | None = None) -> bool:
        """Stop the running session at once (STOP bytes before anything else).

        Returns False when no session of ours is open (a STOP is still sent: the
        device ACKs it when idle, and a session we do not know of is stopped).
        """
        now = self._now_ms() if now is None else now
        session = self.session
        if session is None:
            self._link.send_stop_now(0)
            return False
        if session.host_reason is None:
            session.host_reason = reason
        self._send_stop(now)  # safe state first
        if self.state not in (SessionState.STOPPING, SessionState.LINK_LOST):
            self._apply(SessionEvent.STOP_REQUESTED)
        estimated = estimate_delivered_ul(
            delivered_at_status_ul=session.delivered_ul,
            flow_ul_min=session.flow_ul_min,
            status_age_ms=max(0, now - (session.status_at_ms or now)),
        )
        _log.info(
            "host stop",
            reason=reason,
            delivered_ul=session.delivered_ul,
            estimated_ul=estimated,
            cap_ul=session.cap_ul,
        )
        body = {
            "action": "stop",
            "reason": reason,
            "session_id": session.session_id,
            "delivered_ul": session.delivered_ul,
            "cap_ul": session.cap_ul,
        }
        at = self._clock.now()
        subject = session.subject_id
        sid = session.session_id
        self._recorder.submit(
            lambda ledger: ledger.record_decision(
                subject_id=subject, allowed=False, trace=body, at=at, session_id=sid
            ),
            what="stop decision",
        )
        return True

    def _send_stop(self, now: int) -> None:
        session = self.session
        sid = session.session_id if session is not None else 0
        if self._link.phase is LinkPhase.PORT_CLOSED:
            return  # sent again by PortOpened / LinkRestored
        self._link.send_stop_now(sid)
        if session is not None:
            session.last_stop_tx_ms = now
            if session.stop_sent_ms is None:
                session.stop_sent_ms = now

    def _device_may_be_nebulising(self, session: _Session | None) -> bool:
        status = self.last_status
        if status is None or self.facts.link_lost:
            return True
        if status.state is DeviceState.NEBULISING:
            return True
        return self._stop_everything_at_open and self.state is SessionState.UNCERTAIN

    # ------------------------------------------------------------------ ends

    def _on_session_end(
        self,
        session_id: int,
        delivered_ul: int,
        duration_ms: int | None,
        reason: StopReason,
        now: int,
    ) -> None:
        session = self.session
        if session is None or session_id != session.session_id:
            if session_id in self.uncertain:
                self._reconcile(session_id, delivered_ul, ReconcileSource.DEVICE_SESSION_END)
            return
        if reason is StopReason.WATCHDOG:
            self.facts.watchdog_stop = True
        self.session = None
        self._apply(SessionEvent.SESSION_END_RECEIVED)
        duration = (
            duration_ms
            if duration_ms is not None
            else now - (session.nebulising_since_ms or session.start_sent_ms)
        )
        dose = float(self.prescription.ul_to_dose(delivered_ul))
        reason_code = reason.name if reason is not StopReason.NONE else "UNKNOWN"
        body: dict[str, Any] = {
            "event": "ended",
            "session_id": session_id,
            "subject_id": session.subject_id,
            "delivered_ul": delivered_ul,
            "cap_ul": session.cap_ul,
            "duration_ms": duration,
            "device_reason": reason_code,
            "host_reason": session.host_reason,
            "dose": dose,
            "dose_unit": str(self.prescription.lot.unit),
        }
        self.sessions_ended.append(body)
        self._last_end = (session_id, now)
        at = self._clock.now()
        final_reason = session.host_reason or reason_code
        source = EndSource.HOST if session.host_reason else EndSource.DEVICE
        self._record_session_event(
            body,
            lambda ledger, publish: ledger.record_ended(
                session_id,
                delivered_ul=delivered_ul,
                duration_ms=duration,
                reason=final_reason,
                source=source,
                at=at,
                publish=publish,
            ),
        )
        _log.info("session ended", record=body)
        unbind_session()
        self._changed.set()

    def _on_device_lost_session(self, event: SessionEvent, reason: str) -> None:
        session = self.session
        if session is None or self.state not in SESSION_OPEN_STATES:
            if self.state in (SessionState.FAULT, SessionState.IDLE):
                self._apply(event)
            return
        self._apply(event)
        self.session = None
        self.uncertain[session.session_id] = session.cap_ul
        self.facts.uncertain_session_id = session.session_id
        at = self._clock.now()
        sid = session.session_id
        body = {
            "event": "uncertain",
            "session_id": sid,
            "reason": reason,
            "planned_cap_ul": session.cap_ul,
        }
        self._record_session_event(
            body,
            lambda ledger, publish: ledger.mark_uncertain(
                sid, reason=reason, at=at, publish=publish
            ),
        )
        self._changed.set()

    def _reconcile(self, session_id: int, delivered_ul: int, source: ReconcileSource) -> None:
        planned_cap_ul = self.uncertain.pop(session_id, 0)
        if not self.uncertain:
            self.facts.uncertain_session_id = None
            self._stop_everything_at_open = False
            if self.state is SessionState.UNCERTAIN:
                self._apply(SessionEvent.RECONCILED)
        at = self._clock.now()
        body = {
            "event": "reconciled",
            "session_id": session_id,
            "delivered_ul": delivered_ul,
            "source": str(source),
            "planned_cap_ul": planned_cap_ul,
        }
        self._record_session_event(
            body,
            lambda ledger, publish: ledger.reconcile(
                session_id, delivered_ul=delivered_ul, source=source, at=at, publish=publish
            ),
        )
        _log.info("uncertain session reconciled from device figures", record=body)

    # ------------------------------------------------------------------ starting

    async def refresh_conditions(self) -> tuple[TrustedTime, StorageReport]:
        """Re-read clock trust and free space (both may block: run in a thread).

        Called at every admission and periodically by the service, so that the
        clock-untrusted and storage-low alarms also show while nobody asks for a start.
        """
        trusted: TrustedTime = await asyncio.to_thread(self._trust.check)
        storage = await asyncio.to_thread(
            lambda: check_storage_floor(self._data_dir, floor_bytes=self._floor_bytes)
        )
        self.facts.clock_trusted = trusted.trusted
        self.facts.storage_low = not storage.ok
        self.facts.storage_free_mib = storage.free_bytes // (1024 * 1024)
        self._evaluate_alarms(self._now_ms())
        return trusted, storage

    async def admit(
        self,
        *,
        requested_ul: int | None = None,
        override: Override | None = None,
    ) -> Decision:
        """Ask the dose engine; record the decision. Controller conditions come first."""
        trusted, storage = await self.refresh_conditions()
        subject = self.prescription.subject_id
        history = await self._recorder.call(lambda ledger: ledger.history(subject))
        request = DoseRequest(
            subject_id=subject,
            storage=StorageStatus(ok=storage.ok, reason=storage.reason),
            requested_ul=requested_ul,
            override=override,
        )
        decision = decide(self.prescription, history, request, trusted)
        body = decision_to_json(decision)
        at = self._clock.now()
        allowed = decision.allowed
        publish = self._pub.decision(decision, body)
        self._recorder.submit(
            lambda ledger: ledger.record_decision(
                subject_id=subject, allowed=allowed, trace=body, at=at, publish=publish
            ),
            what="decision",
            then=self._pub.committed,
        )
        if override is not None and allowed:
            self._recorder.submit(
                lambda ledger: ledger.record_override(override, subject_id=subject, at=at),
                what="override",
            )
        return decision

    async def clear_faults(self, *, by: str) -> tuple[bool, str]:
        """Send CLEAR_FAULTS (ICD §3): latched bits whose condition has gone are cleared.

        Returns (cleared, reason). Refused while a session of ours is open. The device
        NAKs FAULT_PERSISTS while a fault's condition is still present.
        """
        if self.session is not None:
            return False, "a session is open; stop it first"
        outcome = await self._link.command(ClearFaults())
        if isinstance(outcome, CommandAnswered) and isinstance(outcome.answer, Ack):
            cleared, reason = True, "device cleared its latched faults"
        elif isinstance(outcome, CommandAnswered) and isinstance(outcome.answer, Nak):
            cleared, reason = False, f"device refused: {outcome.answer.reason.name}"
        else:
            cleared, reason = False, f"no answer from the device ({outcome.reason})"
        at = self._clock.now()
        body = {"cleared": cleared, "reason": reason}
        self._recorder.submit(
            lambda ledger: ledger.record_command(
                command="device.clear_faults", origin=by, body=body, at=at
            ),
            what="clear faults",
        )
        _log.info("clear faults", by=by, cleared=cleared, reason=reason)
        return cleared, reason

    def controller_refusals(self) -> list[str]:
        """Reasons, outside the dose rules, why no session may start now."""
        reasons = []
        if self.state not in START_ALLOWED_STATES:
            reasons.append(f"controller state is {self.state.value}; a start needs idle")
        if self._link.phase is not LinkPhase.IDENTIFIED or not self._link.link_up:
            reasons.append("the nebuliser head is not connected (no IDENT/STATUS)")
        elif self.last_status is not None and self.last_status.faults:
            reasons.append(f"device fault bits set: {self.last_status.faults!r}")
        ident = self.ident
        if self._expected_serial and ident is not None and ident.serial != self._expected_serial:
            reasons.append(
                f"head serial {ident.serial} is not the configured {self._expected_serial}"
            )
        if self._recorder.failures:
            reasons.append(f"{self._recorder.failures} ledger write(s) failed")
        return reasons

    def arm_confirm(self) -> None:
        """Start watching the head's CONFIRM button (a change of confirm_count)."""
        status = self.last_status
        self._confirm_baseline = status.confirm_count if status is not None else None
        self._confirm_seen.clear()

    async def wait_confirm_button(self) -> None:
        """Return once the head's CONFIRM button has been pressed after `arm_confirm`."""
        if self._confirm_baseline is None:
            # No STATUS yet when armed: take the first one as the baseline.
            await self._wait_for(lambda: self.last_status is not None, 10_000)
            if self.last_status is None:
                raise TimeoutError("no STATUS from the head: cannot watch its CONFIRM button")
            self._confirm_baseline = self.last_status.confirm_count
        await self._confirm_seen.wait()

    def disarm_confirm(self) -> None:
        """Stop watching the CONFIRM button."""
        self._confirm_baseline = None

    async def start(self, decision: Decision) -> StartOutcome:
        """Write the intent (committed), send START with the device cap, confirm it runs."""
        async with self._start_lock:
            refusals = self.controller_refusals()
            if refusals or not decision.allowed:
                return StartOutcome(
                    started=False,
                    session_id=None,
                    reasons=tuple(refusals) + decision.refusal_reasons,
                    decision=decision,
                )
            return await self._start_locked(decision)

    async def _start_locked(self, decision: Decision) -> StartOutcome:
        subject = self.prescription.subject_id
        at = self._clock.now()
        cap = decision.session_cap_ul
        nominal = self.ident.nominal_ul_min if self.ident is not None else 400
        expected_flow = nominal * decision.output_pct // 100
        too_small = host_stop_reason(
            delivered_ul=0,
            flow_ul_min=expected_flow,
            session_cap_ul=cap,
            status_age_ms=0,
            elapsed_ms=0,
            max_duration_ms=decision.max_duration_s * 1000,
            faults=0,
            stop_latency_ms=self._stop_latency_ms,
        )
        if too_small is not None:
            return StartOutcome(
                started=False,
                session_id=None,
                reasons=(
                    f"a {cap} µL cap is below what the host can stop in time at "
                    f"{expected_flow} µL/min ({too_small.value})",
                ),
                decision=decision,
            )
        lot = self.prescription.lot
        trace = decision_to_json(decision)
        # Intent before action (safety rule 3): committed before START is written.
        sid = await self._recorder.call(
            lambda ledger: ledger.record_intent(
                subject_id=subject,
                planned_cap_ul=cap,
                device_target_ul=cap,
                device_max_duration_s=decision.max_duration_s,
                output_pct=decision.output_pct,
                decision_trace=trace,
                at=at,
                drug=self.prescription.drug,
                concentration_per_ml=float(lot.concentration_per_ml()),
                dose_unit=str(lot.unit),
            )
        )
        bind_session(sid)
        now = self._now_ms()
        self.session = _Session(
            session_id=sid,
            subject_id=subject,
            cap_ul=cap,
            max_duration_s=decision.max_duration_s,
            output_pct=decision.output_pct,
            expected_flow_ul_min=expected_flow,
            start_sent_ms=now,
        )
        self._apply(SessionEvent.START_REQUESTED)
        outcome = await self._link.submit(
            Start(
                session_id=sid,
                target_ul=cap,
                max_duration_s=decision.max_duration_s,
                output_pct=decision.output_pct,
            )
        ).outcome()
        if isinstance(outcome, CommandAnswered) and isinstance(outcome.answer, Nak):
            return self._start_refused(sid, outcome.answer.reason.name, decision)
        if isinstance(outcome, CommandAnswered) and isinstance(outcome.answer, Ack):
            if self.state in (SessionState.STARTING, SessionState.START_UNKNOWN):
                self._apply(SessionEvent.START_ACKED)
            wait_ms = CONFIRM_NEBULISING_MS
        else:
            # Outcome unknown (safety rule 5): read STATUS, never a blind second START.
            if self.state is SessionState.STARTING:
                self._apply(SessionEvent.START_UNANSWERED)
            wait_ms = RESOLVE_START_MS
        pending_states = (
            SessionState.STARTING,
            SessionState.START_UNKNOWN,
            SessionState.CONFIRMING,
        )
        running = await self._wait_for(lambda: self.state not in pending_states, wait_ms)
        if self.state is SessionState.IDLE and self.session is not None:
            return self._start_refused(sid, "NOT_RUNNING_AFTER_UNANSWERED_START", decision)
        if not running:
            if self.state is SessionState.CONFIRMING:
                self._apply(SessionEvent.CONFIRM_TIMEOUT)
                self.stop_now("confirm_timeout")
            elif self.state is SessionState.START_UNKNOWN:
                self._on_device_lost_session(SessionEvent.DELIVERY_UNKNOWN, "start_unanswered")
            return StartOutcome(
                started=False,
                session_id=sid,
                reasons=(f"device did not confirm session {sid} running ({self.state.value})",),
                decision=decision,
            )
        started_at = self._clock.now()
        body = {
            "event": "started",
            "session_id": sid,
            "subject_id": subject,
            "cap_ul": cap,
            "max_duration_s": decision.max_duration_s,
        }
        self._record_session_event(
            body, lambda ledger, publish: ledger.record_started(sid, at=started_at, publish=publish)
        )
        _log.info("session started", session_id=sid, cap_ul=cap)
        return StartOutcome(started=True, session_id=sid, reasons=(), decision=decision)

    def _start_refused(self, sid: int, reason: str, decision: Decision) -> StartOutcome:
        if self.session is not None and self.session.session_id == sid:
            self.session = None
        if self.state in (SessionState.STARTING, SessionState.START_UNKNOWN):
            self._apply(SessionEvent.START_NAKED)
        at = self._clock.now()
        self._recorder.submit(
            lambda ledger: ledger.record_start_refused(sid, nak_reason=reason, at=at),
            what="start refused",
        )
        unbind_session()
        return StartOutcome(
            started=False,
            session_id=sid,
            reasons=(f"device refused START: {reason}",),
            decision=decision,
        )

    async def _wait_for(self, predicate: Callable[[], bool], timeout_ms: int) -> bool:
        deadline = self._now_ms() + timeout_ms
        while not predicate():
            remaining = deadline - self._now_ms()
            if remaining <= 0:
                return False
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining / 1000)
            except TimeoutError:
                return predicate()
        return True

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no session of ours is open (used by shutdown and the CLI)."""
        return await self._wait_for(lambda: self.session is None, int(timeout_s * 1000))

    # ------------------------------------------------------------------ alarms

    @property
    def publications(self) -> Publications:
        """The builder of the messages that accompany ledger rows."""
        return self._pub

    def acknowledge_alarm(self, code: AlarmCode, by: str) -> list[AlarmEvent]:
        """Acknowledge an active alarm (recorded with who and when)."""
        now = self._now_ms()
        self.alarms, events = acknowledge(self.alarms, code, by, now)
        self._record_alarm_events(events)
        return events

    def _evaluate_alarms(self, now: int) -> None:
        status = self.last_status
        session = self.session
        progress = None
        if session is not None and session.nebulising_since_ms is not None:
            expected_ms = (
                session.cap_ul * 60_000 // max(1, session.expected_flow_ul_min)
                if session.expected_flow_ul_min
                else session.max_duration_s * 1000
            )
            progress = SessionProgress(
                session_id=session.session_id,
                delivered_ul=session.delivered_ul,
                session_cap_ul=session.cap_ul,
                elapsed_ms=max(0, now - session.nebulising_since_ms),
                expected_duration_ms=expected_ms,
                target_reached=session.delivered_ul >= session.cap_ul,
            )
        nebulising = status is not None and status.state is DeviceState.NEBULISING
        inputs = AlarmInputs(
            device_faults=int(status.faults) if status is not None else 0,
            link_lost=self.facts.link_lost,
            session_open=session is not None,
            flow_ul_min=session.flow_ul_min if session is not None and nebulising else None,
            expected_flow_ul_min=(
                session.expected_flow_ul_min if session is not None and nebulising else None
            ),
            session=progress,
            device_nebulising=nebulising,
            stop_sent_at_ms=session.stop_sent_ms if session is not None else None,
            session_stopped_by_watchdog=self.facts.watchdog_stop,
            uncertain_session_id=self.facts.uncertain_session_id,
            clock_trusted=self.facts.clock_trusted,
            storage_low=self.facts.storage_low,
            storage_free_mib=self.facts.storage_free_mib,
            ledger_ok=self._recorder.failures == 0,
            swapped_to_serial=self.facts.swapped_to_serial,
            device_rebooted_mid_session=self.facts.rebooted_mid_session,
            telemetry_dropped_total=self.facts.telemetry_dropped_total,
            command_flood=self.facts.command_flood,
            command_unrecorded_total=self.facts.command_unrecorded_total,
        )
        self.alarms, events = evaluate(inputs, self.alarms, now, settings=self._alarm_settings)
        # One-shot facts are consumed once evaluated (latching alarms keep them visible).
        self.facts.watchdog_stop = False
        self.facts.rebooted_mid_session = False
        self.facts.swapped_to_serial = None
        self._record_alarm_events(events)

    def _alarm_session_id(self, now: int) -> int | None:
        """The session an alarm belongs to: the open one, or one that just ended (a fault
        that ends a session is seen in the STATUS after its SESSION_END)."""
        if self.session is not None:
            return self.session.session_id
        if self._last_end is not None and now - self._last_end[1] <= _ALARM_AFTER_END_MS:
            return self._last_end[0]
        return None

    def _record_alarm_events(self, events: list[AlarmEvent]) -> None:
        if not events:
            return
        at = self._clock.now()
        sid = self._alarm_session_id(self._now_ms())
        state = self.alarms
        for event in events:
            _log.warning(
                "alarm",
                kind=str(event.kind),
                code=str(event.code),
                priority=str(event.priority),
                message=event.message,
            )
            publish = self._pub.alarm(event, state)

            def _record(ledger: Ledger, event: AlarmEvent = event, publish: Any = publish) -> int:
                return ledger.record_alarm(
                    alarm_code=str(event.code),
                    action=AlarmAction(str(event.kind)),
                    actor=event.by or _HOST,
                    at=at,
                    priority=str(event.priority),
                    message=event.message,
                    session_id=sid,
                    publish=publish,
                )

            self._recorder.submit(_record, what="alarm", then=self._pub.committed)

    # ------------------------------------------------------------------ helpers

    def _record_session_event(
        self,
        body: dict[str, Any],
        write: Callable[[Ledger, Sequence[OutboxMessage]], object],
    ) -> None:
        """Queue a session ledger row with its MQTT message (built here, on the loop)."""
        publish = self._pub.session(body)
        self._recorder.submit(
            lambda ledger: write(ledger, publish),
            what=str(body["event"]),
            then=self._pub.committed,
        )

    def _apply(self, event: SessionEvent) -> None:
        before = self.state
        self.state = transition(self.state, event)
        if self.state is not before:
            _log.info(
                "session state", trigger=event.value, before=before.value, after=self.state.value
            )
        self._changed.set()

    def snapshot(self) -> dict[str, Any]:
        """Everything `session status` shows."""
        status = self.last_status
        session = self.session
        return {
            "state": self.state.value,
            "device": None
            if self.ident is None
            else {"serial": self.ident.serial, "firmware": self.ident.firmware},
            "link_up": bool(self._link.link_up),
            "subject_id": self.prescription.subject_id,
            "session": None
            if session is None
            else {
                "session_id": session.session_id,
                "delivered_ul": session.delivered_ul,
                "cap_ul": session.cap_ul,
                "flow_ul_min": session.flow_ul_min,
                "host_reason": session.host_reason,
            },
            "device_status": None
            if status is None
            else {
                "state": status.state.name,
                "session_id": status.session_id,
                "delivered_ul": status.delivered_ul,
                "flow_ul_min": status.flow_ul_min,
                "reservoir_ul": status.reservoir_ul,
                "mesh_temp_c": status.mesh_temp_cC / 100,
                "faults": int(status.faults),
                "confirm_count": status.confirm_count,
            },
            "alarms": [
                {
                    "code": str(a.code),
                    "priority": str(a.priority),
                    "message": a.message,
                    "condition_present": a.condition_present,
                    "acknowledged_by": a.acknowledged_by,
                }
                for a in self.alarms.active
            ],
            "uncertain_sessions": sorted(self.uncertain),
            "last_session": self.sessions_ended[-1] if self.sessions_ended else None,
        }
