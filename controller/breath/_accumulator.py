"""Per-run breath accounting from BREATH and STATUS (MN-1 ICD addendum 1.1), pure.

The dose stays `delivered_ul` from STATUS/SESSION_END (what left the cup): limits never
use BREATH. This module adds the *estimate* beside it: how much of the emitted aerosol
was released while the patient breathed in, how much while they breathed out (into
the room), and the breathing itself (rate, tidal volume, time the head waited).

Attribution rules (why each report counts where it does):

- a BREATH whose `session_id` is this run's counts for this run;
- a BREATH with `session_id` 0 received during the run counts too: its inspiration
  began before the START, and the head was idle before it (a second session would
  have been refused), so any aerosol in it is this run's;
- a report of another session does not count (but keeps the breath numbering);
- a gap in `breath_no` (mod 65536) before a counted report is that many lost
  reports; a jump of more than `_MAX_GAP` is a head reboot, not a loss.

The last breath of a run is reported at the *next* inspiration, so after the
SESSION_END: the runtime keeps feeding BREATH until the first report of another
session or of session 0 with no aerosol after the end, or until `apnoea_s` passed,
and then takes the final `summary()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Final

from drivers.mn1 import Breath, DeviceState, Status

__all__ = ["BreathAccumulator", "BreathSummary"]

_BREATH_NO_MODULUS: Final = 1 << 16
# A gap larger than this is a renumbering (reboot), not lost reports: at 60 breaths/min
# a head would have to lose every report for 16 minutes.
_MAX_GAP: Final = 1000
# STATUS comes every 100 ms; a longer gap is link loss: WAITING time is not extrapolated.
_MAX_STATUS_GAP_MS: Final = 300
_MS_PER_MIN: Final = 60_000
_DUL_PER_UL: Final = 10


@dataclass(frozen=True, slots=True, kw_only=True)
class BreathSummary:
    """One run's breathing and aerosol split (an estimate beside `delivered_ul`)."""

    session_id: int
    breaths: int
    rate_mean_bpm: float | None
    rate_min_bpm: float | None
    rate_max_bpm: float | None
    tidal_mean_ml: float | None
    #: Aerosol released in inspiration / expiration, in tenths of a µL (exact sums).
    aerosol_insp_dul: int
    aerosol_exp_dul: int
    waiting_ms: int
    lost_reports: int

    @property
    def aerosol_insp_ul(self) -> float:
        """Inspiratory-phase aerosol (µL): reaches the patient's airway (an estimate)."""
        return self.aerosol_insp_dul / _DUL_PER_UL

    @property
    def aerosol_exp_ul(self) -> float:
        """Expiratory-phase aerosol (µL): fugitive, released into the room."""
        return self.aerosol_exp_dul / _DUL_PER_UL

    @property
    def aerosol_ul(self) -> float:
        """All aerosol the reports account for (µL)."""
        return (self.aerosol_insp_dul + self.aerosol_exp_dul) / _DUL_PER_UL

    @property
    def insp_share(self) -> float | None:
        """Inspiratory share of the reported aerosol (0..1), None when there was none."""
        total = self.aerosol_insp_dul + self.aerosol_exp_dul
        return None if total == 0 else self.aerosol_insp_dul / total

    def estimated_total_ul(self) -> float:
        """Reported aerosol plus lost reports at this run's mean aerosol per breath."""
        if self.breaths == 0:
            return self.aerosol_ul
        return self.aerosol_ul * (self.breaths + self.lost_reports) / self.breaths

    def phase_doses(self, concentration_per_ul: Fraction) -> tuple[Fraction, Fraction]:
        """(inspiratory, expiratory) aerosol in the lot's dose unit (an estimate)."""
        per_dul = concentration_per_ul / _DUL_PER_UL
        return self.aerosol_insp_dul * per_dul, self.aerosol_exp_dul * per_dul

    def ledger_figures(
        self, *, concentration_per_ul: Fraction, dose_unit: str, gated: bool
    ) -> dict[str, object]:
        """The figures `Ledger.record_breath_summary` stores (plain JSON).

        Doses are estimates in the lot's unit (`Prescription.lot`), floats for JSON.
        """
        insp_dose, exp_dose = self.phase_doses(concentration_per_ul)
        return {
            "breaths": self.breaths,
            "rate_mean_bpm": _rounded(self.rate_mean_bpm),
            "rate_min_bpm": _rounded(self.rate_min_bpm),
            "rate_max_bpm": _rounded(self.rate_max_bpm),
            "tidal_mean_ml": _rounded(self.tidal_mean_ml),
            "aerosol_insp_ul": self.aerosol_insp_dul / _DUL_PER_UL,
            "aerosol_exp_ul": self.aerosol_exp_dul / _DUL_PER_UL,
            "aerosol_insp_dose": float(insp_dose),
            "aerosol_exp_dose": float(exp_dose),
            "dose_unit": dose_unit,
            "waiting_s": self.waiting_ms / 1000,
            "lost_reports": self.lost_reports,
            "gated": gated,
        }

    def as_dict(self) -> dict[str, object]:
        """JSON-ready figures (for the ledger and reports)."""
        return {
            "session_id": self.session_id,
            "breaths": self.breaths,
            "rate_mean_bpm": self.rate_mean_bpm,
            "rate_min_bpm": self.rate_min_bpm,
            "rate_max_bpm": self.rate_max_bpm,
            "tidal_mean_ml": self.tidal_mean_ml,
            "aerosol_insp_dul": self.aerosol_insp_dul,
            "aerosol_exp_dul": self.aerosol_exp_dul,
            "waiting_ms": self.waiting_ms,
            "lost_reports": self.lost_reports,
        }


