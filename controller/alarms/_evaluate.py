"""One pure evaluator for the alarm table, plus acknowledgement.

Time is the controller's *monotonic* clock in milliseconds (`now_ms`); it never
steps with the wall clock, so the output-low timer cannot be shortened by a clock
change. The ledger stamps wall-clock time on the events when it records them.

Life of one alarm:

```
 condition appears ─▶ RAISED (active, condition present)
     │ acknowledged by a named person ─▶ ACKNOWLEDGED (still active while the condition lasts)
     ▼ condition goes
 non-latching, or already acknowledged ─▶ CLEARED, removed from the active list
 latching, not acknowledged            ─▶ CLEARED, stays active ("condition cleared")
                                            until acknowledged ─▶ ACKNOWLEDGED, removed
```
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from drivers.mn1 import FaultBits

from ._breathing import BreathingFacts, breathing_conditions
from ._rules import ALARM_RULES, AlarmCategory, AlarmCode, AlarmPriority

__all__ = [
    "DEFAULT_ALARM_SETTINGS",
    "FAULT_BIT_ALARMS",
    "ActiveAlarm",
    "AlarmEvent",
    "AlarmEventKind",
    "AlarmInputs",
    "AlarmNotActiveError",
    "AlarmSettings",
    "AlarmState",
    "SessionProgress",
    "acknowledge",
    "evaluate",
]

#: One alarm per ICD fault bit.
FAULT_BIT_ALARMS: tuple[tuple[FaultBits, AlarmCode], ...] = (
    (FaultBits.RESERVOIR_EMPTY, AlarmCode.DEVICE_RESERVOIR_EMPTY),
    (FaultBits.HEAD_DISCONNECTED, AlarmCode.DEVICE_HEAD_DISCONNECTED),
    (FaultBits.MESH_CLOGGED, AlarmCode.DEVICE_MESH_CLOGGED),
    (FaultBits.OVER_TEMPERATURE, AlarmCode.DEVICE_OVER_TEMPERATURE),
    (FaultBits.WATCHDOG, AlarmCode.DEVICE_WATCHDOG),
    (FaultBits.SUPPLY_LOW, AlarmCode.DEVICE_SUPPLY_LOW),
    (FaultBits.INTERNAL, AlarmCode.DEVICE_INTERNAL),
)
_KNOWN_FAULT_MASK = sum(int(bit) for bit, _ in FAULT_BIT_ALARMS)  # the bits are disjoint

_PRIORITY_RANK = {AlarmPriority.HIGH: 0, AlarmPriority.MEDIUM: 1, AlarmPriority.LOW: 2}


class AlarmNotActiveError(LookupError):
    """Acknowledgement of an alarm that is not on the active list."""

    def __init__(self, code: AlarmCode) -> None:
        super().__init__(
            f"alarm {code.value!r} is not active (already cleared and acknowledged, or never "
            "raised); refresh the alarm list and acknowledge an active alarm"
        )
        self.code = code


@dataclass(frozen=True, slots=True, kw_only=True)
class AlarmSettings:
    """Thresholds of the timed and computed alarm conditions.

    Defaults: output low below 70 % of expected flow for 10 s (the device itself
    faults MESH_CLOGGED at 50 % for 3 s); dose reached early when the session hit
    its target in under 50 % of its expected duration; late when the target is not
    reached 60 s after the expected duration; STOP ignored when the device still
    reports NEBULISING 500 ms after the host's STOP (the ICD promises aerosol off
    within 10 ms and the next STATUS within 110 ms; 500 ms also covers the host's
    5 retransmissions at 50 ms); over-delivery when the session exceeds its cap by
    more than 3 µL (the host stop rule keeps delivery at or below the cap; the
    device's own cap may overshoot by 1 µL plus 10 ms of flow, 1.13 µL at twice the
    nominal 400 µL/min, and STATUS reports whole µL: 2.13 µL, rounded up to 3).
    """

    output_low_pct: int = 70
    output_low_for_ms: int = 10_000
    dose_early_pct: int = 50
    dose_late_margin_ms: int = 60_000
    stop_ignored_after_ms: int = 500
    overshoot_budget_ul: int = 3
    # Telemetry drops belong to one outage while the drop counter keeps growing
    # within this time (the outbox drops a sample for each new one once full; the
    # service reads the counter every 5 s). One alarm per outage, not one per read.
    telemetry_drop_quiet_ms: int = 60_000

    def __post_init__(self) -> None:
        for name, low, high in (
            ("output_low_pct", 1, 99),
            ("output_low_for_ms", 0, 600_000),
            ("dose_early_pct", 1, 99),
            ("dose_late_margin_ms", 0, 3_600_000),
            ("stop_ignored_after_ms", 1, 60_000),
            ("overshoot_budget_ul", 0, 1_000),
            ("telemetry_drop_quiet_ms", 1, 3_600_000),
        ):
            value = getattr(self, name)
            if not low <= value <= high:
                raise ValueError(f"alarm setting {name}={value} is outside {low}..{high}")


DEFAULT_ALARM_SETTINGS = AlarmSettings()


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionProgress:
    """Facts about the open (or just finished) session, for the treatment alarms.

    `target_reached` is true once the device or the host ended the session because
    the target was reached. The runtime keeps supplying the finished session's
    progress until it has recorded the end, then passes `None`.
    """

    session_id: int
    delivered_ul: int
    session_cap_ul: int
    elapsed_ms: int
    expected_duration_ms: int
    target_reached: bool
    #: When the dose counts as late (None: `expected_duration_ms` + the margin). A
    #: breath-gated run is late only at its maximum duration.
    late_after_ms: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AlarmInputs:
    """A snapshot of every fact the alarm rules look at. Every field must be filled.

    * `device_faults` — STATUS `faults` (last known; unknown bits are alarmed too).
    * `link_lost` — no valid STATUS for 300 ms (ICD §6); `session_open` — the host
      has an open session (intent written, end not yet recorded).
    * `flow_ul_min` / `expected_flow_ul_min` — measured and expected flow while
      nebulising; `expected_flow_ul_min=None` when not nebulising (timer resets).
    * `device_nebulising` — the last STATUS says NEBULISING; `stop_sent_at_ms` —
      monotonic time the first STOP of the current stop attempt was sent, or None.
    * `session_stopped_by_watchdog` — the last session ended with reason WATCHDOG
      and the end is not yet recorded/acknowledged by the runtime.
    * `uncertain_session_id` — a session whose delivery is unknown, or None.
    * `breathing` — the open (or just finished) run on a breath-aware head (ICD 1.1),
      or None (a version-1 head, or no run): the breath rows then cannot hold.
      Defaults to None so that adding the breath rows changed no caller.
    * `swapped_to_serial` — the new head's serial if the head changed mid-session.
    * `device_rebooted_mid_session` — STATUS uptime dropped during a session.
    * `telemetry_dropped_total` — messages the outbox has dropped, ever (monotonic).
    * `stop_unconfirmed_session_id` — the controller is shutting down and the head
      did not confirm STOP for this session.
    * `ledger_discontinuity` — the ledger does not continue its anchors (controller.
      ledger.check_continuity refused it); `storage_emergency` — free space is below the
      emergency level or the end-record reserve is gone (controller.ledger.
      classify_storage returned EMERGENCY). Both default to False for callers that
      predate them.
    * `command_flood` — the command intake has refused or dropped messages without
      an individual record for a while (`IntakeGate.flood_active`);
      `command_unrecorded_total` — how many, ever.
    """

    device_faults: int
    link_lost: bool
    session_open: bool
    flow_ul_min: int | None
    expected_flow_ul_min: int | None
    session: SessionProgress | None
    device_nebulising: bool
    stop_sent_at_ms: int | None
    session_stopped_by_watchdog: bool
    uncertain_session_id: int | None
    breathing: BreathingFacts | None = None
    clock_trusted: bool
    storage_low: bool
    storage_free_mib: int
    ledger_ok: bool
    swapped_to_serial: str | None
    device_rebooted_mid_session: bool
    telemetry_dropped_total: int
    stop_unconfirmed_session_id: int | None = None
    ledger_discontinuity: bool = False
    storage_emergency: bool = False
    command_flood: bool = False
    command_unrecorded_total: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ActiveAlarm:
    """An alarm on the active list."""

    code: AlarmCode
    priority: AlarmPriority
    category: AlarmCategory
    latching: bool
    message: str
    raised_at_ms: int
    condition_present: bool
    acknowledged_by: str | None = None
    acknowledged_at_ms: int | None = None


class AlarmEventKind(StrEnum):
    """What happened to an alarm."""

    RAISED = "raised"
    CLEARED = "cleared"
    ACKNOWLEDGED = "acknowledged"


@dataclass(frozen=True, slots=True, kw_only=True)
class AlarmEvent:
    """A change of one alarm, to be recorded in the ledger and published.

    `still_active` is true when the alarm stays on the active list after this event
    (a latching alarm whose condition cleared, or an acknowledgement while the
    condition lasts). `by` names who acknowledged (ACKNOWLEDGED only).
    """

    kind: AlarmEventKind
    code: AlarmCode
    priority: AlarmPriority
    category: AlarmCategory
    latching: bool
    message: str
    action: str
    at_ms: int
    still_active: bool
    by: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AlarmState:
    """Active alarms (in table order) and the timers the rules need."""

    active: tuple[ActiveAlarm, ...] = ()
    output_low_since_ms: int | None = None
    telemetry_dropped_seen: int = 0
    # The current drop episode (outage): the counter when it began and when it last
    # grew (monotonic ms); None when no episode is running.
    telemetry_drop_baseline: int = 0
    telemetry_drop_grew_at_ms: int | None = None

    def get(self, code: AlarmCode) -> ActiveAlarm | None:
        """The active alarm with this code, or None."""
        for alarm in self.active:
            if alarm.code is code:
                return alarm
        return None

    @property
    def highest_priority(self) -> AlarmPriority | None:
        """The highest priority on the active list (None when it is empty)."""
        if not self.active:
            return None
        return min((a.priority for a in self.active), key=_PRIORITY_RANK.__getitem__)


def _event(
    kind: AlarmEventKind,
    alarm: ActiveAlarm,
    *,
    at_ms: int,
    still_active: bool,
    by: str | None = None,
) -> AlarmEvent:
    return AlarmEvent(
        kind=kind,
        code=alarm.code,
        priority=alarm.priority,
        category=alarm.category,
        latching=alarm.latching,
        message=alarm.message,
        action=ALARM_RULES[alarm.code].action,
        at_ms=at_ms,
        still_active=still_active,
        by=by,
    )


def _ceil_s(ms: int) -> int:
    return -(-ms // 1000)


_Present = dict[AlarmCode, dict[str, object]]


def _device_conditions(inputs: AlarmInputs, present: _Present) -> None:
    for bit, code in FAULT_BIT_ALARMS:
        if inputs.device_faults & int(bit):
            present[code] = {}
    unknown_bits = inputs.device_faults & ~_KNOWN_FAULT_MASK
    if unknown_bits:
        present[AlarmCode.DEVICE_UNKNOWN_FAULT] = {"fault_bits": f"0x{unknown_bits:04X}"}
    if inputs.link_lost:
        code = AlarmCode.LINK_LOST_DURING_SESSION if inputs.session_open else AlarmCode.LINK_LOST
        present[code] = {}
    if inputs.swapped_to_serial is not None:
        present[AlarmCode.DEVICE_SWAPPED] = {"serial": inputs.swapped_to_serial}
    if inputs.device_rebooted_mid_session:
        present[AlarmCode.DEVICE_REBOOTED] = {}


def _output_low(
    inputs: AlarmInputs,
    previous: AlarmState,
    now_ms: int,
    settings: AlarmSettings,
    present: _Present,
) -> int | None:
    """Measured flow below output_low_pct % of expected, continuously for
    output_low_for_ms. Integer arithmetic: no rounding at the threshold. Returns
    when the flow first went low (None when it is not low)."""
    expected = inputs.expected_flow_ul_min
    flow = inputs.flow_ul_min
    if expected is None or expected <= 0 or flow is None:
        return None
    if flow * 100 >= expected * settings.output_low_pct:
        return None
    since = previous.output_low_since_ms
    low_since_ms = now_ms if since is None else since
    low_for_ms = now_ms - low_since_ms
    if low_for_ms >= settings.output_low_for_ms:
        present[AlarmCode.OUTPUT_LOW] = {
            "flow_ul_min": flow,
            "expected_flow_ul_min": expected,
            "low_for_s": low_for_ms // 1000,
        }
    return low_since_ms


def _treatment_conditions(
    inputs: AlarmInputs, now_ms: int, settings: AlarmSettings, present: _Present
) -> None:
    session = inputs.session
    if session is not None:
        fields: dict[str, object] = {
            "session_id": session.session_id,
            "delivered_ul": session.delivered_ul,
            "session_cap_ul": session.session_cap_ul,
            "elapsed_s": _ceil_s(session.elapsed_ms),
            "expected_s": _ceil_s(session.expected_duration_ms),
            "overshoot_budget_ul": settings.overshoot_budget_ul,
        }
        if session.delivered_ul > session.session_cap_ul + settings.overshoot_budget_ul:
            present[AlarmCode.DELIVERY_ABOVE_CAP] = fields
        if session.target_reached:
            if session.elapsed_ms * 100 < session.expected_duration_ms * settings.dose_early_pct:
                present[AlarmCode.DOSE_REACHED_EARLY] = fields
        elif session.elapsed_ms >= (
            session.late_after_ms
            if session.late_after_ms is not None
            else session.expected_duration_ms + settings.dose_late_margin_ms
        ):
            present[AlarmCode.DOSE_LATE] = fields
    if inputs.stop_sent_at_ms is not None and inputs.device_nebulising:
        stop_pending_ms = now_ms - inputs.stop_sent_at_ms
        if stop_pending_ms >= settings.stop_ignored_after_ms:
            present[AlarmCode.DEVICE_IGNORED_STOP] = {"stop_pending_ms": stop_pending_ms}
    if inputs.session_stopped_by_watchdog:
        present[AlarmCode.SESSION_STOPPED_BY_WATCHDOG] = {}
    if inputs.uncertain_session_id is not None:
        present[AlarmCode.DELIVERY_UNCERTAIN] = {"session_id": inputs.uncertain_session_id}
    if inputs.stop_unconfirmed_session_id is not None:
        present[AlarmCode.STOP_UNCONFIRMED_AT_SHUTDOWN] = {
            "session_id": inputs.stop_unconfirmed_session_id
        }


#: Alarms whose text is kept current while they last (no event for the update).
_RUNNING_COUNT = frozenset({AlarmCode.TELEMETRY_DROPPED})


@dataclass(frozen=True, slots=True, kw_only=True)
class _DropEpisode:
    seen: int
    baseline: int
    grew_at_ms: int | None


def _controller_conditions(
    inputs: AlarmInputs,
    previous: AlarmState,
    now_ms: int,
    settings: AlarmSettings,
    present: _Present,
) -> _DropEpisode:
    if not inputs.clock_trusted:
        present[AlarmCode.CLOCK_UNTRUSTED] = {}
    if inputs.storage_low:
        present[AlarmCode.STORAGE_LOW] = {"free_mib": inputs.storage_free_mib}
    if not inputs.ledger_ok:
        present[AlarmCode.LEDGER_UNAVAILABLE] = {}
    if inputs.ledger_discontinuity:
        present[AlarmCode.LEDGER_DISCONTINUITY] = {}
    if inputs.storage_emergency:
        present[AlarmCode.STORAGE_EMERGENCY] = {"free_mib": inputs.storage_free_mib}
    if inputs.command_flood:
        present[AlarmCode.COMMAND_FLOOD] = {"unrecorded_total": inputs.command_unrecorded_total}
    return _telemetry_drops(inputs, previous, now_ms, settings, present)


def _telemetry_drops(
    inputs: AlarmInputs,
    previous: AlarmState,
    now_ms: int,
    settings: AlarmSettings,
    present: _Present,
) -> _DropEpisode:
    """One latching alarm per outage with a running count (no raise/clear flapping).

    An episode starts when the outbox's drop counter grows and lasts while it keeps
    growing within `telemetry_drop_quiet_ms`; the alarm's text carries the count of
    this episode and the total. A smaller total (a counter reset) is taken as the new
    baseline.
    """
    total = inputs.telemetry_dropped_total
    seen = previous.telemetry_dropped_seen
    grew_at_ms = previous.telemetry_drop_grew_at_ms
    baseline = previous.telemetry_drop_baseline
    if total < seen:
        return _DropEpisode(seen=total, baseline=total, grew_at_ms=None)
    if grew_at_ms is not None and now_ms - grew_at_ms >= settings.telemetry_drop_quiet_ms:
        grew_at_ms = None  # the outage is over: the next drop opens a new episode
    if total > seen:
        if grew_at_ms is None:
            baseline = seen
        grew_at_ms = now_ms
    if grew_at_ms is not None:
        present[AlarmCode.TELEMETRY_DROPPED] = {
            "dropped_now": total - baseline,
            "dropped_total": total,
        }
    return _DropEpisode(seen=total, baseline=baseline, grew_at_ms=grew_at_ms)


def _conditions(
    inputs: AlarmInputs, previous: AlarmState, now_ms: int, settings: AlarmSettings
) -> tuple[_Present, int | None, _DropEpisode]:
    """Which conditions hold now (with their message fields), and the new timers."""
    present: _Present = {}
    _device_conditions(inputs, present)
    output_low_since_ms = _output_low(inputs, previous, now_ms, settings, present)
    _treatment_conditions(inputs, now_ms, settings, present)
    if inputs.breathing is not None:
        present |= breathing_conditions(inputs.breathing)
    drops = _controller_conditions(inputs, previous, now_ms, settings, present)
    return present, output_low_since_ms, drops


def evaluate(
    inputs: AlarmInputs,
    previous: AlarmState,
    now_ms: int,
    *,
    settings: AlarmSettings = DEFAULT_ALARM_SETTINGS,
) -> tuple[AlarmState, list[AlarmEvent]]:
    """Apply the alarm table to a snapshot of facts.

    Returns the new state and the events (RAISED / CLEARED) in table order, HIGH
    priority first. Pure: the same arguments always give the same answer.
    """
    present, output_low_since_ms, drops = _conditions(inputs, previous, now_ms, settings)
    events: list[AlarmEvent] = []
    active: list[ActiveAlarm] = []
    for code, rule in ALARM_RULES.items():
        alarm = previous.get(code)
        fields = present.get(code)
        if fields is not None:
            message = rule.message.format(**fields)
            if alarm is None:
                alarm = ActiveAlarm(
                    code=code,
                    priority=rule.priority,
                    category=rule.category,
                    latching=rule.latching,
                    message=message,
                    raised_at_ms=now_ms,
                    condition_present=True,
                )
                events.append(_event(AlarmEventKind.RAISED, alarm, at_ms=now_ms, still_active=True))
            elif not alarm.condition_present:
                # A latched alarm whose condition came back before anyone acknowledged
                # it: a new occurrence, raised again.
                alarm = replace(alarm, condition_present=True, message=message)
                events.append(_event(AlarmEventKind.RAISED, alarm, at_ms=now_ms, still_active=True))
            elif code in _RUNNING_COUNT and alarm.message != message:
                # A running count: the active list shows it, without a new event.
                alarm = replace(alarm, message=message)
            active.append(alarm)
        elif alarm is not None:
            if not alarm.condition_present:
                active.append(alarm)  # latched, waiting for acknowledgement
                continue
            stays = alarm.latching and alarm.acknowledged_by is None
            if stays:
                alarm = replace(alarm, condition_present=False)
                active.append(alarm)
            events.append(_event(AlarmEventKind.CLEARED, alarm, at_ms=now_ms, still_active=stays))
    state = AlarmState(
        active=tuple(active),
        output_low_since_ms=output_low_since_ms,
        telemetry_dropped_seen=drops.seen,
        telemetry_drop_baseline=drops.baseline,
        telemetry_drop_grew_at_ms=drops.grew_at_ms,
    )
    return state, events


def acknowledge(
    state: AlarmState, alarm_code: AlarmCode, by: str, now_ms: int
) -> tuple[AlarmState, list[AlarmEvent]]:
    """Record that `by` (a named person or role) acknowledged an active alarm.

    A latched alarm whose condition has cleared is removed; an alarm whose condition
    is still present stays active, marked acknowledged, and is removed when the
    condition goes. Acknowledging an already acknowledged alarm changes nothing.
    Raises `AlarmNotActiveError` if the alarm is not active, `ValueError` if `by`
    is blank.
    """
    if not by.strip():
        raise ValueError("acknowledge needs the name or role of who acknowledges; got a blank")
    alarm = state.get(alarm_code)
    if alarm is None:
        raise AlarmNotActiveError(alarm_code)
    if alarm.acknowledged_by is not None:
        return state, []
    acked = replace(alarm, acknowledged_by=by, acknowledged_at_ms=now_ms)
    stays = alarm.condition_present
    active = tuple(
        acked if a.code is alarm_code else a
        for a in state.active
        if stays or a.code is not alarm_code
    )
    event = _event(AlarmEventKind.ACKNOWLEDGED, acked, at_ms=now_ms, still_active=stays, by=by)
    return replace(state, active=active), [event]
