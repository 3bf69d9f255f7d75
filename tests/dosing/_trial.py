"""A dose-escalation trial prescription for the five-rights tests (issue 20).

Cohorts C2 and C4 give 2 and 4 × 10⁸ vesicles in 1000 µL (lots of 2e8/mL and 4e8/mL);
cohort C4V gives 4 × 10⁸ in 2000 µL from a 2e8/mL lot: the same strength as cohort
C2's lots, so only the cohort check tells its vial from a C2 vial.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from controller.dosing import BedsideScan, DoseRequest, Prescription, StorageStatus

from ._factories import SUBJECT

GOOD_LOT = "L-C2-A"
LOTS: dict[str, dict[str, Any]] = {
    GOOD_LOT: {"arm_id": "A", "cohort": "C2", "amount": 2.0e8, "expires": date(2027, 6, 30)},
    "L-C2-B": {"arm_id": "B", "cohort": "C2", "amount": 2.0e8, "expires": date(2027, 6, 30)},
    "L-C4-A": {"arm_id": "A", "cohort": "C4", "amount": 4.0e8, "expires": date(2027, 6, 30)},
    "L-C4V-A": {"arm_id": "A", "cohort": "C4V", "amount": 2.0e8, "expires": date(2027, 6, 30)},
    # Listed for cohort C2 but of twice the strength (a label mix-up the ratio check lets by).
    "L-C2-X": {"arm_id": "A", "cohort": "C2", "amount": 4.0e8, "expires": date(2027, 6, 30)},
    "L-C2-OLD": {"arm_id": "A", "cohort": "C2", "amount": 2.0e8, "expires": date(2026, 11, 30)},
}
COHORTS = [
    {"cohort": "C2", "session_ul": 1000, "session_dose": 2.0e8},
    {"cohort": "C4", "session_ul": 1000, "session_dose": 4.0e8},
    {"cohort": "C4V", "session_ul": 2000, "session_dose": 4.0e8},
]


def trial_document(
    *,
    blinded: bool = False,
    scan_subject: bool = True,
    scan_lot: bool = True,
    timezone: str = "UTC",
    cohort: str = "C2",
    limits: dict[str, Any] | None = None,
    lots: dict[str, dict[str, Any]] | None = None,
    cohorts: list[dict[str, Any]] | None = None,
    lot_id: str = GOOD_LOT,
) -> dict[str, Any]:
    """The `[prescription]` table as a TOML file would give it."""
    table = LOTS if lots is None else lots
    return {
        "subject_id": SUBJECT,
        "protocol_id": "ESC-1",
        "drug": "exosome vesicles (inhaled)",
        "timezone": timezone,
        "lot": {"lot_id": lot_id, "amount": table[lot_id]["amount"], "unit": "vesicles"},
        "arm": {"arm_id": "A", "cohort": cohort, "blinded": blinded},
        "limits": {} if limits is None else limits,
        "lots": [{"lot_id": k, "unit": "vesicles", **v} for k, v in table.items()],
        "cohorts": COHORTS if cohorts is None else cohorts,
        "checks": {"scan_subject": scan_subject, "scan_lot": scan_lot},
    }


def trial_prescription(**kwargs: Any) -> Prescription:
    return Prescription.model_validate(trial_document(**kwargs))


def scanned(subject_id: str | None = SUBJECT, lot_id: str | None = GOOD_LOT) -> DoseRequest:
    """A start request with what the nurse scanned."""
    return DoseRequest(
        subject_id=SUBJECT,
        storage=StorageStatus(ok=True),
        scan=BedsideScan(subject_id=subject_id, lot_id=lot_id),
    )