class BreathAccumulator:
    """Accumulates one run (one START or START_GATED session) from link events."""

    def __init__(self, *, session_id: int, started_ms: int) -> None:
        """A run that started (START ACKed) at monotonic `started_ms`."""
        if session_id < 1:
            raise ValueError(f"session_id must be >= 1, got {session_id}")
        self.session_id = session_id
        self.started_ms = started_ms
        self._breaths = 0
        self._cycle_ms_sum = 0
        self._cycle_ms_min: int | None = None
        self._cycle_ms_max: int | None = None
        self._tidal_ml_sum = 0
        self._insp_dul = 0
        self._exp_dul = 0
        self._lost = 0
        self._last_breath_no: int | None = None
        #: Monotonic time of the last BREATH of any session (= an inspiration detected).
        self.last_breath_ms: int | None = None
        self._waiting_ms = 0
        self._last_status: tuple[int, DeviceState] | None = None

    # --- inputs ---------------------------------------------------------------------

    def on_breath(self, breath: Breath, at_ms: int) -> int | None:
        """A BREATH report received at monotonic `at_ms`.

        Returns None when the report does not count for this run, else the number of
        reports lost just before it (0 when none): what the run's per-breath record keeps.
        """
        previous = self._last_breath_no
        self._last_breath_no = breath.breath_no
        self.last_breath_ms = at_ms
        if breath.session_id not in (0, self.session_id):
            return None
        if breath.session_id == 0 and breath.aerosol_insp_dul + breath.aerosol_exp_dul == 0:
            return None  # a breath outside any session: nothing of ours in it
        lost = 0
        if previous is not None:
            gap = (breath.breath_no - previous - 1) % _BREATH_NO_MODULUS
            if gap <= _MAX_GAP:
                lost = gap
                self._lost += gap
        self._breaths += 1
        cycle_ms = breath.insp_ms + breath.exp_ms
        self._cycle_ms_sum += cycle_ms
        low, high = self._cycle_ms_min, self._cycle_ms_max
        self._cycle_ms_min = cycle_ms if low is None else min(low, cycle_ms)
        self._cycle_ms_max = cycle_ms if high is None else max(high, cycle_ms)
        self._tidal_ml_sum += breath.tidal_ml
        self._insp_dul += breath.aerosol_insp_dul
        self._exp_dul += breath.aerosol_exp_dul
        return lost

    def on_status(self, status: Status, at_ms: int) -> None:
        """A STATUS received at monotonic `at_ms`: counts the time spent WAITING."""
        last = self._last_status
        if (
            last is not None
            and last[1] is DeviceState.WAITING
            and 0 <= at_ms - last[0] <= _MAX_STATUS_GAP_MS
        ):
            self._waiting_ms += at_ms - last[0]
        ours = status.session_id == self.session_id
        self._last_status = (at_ms, status.state) if ours else None

    # --- outputs --------------------------------------------------------------------

    @property
    def waiting(self) -> bool:
        """The last STATUS of this run said WAITING."""
        return self._last_status is not None and self._last_status[1] is DeviceState.WAITING

    def ms_without_breath(self, now_ms: int) -> int:
        """Time since the last detected inspiration (or since the start, if none since)."""
        last = self.last_breath_ms
        since = self.started_ms if last is None else max(last, self.started_ms)
        return max(0, now_ms - since)

    def summary(self) -> BreathSummary:
        """The run so far (final once the last breath has been reported)."""
        breaths = self._breaths
        return BreathSummary(
            session_id=self.session_id,
            breaths=breaths,
            rate_mean_bpm=_bpm(self._cycle_ms_sum / breaths) if breaths else None,
            rate_min_bpm=_bpm(self._cycle_ms_max) if self._cycle_ms_max else None,
            rate_max_bpm=_bpm(self._cycle_ms_min) if self._cycle_ms_min else None,
            tidal_mean_ml=self._tidal_ml_sum / breaths if breaths else None,
            aerosol_insp_dul=self._insp_dul,
            aerosol_exp_dul=self._exp_dul,
            waiting_ms=self._waiting_ms,
            lost_reports=self._lost,
        )


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _bpm(cycle_ms: float) -> float | None:
    return None if cycle_ms <= 0 else _MS_PER_MIN / cycle_ms
