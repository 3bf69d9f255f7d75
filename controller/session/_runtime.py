"""The session runtime, sans-IO: admit → intent → START → watch → STOP → record.

Like `drivers.mn1.HostLink`, it has no asyncio, no clock, no port and no database.
Every input carries the moment it happened (`Now`: monotonic ms and wall instant);
every decision comes out as a typed effect (`take_effects()`), queued in the safe
order (design guide §2 rule 2): `SendStop` first, then alarm records, then the
other records and log lines. Timers are data: `next_deadline_ms()` says when the
shell must call `tick()` next.

Safety rules enforced here (docs/safety.md names the test and mutation of each):

| rule | where |
|---|---|
| 1 predictive host stop, on every STATUS and every tick while running | `_check_stop_rules` |
| 1 a cap the host cannot stop in time is refused | `request_start` (`cap_too_small`) |
| 1 fault bit → STOP on the same STATUS | `_on_fault_bits` |
| 2 STOP before alarm before record | `stop`, effect order |
| 3 intent committed before START | `request_start` → `intent_recorded` → `Start` |
| 4 restart or lost session → UNCERTAIN, STOP kept up, a person accepts it | `_lose_session` |
| 5 unanswered START resolved from STATUS, never a second START | `start_answered`, `tick` |
| 8 every stop decision recorded with its reason | `stop` |

Inputs: `recover`, `on_link_event`, `tick`, `on_conditions`, `on_ledger_failure`,
`on_telemetry_dropped`, `admitted`, `request_start`, `intent_recorded`,
`intent_failed`, `start_answered`, `stop`, `acknowledge_alarm`, `arm_confirm`,
`disarm_confirm`, `shutdown_unconfirmed`. The STATUS/SESSION_END handling lives in
`_observe.py` (`DeviceObserver`), the alarm facts in `_facts.py`.
"""

from __future__ import annotations

from collections.abc import Mapping

from controller.alarms import AlarmCode, AlarmEvent, AlarmPriority, AlarmSettings
from controller.breath import start_command
from controller.dosing import Decision, Override, Prescription, TrustedTime
from controller.dosing import SessionRecord as LedgerSessionRecord
from controller.ledger import StorageLevel, StorageReport, decision_to_json
from drivers.mn1 import (
    Ack,
    CapsDiscovery,
    CommandAnswered,
    CommandOutcome,
    LinkEvent,
    Nak,
    Start,
    StartGated,
)

from ._breath import BreathTracker
from ._effects import (
    CONTROL_REQUEST_COMMAND_PREFIX,
    OVERRIDE_REFUSED_COMMAND,
    Effect,
    LogLine,
    Now,
    StartOutcome,
    StartSettled,
    WriteCommand,
    WriteDecision,
    WriteIntent,
    WriteOverride,
)
from ._observe import STOP_REPEAT_MS, TICK_MS
from ._running import RunningSession, cap_too_small, controller_refusals
from ._start_flow import (
    CONFIRM_NEBULISING_MS,
    DEFAULT_NOMINAL_UL_MIN,
    PENDING_STATES,
    RESOLVE_START_MS,
    StartFlow,
    _PendingStart,
    effect_rank,
)
from ._states import SessionEvent, SessionState
from ._stop_rules import ASSUMED_STOP_LATENCY_MS

__all__ = [
    "CONFIRM_NEBULISING_MS",
    "DEFAULT_NOMINAL_UL_MIN",
    "RESOLVE_START_MS",
    "STOP_REPEAT_MS",
    "TICK_MS",
    "SessionRuntime",
]


