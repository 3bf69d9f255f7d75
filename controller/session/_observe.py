"""What the device shows, and what the host does about it (sans-IO).

`DeviceObserver` is the half of the session runtime that reacts to the link:
STATUS, SESSION_END, link loss and return, reboots and swaps. It keeps the state
table (`_states.py`), the open session, the uncertain sessions and the alarm state,
and queues effects in the safe order: STOP first, alarms second, records third.
`SessionRuntime` (`_runtime.py`) adds the requests people make (start, stop,
acknowledge) on top.
"""

from __future__ import annotations

from typing import Final, Literal

from controller.alarms import AlarmSettings, AlarmState
from controller.dosing import HOST_REASON_RESERVOIR_EMPTY, Prescription, dry_end_expected
from controller.ledger import ReconcileSource
from drivers.mn1 import (
    DeviceRebooted,
    DeviceState,
    DeviceSwapped,
    FaultBits,
    Ident,
    Identified,
    LinkEvent,
    LinkLost,
    LinkRestored,
    PortClosed,
    PortOpened,
    SessionEndReceived,
    Status,
    StatusReceived,
    StopReason,
)

from ._breath import BreathTracker
from ._effects import (
    Effect,
    LogLine,
    Now,
    SendStop,
    WriteDecision,
    WriteEnded,
    WriteProgress,
    WriteStarted,
)
from ._facts import ALARM_AFTER_END_MS, AlarmBook, alarm_inputs
from ._running import Conditions, RunningSession, UncertainSession
from ._states import (
    SESSION_OPEN_STATES,
    STOP_SENDING_STATES,
    SessionEvent,
    SessionState,
    transition,
)
from ._stop_rules import estimate_delivered_ul, host_stop_reason
from ._uncertain import UncertainSessions

__all__ = ["ALARM_AFTER_END_MS", "STOP_REPEAT_MS", "TICK_MS", "DeviceObserver"]

#: The supervision tick; the stop rule requires at most HOST_CHECK_PERIOD_MS (25 ms).
TICK_MS: Final = 20
#: While STOP must be sent, repeat it this often until the device shows it stopped.
STOP_REPEAT_MS: Final = 100
#: States in which our START was ACKed or our session seen running: a device then
#: idle under another session id means the delivery is unknown (not "never started").
_ACKED_OR_SEEN_RUNNING: Final = frozenset(
    {SessionState.NEBULISING, SessionState.STOPPING, SessionState.LINK_LOST}
)
#: Device states of a session in progress: WAITING is a breath-gated session paused
#: (between pulses, or for want of breathing) — still running, still to be stopped.
IN_SESSION_DEVICE_STATES: Final = frozenset({DeviceState.NEBULISING, DeviceState.WAITING})


