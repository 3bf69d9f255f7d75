"""BREATH reports with the rounding carried from breath to breath (addendum 1.1 §3).

A BREATH carries the aerosol of one breath by phase in tenths of a µL. Rounding
each breath on its own would drift by up to 0.05 µL per breath (40 µL over 800
breaths); `BreathReporter` carries the remainder to the next breath, so the sum of
the reports stays within 0.05 µL of the truth, as the addendum promises (within
1 µL). One reporter lives from one power-up to the next.
"""

from __future__ import annotations

from drivers.mn1 import Breath

from ._breathing import BreathReport

__all__ = ["BreathReporter"]


class BreathReporter:
    """Turns the sensor's breath reports into BREATH messages, carrying the rounding."""

    def __init__(self) -> None:
        """A reporter with nothing reported yet."""
        # BREATH aerosol reported so far (µL, true / tenths of µL, sent), by phase.
        self._aerosol_ul = [0.0, 0.0]
        self._aerosol_dul = [0, 0]

    def _dul(self, phase: int, volume_ul: float) -> int:
        """µL → tenths of a µL, carrying the rounding remainder to the next breath."""
        self._aerosol_ul[phase] += volume_ul
        due = round(self._aerosol_ul[phase] * 10) - self._aerosol_dul[phase]
        dul = min(0xFFFF, max(0, due))
        self._aerosol_dul[phase] += dul
        return dul

    def message(self, report: BreathReport) -> Breath:
        """The BREATH message for one detected breath."""
        return Breath(
            session_id=report.session_id,
            breath_no=report.breath_no,
            insp_ms=report.insp_ms,
            exp_ms=report.exp_ms,
            tidal_ml=report.tidal_ml,
            peak_flow_ml_s=report.peak_flow_ml_s,
            aerosol_insp_dul=self._dul(0, report.aerosol_insp_ul),
            aerosol_exp_dul=self._dul(1, report.aerosol_exp_ul),
        )
