"""What the ward monitor remembers about a bed beyond its current row: the alarm
history and the delivery curves of the current and previous runs.

Bounded by construction (a ward station watches 1000 beds for weeks): at most
`MAX_ALARM_EVENTS` alarm events and `MAX_RUNS` runs of at most `MAX_CURVE_POINTS`
points per bed; a longer run keeps every other point (the curve's shape survives,
its resolution halves).
"""

from __future__ import annotations

from array import array
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime

from controller.telemetry._schemas import CourseMessage

__all__ = ["MAX_ALARM_EVENTS", "MAX_CURVE_POINTS", "MAX_RUNS", "AlarmEvent", "BedHistory", "Run"]

MAX_ALARM_EVENTS = 200
MAX_CURVE_POINTS = 400
MAX_RUNS = 2


@dataclass(frozen=True, kw_only=True)
class AlarmEvent:
    """One alarm event as the bed published it."""

    utc: datetime
    event: str  # raised | acknowledged | cleared
    alarm_code: str
    priority: str
    text: str
    acknowledged_by: str | None


@dataclass(kw_only=True)
class Run:
    """The delivery curve of one session: (device UTC in ms, delivered µL) pairs."""

    session_id: int
    cap_ul: int
    utc_ms: array[int] = field(default_factory=lambda: array("q"))
    delivered_ul: array[int] = field(default_factory=lambda: array("q"))

    def add(self, *, utc_ms: int, delivered_ul: int) -> None:
        """Append one point, thinning to half when the curve is full."""
        if self.utc_ms and utc_ms <= self.utc_ms[-1]:
            return  # a backfilled or reordered sample: the curve is drawn in time order
        if len(self.utc_ms) >= MAX_CURVE_POINTS:
            self.utc_ms = self.utc_ms[::2]
            self.delivered_ul = self.delivered_ul[::2]
        self.utc_ms.append(utc_ms)
        self.delivered_ul.append(delivered_ul)


@dataclass(kw_only=True)
class BedHistory:
    """Alarm history, recent runs and the course summary of one bed."""

    alarms: deque[AlarmEvent] = field(default_factory=lambda: deque(maxlen=MAX_ALARM_EVENTS))
    runs: deque[Run] = field(default_factory=lambda: deque(maxlen=MAX_RUNS))
    #: The newest retained `nebuliser.course` (24 h and course usage), if any.
    course: CourseMessage | None = None

    def add_sample(self, *, session_id: int, cap_ul: int, utc: datetime, delivered_ul: int) -> None:
        """One telemetry sample of a running session."""
        if not self.runs or self.runs[-1].session_id != session_id:
            if any(run.session_id == session_id for run in self.runs):
                return  # a late sample of the previous run: not worth reordering for
            self.runs.append(Run(session_id=session_id, cap_ul=cap_ul))
        run = self.runs[-1]
        run.cap_ul = cap_ul
        run.add(utc_ms=int(utc.timestamp() * 1000), delivered_ul=delivered_ul)
