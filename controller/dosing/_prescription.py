"""The prescription (protocol) model: who gets what, from which lot, within which limits.

Strict pydantic: unknown keys are errors, numbers are not coerced from strings, and a
limit above a hard ceiling is an error that names the ceiling. Dose conversions use
exact fractions so that rounding can never push a dose over its limit.
"""

from __future__ import annotations

import math
import tomllib
from datetime import date
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, Strict, field_validator, model_validator

from controller.dosing._ceilings import (
    CEILING_24H_UL,
    CEILING_MAX_DURATION_S,
    CEILING_OUTPUT_PCT_MAX,
    CEILING_OUTPUT_PCT_MIN,
    CEILING_SESSION_UL,
    DEFAULT_CONTINUATION_WINDOW_S,
    RESERVOIR_CAPACITY_UL,
)
from controller.dosing._cohorts import check_trial_tables
from controller.dosing._lot import (
    ID_PATTERN,
    PLAUSIBLE_CONCENTRATION_PER_ML,
    PLAUSIBLE_RATIO,
    BedsideChecks,
    Cohort,
    DrugUnit,
    Lot,
    TrialLot,
    _Model,
)

__all__ = [
    "BLINDED_DRUG_LABEL",
    "DELIVERY_APNOEA_S",
    "DELIVERY_GATE_PCT",
    "DELIVERY_LEAD_BREATHS",
    "OVERRIDABLE_CODES",
    "PLAUSIBLE_CONCENTRATION_PER_ML",
    "PLAUSIBLE_RATIO",
    "Arm",
    "BedsideChecks",
    "Cohort",
    "Delivery",
    "DeliveryMode",
    "DrugUnit",
    "Lot",
    "Prescription",
    "PrescriptionLimits",
    "TrialLot",
    "UnblindingKey",
    "load_prescription",
]

SoftCode = Literal["interval", "rolling_24h_sessions", "course_start", "course_end"]
OVERRIDABLE_CODES: Final[frozenset[str]] = frozenset(
    {"interval", "rolling_24h_sessions", "course_start", "course_end"}
)
"""Constraint codes a prescription may declare soft. Volume and dose limits, ceilings,
time trust and storage are never overridable."""


_ID_PATTERN = ID_PATTERN
_UL_PER_ML = 1000
# Strict mode refuses lists for tuples; TOML arrays arrive as lists, so relax only that.
_StrTuple = Annotated[tuple[str, ...], Strict(strict=False)]
_SoftTuple = Annotated[tuple[SoftCode, ...], Strict(strict=False)]
_UnblindingKeys = Annotated[tuple["UnblindingKey", ...], Strict(strict=False)]


DeliveryMode = Literal["continuous", "breath_gated"]
"""How the head releases aerosol: all the time, or only during inspiration (ICD 1.1)."""

# START_GATED ranges of MN-1 ICD addendum 1.1 §2 (the driver's `GATED_*` ranges; a test
# keeps the two equal, so dosing need not import the serial driver).
DELIVERY_GATE_PCT: Final = (30, 90)
DELIVERY_LEAD_BREATHS: Final = (0, 10)
DELIVERY_APNOEA_S: Final = (5, 60)


def _check_range(name: str, value: int, bounds: tuple[int, int], meaning: str) -> None:
    low, high = bounds
    if not low <= value <= high:
        raise ValueError(
            f"delivery.{name} = {value} is outside {low}..{high} ({meaning}; "
            "MN-1 ICD addendum 1.1 START_GATED range)"
        )


#: What leaves the bed instead of the drug's name when the arm is blinded (issue 20).
BLINDED_DRUG_LABEL: Final = "study medication"


