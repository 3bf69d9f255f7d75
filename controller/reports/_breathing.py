"""The breath summary of one run, as every report shows it (pure).

A run on a breath-aware head (MN-1 ICD addendum 1.1; breath-gated, or continuous with
the phase split reported) has one breath summary row in the ledger (migration 2,
`Ledger.breath_summary`). `RunBreathing` reads that row and says it in one way for
`ledger show`, the session table and CSV, the FHIR Observation and the plot.

The **emitted** dose is `delivered_ul` (what left the cup; every limit uses it). The
**inspiratory-phase** figure is an *estimate* of the part released while the patient
breathed in, from the head's BREATH reports. Reports put the two side by side and
label them so, never one for the other.

A run recorded since the ledger keeps each BREATH report (`Ledger.breaths`) also has
its breaths one by one: `BreathStrip` lays them along the session's time axis for the
per-breath strip of the session plot, lost reports as gaps.

Blinding: a blinded prescription (`[prescription.arm] blinded = true`) shows no figure
in the drug's unit — the dose level or the lot would name the arm — only volumes,
which are equal across arms (`RunBreathing.blinded()`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from controller.ledger import BreathRecord

from ._outcome import format_dose

__all__ = ["BreathBar", "BreathStrip", "LostReports", "RunBreathing"]

_DUL_PER_UL = 10


def _float(figures: Mapping[str, Any], key: str) -> float | None:
    value = figures.get(key)
    return None if value is None else float(value)


@dataclass(frozen=True, slots=True, kw_only=True)
class RunBreathing:
    """One run's breathing and aerosol split by breath phase (an estimate)."""

    gated: bool
    """Breath-gated (aerosol only in inspiration) or continuous with the split reported."""
    breaths: int
    rate_mean_bpm: float | None
    rate_min_bpm: float | None
    rate_max_bpm: float | None
    tidal_mean_ml: float | None
    aerosol_insp_ul: float
    """Inspiratory-phase aerosol (µL): the estimate of what reached the airway."""
    aerosol_exp_ul: float
    """Expiratory-phase aerosol (µL): released into the room (fugitive)."""
    aerosol_insp_dose: float | None
    """The inspiratory-phase estimate in the lot's unit (None: blinded or unknown)."""
    aerosol_exp_dose: float | None
    dose_unit: str | None
    waiting_s: float
    """Time the head waited for a breath (WAITING) during the run."""
    lost_reports: int
    """BREATH reports missing from the numbering (their aerosol is not in the split)."""

    @classmethod
    def from_record(cls, figures: Mapping[str, Any]) -> RunBreathing:
        """From the ledger's breath summary row (`Ledger.breath_summary`)."""
        return cls(
            gated=bool(figures["gated"]),
            breaths=int(figures["breaths"]),
            rate_mean_bpm=_float(figures, "rate_mean_bpm"),
            rate_min_bpm=_float(figures, "rate_min_bpm"),
            rate_max_bpm=_float(figures, "rate_max_bpm"),
            tidal_mean_ml=_float(figures, "tidal_mean_ml"),
            aerosol_insp_ul=float(figures["aerosol_insp_ul"]),
            aerosol_exp_ul=float(figures["aerosol_exp_ul"]),
            aerosol_insp_dose=_float(figures, "aerosol_insp_dose"),
            aerosol_exp_dose=_float(figures, "aerosol_exp_dose"),
            dose_unit=None if figures.get("dose_unit") is None else str(figures["dose_unit"]),
            waiting_s=float(figures["waiting_s"]),
            lost_reports=int(figures["lost_reports"]),
        )

    def blinded(self) -> RunBreathing:
        """The same figures without any in the drug's unit (a blinded prescription)."""
        return replace(self, aerosol_insp_dose=None, aerosol_exp_dose=None, dose_unit=None)

    @property
    def mode(self) -> str:
        """`breath-gated` or `continuous` (the head reported the split)."""
        return "breath-gated" if self.gated else "continuous"

    @property
    def insp_share_pct(self) -> float | None:
        """Inspiratory share of the reported aerosol in %, None when there was none."""
        total = self.aerosol_insp_ul + self.aerosol_exp_ul
        return None if total == 0 else 100.0 * self.aerosol_insp_ul / total

    def breathing_text(self) -> str:
        """`breath-gated: 152 breaths, rate 15.0/min (14.6-15.4), tidal 500 mL, ...`."""

        def rate(value: float | None) -> str:
            return "?" if value is None else f"{value:.1f}"

        tidal = "?" if self.tidal_mean_ml is None else f"{self.tidal_mean_ml:.0f}"
        return (
            f"{self.mode}: {self.breaths} breaths, rate {rate(self.rate_mean_bpm)}/min "
            f"({rate(self.rate_min_bpm)}-{rate(self.rate_max_bpm)}), tidal {tidal} mL, "
            f"waiting {self.waiting_s:.1f} s, lost BREATH reports {self.lost_reports}"
        )

    def aerosol_text(self, *, delivered_ul: int | None, emitted_dose: float | None) -> str:
        """Emitted dose and inspiratory-phase estimate side by side, labelled as such.

        `emitted_dose` is the report's own dose of the run (None when blinded or
        unknown): it is printed only when this summary carries a dose unit too.
        """
        unit = self.dose_unit
        emitted = "?" if delivered_ul is None else str(delivered_ul)
        text = f"emitted {emitted} uL"
        if unit is not None and emitted_dose is not None:
            text += f" = {format_dose(emitted_dose)} {unit}"
        text += f"; inspiratory-phase estimate {self.aerosol_insp_ul:g} uL"
        if unit is not None and self.aerosol_insp_dose is not None:
            text += f" = {format_dose(self.aerosol_insp_dose)} {unit}"
        share = self.insp_share_pct
        if share is not None:
            text += f" ({share:.1f} % of the reported aerosol)"
        text += f"; expiratory-phase (to the room) {self.aerosol_exp_ul:g} uL"
        if unit is not None and self.aerosol_exp_dose is not None:
            text += f" = {format_dose(self.aerosol_exp_dose)} {unit}"
        return text


