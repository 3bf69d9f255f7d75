"""The five-rights check before CONFIRM: the right patient, the right vial (issue 20).

Barcode medication administration at the bedside: the nurse scans the patient's
wristband and the vial's lot label, and the controller checks them against the signed
prescription before the start is admitted:

| code           | refused when                                                    |
|----------------|-----------------------------------------------------------------|
| `scan_subject` | the wristband was not scanned (required) or is another subject's |
| `lot_known`    | the lot was not scanned (required) or is not in the lot table   |
| `lot_arm`      | the lot belongs to another study arm                            |
| `lot_cohort`   | the lot belongs to another dose-escalation cohort               |
| `lot_strength` | the lot's strength is not the prescribed lot's (dose arithmetic) |
| `lot_expiry`   | past the lot's expiry date (trusted clock), or time not trusted |

Blinded arms: `lot_arm`, `lot_cohort` and `lot_strength` are reported as ONE
constraint `lot_prescribed` with a neutral sentence, so neither the nurse, the ledger
reader without the lot table, nor the ward network learns the arm from a refusal. The
scanned lot id is in the sentence: the signed lot table tells an unblinded reviewer
which rule refused it.

Pure: no I/O, no clock of its own.
"""

from __future__ import annotations

from controller.dosing._lot import TrialLot
from controller.dosing._prescription import Prescription
from controller.dosing._types import BedsideScan, ConstraintCode, ConstraintResult, TrustedTime

__all__ = ["five_rights"]

_C = ConstraintCode


def _result(code: ConstraintCode, *, passed: bool, reason: str) -> ConstraintResult:
    return ConstraintResult(code=str(code), passed=passed, reason=f"{code}: {reason}")


def _clean(scanned: str | None) -> str | None:
    """A scanner types the label then Enter; surrounding blanks are not part of it."""
    if scanned is None:
        return None
    return scanned.strip() or None


def five_rights(
    prescription: Prescription, scan: BedsideScan, now: TrustedTime
) -> list[ConstraintResult]:
    """The traced constraints of the bedside scans (empty when none is required or given).

    A scan the protocol does not require is still checked when given: a wrong wristband
    typed by a nurse is never ignored."""
    checks = prescription.checks
    subject, lot_id = _clean(scan.subject_id), _clean(scan.lot_id)
    results: list[ConstraintResult] = []
    if checks.scan_subject or subject is not None:
        results.append(_subject(prescription, subject))
    if checks.scan_lot or lot_id is not None:
        results.extend(_lot(prescription, lot_id, now))
    return results


def _subject(prescription: Prescription, scanned: str | None) -> ConstraintResult:
    expected = prescription.subject_id
    if scanned is None:
        return _result(
            _C.SCAN_SUBJECT,
            passed=False,
            reason="the patient's wristband was not scanned; this protocol requires it "
            "before CONFIRM (`nebuliser session start --subject ID`)",
        )
    if scanned != expected:
        return _result(
            _C.SCAN_SUBJECT,
            passed=False,
            reason=f"wristband {scanned!r} is not this prescription's subject {expected!r}: "
            "check the patient and the bed",
        )
    return _result(_C.SCAN_SUBJECT, passed=True, reason=f"wristband {scanned} is the subject")


def _lot(
    prescription: Prescription, scanned: str | None, now: TrustedTime
) -> list[ConstraintResult]:
    if scanned is None:
        return [
            _result(
                _C.LOT_KNOWN,
                passed=False,
                reason="the vial's lot label was not scanned; this protocol requires it "
                "before CONFIRM (`nebuliser session start --lot LOT`)",
            )
        ]
    if not prescription.lots:
        # No lot table: the prescription names one lot, and only that one fits.
        ok = scanned == prescription.lot.lot_id
        return [
            _result(
                _C.LOT_KNOWN,
                passed=ok,
                reason=f"lot {scanned} is the prescribed lot"
                if ok
                else f"lot {scanned!r} is not the prescribed lot: use the prescribed vial",
            )
        ]
    row = next((r for r in prescription.lots if r.lot_id == scanned), None)
    if row is None:
        return [
            _result(
                _C.LOT_KNOWN,
                passed=False,
                reason=f"lot {scanned!r} is not in the protocol's lot table: check the vial's "
                "label, or ask the pharmacy",
            )
        ]
    known = _result(_C.LOT_KNOWN, passed=True, reason=f"lot {scanned} is in the lot table")
    return [known, *_for_subject(prescription, row), _expiry(prescription, row, now)]


def _for_subject(prescription: Prescription, row: TrialLot) -> list[ConstraintResult]:
    """Arm, cohort and strength of the scanned lot against the subject's."""
    arm = prescription.arm
    arm_ok = row.arm_id == arm.arm_id
    cohort_ok = row.cohort is None or row.cohort == arm.cohort
    strength_ok = row.same_strength(prescription.lot)
    if arm.blinded:
        ok = arm_ok and cohort_ok and strength_ok
        return [
            _result(
                _C.LOT_PRESCRIBED,
                passed=ok,
                reason=f"lot {row.lot_id} is one of this subject's lots"
                if ok
                else f"lot {row.lot_id} is not one of this subject's lots (blinded study: "
                "the pharmacy's lot table says why); fetch the subject's own vial",
            )
        ]
    strength = f"{float(row.concentration_per_ml()):.4g} {row.unit}/mL"
    prescribed = f"{float(prescription.lot.concentration_per_ml()):.4g} {prescription.lot.unit}/mL"
    return [
        _result(
            _C.LOT_ARM,
            passed=arm_ok,
            reason=f"lot {row.lot_id} is for arm {row.arm_id}"
            + ("" if arm_ok else f", the subject is in arm {arm.arm_id}"),
        ),
        _result(
            _C.LOT_COHORT,
            passed=cohort_ok,
            reason=f"lot {row.lot_id} is for "
            + ("every cohort" if row.cohort is None else f"cohort {row.cohort}")
            + ("" if cohort_ok else f", the subject is in cohort {arm.cohort}"),
        ),
        _result(
            _C.LOT_STRENGTH,
            passed=strength_ok,
            reason=f"lot {row.lot_id} holds {strength}"
            + ("" if strength_ok else f", the dose was prescribed for {prescribed}"),
        ),
    ]


def _expiry(prescription: Prescription, row: TrialLot, now: TrustedTime) -> ConstraintResult:
    if not now.trusted:
        return _result(
            _C.LOT_EXPIRY,
            passed=False,
            reason=f"lot {row.lot_id}'s expiry {row.expires} cannot be checked: the clock "
            "is not trusted",
        )
    today = now.instant.utc.astimezone(prescription.zone).date()
    ok = today <= row.expires
    return _result(
        _C.LOT_EXPIRY,
        passed=ok,
        reason=f"lot {row.lot_id} "
        + ("is in date" if ok else "EXPIRED")
        + f": use by {row.expires}, today {today} ({prescription.timezone})",
    )