class Delivery(_Model):
    """`[prescription.delivery]`: continuous, or breath-gated on an ICD 1.1 head; and
    "deliver N µL" (default: stop at the session cap) or "fill F µL, nebulise to dryness".

    `breath_gated` needs a head that advertised BREATH_GATED; on any other head the
    session is refused with the reason, never run continuously instead.

    With `fill_ul` the nurse pours `fill_ul` into the cup and the head runs until the
    mesh stops: `fill_ul - residual_ul` (the volume the mesh cannot nebulise, from the
    head's datasheet) is the expected delivered volume, within `dry_tolerance_ul`.
    Running dry there is a normal, complete administration (`classify_end`).
    """

    mode: DeliveryMode = "continuous"
    gate_pct: int | None = Field(
        default=None, description="share of the expected inspiratory time with aerosol (%)"
    )
    lead_breaths: int | None = Field(
        default=None, description="breaths sensed before the first aerosol pulse"
    )
    apnoea_s: int | None = Field(
        default=None, description="seconds without an inspiration before the head pauses"
    )
    fill_ul: int | None = Field(
        default=None,
        ge=1,
        le=RESERVOIR_CAPACITY_UL,
        description="µL poured into the cup; the session nebulises it to dryness",
    )
    residual_ul: int | None = Field(
        default=None, ge=0, description="µL the head's mesh cannot nebulise (its datasheet)"
    )
    dry_tolerance_ul: int | None = Field(
        default=None, ge=0, description="how far below fill - residual a dry end still counts"
    )

    @model_validator(mode="after")
    def _to_dryness(self) -> Self:
        if self.fill_ul is None:
            extra = [n for n in ("residual_ul", "dry_tolerance_ul") if getattr(self, n) is not None]
            if extra:
                raise ValueError(
                    f"delivery.{', delivery.'.join(extra)} only apply with delivery.fill_ul "
                    "(fill the cup and nebulise to dryness); add fill_ul or remove them"
                )
            return self
        if self.residual_ul is None:
            raise ValueError(
                "delivery.fill_ul needs delivery.residual_ul: the volume the head's mesh "
                "cannot nebulise (MN-1 datasheet; the simulator's default is 100 µL)"
            )
        if self.residual_ul >= self.fill_ul:
            raise ValueError(
                f"delivery.residual_ul = {self.residual_ul} µL is not below delivery.fill_ul = "
                f"{self.fill_ul} µL: nothing would be nebulised"
            )
        if self.dryness_tolerance_ul >= self.expected_dry_ul:
            raise ValueError(
                f"delivery.dry_tolerance_ul = {self.dryness_tolerance_ul} µL must be below the "
                f"expected delivered volume fill_ul - residual_ul = {self.expected_dry_ul} µL"
            )
        return self

    @property
    def to_dryness(self) -> bool:
        """True for "fill F µL, nebulise to dryness" (`fill_ul` set)."""
        return self.fill_ul is not None

    @property
    def expected_dry_ul(self) -> int:
        """fill − residual: what a to-dryness session is expected to deliver (0 otherwise)."""
        if self.fill_ul is None:
            return 0
        return self.fill_ul - (self.residual_ul or 0)

    @property
    def dryness_tolerance_ul(self) -> int:
        """`dry_tolerance_ul`, by default 5 % of the fill and at least 50 µL."""
        if self.dry_tolerance_ul is not None:
            return self.dry_tolerance_ul
        return max(50, (self.fill_ul or 0) // 20)

    @model_validator(mode="after")
    def _ranges(self) -> Self:
        given = [
            n for n in ("gate_pct", "lead_breaths", "apnoea_s") if getattr(self, n) is not None
        ]
        if self.mode == "continuous":
            if given:
                raise ValueError(
                    f'delivery.{", delivery.".join(given)} only apply to mode = "breath_gated"; '
                    'remove them or set mode = "breath_gated"'
                )
            return self
        _check_range("gate_pct", self.gated_gate_pct, DELIVERY_GATE_PCT, "share of inspiration")
        _check_range(
            "lead_breaths", self.gated_lead_breaths, DELIVERY_LEAD_BREATHS, "learning breaths"
        )
        _check_range("apnoea_s", self.gated_apnoea_s, DELIVERY_APNOEA_S, "apnoea pause")
        return self

    @property
    def breath_gated(self) -> bool:
        """True for `mode = "breath_gated"`."""
        return self.mode == "breath_gated"

    @property
    def gated_gate_pct(self) -> int:
        """`gate_pct` for START_GATED (default 80 %: the first 80 % of inspiration)."""
        return 80 if self.gate_pct is None else self.gate_pct

    @property
    def gated_lead_breaths(self) -> int:
        """`lead_breaths` for START_GATED (default 3)."""
        return 3 if self.lead_breaths is None else self.lead_breaths

    @property
    def gated_apnoea_s(self) -> int:
        """`apnoea_s` for START_GATED (default 15 s)."""
        return 15 if self.apnoea_s is None else self.apnoea_s


class Arm(_Model):
    """Study arm / cohort. When `blinded`, nothing published may name it."""

    arm_id: str = Field(pattern=_ID_PATTERN)
    cohort: str | None = Field(default=None, pattern=_ID_PATTERN)
    blinded: bool


class UnblindingKey(_Model):
    """`[[prescription.unblinding_keys]]`: a person who may unblind this subject's reports.

    Listed in the (pharmacy-signed) prescription, not in the controller's `[security]`
    senders, so whoever can edit the configuration cannot add an unblinder. The key
    signs a `report.unblind` credential (controller.security, the envelope of remote
    commands); docs/trials.md, Blinding.
    """

    id: str = Field(pattern=_ID_PATTERN, description="the key's sender id in credentials")
    public_key: str = Field(
        pattern=r"^ed25519:[A-Za-z0-9+/]{42,43}=?$",
        description="`ed25519:<base64>` from the coordinator's .pub file",
    )
    name: str = Field(
        min_length=1, max_length=100, description="the person, recorded with every unblinding"
    )


def _check_ceiling(name: str, value: int | None, ceiling: int, why: str) -> int | None:
    if value is not None and value > ceiling:
        raise ValueError(
            f"limits.{name} = {value} is above the hard ceiling {ceiling} ({why}); "
            "configuration can lower a ceiling, never raise it"
        )
    return value


class PrescriptionLimits(_Model):
    """Every limit is optional; where a hard ceiling exists it applies when unset."""

    session_ul: int | None = Field(default=None, ge=1)
    session_dose: float | None = Field(default=None, gt=0)
    min_interval_s: int | None = Field(default=None, ge=1)
    continuation_window_s: int = Field(
        default=DEFAULT_CONTINUATION_WINDOW_S,
        ge=0,
        le=24 * 3600,
        description="how long after a technical interruption the rest of the dose may be "
        "given as a continuation run (0: never)",
    )
    rolling_24h_max_sessions: int | None = Field(default=None, ge=1)
    rolling_24h_max_ul: int | None = Field(default=None, ge=1)
    rolling_24h_max_dose: float | None = Field(default=None, gt=0)
    course_max_sessions: int | None = Field(default=None, ge=1)
    course_max_ul: int | None = Field(default=None, ge=1)
    course_max_dose: float | None = Field(default=None, gt=0)
    course_start: date | None = None
    course_end: date | None = None
    max_session_duration_s: int | None = Field(default=None, ge=1)
    output_pct: int = 100
    output_pct_min: int = CEILING_OUTPUT_PCT_MIN
    output_pct_max: int = CEILING_OUTPUT_PCT_MAX
    soft_limits: _SoftTuple = ()
    override_roles: _StrTuple = ()

    @field_validator("session_ul")
    @classmethod
    def _session_ceiling(cls, value: int | None) -> int | None:
        return _check_ceiling(
            "session_ul", value, CEILING_SESSION_UL, "reservoir capacity / ICD target"
        )

    @field_validator("rolling_24h_max_ul")
    @classmethod
    def _daily_ceiling(cls, value: int | None) -> int | None:
        return _check_ceiling("rolling_24h_max_ul", value, CEILING_24H_UL, "code daily maximum")

    @field_validator("max_session_duration_s")
    @classmethod
    def _duration_ceiling(cls, value: int | None) -> int | None:
        return _check_ceiling(
            "max_session_duration_s", value, CEILING_MAX_DURATION_S, "ICD max_duration_s"
        )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        for name in ("output_pct_min", "output_pct", "output_pct_max"):
            value = getattr(self, name)
            if not CEILING_OUTPUT_PCT_MIN <= value <= CEILING_OUTPUT_PCT_MAX:
                raise ValueError(
                    f"limits.{name} = {value} is outside the hard range "
                    f"{CEILING_OUTPUT_PCT_MIN}..{CEILING_OUTPUT_PCT_MAX} % (ICD output_pct); "
                    "configuration can narrow it, never widen it"
                )
        if not self.output_pct_min <= self.output_pct <= self.output_pct_max:
            raise ValueError(
                f"limits.output_pct = {self.output_pct} is outside "
                f"limits.output_pct_min..output_pct_max = "
                f"{self.output_pct_min}..{self.output_pct_max}"
            )
        if self.session_dose is not None and self.session_ul is None:
            raise ValueError(
                "limits.session_dose needs limits.session_ul (the prescribed nebulised "
                "volume) so the lot concentration can be cross-checked"
            )
        if (
            self.course_start is not None
            and self.course_end is not None
            and self.course_end < self.course_start
        ):
            raise ValueError(
                f"limits.course_end {self.course_end} is before limits.course_start "
                f"{self.course_start}"
            )
        if self.soft_limits and not self.override_roles:
            raise ValueError(
                "limits.soft_limits is set but limits.override_roles is empty: name the "
                "roles allowed to override (e.g. ['investigator'])"
            )
        return self


# Strict mode refuses lists for tuples; TOML arrays of tables arrive as lists.
_LotTable = Annotated[tuple[TrialLot, ...], Strict(strict=False)]
_CohortTable = Annotated[tuple[Cohort, ...], Strict(strict=False)]


def _subject_cohort(data: dict[str, Any]) -> dict[str, Any] | None:
    """The raw `[[prescription.cohorts]]` entry of the subject's cohort, if any."""
    arm, cohorts = data.get("arm"), data.get("cohorts")
    if not isinstance(arm, dict) or not isinstance(cohorts, list | tuple):
        return None
    wanted = arm.get("cohort")
    return next((c for c in cohorts if isinstance(c, dict) and c.get("cohort") == wanted), None)


class Prescription(_Model):
    """One subject's prescription under a protocol."""

    subject_id: str = Field(pattern=_ID_PATTERN)
    protocol_id: str = Field(pattern=_ID_PATTERN)
    drug: str = Field(min_length=1, max_length=100)
    lot: Lot
    arm: Arm
    timezone: str = Field(
        default="UTC", description="IANA zone in which course dates are evaluated"
    )
    limits: PrescriptionLimits
    delivery: Delivery = Field(default_factory=Delivery)
    lots: _LotTable = Field(
        default=(), description="the protocol's lot table ([[prescription.lots]])"
    )
    cohorts: _CohortTable = Field(
        default=(), description="dose-escalation cohorts ([[prescription.cohorts]])"
    )
    checks: BedsideChecks = Field(default_factory=BedsideChecks)

    @model_validator(mode="before")
    @classmethod
    def _cohort_fixes_the_dose(cls, data: Any) -> Any:
        """Unset `limits.session_ul`/`session_dose` come from the subject's cohort."""
        if not isinstance(data, dict):
            return data
        cohort = _subject_cohort(data)
        limits = data.get("limits")
        if cohort is None or not isinstance(limits, dict):
            return data
        filled = {
            name: cohort[name]
            for name in ("session_ul", "session_dose")
            if name in cohort and name not in limits
        }
        return {**data, "limits": {**limits, **filled}} if filled else data

    @model_validator(mode="after")
    def _trial_tables(self) -> Self:
        """The lot table, the cohorts and the checks agree with each other."""
        check_trial_tables(self)
        return self

    unblinding_keys: _UnblindingKeys = Field(
        default=(), description="who may sign an unblinded report (blinded arms)"
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(
                f"timezone = {value!r} is not a known IANA zone (e.g. 'Europe/London')"
            ) from exc
        return value

    @model_validator(mode="after")
    def _dryness_within_the_session_cap(self) -> Self:
        """A to-dryness fill must fit the session volume, or the cap ends it before dryness."""
        delivery, session_ul = self.delivery, self.limits.session_ul
        if delivery.to_dryness and session_ul is not None and session_ul < delivery.expected_dry_ul:
            raise ValueError(
                f"delivery.fill_ul - delivery.residual_ul = {delivery.expected_dry_ul} µL is "
                f"above limits.session_ul = {session_ul} µL: the session would stop at its cap "
                "before the cup is dry; fill less or prescribe a larger session volume"
            )
        return self

    @model_validator(mode="after")
    def _plausible_against_dose(self) -> Self:
        """Catch a 10x/100x concentration typo: volume x concentration vs prescribed dose."""
        limits = self.limits
        if limits.session_dose is None or limits.session_ul is None:
            return self
        implied = float(limits.session_ul * self.lot.concentration_per_ul())
        ratio = implied / limits.session_dose
        low, high = PLAUSIBLE_RATIO
        if not low <= ratio <= high:
            per_ml = float(self.lot.concentration_per_ml())
            ok_low = low * limits.session_dose / limits.session_ul * _UL_PER_ML
            ok_high = high * limits.session_dose / limits.session_ul * _UL_PER_ML
            raise ValueError(
                f"lot concentration {per_ml:.4g} {self.lot.unit}/mL (lot.amount "
                f"{self.lot.amount:.4g} per {self.lot.per_volume_ml:g} mL) implies "
                f"{implied:.4g} {self.lot.unit} in limits.session_ul = {limits.session_ul} µL, "
                f"{ratio:.3g}x the prescribed limits.session_dose = {limits.session_dose:.4g}; "
                f"the plausible concentration for this prescription is "
                f"{ok_low:.4g}..{ok_high:.4g} {self.lot.unit}/mL: check for a 10x typo"
            )
        return self

    @property
    def zone(self) -> ZoneInfo:
        """The zone of course dates."""
        return ZoneInfo(self.timezone)

    def ul_to_dose(self, volume_ul: int) -> Fraction:
        """Exact drug amount in `volume_ul` of this lot."""
        return volume_ul * self.lot.concentration_per_ul()

    def dose_to_ul_floor(self, dose: Fraction | float) -> int:
        """Whole µL holding at most `dose` (rounded down, never over)."""
        exact = Fraction(dose) / self.lot.concentration_per_ul()
        return max(0, math.floor(exact))

    def public_summary(self) -> dict[str, Any]:
        """What telemetry may publish. For a blinded arm: no arm, cohort, lot or dose figures.

        The lot and the dose figures are withheld too because in a blinded study the
        lot (active/placebo) or the dose level (escalation cohort) would name the arm.
        """
        limits = self.limits
        summary: dict[str, Any] = {
            "subject_id": self.subject_id,
            "protocol_id": self.protocol_id,
            # A placebo arm's prescription names its own product: blinded, no drug name.
            "drug": BLINDED_DRUG_LABEL if self.arm.blinded else self.drug,
            "blinded": self.arm.blinded,
            "session_ul": limits.session_ul,
            "min_interval_s": limits.min_interval_s,
            "rolling_24h_max_sessions": limits.rolling_24h_max_sessions,
            "rolling_24h_max_ul": limits.rolling_24h_max_ul,
            "course_max_sessions": limits.course_max_sessions,
            "course_max_ul": limits.course_max_ul,
            "course_start": limits.course_start.isoformat() if limits.course_start else None,
            "course_end": limits.course_end.isoformat() if limits.course_end else None,
            "max_session_duration_s": limits.max_session_duration_s,
            "timezone": self.timezone,
        }
        if not self.arm.blinded:
            summary |= {
                "arm_id": self.arm.arm_id,
                "cohort": self.arm.cohort,
                "lot_id": self.lot.lot_id,
                "drug_unit": self.lot.unit,
                "concentration_per_ml": float(self.lot.concentration_per_ml()),
                "session_dose": limits.session_dose,
                "rolling_24h_max_dose": limits.rolling_24h_max_dose,
                "course_max_dose": limits.course_max_dose,
            }
        return summary


def load_prescription(path: Path) -> Prescription:
    """Read the `[prescription]` table of a TOML file and validate it.

    Raises `ValueError` naming the file if the table is missing; pydantic's
    `ValidationError` (a `ValueError`) names the bad field otherwise.
    """
    with path.open("rb") as stream:
        document = tomllib.load(stream)
    if "prescription" not in document:
        raise ValueError(f"{path}: no [prescription] table; see config/example.toml")
    return Prescription.model_validate(document["prescription"])
