"""Load-time agreement of a trial prescription's lot table, cohorts and bedside checks.

Refused when the pharmacy's file contradicts itself — a prescribed lot missing from
the lot table or of another strength, a session dose other than the subject's cohort's,
a lot whose strength cannot give its cohort's dose, a lot scan required with no lot
table — each with the field to fix.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING

from controller.dosing._lot import PLAUSIBLE_RATIO, Cohort, TrialLot

if TYPE_CHECKING:  # a type only: _prescription imports this module
    from controller.dosing._prescription import Prescription

__all__ = ["check_trial_tables"]


def _duplicates(ids: Iterable[str | None]) -> list[str]:
    return sorted(str(i) for i, n in Counter(ids).items() if n > 1)


def check_trial_tables(prescription: Prescription) -> None:
    """Raise `ValueError` naming the field when the trial tables disagree."""
    lots, cohorts = prescription.lots, prescription.cohorts
    if dup := _duplicates(lot.lot_id for lot in lots):
        raise ValueError(f"lots: lot_id {', '.join(dup)} listed more than once")
    if dup := _duplicates(c.cohort for c in cohorts):
        raise ValueError(f"cohorts: cohort {', '.join(dup)} defined more than once")
    if prescription.checks.scan_lot and not lots:
        raise ValueError(
            "checks.scan_lot = true needs the protocol's lot table: add [[prescription.lots]] "
            "rows (lot_id, arm_id, cohort, amount, unit, per_volume_ml, expires)"
        )
    by_id = {c.cohort: c for c in cohorts}
    if cohorts:
        _check_subject_cohort(prescription, by_id)
        unknown = sorted({lot.cohort for lot in lots if lot.cohort and lot.cohort not in by_id})
        if unknown:
            raise ValueError(
                f"lots: cohort {', '.join(unknown)} is not one of the cohorts "
                f"({', '.join(sorted(by_id))}); add it to [[prescription.cohorts]]"
            )
    for lot in lots:
        cohort = by_id.get(lot.cohort) if lot.cohort is not None else None
        if cohort is not None:
            _check_lot_strength(lot, cohort)
    if lots:
        _check_prescribed_lot(prescription)


def _check_subject_cohort(prescription: Prescription, by_id: dict[str, Cohort]) -> None:
    """The subject's cohort exists and fixes the session dose (limits may only repeat it)."""
    wanted = prescription.arm.cohort
    if wanted is None or wanted not in by_id:
        raise ValueError(
            f"arm.cohort = {wanted!r} is not one of the protocol's cohorts "
            f"({', '.join(sorted(by_id))}): the subject's cohort fixes the dose"
        )
    cohort, limits = by_id[wanted], prescription.limits
    for name in ("session_ul", "session_dose"):
        fixed, given = getattr(cohort, name), getattr(limits, name)
        if fixed is not None and given != fixed:
            raise ValueError(
                f"limits.{name} = {given} differs from cohort {wanted}'s {name} = {fixed}: "
                f"the cohort fixes the dose; remove limits.{name} or correct it"
            )


def _check_lot_strength(lot: TrialLot, cohort: Cohort) -> None:
    """A cohort's lot must be able to give the cohort's dose in its volume (10x typos)."""
    if cohort.session_ul is None or cohort.session_dose is None:
        return
    implied = float(cohort.session_ul * lot.concentration_per_ul())
    ratio = implied / cohort.session_dose
    low, high = PLAUSIBLE_RATIO
    if not low <= ratio <= high:
        raise ValueError(
            f"lots[{lot.lot_id}]: {float(lot.concentration_per_ml()):.4g} {lot.unit}/mL gives "
            f"{implied:.4g} {lot.unit} in cohort {cohort.cohort}'s {cohort.session_ul} µL, "
            f"{ratio:.3g}x its session_dose {cohort.session_dose:.4g}: check the lot label "
            "or the lot's cohort"
        )


def _check_prescribed_lot(prescription: Prescription) -> None:
    """`[prescription.lot]` is a row of the lot table for this subject, same strength."""
    lot, arm = prescription.lot, prescription.arm
    row = next((r for r in prescription.lots if r.lot_id == lot.lot_id), None)
    if row is None:
        raise ValueError(
            f"lot.lot_id = {lot.lot_id!r} is not in the lot table [[prescription.lots]]"
        )
    if not row.same_strength(lot):
        raise ValueError(
            f"lot {lot.lot_id}: [prescription.lot] and its lot table row state different "
            "strengths (amount, unit, per_volume_ml); they must be the same label"
        )
    if row.arm_id != arm.arm_id or (row.cohort is not None and row.cohort != arm.cohort):
        raise ValueError(
            f"lot {lot.lot_id} is for arm {row.arm_id} cohort {row.cohort}, the subject is in "
            f"arm {arm.arm_id} cohort {arm.cohort}: prescribe one of the subject's lots"
        )
