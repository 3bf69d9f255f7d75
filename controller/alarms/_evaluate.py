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

The facts and thresholds are in `_alarm_inputs`, the active list and the events
in `_alarm_state`, which conditions hold in `_conditions`, the table in `_rules`.
"""

from __future__ import annotations

from dataclasses import replace

from ._alarm_inputs import DEFAULT_ALARM_SETTINGS, AlarmInputs, AlarmSettings
from ._alarm_state import ActiveAlarm, AlarmEvent, AlarmEventKind, AlarmNotActiveError, AlarmState
from ._alarm_types import AlarmCode
from ._conditions import present_conditions
from ._rules import ALARM_RULES

__all__ = ["acknowledge", "evaluate"]

#: Alarms whose text is kept current while they last (no event for the update).
_RUNNING_COUNT = frozenset({AlarmCode.TELEMETRY_DROPPED})


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
    present, output_low_since_ms, drops = present_conditions(inputs, previous, now_ms, settings)
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
