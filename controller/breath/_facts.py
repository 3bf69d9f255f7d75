"""From a run's accumulator to the facts the breath alarm rows look at."""

from __future__ import annotations

from controller.alarms import BreathingFacts
from drivers.mn1 import StopReason

from ._accumulator import BreathAccumulator

__all__ = ["breathing_facts"]


def breathing_facts(
    accumulator: BreathAccumulator,
    *,
    now_ms: int,
    gated: bool,
    apnoea_s: int,
    delivered_ul: int,
    end_reason: StopReason | None,
    final: bool,
) -> BreathingFacts:
    """`AlarmInputs.breathing` for the run `accumulator` follows.

    `end_reason` is the run's SESSION_END reason once it ended (None while it runs);
    `final` is true once the run's last breath has been reported (see
    `BreathAccumulator`) — only then is the accounting judged. For a continuous run
    pass the prescription's `apnoea_s` default; the apnoea row only applies to gated
    runs.
    """
    summary = accumulator.summary()
    return BreathingFacts(
        session_id=accumulator.session_id,
        gated=gated,
        waiting=accumulator.waiting and end_reason is None,
        ms_without_breath=accumulator.ms_without_breath(now_ms),
        apnoea_s=apnoea_s,
        ended_no_breathing=end_reason is StopReason.NO_BREATHING,
        aerosol_insp_dul=summary.aerosol_insp_dul,
        aerosol_exp_dul=summary.aerosol_exp_dul,
        breaths=summary.breaths,
        lost_reports=summary.lost_reports,
        delivered_ul=delivered_ul,
        final=final,
    )
