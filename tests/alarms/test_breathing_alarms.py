"""The breath-aware alarm rows (ICD 1.1): each threshold exactly at its edge."""

from __future__ import annotations

import dataclasses

import pytest

from controller.alarms import AlarmCode, AlarmState, BreathingFacts, evaluate

from .test_alarms import T0, breathing, quiet


def codes(facts: BreathingFacts) -> set[AlarmCode]:
    state, _ = evaluate(quiet(breathing=facts), AlarmState(), T0)
    return {alarm.code for alarm in state.active}


def test_no_breathing_needs_waiting_and_apnoea_s_without_a_breath() -> None:
    at_limit = breathing(waiting=True, ms_without_breath=14_999)
    assert codes(at_limit) == set()
    assert codes(dataclasses.replace(at_limit, ms_without_breath=15_000)) == {
        AlarmCode.NO_BREATHING_DETECTED
    }
    # Lead breaths: WAITING while breaths keep coming is not apnoea.
    assert codes(breathing(waiting=True, ms_without_breath=4_000)) == set()
    # Not WAITING (nebulising between pulses), or a continuous run: no alarm.
    assert codes(breathing(waiting=False, ms_without_breath=60_000)) == set()
    assert codes(breathing(gated=False, waiting=True, ms_without_breath=60_000)) == set()


def test_no_breathing_clears_when_breathing_returns() -> None:
    apnoea = quiet(breathing=breathing(waiting=True, ms_without_breath=20_000))
    state, _ = evaluate(apnoea, AlarmState(), T0)
    back = quiet(breathing=breathing(waiting=False, ms_without_breath=1_000))
    state, events = evaluate(back, state, T0 + 1_000)
    assert [(e.kind.value, e.code) for e in events] == [
        ("cleared", AlarmCode.NO_BREATHING_DETECTED)
    ]
    assert state.active == ()  # not latching


@pytest.mark.parametrize(
    ("insp", "exp", "raised"),
    [
        (950, 50, False),  # exactly 5 %: not above
        (949, 51, True),
        (90, 9, False),  # 9 % but only 9.9 µL reported: not judged yet
        (90, 10, True),  # 10 µL reported: judged
    ],
)
def test_gating_ineffective_above_5_pct_from_10_ul(insp: int, exp: int, raised: bool) -> None:
    facts = breathing(aerosol_insp_dul=insp, aerosol_exp_dul=exp)
    assert (AlarmCode.BREATH_GATING_INEFFECTIVE in codes(facts)) is raised
    assert AlarmCode.BREATH_GATING_INEFFECTIVE not in codes(dataclasses.replace(facts, gated=False))


@pytest.mark.parametrize(
    ("reported_dul", "delivered_ul", "lost", "raised"),
    [
        (1070, 100, 0, False),  # 107 µL vs 100: allowed 2 + 5 = 7 µL
        (1071, 100, 0, True),
        (930, 100, 0, False),
        (929, 100, 0, True),
        (950, 100, 1, False),  # 20 reports + 1 lost: 95 × 21/20 = 99.75 µL
        (2000, 3000, 0, True),
    ],
)
def test_accounting_mismatch_2_pct_plus_5_ul_with_lost_reports(
    reported_dul: int, delivered_ul: int, lost: int, raised: bool
) -> None:
    facts = breathing(
        final=True,
        aerosol_insp_dul=reported_dul,
        aerosol_exp_dul=0,
        delivered_ul=delivered_ul,
        lost_reports=lost,
    )
    assert (AlarmCode.BREATH_ACCOUNTING_MISMATCH in codes(facts)) is raised
    # Never judged before the run's last breath is in.
    assert AlarmCode.BREATH_ACCOUNTING_MISMATCH not in codes(
        dataclasses.replace(facts, final=False)
    )


def test_no_breath_facts_no_breath_alarms() -> None:
    state, events = evaluate(quiet(), AlarmState(), T0)
    assert events == []
    assert state.active == ()
