"""Alarm rules of breath-aware heads (ICD addendum 1.1): breathing, gating, breath accounting.

Rows of the alarm table (`_rules.ALARM_RULES` lists them in evaluation order).
"""

from __future__ import annotations

from ._alarm_types import AlarmCategory, AlarmCode, AlarmPriority, AlarmRule

__all__ = ["BREATH_RULES"]

BREATH_RULES: tuple[AlarmRule, ...] = (
    AlarmRule(
        code=AlarmCode.NO_BREATHING_DETECTED,
        cause=(
            "a breath-gated session is WAITING and no inspiration was detected (no BREATH "
            "report) for the prescription's apnoea_s"
        ),
        priority=AlarmPriority.MEDIUM,
        category=AlarmCategory.CLINICAL,
        latching=False,
        message=(
            "No breathing detected for {no_breath_s} s: the nebuliser has paused "
            "(session {session_id}) — check patient and mask"
        ),
        action=(
            "Check the patient's breathing now, then the mask or mouthpiece fit; the "
            "dose resumes by itself when breathing is detected."
        ),
        why=(
            "The patient may not be breathing, or the mask is off; the device is safe "
            "(no aerosol) but the patient needs a prompt look."
        ),
    ),
    AlarmRule(
        code=AlarmCode.SESSION_ENDED_NO_BREATHING,
        cause="the device ended a breath-gated session with reason NO_BREATHING",
        priority=AlarmPriority.MEDIUM,
        category=AlarmCategory.CLINICAL,
        latching=True,
        message=(
            "Session {session_id} ended: no breathing detected for {waited_s} s — check "
            "patient and mask"
        ),
        action=(
            "Check the patient's breathing and the mask or mouthpiece fit; the dose is "
            "incomplete: restart only with a new confirmation at the bedside."
        ),
        why="Therapy interrupted and the patient may not be breathing; the device is safe.",
    ),
    AlarmRule(
        code=AlarmCode.BREATH_GATING_INEFFECTIVE,
        cause=(
            "in a breath-gated session, expiratory-phase aerosol above 5 % of the session's "
            "reported aerosol (judged from 10 µL on)"
        ),
        priority=AlarmPriority.MEDIUM,
        category=AlarmCategory.CLINICAL,
        latching=True,
        message=(
            "Breath gating ineffective: {exp_pct} % of the aerosol of session {session_id} "
            "was released while the patient breathed out (limit 5 %)"
        ),
        action=(
            "Check the mask or mouthpiece fit and the head's flow sensor; if it persists, "
            "take the head out of service and call clinical engineering."
        ),
        why=(
            "The patient is under-treated and staff are exposed to the drug; the dose "
            "limits are unaffected (they use the volume that left the cup)."
        ),
    ),
    AlarmRule(
        code=AlarmCode.BREATH_ACCOUNTING_MISMATCH,
        cause=(
            "after a session's last BREATH report, the reports' aerosol (lost reports "
            "estimated) differs from delivered_ul by more than 2 % + 5 µL"
        ),
        priority=AlarmPriority.LOW,
        category=AlarmCategory.TECHNICAL,
        latching=True,
        message=(
            "Breath reports of session {session_id} account for {accounted_ul} µL of the "
            "{delivered_ul} µL delivered ({lost_reports} reports lost)"
        ),
        action=(
            "No action at the bedside: the dose record uses the delivered volume. Call "
            "clinical engineering if it repeats (flow sensor or head firmware)."
        ),
        why=(
            "Only the inspiratory-phase estimate is in doubt; the dose and its limits "
            "are unaffected."
        ),
    ),
)
