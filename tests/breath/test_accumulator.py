"""The per-run breath accumulator and the delivery admission, pure."""

from __future__ import annotations

from fractions import Fraction

import pytest

from controller.breath import (
    BreathAccumulator,
    breathing_facts,
    delivery_refusal,
    start_command,
)
from controller.dosing import Delivery
from drivers.mn1 import (
    Breath,
    CapBits,
    Caps,
    CapsDiscovery,
    DeviceState,
    FaultBits,
    Start,
    StartGated,
    Status,
    StopReason,
)


def breath(
    no: int,
    *,
    session_id: int = 7,
    insp_dul: int = 38,
    exp_dul: int = 1,
    insp_ms: int = 1000,
    exp_ms: int = 2000,
    tidal_ml: int = 500,
) -> Breath:
    return Breath(
        session_id=session_id,
        breath_no=no,
        insp_ms=insp_ms,
        exp_ms=exp_ms,
        tidal_ml=tidal_ml,
        peak_flow_ml_s=700,
        aerosol_insp_dul=insp_dul,
        aerosol_exp_dul=exp_dul,
    )


def status(state: DeviceState, session_id: int = 7) -> Status:
    return Status(
        uptime_ms=0,
        state=state,
        session_id=session_id,
        delivered_ul=0,
        flow_ul_min=0,
        reservoir_ul=1000,
        mesh_temp_cC=3000,
        drive_ma=0,
        faults=FaultBits(0),
        crc_errors=0,
        last_stop=StopReason.NONE,
        confirm_count=0,
    )


def test_sums_rates_tidal_and_phase_doses() -> None:
    acc = BreathAccumulator(session_id=7, started_ms=0)
    acc.on_breath(breath(10, insp_ms=1000, exp_ms=2000, tidal_ml=400), 3000)  # 20/min
    acc.on_breath(breath(11, insp_ms=2000, exp_ms=4000, tidal_ml=600), 9000)  # 10/min
    summary = acc.summary()
    assert summary.breaths == 2
    assert summary.rate_mean_bpm == pytest.approx(60_000 / 4500)
    assert (summary.rate_min_bpm, summary.rate_max_bpm) == (10.0, 20.0)
    assert summary.tidal_mean_ml == 500
    assert (summary.aerosol_insp_dul, summary.aerosol_exp_dul) == (76, 2)
    assert summary.aerosol_ul == pytest.approx(7.8)
    assert summary.insp_share == pytest.approx(76 / 78)
    per_ul = Fraction(200_000_000, 3000)
    insp, exp = summary.phase_doses(per_ul)
    assert insp == Fraction(76, 10) * per_ul
    assert exp == Fraction(2, 10) * per_ul


def test_lost_reports_from_breath_no_gaps_with_wrap_and_reboot() -> None:
    acc = BreathAccumulator(session_id=7, started_ms=0)
    acc.on_breath(breath(65534), 0)
    acc.on_breath(breath(1), 1)  # 65535 and 0 lost across the wrap
    acc.on_breath(breath(3), 2)  # 2 lost
    acc.on_breath(breath(40_000), 3)  # a renumbering (reboot), not 39 996 losses
    summary = acc.summary()
    assert summary.lost_reports == 3
    assert summary.breaths == 4
    assert summary.estimated_total_ul() == pytest.approx(summary.aerosol_ul * 7 / 4)


def test_session_zero_breath_with_aerosol_is_ours_other_sessions_are_not() -> None:
    acc = BreathAccumulator(session_id=7, started_ms=0)
    acc.on_breath(breath(1, session_id=0, insp_dul=0, exp_dul=120), 10)  # started mid-exp
    acc.on_breath(breath(2, session_id=0, insp_dul=0, exp_dul=0), 20)  # after the end
    acc.on_breath(breath(3, session_id=8, insp_dul=50, exp_dul=0), 30)  # someone else's
    summary = acc.summary()
    assert (summary.breaths, summary.aerosol_exp_dul, summary.aerosol_insp_dul) == (1, 120, 0)
    assert summary.lost_reports == 0


