"""What a subject has used so far: the volumes and administrations that count
against the rolling 24 h and course limits, and a per-day breakdown.

One home for "how much counts": `decide()` takes its 24 h and course volumes from
here, and the ward station's course summary (docs/mqtt.md, `nebuliser.course`) is
built from the same function, so the nurse sees the figures the dose rules use.
Volumes only (µL): a figure in drug units is the caller's business (blinding).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

from controller.dosing._administration import administrations
from controller.dosing._ceilings import ROLLING_WINDOW_S
from controller.dosing._prescription import Prescription
from controller.dosing._types import Instant, SessionRecord, SessionStatus, elapsed_s

__all__ = ["DayUsage", "DoseUsage", "dose_usage"]

#: Days the per-day breakdown keeps (the most recent days with a run).
USAGE_DAYS = 14


@dataclass(frozen=True, kw_only=True)
class DayUsage:
    """One local calendar day (the prescription's time zone) of a course."""

    day: date
    counted_ul: int
    runs: int


@dataclass(frozen=True, kw_only=True)
class DoseUsage:
    """What counts against the limits at one instant (µL and administrations)."""

    rolling_24h_ul: int
    rolling_24h_administrations: int
    course_ul: int
    course_administrations: int
    #: Runs whose delivery is not known yet (they count their full planned cap).
    uncertain_runs: int
    #: Oldest first, at most `USAGE_DAYS` days.
    days: tuple[DayUsage, ...]


def dose_usage(
    prescription: Prescription, history: Iterable[SessionRecord], now: Instant
) -> DoseUsage:
    """The subject's usage at `now`, counted exactly as `decide()` counts it.

    Sessions the device refused count for nothing; OPEN and UNCERTAIN sessions count
    their full planned cap (or bound); an interrupted dose continued in a second run
    is one administration. The 24 h window uses `elapsed_s` (never shrinks when the
    wall clock steps)."""
    sessions = [
        s for s in history if s.subject_id == prescription.subject_id and s.counts_as_session
    ]
    recent = [s for s in sessions if elapsed_s(s.started, now) < ROLLING_WINDOW_S]
    admins = administrations(sessions)
    per_day_ul: dict[date, int] = defaultdict(int)
    per_day_runs: dict[date, int] = defaultdict(int)
    for s in sessions:
        day = s.started.utc.astimezone(prescription.zone).date()
        per_day_ul[day] += s.counted_ul
        per_day_runs[day] += 1
    days = tuple(
        DayUsage(day=day, counted_ul=per_day_ul[day], runs=per_day_runs[day])
        for day in sorted(per_day_ul)[-USAGE_DAYS:]
    )
    return DoseUsage(
        rolling_24h_ul=sum(s.counted_ul for s in recent),
        rolling_24h_administrations=sum(
            elapsed_s(a.first_started, now) < ROLLING_WINDOW_S for a in admins
        ),
        course_ul=sum(s.counted_ul for s in sessions),
        course_administrations=len(admins),
        uncertain_runs=sum(s.status is SessionStatus.UNCERTAIN for s in sessions),
        days=days,
    )
