"""Lots, the protocol's lot table, dose-escalation cohorts and the bedside checks.

A prescription names the lot its dose arithmetic uses (`[prescription.lot]`). A trial
prescription also carries the protocol's lot table (`[[prescription.lots]]`: every lot
with its arm, cohort, strength and expiry date), its cohorts (`[[prescription.cohorts]]`:
the session dose of each escalation step) and which five-rights scans the bedside must
make before CONFIRM (`[prescription.checks]`). All of it lives in the pharmacy-signed
prescription file, so the signature covers the lot table (docs/trials.md).
"""

from __future__ import annotations

from datetime import date
from fractions import Fraction
from typing import Final, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "ID_PATTERN",
    "PLAUSIBLE_CONCENTRATION_PER_ML",
    "PLAUSIBLE_RATIO",
    "BedsideChecks",
    "Cohort",
    "DrugUnit",
    "Lot",
    "TrialLot",
]

DrugUnit = Literal["vesicles", "mg", "ug"]
"""Unit of drug amount; a concentration is this unit per millilitre."""

PLAUSIBLE_CONCENTRATION_PER_ML: Final[dict[str, tuple[float, float]]] = {
    "vesicles": (1e6, 1e12),
    "mg": (1e-3, 500.0),
    "ug": (1e-3, 5e5),
}
"""Coarse sanity range of a lot concentration per drug unit (per mL)."""

PLAUSIBLE_RATIO: Final = (0.5, 2.0)
"""Allowed ratio of (session_ul × concentration) to the prescribed session_dose."""

ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_UL_PER_ML = 1000


class _Model(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class Lot(_Model):
    """One manufactured lot: `amount` drug units per `per_volume_ml` mL.

    Stating the label exactly (2.0e8 vesicles per 3 mL) avoids rounding the
    concentration to a decimal (6.67e7/mL) that would shave a µL off every dose.
    """

    lot_id: str = Field(pattern=ID_PATTERN)
    amount: float = Field(gt=0, description="drug units in `per_volume_ml` millilitres")
    unit: DrugUnit
    per_volume_ml: float = Field(default=1.0, gt=0)

    def concentration_per_ml(self) -> Fraction:
        """Exact drug units per mL."""
        return Fraction(self.amount) / Fraction(self.per_volume_ml)

    def concentration_per_ul(self) -> Fraction:
        """Exact drug units per µL."""
        return self.concentration_per_ml() / _UL_PER_ML

    def same_strength(self, other: Lot) -> bool:
        """True when both lots hold exactly the same drug units per mL, in the same unit."""
        return (
            self.unit == other.unit and self.concentration_per_ml() == other.concentration_per_ml()
        )

    @model_validator(mode="after")
    def _plausible_concentration(self) -> Self:
        low, high = PLAUSIBLE_CONCENTRATION_PER_ML[self.unit]
        per_ml = float(self.concentration_per_ml())
        if not low <= per_ml <= high:
            raise ValueError(
                f"lot.amount/per_volume_ml = {per_ml:.4g} {self.unit}/mL is outside the "
                f"plausible range {low:.4g}..{high:.4g} {self.unit}/mL for unit "
                f"'{self.unit}'; check the lot label for a typo or a wrong unit"
            )
        return self


class TrialLot(Lot):
    """One row of the protocol's lot table: the lot, whom it is for, until when.

    `expires` is the last day the lot may be given (the label's "use by"), as a date
    in the prescription's time zone, judged on the trusted clock.
    """

    arm_id: str = Field(pattern=ID_PATTERN, description="the study arm the lot belongs to")
    cohort: str | None = Field(
        default=None, pattern=ID_PATTERN, description="the escalation cohort (None: any)"
    )
    expires: date = Field(description="last day of use, inclusive (local date)")


class Cohort(_Model):
    """One dose-escalation step: its id and the session dose its subjects receive.

    The subject's cohort (`[prescription.arm] cohort`) fixes `limits.session_ul` and
    `limits.session_dose`: unset there, they are taken from here; set, they must agree.
    """

    cohort: str = Field(pattern=ID_PATTERN)
    session_ul: int | None = Field(default=None, ge=1, description="nebulised µL per session")
    session_dose: float | None = Field(
        default=None, gt=0, description="drug units per session (needs session_ul)"
    )

    @model_validator(mode="after")
    def _dose_needs_volume(self) -> Self:
        if self.session_dose is not None and self.session_ul is None:
            raise ValueError(
                f"cohorts[{self.cohort}].session_dose needs session_ul (the nebulised volume "
                "that holds it) so each lot's strength can be cross-checked"
            )
        if self.session_dose is None and self.session_ul is None:
            raise ValueError(
                f"cohorts[{self.cohort}] names no dose: give session_ul and/or session_dose"
            )
        return self


class BedsideChecks(_Model):
    """`[prescription.checks]`: the five-rights scans required before CONFIRM.

    `scan_subject`: the patient's wristband id must be scanned (or typed) and be this
    prescription's subject. `scan_lot`: the vial's lot label must be scanned and be a
    lot of the lot table for the subject's arm and cohort, of the prescribed strength,
    not expired. Off by default (no lot table); the example protocol turns both on.
    """

    scan_subject: bool = False
    scan_lot: bool = False
