"""What the alarm evaluator keeps and tells: the active list, its timers and the events.

`AlarmState` is the evaluator's whole memory (pass it back in at the next
evaluation); `AlarmEvent` is one change of one alarm, recorded in the ledger and
published.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from ._alarm_types import AlarmCategory, AlarmCode, AlarmPriority

__all__ = [
    "ActiveAlarm",
    "AlarmEvent",
    "AlarmEventKind",
    "AlarmNotActiveError",
    "AlarmState",
]

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