class SessionRuntime(StartFlow):
    """Owns the device session of one bed: every safety decision, no I/O."""

    def __init__(
        self,
        *,
        prescription: Prescription,
        stop_latency_ms: int = ASSUMED_STOP_LATENCY_MS,
        alarm_settings: AlarmSettings | None = None,
        expected_serial: str | None = None,
        progress_interval_ms: int = 5000,
    ) -> None:
        super().__init__(
            prescription=prescription,
            stop_latency_ms=max(stop_latency_ms, ASSUMED_STOP_LATENCY_MS),
            alarm_settings=alarm_settings or AlarmSettings(),
            progress_interval_ms=progress_interval_ms,
        )
        self._expected_serial = expected_serial
        self._start: _PendingStart | None = None
        self._confirm_baseline: int | None = None
        self._confirm_armed = False
        self.confirm_pressed = False

    # ------------------------------------------------------------------ outputs

    def take_effects(self) -> list[Effect]:
        """The effects queued since the last call, in the order they must be performed.

        Safe state first, alarm second, record third (rule 2): every `SendStop` comes
        before every alarm row, which comes before every other record; within each
        kind the order of the decisions is kept (a started row before its end row).
        """
        effects, self._effects = self._effects, []
        return sorted(effects, key=effect_rank)

    def next_deadline_ms(self) -> int | None:
        """When `tick` must run next (None: only an input can change anything)."""
        deadlines = []
        if self._session is not None or self.state in PENDING_STATES:
            deadlines.append(self._last_tick_ms + TICK_MS)
        elif self._stop_must_repeat():
            deadlines.append(self._last_stop_tx_ms + STOP_REPEAT_MS)
        if self._start is not None and self._start.deadline_ms is not None:
            deadlines.append(self._start.deadline_ms)
        breath_deadline = self._breath.deadline_ms()
        if breath_deadline is not None:
            deadlines.append(breath_deadline)
        return min(deadlines) if deadlines else None

    def refusals(self, *, link_ready: bool) -> list[str]:
        """Reasons, outside the dose rules, why no session may start now."""
        reasons = controller_refusals(
            state=self.state,
            link_ready=link_ready,
            last_status=self.last_status,
            ident=self.ident,
            expected_serial=self._expected_serial,
            conditions=self.conditions,
            uncertain=self._uncertain.all(),
            start_pending=self._start is not None,
        )
        reasons.extend(self._breath.refusals(transient=False))
        swapped = self._book.facts.swapped_to_serial
        if swapped is not None:
            reasons.append(
                f"a different head (serial {swapped}) was connected during a "
                "session: acknowledge alarm device_swapped before the next start"
            )
        return reasons

    # ------------------------------------------------------------------ restart

    def recover(
        self,
        *,
        open_sessions: list[LedgerSessionRecord],
        uncertain_sessions: list[LedgerSessionRecord],
        now: Now,
    ) -> None:
        """At start-up: sessions left open by a crash are never resumed (rule 4).

        Each is marked UNCERTAIN (its full planned cap counts) and STOP goes out as
        soon as the port opens; the device's own figures reconcile it later, or a
        person acknowledges it.
        """
        for record in open_sessions:
            self._effects.append(
                self._uncertain.add(
                    record.session_id, record.planned_cap_ul, "controller_restart", now
                )
            )
        for record in uncertain_sessions:
            self._uncertain.keep(
                record.session_id, record.planned_cap_ul, "uncertain_before_restart"
            )
        if self._uncertain:
            self._stop_everything_at_open = True
            self._apply(SessionEvent.RESTART_WITH_OPEN_SESSION)
            self._log(
                "warning",
                "unfinished sessions found at start-up: marked uncertain, STOP at once",
                sessions=[u.session_id for u in self._uncertain.all()],
            )
        self._evaluate_alarms(now)

    # ------------------------------------------------------------------ observations

    def on_link_event(self, event: LinkEvent, now: Now) -> None:
        """React to one link event (STOP effects first)."""
        self._observe(event, now)
        self._settle_start(now)
        self._evaluate_alarms(now)

    def tick(self, now: Now) -> None:
        """Predictive stop between STATUS frames, STOP repetition, start deadlines."""
        self._last_tick_ms = now.ms
        session = self._session
        if session is not None and self.state in (
            SessionState.NEBULISING,
            SessionState.CONFIRMING,
        ):
            self._check_stop_rules(session, now)
        if self._stop_must_repeat() and now.ms - self._last_stop_tx_ms >= STOP_REPEAT_MS:
            self._send_stop(now)
        pending = self._start
        if (
            pending is not None
            and pending.deadline_ms is not None
            and now.ms >= pending.deadline_ms
        ):
            self._start_deadline_passed(pending, now)
        self._settle_start(now)
        self._breath_tick(now)

    def on_conditions(self, trusted: TrustedTime, storage: StorageReport, now: Now) -> None:
        """Fresh clock trust and free space (read by the shell at least every second)."""
        self.conditions.clock_trusted = trusted.trusted
        self.conditions.storage_low = not storage.ok
        self.conditions.storage_emergency = storage.level is StorageLevel.EMERGENCY
        self.conditions.storage_free_mib = storage.free_bytes // (1024 * 1024)
        session = self._session
        if (
            self.conditions.storage_emergency
            and session is not None
            and self.state in (SessionState.NEBULISING, SessionState.CONFIRMING)
        ):
            # Stopped while the reserve still has room for its end record (rule 10).
            self._stop("storage_emergency", now)
        self._evaluate_alarms(now)

    def on_ledger_failure(self, failures: int, now: Now) -> None:
        """A ledger write failed (`failures` in all): starts are refused, alarm raised."""
        self.conditions.ledger_failures = failures
        self._evaluate_alarms(now)

    def on_command_flood(self, *, active: bool, unrecorded_total: int, now: Now) -> None:
        """The command intake is (or is no longer) flooded with refused messages."""
        changed = (active, unrecorded_total) != (
            self.conditions.command_flood,
            self.conditions.command_unrecorded_total,
        )
        self.conditions.command_flood = active
        self.conditions.command_unrecorded_total = unrecorded_total
        if changed:
            self._evaluate_alarms(now)

    def on_telemetry_dropped(self, dropped_total: int, now: Now) -> None:
        """The outbox's count of telemetry messages dropped for lack of room, ever."""
        if dropped_total != self.conditions.telemetry_dropped_total:
            self.conditions.telemetry_dropped_total = dropped_total
            self._evaluate_alarms(now)

    # ------------------------------------------------------------------ requests

    def admitted(self, decision: Decision, override: Override | None, now: Now) -> None:
        """Record the dose engine's decision (and the override it used, if allowed)."""
        subject = self.prescription.subject_id
        self._effects.append(
            WriteDecision(
                subject_id=subject,
                allowed=decision.allowed,
                trace=decision_to_json(decision),
                at=now.at,
                decision=decision,
            )
        )
        if override is not None and decision.allowed:
            self._effects.append(WriteOverride(override=override, subject_id=subject, at=now.at))

    def override_refused(
        self, *, by: str, reason: str, now: Now, peer: Mapping[str, object] | None = None
    ) -> None:
        """An override credential was refused: recorded (who tried, why) and logged.

        Nothing is started; the record lets an investigator see every attempt to lift a
        limit, the refused ones included."""
        self._effects.append(
            WriteCommand(
                command=OVERRIDE_REFUSED_COMMAND,
                origin=by,
                body={
                    "subject_id": self.prescription.subject_id,
                    "reason": reason,
                    **({} if peer is None else {"peer": dict(peer)}),
                },
                at=now.at,
            )
        )
        self._effects.append(LogLine("warning", "override refused", {"by": by, "reason": reason}))

    def control_request(
        self,
        *,
        op: str,
        by: str,
        peer: Mapping[str, object] | None,
        outcome: Mapping[str, object],
        now: Now,
        session_id: int | None = None,
    ) -> None:
        """A local control-socket request (start, confirm, stop, alarm ack) is recorded
        with the name typed (`by`) AND the kernel's word on the asking process (`peer`,
        SO_PEERCRED): a typed name alone attributes nothing."""
        self._effects.append(
            WriteCommand(
                command=f"{CONTROL_REQUEST_COMMAND_PREFIX}{op}",
                origin=by,
                body={"peer": None if peer is None else dict(peer), **outcome},
                at=now.at,
                session_id=session_id,
            )
        )

    def request_start(
        self, decision: Decision, *, link_ready: bool, now: Now
    ) -> WriteIntent | StartOutcome:
        """Check a start; if it may go ahead, the intent to write durably (rule 3).

        Returns the refusal as a `StartOutcome`, or the `WriteIntent` the shell must
        commit before calling `intent_recorded` (which gives the START to send).
        """
        refusals = self.refusals(link_ready=link_ready)
        refusals += self._breath.refusals(transient=True)  # the shell waited for discovery
        if refusals or not decision.allowed:
            return StartOutcome(
                started=False,
                session_id=None,
                reasons=tuple(refusals) + decision.refusal_reasons,
                decision=decision,
            )
        nominal = self.ident.nominal_ul_min if self.ident is not None else DEFAULT_NOMINAL_UL_MIN
        expected_flow = nominal * decision.output_pct // 100
        too_small = cap_too_small(
            cap_ul=decision.session_cap_ul,
            expected_flow_ul_min=expected_flow,
            max_duration_s=decision.max_duration_s,
            stop_latency_ms=self._stop_latency_ms,
        )
        if too_small is not None:
            return StartOutcome(
                started=False, session_id=None, reasons=(too_small,), decision=decision
            )
        unacknowledged_high = [
            str(a.code)
            for a in self.alarms.active
            if a.priority is AlarmPriority.HIGH and a.acknowledged_by is None
        ]
        if decision.continues_administration is not None and unacknowledged_high:
            return StartOutcome(
                started=False,
                session_id=None,
                reasons=(
                    "a continuation needs every HIGH alarm acknowledged first: "
                    + ", ".join(unacknowledged_high),
                ),
                decision=decision,
            )
        self._start = _PendingStart(
            decision=decision, expected_flow_ul_min=expected_flow, worst_flow_ul_min=nominal
        )
        lot = self.prescription.lot
        return WriteIntent(
            subject_id=self.prescription.subject_id,
            planned_cap_ul=decision.session_cap_ul,
            max_duration_s=decision.max_duration_s,
            output_pct=decision.output_pct,
            decision_trace=decision_to_json(decision),
            drug=self.prescription.drug,
            concentration_per_ml=float(lot.concentration_per_ml()),
            dose_unit=str(lot.unit),
            at=now.at,
            administration_id=decision.continues_administration,
            delivery=self._breath.delivery_record(),
        )

    def intent_recorded(self, session_id: int, now: Now) -> Start | StartGated:
        """The intent row is committed: the session is open, here is the START to send."""
        pending = self._start
        assert pending is not None, "intent_recorded without request_start"
        decision = pending.decision
        pending.session_id = session_id
        self._book.facts.dry_end_expected = False
        self._session = RunningSession(
            session_id=session_id,
            subject_id=self.prescription.subject_id,
            cap_ul=decision.session_cap_ul,
            max_duration_s=decision.max_duration_s,
            output_pct=decision.output_pct,
            expected_flow_ul_min=pending.expected_flow_ul_min,
            worst_flow_ul_min=pending.worst_flow_ul_min,
            start_sent_ms=now.ms,
            administration_id=decision.continues_administration,
        )
        self._apply(SessionEvent.START_REQUESTED)
        # START, or START_GATED with the prescription's gating parameters (ICD 1.1).
        return start_command(
            self.prescription.delivery,
            session_id=session_id,
            target_ul=decision.session_cap_ul,
            max_duration_s=decision.max_duration_s,
            output_pct=decision.output_pct,
        )

    def intent_failed(self, error: str, now: Now) -> None:
        """The intent could not be written: nothing was sent, nothing started."""
        pending = self._start
        self._start = None
        self._log("error", "intent not recorded: no START sent", error=error)
        if pending is not None:
            self._effects.append(
                StartSettled(
                    StartOutcome(
                        started=False,
                        session_id=None,
                        reasons=(f"the intent could not be recorded ({error}); nothing started",),
                        decision=pending.decision,
                    )
                )
            )

    def start_answered(self, outcome: CommandOutcome, now: Now) -> None:
        """The link's outcome for our START: ACK, NAK, or no answer (rule 5)."""
        pending = self._start
        if pending is None or pending.session_id is None:
            return
        answer = outcome.answer if isinstance(outcome, CommandAnswered) else None
        if isinstance(answer, Nak):
            self._start_refused(pending, answer.reason.name, now)
            return
        if isinstance(answer, Ack):
            if self.state in (SessionState.STARTING, SessionState.START_UNKNOWN):
                self._apply(SessionEvent.START_ACKED)
            pending.deadline_ms = now.ms + CONFIRM_NEBULISING_MS
            self._effects += self._breath.start_acked(session_id=pending.session_id, now=now)
        else:
            # Outcome unknown: read STATUS, never a blind second START.
            if self.state is SessionState.STARTING:
                self._apply(SessionEvent.START_UNANSWERED)
            pending.deadline_ms = now.ms + RESOLVE_START_MS
        pending.answered = True
        self._settle_start(now)
        self._evaluate_alarms(now)

    def stop(self, reason: str, now: Now) -> bool:
        """Stop the running session at once (STOP effect before anything else).

        Returns False when no session of ours is open (a STOP is still sent: the
        device ACKs it when idle, and a session we do not know of is stopped).
        """
        stopped = self._stop(reason, now)
        if self._start is not None and self._start.session_id is None:
            self._start = None  # a stop before START went out cancels the start
        return stopped

    def acknowledge_alarm(self, code: AlarmCode, by: str, now: Now) -> list[AlarmEvent]:
        """A person acknowledges an active alarm (recorded with who and when).

        Acknowledging `delivery_uncertain` accepts the unknown sessions (their full
        cap keeps counting) and lifts their block on new starts; acknowledging
        `device_swapped` / `device_rebooted` ends their latch.
        """
        events, rows = self._book.acknowledge(
            code, by, open_session_id=self._open_session_id(), now=now
        )
        self._effects += rows
        accepted = self._uncertain.accept(by, now) if code is AlarmCode.DELIVERY_UNCERTAIN else None
        self._effects += [accepted] if accepted is not None else []
        self._evaluate_alarms(now)
        return events

    def arm_confirm(self) -> None:
        """Start watching the head's CONFIRM button (a change of confirm_count)."""
        status = self.last_status
        self._confirm_baseline = status.confirm_count if status is not None else None
        self._confirm_armed = True
        self.confirm_pressed = False

    def disarm_confirm(self) -> None:
        """Stop watching the CONFIRM button."""
        self._confirm_armed = False
        self._confirm_baseline = None

    def shutdown_unconfirmed(self, now: Now) -> None:
        """Shutdown with our session still open: the head did not confirm STOP.

        The session is recorded UNCERTAIN (full cap counts), the HIGH alarm is
        raised, and the shell exits non-zero.
        """
        session = self._session
        if session is None:
            return
        self._book.facts.stop_unconfirmed_session_id = session.session_id
        self._log(
            "error",
            "shutting down with the session not confirmed stopped: recorded uncertain",
            session_id=session.session_id,
            host_reason=session.host_reason,
        )
        self._lose_session(SessionEvent.DELIVERY_UNKNOWN, "shutdown_stop_unconfirmed", now)
        self._evaluate_alarms(now)

    # ------------------------------------------------------------------ breath (ICD 1.1)

    @property
    def caps_discovery(self) -> CapsDiscovery:
        """What the runtime knows of the head's addendum-1.1 capabilities."""
        return self._breath.caps_discovery

    @property
    def breath(self) -> BreathTracker:
        """The head's capabilities and the breath accounting of its current run."""
        return self._breath

    def _breath_tick(self, now: Now) -> None:
        """An ended run whose last BREATH did not come within `apnoea_s` is final."""
        if self._breath.tick(now.ms):
            self._evaluate_alarms(now)  # judges the final run, then records its summary
        self._effects += self._breath.take_breaths(now)  # rows that waited long enough
