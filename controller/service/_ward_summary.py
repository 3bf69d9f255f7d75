"""What the ward sees of the prescription and of the course (pure).

Both go through the prescription's blinding gate, `Prescription.public_summary()`:

* `prescription_summary` is the `prescription` of the retained `state` message. For
  an open prescription it adds the lot's dose unit and concentration, so a ward
  station can show delivered volumes in the lot's units; for a blinded one it has
  neither (and `PrescriptionSummary` refuses them), so nothing published carries a
  figure in drug units (issue 20).
* `course_fields` is the retained `nebuliser.course` message: the 24 h and course
  volumes exactly as the dose rules count them (`controller.dosing.dose_usage`),
  volumes and counts only, the same for blinded and open prescriptions.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from controller.dosing import Instant, Prescription, SessionRecord, dose_usage

__all__ = ["course_fields", "prescription_summary"]

_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def prescription_summary(prescription: Prescription) -> dict[str, Any]:
    """The `prescription` field of the `state` message."""
    summary = prescription.public_summary()
    fields: dict[str, Any] = {
        "prescription_id": _ID_UNSAFE.sub("_", str(summary["protocol_id"]))[:64] or "unknown",
        "label": str(summary["drug"]) + (" (blinded)" if summary["blinded"] else ""),
        "blinded": bool(summary["blinded"]),
        "dose_cap_ul": int(summary["session_ul"]),
        "daily_cap_ul": summary.get("rolling_24h_max_ul"),
    }
    # public_summary() names the unit and concentration only for an open prescription.
    if not summary["blinded"] and "drug_unit" in summary:
        fields["dose_unit"] = summary["drug_unit"]
        fields["concentration_per_ml"] = summary["concentration_per_ml"]
    return fields


def course_fields(
    prescription: Prescription,
    history: Iterable[SessionRecord],
    *,
    now: Instant,
    reason: str,
) -> dict[str, Any]:
    """The fields of a `nebuliser.course` message at `now` (µL and counts only)."""
    usage = dose_usage(prescription, history, now)
    limits = prescription.limits
    return {
        "reason": reason,
        "rolling_24h_ul": usage.rolling_24h_ul,
        "rolling_24h_max_ul": limits.rolling_24h_max_ul,
        "rolling_24h_sessions": usage.rolling_24h_administrations,
        "rolling_24h_max_sessions": limits.rolling_24h_max_sessions,
        "course_ul": usage.course_ul,
        "course_max_ul": limits.course_max_ul,
        "course_sessions": usage.course_administrations,
        "course_max_sessions": limits.course_max_sessions,
        "uncertain_runs": usage.uncertain_runs,
        "timezone": prescription.timezone,
        "days": [
            {"day": day.day, "counted_ul": day.counted_ul, "runs": day.runs} for day in usage.days
        ],
    }