def test_waiting_time_from_consecutive_statuses_not_across_link_loss() -> None:
    acc = BreathAccumulator(session_id=7, started_ms=0)
    acc.on_status(status(DeviceState.WAITING), 0)
    acc.on_status(status(DeviceState.WAITING), 100)
    acc.on_status(status(DeviceState.NEBULISING), 200)  # WAITING 0..200
    acc.on_status(status(DeviceState.WAITING), 300)
    acc.on_status(status(DeviceState.WAITING), 5300)  # a 5 s gap: link loss, not counted
    assert acc.waiting
    acc.on_status(status(DeviceState.IDLE, session_id=7), 5400)
    assert acc.summary().waiting_ms == 300
    assert not acc.waiting


def test_ms_without_breath_counts_from_start_or_last_breath() -> None:
    acc = BreathAccumulator(session_id=7, started_ms=1000)
    assert acc.ms_without_breath(6000) == 5000
    acc.on_breath(breath(1, session_id=0, insp_dul=0, exp_dul=0), 7000)  # any breath counts
    assert acc.ms_without_breath(9000) == 2000


def caps(bits: CapBits) -> Caps:
    return Caps(ack_seq=0, icd_minor=1, caps=bits, trigger_ml_s=50, detect_latency_ms=40)


GATED = Delivery(mode="breath_gated", gate_pct=70, lead_breaths=2, apnoea_s=20)


def test_continuous_runs_on_any_head() -> None:
    for discovery in CapsDiscovery:
        assert delivery_refusal(Delivery(), caps_discovery=discovery, caps=None) is None


def test_gated_refused_on_version_1_and_non_gating_heads_with_reasons() -> None:
    pending = delivery_refusal(GATED, caps_discovery=CapsDiscovery.PENDING, caps=None)
    assert pending is not None
    assert (pending.code, pending.transient) == ("head_capabilities_unknown", True)
    v1 = delivery_refusal(GATED, caps_discovery=CapsDiscovery.VERSION_1, caps=None)
    assert v1 is not None
    assert (v1.code, v1.transient) == ("head_not_breath_aware", False)
    assert "ICD version 1" in v1.reason
    sensing = delivery_refusal(
        GATED, caps_discovery=CapsDiscovery.DISCOVERED, caps=caps(CapBits.BREATH_SENSING)
    )
    assert sensing is not None
    assert sensing.code == "head_cannot_gate"
    ok = delivery_refusal(
        GATED,
        caps_discovery=CapsDiscovery.DISCOVERED,
        caps=caps(CapBits.BREATH_SENSING | CapBits.BREATH_GATED),
    )
    assert ok is None


def test_start_command_carries_the_gating_parameters() -> None:
    common = {"session_id": 9, "target_ul": 3000, "max_duration_s": 3600, "output_pct": 100}
    assert start_command(Delivery(), **common) == Start(**common)
    assert start_command(GATED, **common) == StartGated(
        **common, gate_pct=70, lead_breaths=2, apnoea_s=20
    )


def test_breathing_facts_follow_the_run() -> None:
    acc = BreathAccumulator(session_id=7, started_ms=0)
    acc.on_status(status(DeviceState.WAITING), 100)
    facts = breathing_facts(
        acc, now_ms=16_000, gated=True, apnoea_s=15, delivered_ul=0, end_reason=None, final=False
    )
    assert (facts.waiting, facts.ms_without_breath, facts.ended_no_breathing) == (
        True,
        16_000,
        False,
    )
    ended = breathing_facts(
        acc,
        now_ms=61_000,
        gated=True,
        apnoea_s=15,
        delivered_ul=0,
        end_reason=StopReason.NO_BREATHING,
        final=True,
    )
    assert ended.ended_no_breathing
    assert not ended.waiting  # the run is over: the pause alarm gives way to the end alarm
