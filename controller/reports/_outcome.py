"""One status vocabulary for every report: CSV, table, FHIR and plots say the same words.

`session_outcome` is the one place that turns a ledger session into what a clinician
reads: `completed`, `completed to dryness`, `partial (FAULT)`, `continued (...)`,
`refused (...)`, `uncertain (...)`, `in progress`. Doses are shown to 3 significant
figures (`round_dose`, `format_dose`) and times in the prescription's zone with its
UTC offset (`local_time`).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Final
from zoneinfo import ZoneInfo

from controller.dosing import (
    COMPLETED_REASONS,
    HOST_REASON_RESERVOIR_EMPTY,
    Delivery,
    EndClass,
    classify_end,
)

if TYPE_CHECKING:  # _course imports the breath summary, which formats doses here
    from ._course import CourseSession

__all__ = [
    "DOSE_SIGNIFICANT_FIGURES",
    "AdministrationStatus",
    "Outcome",
    "format_dose",
    "local_time",
    "round_dose",
    "session_outcome",
]

DOSE_SIGNIFICANT_FIGURES: Final = 3
"""Doses are reported to 3 significant figures: the delivered volume is known to
about 1 µL in 3000 µL, so a fourth figure would claim more than the device measures."""


class AdministrationStatus(enum.StrEnum):
    """What happened to one administration, in every report."""

    COMPLETED = "completed"
    """The planned volume was given (the head's target, or the host's cap stop)."""
    COMPLETED_TO_DRYNESS = "completed to dryness"
    """A "fill and nebulise to dryness" prescription ran dry at its expected volume."""
    PARTIAL = "partial"
    """It ran and ended early; the reason says why (FAULT, operator_stop:..., ...)."""
    CONTINUED = "continued"
    """It ended early and a continuation run of the same administration followed."""
    REFUSED = "refused"
    """It never ran: the head refused START (the reason is the NAK)."""
    UNCERTAIN = "uncertain"
    """The delivered volume is unknown (its full planned cap counts against limits)."""
    IN_PROGRESS = "in progress"
    """Still open in the ledger."""

    @property
    def fhir_status(self) -> str:
        """MedicationAdministration.status (FHIR R4 value set) for this status."""
        return _FHIR_STATUS[self]


_FHIR_STATUS: Final = {
    AdministrationStatus.COMPLETED: "completed",
    AdministrationStatus.COMPLETED_TO_DRYNESS: "completed",
    AdministrationStatus.PARTIAL: "stopped",
    AdministrationStatus.CONTINUED: "stopped",
    AdministrationStatus.REFUSED: "not-done",
    AdministrationStatus.UNCERTAIN: "unknown",
    AdministrationStatus.IN_PROGRESS: "in-progress",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """A status and its short reason; `label` is what every report prints."""

    status: AdministrationStatus
    reason: str | None = None
    detail: str | None = None
    """A longer sentence (notes in FHIR), e.g. the to-dryness figures."""

    @property
    def label(self) -> str:
        """`completed`, `partial (FAULT)`, `uncertain (controller_restart)`, ..."""
        return self.status.value if not self.reason else f"{self.status.value} ({self.reason})"


def _stop_reason(session: CourseSession) -> str:
    """The short reason of an early end: the head's own reason unless the host stopped it."""
    s = session.summary
    if s.device_reason and s.device_reason not in ("HOST_STOP", "UNKNOWN"):
        return s.device_reason
    if s.host_reason == "device_fault":
        return "FAULT"  # the host's STOP on a fault bit overtook the head's own stop
    if s.host_reason == HOST_REASON_RESERVOIR_EMPTY:
        return "RESERVOIR_EMPTY"
    return s.host_reason or s.end_reason or "reason not recorded"


def _without_an_end(session: CourseSession) -> Outcome | None:
    """In progress, uncertain (not reconciled) or refused: no delivered end to judge."""
    s = session.summary
    if s.status.value == "open":
        return Outcome(status=AdministrationStatus.IN_PROGRESS)
    if session.uncertain and not session.reconciled:
        return Outcome(
            status=AdministrationStatus.UNCERTAIN,
            reason=s.uncertain_reason,
            detail="not reconciled from the device; its full planned cap counts",
        )
    if not s.started:
        reason = (s.end_reason or "not started").removeprefix("START_NAK:")
        return Outcome(status=AdministrationStatus.REFUSED, reason=reason)
    return None


def session_outcome(session: CourseSession, *, delivery: Delivery | None = None) -> Outcome:
    """The outcome of one session as every report shows it.

    `delivery` (the prescription's) tells whether a dry cup was the planned end;
    `session.continued_by` names a continuation run of this administration.
    """
    s = session.summary
    unfinished = _without_an_end(session)
    if unfinished is not None:
        return unfinished
    if s.end_reason in COMPLETED_REASONS or s.device_reason == "TARGET_REACHED":
        return Outcome(status=AdministrationStatus.COMPLETED)
    if delivery is not None and s.delivered_ul is not None:
        end = classify_end(
            delivery,
            delivered_ul=s.delivered_ul,
            device_reason=s.device_reason or s.end_reason,
            host_reason=s.host_reason,
        )
        if end.end is EndClass.COMPLETED_TO_DRYNESS:
            return Outcome(status=AdministrationStatus.COMPLETED_TO_DRYNESS, detail=end.reason)
    reason = _stop_reason(session)
    if session.reconciled and s.end_reason is None:
        reason = f"{s.uncertain_reason}, reconciled from {s.reconcile_source}"
    if session.continued_by is not None:
        return Outcome(
            status=AdministrationStatus.CONTINUED,
            reason=f"{reason}; continued in session {session.continued_by}",
        )
    return Outcome(status=AdministrationStatus.PARTIAL, reason=reason)


def round_dose(value: float) -> float:
    """`value` to DOSE_SIGNIFICANT_FIGURES significant figures (0 stays 0)."""
    if value == 0 or not math.isfinite(value):
        return value
    digits = DOSE_SIGNIFICANT_FIGURES - 1 - math.floor(math.log10(abs(value)))
    return round(value, digits)


def format_dose(value: float | None) -> str:
    """A dose for people: `1.99e+08`, `2.5`, `?` when unknown (3 significant figures)."""
    return "?" if value is None else f"{value:.{DOSE_SIGNIFICANT_FIGURES}g}"


def local_time(moment: datetime | None, timezone: str) -> str:
    """ISO 8601 in the prescription's zone with its UTC offset, to the second ("" if None)."""
    if moment is None:
        return ""
    return moment.astimezone(ZoneInfo(timezone)).isoformat(timespec="seconds")