class DeviceObserver:
    """Device observations → state, stops, ends, reconciliations, alarms."""

    def __init__(
        self,
        *,
        prescription: Prescription,
        stop_latency_ms: int,
        alarm_settings: AlarmSettings,
        progress_interval_ms: int,
    ) -> None:
        self.prescription = prescription
        self._stop_latency_ms = stop_latency_ms
        self._book = AlarmBook(alarm_settings)
        self._progress_interval_ms = progress_interval_ms
        self.state = SessionState.IDLE
        self.last_status: Status | None = None
        self.ident: Ident | None = None
        self.conditions = Conditions()
        self.last_ended: WriteEnded | None = None
        self.sessions_ended = 0
        self._effects: list[Effect] = []
        self._session: RunningSession | None = None
        self._uncertain = UncertainSessions()
        self._ran: set[int] = set()  # sessions seen running or ended by the device
        self._link_lost = False
        self._status_stale = False  # our SESSION_END came after the last STATUS
        self._stop_everything_at_open = False
        self._last_stop_tx_ms = 0
        self._last_tick_ms = 0
        self._breath = BreathTracker(prescription)  # ICD 1.1: capabilities, breath runs

    # ------------------------------------------------------------------ views

    @property
    def session(self) -> RunningSession | None:
        """The open session (read it; only the runtime changes it)."""
        return self._session

    @property
    def uncertain_sessions(self) -> list[UncertainSession]:
        """Sessions whose delivery is unknown, oldest first."""
        return self._uncertain.all()

    @property
    def running(self) -> bool:
        """A session of ours is being delivered or being stopped."""
        return self._session is not None and self.state in (
            SessionState.NEBULISING,
            SessionState.STOPPING,
        )

    @property
    def status_current(self) -> bool:
        """False between our SESSION_END and the next STATUS (the last one is stale)."""
        return not self._status_stale

    def device_nebulising(self) -> bool:
        """The last STATUS says NEBULISING (or WAITING: a gated session paused) and no
        SESSION_END has come since."""
        status = self.last_status
        return (
            status is not None
            and status.state in IN_SESSION_DEVICE_STATES
            and not self._status_stale
        )

    # ------------------------------------------------------------------ link events

    def _observe(self, event: LinkEvent, now: Now) -> None:  # noqa: PLR0912 - one arm per event
        self._breath.on_event(event, now)
        match event:
            case PortOpened():
                if self._stop_everything_at_open or self.state in STOP_SENDING_STATES:
                    self._effects.append(SendStop(0))  # whatever runs (ICD §3)
                    self._last_stop_tx_ms = now.ms
            case StatusReceived(status=status):
                self._on_status(status, now)
            case SessionEndReceived(session_end=end):
                self._on_session_end(
                    end.session_id, end.delivered_ul, end.duration_ms, end.reason, now
                )
            case LinkLost():
                self._link_lost = True
                # A running session within its limits carries on through a silence
                # shorter than the head's watchdog: the stop rule assumes the head's
                # maximum output meanwhile and stops it at 1000 ms (ICD §6: "unless
                # the session is known to be allowed to continue").
                if self.state is not SessionState.NEBULISING:
                    if self._session is not None and self._session.host_reason is None:
                        self._session.host_reason = "link_lost"
                    if self.state in SESSION_OPEN_STATES:
                        self._apply(SessionEvent.LINK_LOST)
            case LinkRestored():
                self._link_lost = False
                if self.state in SESSION_OPEN_STATES and self.state is not SessionState.NEBULISING:
                    self._apply(SessionEvent.LINK_RESTORED)
                if self.state in STOP_SENDING_STATES or self._stop_everything_at_open:
                    self._send_stop(now)
            case DeviceRebooted():
                if self._session is not None:
                    self._book.facts.rebooted_mid_session = True
                self._lose_session(SessionEvent.DEVICE_REBOOTED, "device_rebooted", now)
            case DeviceSwapped(current=ident):
                self._book.facts.swapped_to_serial = ident.serial
                self._lose_session(SessionEvent.DEVICE_SWAPPED, "device_swapped", now)
            case Identified(ident=ident):
                self.ident = ident
                self._log(
                    "info",
                    "device identified",
                    serial=ident.serial,
                    firmware=ident.firmware,
                    hw_rev=ident.hw_rev,
                )
            case PortClosed(reason=reason):
                self._log("warning", "serial port closed", reason=reason)
            case _:
                pass

    def _on_status(self, status: Status, now: Now) -> None:
        previous = self.last_status
        self.last_status = status
        self._status_stale = False
        self._observed_confirm()
        session = self._session
        ours = session is not None and status.session_id == session.session_id
        if ours and session is not None:
            session.delivered_ul = status.delivered_ul
            session.flow_ul_min = status.flow_ul_min
            session.status_at_ms = now.ms
        self._on_fault_bits(previous, status, ours=ours, now=now)
        if status.state in IN_SESSION_DEVICE_STATES:
            if ours and session is not None:
                if session.nebulising_since_ms is None:
                    session.nebulising_since_ms = now.ms
                self._apply(SessionEvent.STATUS_NEBULISING_OUR_SESSION)
                self._record_started(session, now)
            else:
                self._apply(SessionEvent.STATUS_NEBULISING_OTHER_SESSION)
        elif ours and session is not None and session.nebulising_since_ms is not None:
            # Idle (or fault) and the most recent session is ours: its final figures.
            self._on_session_end(
                status.session_id, status.delivered_ul, None, status.last_stop, now
            )
        elif status.session_id in self._uncertain:
            self._reconcile(
                status.session_id,
                status.delivered_ul,
                ReconcileSource.DEVICE_STATUS,
                now,
                device_reason=None
                if status.last_stop is StopReason.NONE
                else status.last_stop.name,
            )
        elif not ours:
            self._on_idle_other_session(status, now)
        if session is not None and self._session is session:
            self._supervise_running(session, status, now)

    def _observed_confirm(self) -> None:
        """Hook: the runtime watches the CONFIRM button count on every STATUS."""

    def _supervise_running(self, session: RunningSession, status: Status, now: Now) -> None:
        """On each STATUS of a running session: stop rules first, then the progress record."""
        if self.state not in (SessionState.NEBULISING, SessionState.CONFIRMING):
            return
        self._check_stop_rules(session, now)
        if status.session_id != session.session_id or status.state not in IN_SESSION_DEVICE_STATES:
            return
        last = session.progress_recorded_ms
        if last is not None and now.ms - last < self._progress_interval_ms:
            return
        session.progress_recorded_ms = now.ms
        self._effects.append(
            WriteProgress(
                session_id=session.session_id,
                delivered_ul=status.delivered_ul,
                flow_ul_min=status.flow_ul_min,
                reservoir_ul=status.reservoir_ul,
                at=now.at,
            )
        )

    def _on_fault_bits(
        self, previous: Status | None, status: Status, *, ours: bool, now: Now
    ) -> None:
        """Fault bits first: STOP at once if ours runs (the device also stops by itself)."""
        had_faults = bool(previous.faults) if previous is not None else False
        dry_only = status.faults == FaultBits.RESERVOIR_EMPTY
        if status.faults and not had_faults:
            if ours and self.state in (SessionState.NEBULISING, SessionState.CONFIRMING):
                reason = HOST_REASON_RESERVOIR_EMPTY if dry_only else "device_fault"
                self._stop(reason, now)  # safe state first, not next tick
            self._apply(SessionEvent.FAULT_RAISED)
            last = self.last_ended
            ran_dry_now = ours or (last is not None and last.session_id == status.session_id)
            # A to-dryness prescription that ran dry at its expected volume is complete:
            # the dry-cup bit is then no alarm (its end is recorded as to dryness).
            self._book.facts.dry_end_expected = (
                dry_only
                and ran_dry_now
                and dry_end_expected(self.prescription.delivery, delivered_ul=status.delivered_ul)
            )
        elif not status.faults and had_faults:
            self._book.facts.dry_end_expected = False
            self._apply(SessionEvent.FAULTS_CLEARED)

    def _on_idle_other_session(self, status: Status, now: Now) -> None:
        """The device is idle and its most recent session is not our open one."""
        if self._session is not None and self.state in _ACKED_OR_SEEN_RUNNING:
            # Our START was ACKed (or our session seen running), yet the device is idle
            # under another session id: the figures do not add up.
            self._lose_session(SessionEvent.DELIVERY_UNKNOWN, "delivery_unknown", now)
            return
        if (
            self.state is SessionState.UNCERTAIN
            and self._session is None
            and status.state not in IN_SESSION_DEVICE_STATES
        ):
            # Uncertain sessions the device does not have (rebooted since): the ledger
            # keeps their full cap; the runtime leaves UNCERTAIN so that the dose engine
            # (which counts that cap) decides on new starts once a person accepts them.
            self._stop_everything_at_open = False
            self._apply(SessionEvent.RECONCILED)
            return
        self._apply(SessionEvent.STATUS_IDLE)

    # ------------------------------------------------------------------ stopping

    def _check_stop_rules(self, session: RunningSession, now: Now) -> None:
        if session.status_at_ms is None or session.host_reason is not None:
            return
        status = self.last_status
        reason = host_stop_reason(
            delivered_ul=session.delivered_ul,
            flow_ul_min=session.flow_ul_min,
            session_cap_ul=session.cap_ul,
            status_age_ms=max(0, now.ms - session.status_at_ms),
            elapsed_ms=max(0, now.ms - session.start_sent_ms),
            max_duration_ms=session.max_duration_s * 1000,
            faults=int(status.faults) if status is not None else 0,
            stop_latency_ms=self._stop_latency_ms,
            worst_flow_ul_min=session.worst_flow_ul_min,
        )
        if reason is not None:
            self._stop(reason.value, now)

    def _stop(self, reason: str, now: Now) -> bool:
        session = self._session
        if session is None:
            self._effects.append(SendStop(0))
            self._last_stop_tx_ms = now.ms
            return False
        if session.host_reason is None:
            session.host_reason = reason
        self._send_stop(now)  # safe state first
        if self.state not in (SessionState.STOPPING, SessionState.LINK_LOST):
            self._apply(SessionEvent.STOP_REQUESTED)
        estimated = estimate_delivered_ul(
            delivered_at_status_ul=session.delivered_ul,
            flow_ul_min=session.flow_ul_min,
            status_age_ms=max(0, now.ms - (session.status_at_ms or now.ms)),
        )
        trace: dict[str, object] = {
            "action": "stop",
            "reason": reason,
            "session_id": session.session_id,
            "delivered_ul": session.delivered_ul,
            "estimated_ul": estimated,
            "cap_ul": session.cap_ul,
        }
        self._effects.append(
            WriteDecision(
                subject_id=session.subject_id,
                allowed=False,
                trace=trace,
                at=now.at,
                session_id=session.session_id,
            )
        )
        self._log("info", "host stop", **trace)
        return True

    def _send_stop(self, now: Now) -> None:
        session = self._session
        self._effects.append(SendStop(session.session_id if session is not None else 0))
        self._last_stop_tx_ms = now.ms
        if session is not None:
            session.last_stop_tx_ms = now.ms
            if session.stop_sent_ms is None:
                session.stop_sent_ms = now.ms

    def _stop_must_repeat(self) -> bool:
        """STOP goes out again every STOP_REPEAT_MS until the device shows it stopped."""
        if self.state not in STOP_SENDING_STATES:
            return False
        if self.last_status is None or self._link_lost or self.device_nebulising():
            return True
        return self._stop_everything_at_open and self.state is SessionState.UNCERTAIN

    # ------------------------------------------------------------------ ends

    def _record_started(self, session: RunningSession, now: Now) -> None:
        """The started row, once, before any end row of the same session."""
        self._ran.add(session.session_id)
        if session.started_recorded:
            return
        session.started_recorded = True
        self._effects.append(
            WriteStarted(
                session_id=session.session_id,
                subject_id=session.subject_id,
                cap_ul=session.cap_ul,
                max_duration_s=session.max_duration_s,
                at=now.at,
                administration_id=session.administration_id,
            )
        )
        self._log("info", "session started", session_id=session.session_id, cap_ul=session.cap_ul)

    def _on_session_end(
        self,
        session_id: int,
        delivered_ul: int,
        duration_ms: int | None,
        reason: StopReason,
        now: Now,
    ) -> None:
        session = self._session
        device_reason = reason.name if reason is not StopReason.NONE else "UNKNOWN"
        if session is None or session_id != session.session_id:
            if session_id in self._uncertain:
                self._reconcile(
                    session_id,
                    delivered_ul,
                    ReconcileSource.DEVICE_SESSION_END,
                    now,
                    device_reason=device_reason,
                    duration_ms=duration_ms,
                )
            else:  # reconciled from STATUS, which carries no duration: keep the head's
                late = self._uncertain.late_end(
                    session_id,
                    delivered_ul=delivered_ul,
                    duration_ms=duration_ms,
                    device_reason=device_reason,
                    now=now,
                )
                self._effects += [late] if late is not None else []
            return
        if reason is StopReason.WATCHDOG:
            self._book.facts.watchdog_stop = True
        # A session can end before a STATUS showed it running (a cup that empties at
        # once): the device ran it, so its started row goes first.
        self._record_started(session, now)
        self._session = None
        self._status_stale = duration_ms is not None  # SESSION_END overtook STATUS
        self._apply(SessionEvent.SESSION_END_RECEIVED)
        duration = (
            duration_ms
            if duration_ms is not None
            else now.ms - (session.nebulising_since_ms or session.start_sent_ms)
        )
        ended = WriteEnded(
            session_id=session_id,
            subject_id=session.subject_id,
            delivered_ul=delivered_ul,
            cap_ul=session.cap_ul,
            duration_ms=duration,
            device_reason=device_reason,
            host_reason=session.host_reason,
            dose=float(self.prescription.ul_to_dose(delivered_ul)),
            dose_unit=str(self.prescription.lot.unit),
            at=now.at,
        )
        self.last_ended = ended
        self.sessions_ended += 1
        self._book.facts.last_end = (session_id, now.ms)
        self._effects.append(ended)
        # Log lines are shipped off the bed: no dose figure for a blinded arm (issue 20).
        self._log("info", "session ended", record=ended.body(blinded=self.prescription.arm.blinded))

    def _lose_session(self, event: SessionEvent, reason: str, now: Now) -> None:
        """Our open session can no longer be accounted from device figures: UNCERTAIN."""
        session = self._session
        if session is None or self.state not in SESSION_OPEN_STATES:
            if self.state in (SessionState.FAULT, SessionState.IDLE):
                self._apply(event)
            return
        self._apply(event)
        self._session = None
        self._book.facts.last_end = (session.session_id, now.ms)  # its alarms belong to it
        self._effects.append(self._uncertain.add(session.session_id, session.cap_ul, reason, now))

    def _reconcile(
        self,
        session_id: int,
        delivered_ul: int,
        source: ReconcileSource,
        now: Now,
        *,
        device_reason: str | None = None,
        duration_ms: int | None = None,
    ) -> None:
        record = self._uncertain.reconcile(
            session_id,
            delivered_ul,
            source,
            now,
            device_reason=device_reason,
            duration_ms=duration_ms,
        )
        if not self._uncertain:
            self._stop_everything_at_open = False
            if self.state is SessionState.UNCERTAIN:
                self._apply(SessionEvent.RECONCILED)
        self._effects.append(record)
        self._log("info", "uncertain session reconciled from device figures", record=record.body())

    # ------------------------------------------------------------------ alarms

    @property
    def alarms(self) -> AlarmState:
        """The active alarms."""
        return self._book.state

    def _open_session_id(self) -> int | None:
        return None if self._session is None else self._session.session_id

    def _evaluate_alarms(self, now: Now) -> None:
        inputs = alarm_inputs(
            session=self._session,
            status=self.last_status,
            device_nebulising=self.device_nebulising(),
            link_lost=self._link_lost,
            conditions=self.conditions,
            facts=self._book.facts,
            uncertain_session_id=self._uncertain.unaccepted_id(),
            now_ms=now.ms,
            breathing=self._breath.facts(now.ms),
            gated=self.prescription.delivery.breath_gated,
        )
        self._effects += self._book.evaluate(
            inputs, open_session_id=self._open_session_id(), now=now
        )
        self._effects += self._breath.take_summary(now)  # once the final run was judged

    # ------------------------------------------------------------------ helpers

    def _apply(self, event: SessionEvent) -> None:
        before = self.state
        self.state = transition(self.state, event)
        if self.state is not before:
            self._log(
                "info",
                "session state",
                trigger=event.value,
                before=before.value,
                after=self.state.value,
            )

    def _log(
        self, level: Literal["info", "warning", "error"], message: str, /, **fields: object
    ) -> None:
        self._effects.append(LogLine(level, message, fields))