@dataclass(frozen=True, slots=True, kw_only=True)
class BreathBar:
    """One stored breath on the session's time axis (seconds since the start)."""

    breath_no: int
    insp_start_s: float
    insp_s: float
    exp_s: float
    aerosol_insp_ul: float
    aerosol_exp_ul: float

    @property
    def exp_start_s(self) -> float:
        """When the breath's expiration began."""
        return self.insp_start_s + self.insp_s

    @property
    def end_s(self) -> float:
        """When the next inspiration began (the report came then)."""
        return self.exp_start_s + self.exp_s


@dataclass(frozen=True, slots=True, kw_only=True)
class LostReports:
    """BREATH reports missing from the numbering: a gap on the strip, never filled in."""

    count: int
    start_s: float
    end_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class BreathStrip:
    """A run's stored breaths, one bar each, and the gaps its lost reports leave (pure)."""

    bars: tuple[BreathBar, ...]
    lost: tuple[LostReports, ...]

    @classmethod
    def from_records(cls, records: Sequence[BreathRecord], *, origin: datetime) -> BreathStrip:
        """From `Ledger.breaths(session_id)`, on the axis of the session plot (`origin`:
        its start). A report arrives at the next inspiration, so a breath ends when it was
        received and began `insp_ms + exp_ms` before. A gap runs from the end of the last
        stored breath to the start of the next one (for lost reports before the first
        stored one: as many breaths as were lost, of that breath's length, before it)."""
        bars: list[BreathBar] = []
        lost: list[LostReports] = []
        for record in records:
            cycle = timedelta(milliseconds=record.insp_ms + record.exp_ms)
            start_s = (record.at.utc - cycle - origin).total_seconds()
            bar = BreathBar(
                breath_no=record.breath_no,
                insp_start_s=start_s,
                insp_s=record.insp_ms / 1000,
                exp_s=record.exp_ms / 1000,
                aerosol_insp_ul=record.aerosol_insp_dul / _DUL_PER_UL,
                aerosol_exp_ul=record.aerosol_exp_dul / _DUL_PER_UL,
            )
            if record.lost_before:
                gap_start_s = (
                    bars[-1].end_s if bars else start_s - record.lost_before * cycle.total_seconds()
                )
                lost.append(
                    LostReports(
                        count=record.lost_before,
                        start_s=min(gap_start_s, start_s),
                        end_s=start_s,
                    )
                )
            bars.append(bar)
        return cls(bars=tuple(bars), lost=tuple(lost))

    @property
    def lost_reports(self) -> int:
        """Reports lost among (and just before) the stored ones."""
        return sum(gap.count for gap in self.lost)

    def text(self) -> str:
        """`per breath: 152 BREATH reports stored, 3 lost`."""
        return f"per breath: {len(self.bars)} BREATH reports stored, {self.lost_reports} lost"
