"""Facts and conditions of the breath-aware alarms (MN-1 ICD addendum 1.1), pure.

The runtime builds `BreathingFacts` for a run on a breath-aware head (see
`controller.breath.breathing_facts`) and passes them in `AlarmInputs.breathing`;
`breathing_conditions` says which of the four breath rows of the alarm table hold.

Thresholds (integer arithmetic, no rounding at the edge):

- no breathing detected: a gated run is WAITING and no inspiration was detected
  (no BREATH report) for `apnoea_s`. STATUS WAITING alone is not enough: the head
  also waits while it senses its lead breaths, and on a slow pattern that lasts
  longer than `apnoea_s` (3 breaths at 6/min = 30 s).
- gating ineffective: in a gated run, expiratory-phase aerosol above 5 % of the
  run's reported aerosol, judged once the run has reported at least 10 µL (before
  that, one pulse that overran by a tenth of a µL would be 10 %).
- accounting mismatch: once the run's last breath is reported, the BREATH aerosol
  (lost reports estimated at the run's mean per breath) differs from `delivered_ul`
  by more than 2 % of `delivered_ul` + 5 µL.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Final

from ._alarm_types import AlarmCode

__all__ = [
    "GATING_INEFFECTIVE_EXP_PCT",
    "GATING_JUDGED_FROM_DUL",
    "MISMATCH_ABS_UL",
    "MISMATCH_REL_PCT",
    "BreathingFacts",
    "breathing_conditions",
]

GATING_INEFFECTIVE_EXP_PCT: Final = 5
GATING_JUDGED_FROM_DUL: Final = 100  # 10 µL
MISMATCH_REL_PCT: Final = 2
MISMATCH_ABS_UL: Final = 5
_DUL_PER_UL: Final = 10


@dataclass(frozen=True, slots=True, kw_only=True)
class BreathingFacts:
    """A run on a breath-aware head, as the breath alarms need it.

    * `gated` — the run was started with START_GATED.
    * `waiting` — the last STATUS of the run said WAITING.
    * `ms_without_breath` — since the last BREATH report (or the start).
    * `apnoea_s` — the run's apnoea setting (START_GATED `apnoea_s`).
    * `ended_no_breathing` — the run ended with reason NO_BREATHING (until the runtime
      has recorded the end, like `session_stopped_by_watchdog`).
    * `aerosol_insp_dul`, `aerosol_exp_dul`, `breaths`, `lost_reports` — the run's
      BREATH accounting (`controller.breath.BreathSummary`).
    * `delivered_ul` — the run's `delivered_ul` (STATUS / SESSION_END).
    * `final` — the run's last breath has been reported (or can no longer be).
    """

    session_id: int
    gated: bool
    waiting: bool
    ms_without_breath: int
    apnoea_s: int
    ended_no_breathing: bool
    aerosol_insp_dul: int
    aerosol_exp_dul: int
    breaths: int
    lost_reports: int
    delivered_ul: int
    final: bool


def breathing_conditions(facts: BreathingFacts) -> dict[AlarmCode, dict[str, object]]:
    """The breath alarm conditions present now, with their message fields."""
    present: dict[AlarmCode, dict[str, object]] = {}
    base: dict[str, object] = {"session_id": facts.session_id, "apnoea_s": facts.apnoea_s}
    if facts.gated and facts.waiting and facts.ms_without_breath >= facts.apnoea_s * 1000:
        present[AlarmCode.NO_BREATHING_DETECTED] = base | {
            "no_breath_s": facts.ms_without_breath // 1000
        }
    if facts.ended_no_breathing:
        present[AlarmCode.SESSION_ENDED_NO_BREATHING] = base | {"waited_s": 4 * facts.apnoea_s}
    total_dul = facts.aerosol_insp_dul + facts.aerosol_exp_dul
    if (
        facts.gated
        and total_dul >= GATING_JUDGED_FROM_DUL
        and facts.aerosol_exp_dul * 100 > GATING_INEFFECTIVE_EXP_PCT * total_dul
    ):
        present[AlarmCode.BREATH_GATING_INEFFECTIVE] = base | {
            "exp_pct": round(100 * facts.aerosol_exp_dul / total_dul, 1)
        }
    if facts.final and facts.breaths > 0:
        accounted = Fraction(total_dul, _DUL_PER_UL)
        estimated = accounted * (facts.breaths + facts.lost_reports) / facts.breaths
        allowed = Fraction(MISMATCH_REL_PCT * facts.delivered_ul, 100) + MISMATCH_ABS_UL
        if abs(estimated - facts.delivered_ul) > allowed:
            present[AlarmCode.BREATH_ACCOUNTING_MISMATCH] = base | {
                "accounted_ul": round(float(estimated), 1),
                "delivered_ul": facts.delivered_ul,
                "lost_reports": facts.lost_reports,
            }
    return present
