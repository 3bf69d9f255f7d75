"""Addendum 1.1 in the simulator: CAPS, gating, WAITING, NO_BREATHING, BREATH, in simulated time."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.mn1 import (
    Ack,
    Breath,
    CapBits,
    Caps,
    DeviceState,
    Nak,
    NakReason,
    QueryCaps,
    SessionEnd,
    Start,
    StartGated,
    Status,
    StopReason,
)
from simulators.mn1 import (
    PATTERN_NAMES,
    BreathingModel,
    DeviceModel,
    SimulatedHost,
    execute_control,
)


def head(
    pattern: str = "iso27427", *, gating: bool = True, seed: int = 0, fill_ul: int = 3000
) -> SimulatedHost:
    model = DeviceModel(
        breathing=BreathingModel(pattern=pattern, seed=seed),
        breath_gating=gating,
        fill_ul=fill_ul,
        seed=seed,
    )
    return SimulatedHost(model=model, heartbeat_ms=200, auto_ack_end=True)


def gated(
    *,
    session_id: int = 1,
    target_ul: int = 300,
    gate_pct: int = 80,
    lead_breaths: int = 3,
    apnoea_s: int = 15,
    max_duration_s: int = 3600,
) -> StartGated:
    return StartGated(
        session_id=session_id,
        target_ul=target_ul,
        max_duration_s=max_duration_s,
        output_pct=100,
        gate_pct=gate_pct,
        lead_breaths=lead_breaths,
        apnoea_s=apnoea_s,
    )


def answer(host: SimulatedHost, seq: int) -> object:
    [received] = host.answers_to(seq)
    return received.message


def breaths(host: SimulatedHost, session_id: int | None = None) -> list[Breath]:
    found = [r.message for r in host.received if isinstance(r.message, Breath)]
    return [b for b in found if session_id is None or b.session_id == session_id]


def run_to_end(host: SimulatedHost, *, timeout_ms: int = 3_600_000) -> SessionEnd:
    received = host.run_until_message(
        lambda r: isinstance(r.message, SessionEnd), timeout_ms=timeout_ms
    )
    assert isinstance(received.message, SessionEnd)
    return received.message


def states_between(host: SimulatedHost, start_ms: int, end_ms: int) -> set[DeviceState]:
    return {s.state for t, s in host.timed_statuses() if start_ms <= t < end_ms}


# --- capability discovery ------------------------------------------------------------------


def test_a_1_1_head_answers_query_caps() -> None:
    host = head()
    seq = host.send(QueryCaps())
    assert answer(host, seq) == Caps(
        ack_seq=seq,
        icd_minor=1,
        caps=CapBits.BREATH_SENSING | CapBits.BREATH_GATED,
        trigger_ml_s=50,
        detect_latency_ms=40,
    )


def test_a_version_1_head_drops_query_caps_and_start_gated_as_unknown_types() -> None:
    host = SimulatedHost(model=DeviceModel())
    first = host.send(QueryCaps())
    second = host.send(gated())
    host.run_for(200)
    assert host.answers_to(first) == []
    assert host.answers_to(second) == []
    assert host.last_status().crc_errors == 2  # ICD v1 §2: unknown types are counted
    assert breaths(host) == []


def test_head_without_gating_naks_unsupported_even_with_bad_values() -> None:
    host = head(gating=False)
    seq = host.send(QueryCaps())
    caps = answer(host, seq)
    assert isinstance(caps, Caps)
    assert caps.caps == CapBits.BREATH_SENSING
    seq = host.send(gated(gate_pct=5))
    assert answer(host, seq) == Nak(ack_seq=seq, reason=NakReason.UNSUPPORTED)


@pytest.mark.parametrize(
    ("field", "value"),
    [("gate_pct", 29), ("gate_pct", 91), ("lead_breaths", 11), ("apnoea_s", 4), ("apnoea_s", 61)],
)
def test_start_gated_out_of_range_is_bad_value(field: str, value: int) -> None:
    host = head()
    seq = host.send(gated(**{field: value}))
    assert answer(host, seq) == Nak(ack_seq=seq, reason=NakReason.BAD_VALUE)


@pytest.mark.parametrize(("field", "value"), [("gate_pct", 30), ("gate_pct", 90), ("apnoea_s", 60)])
def test_start_gated_range_edges_are_accepted(field: str, value: int) -> None:
    host = head()
    seq = host.send(gated(**{field: value}))
    assert answer(host, seq) == Ack(ack_seq=seq)


# --- gated delivery --------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", PATTERN_NAMES)
def test_gated_session_on_every_pattern_stays_in_inspiration_and_accounts(pattern: str) -> None:
    host = head(pattern)
    start_ms = host.now_ms
    assert answer(host, host.send(gated(target_ul=200))) == Ack(ack_seq=0)
    end = run_to_end(host)
    host.run_for(15_000)  # the last breath is reported at the next inspiration
    assert (end.reason, end.delivered_ul) == (StopReason.TARGET_REACHED, 200)
    reports = breaths(host, session_id=1)
    insp_dul = sum(b.aerosol_insp_dul for b in reports)
    exp_dul = sum(b.aerosol_exp_dul for b in reports)
    assert exp_dul <= 0.05 * (insp_dul + exp_dul)  # gating works: ≤ 5 % expiratory
    # Addendum §3: the reports add up to delivered_ul within 1 µL (rounding carried over).
    assert abs((insp_dul + exp_dul) / 10 - end.delivered_ul) <= 1
    assert DeviceState.WAITING in states_between(host, start_ms, start_ms + 2000)  # lead breaths
    truth = host.model.truth().breathing
    assert truth is not None
    # Truth (what the patient really did): all but a sliver was released while breathing in.
    assert truth["aerosol_true_exp_ul"] <= 0.05 * end.delivered_ul


def test_lead_breaths_pass_without_aerosol_then_pulses_start() -> None:
    host = head("adult")
    host.send(gated(lead_breaths=3))
    run_to_end(host)
    host.run_for(10_000)
    reports = breaths(host, session_id=1)
    assert [b.aerosol_insp_dul for b in reports[:3]] == [0, 0, 0]
    assert reports[3].aerosol_insp_dul > 0


def test_delivered_rises_only_while_nebulising_not_while_waiting() -> None:
    host = head("severe")
    host.send(gated(lead_breaths=2))
    run_to_end(host)
    statuses = host.statuses()
    for before, after in itertools.pairwise(statuses):
        if before.state is DeviceState.WAITING and after.state is DeviceState.WAITING:
            assert after.delivered_ul == before.delivered_ul
    assert any(s.state is DeviceState.NEBULISING and s.flow_ul_min == 0 for s in statuses)


def test_continuous_session_releases_aerosol_in_both_phases_and_reports_the_split() -> None:
    host = head("adult")
    host.send(Start(session_id=1, target_ul=300, max_duration_s=600, output_pct=100))
    end = run_to_end(host)
    host.run_for(10_000)
    reports = breaths(host, session_id=1)
    insp = sum(b.aerosol_insp_dul for b in reports) / 10
    exp = sum(b.aerosol_exp_dul for b in reports) / 10
    # I:E 1:2 → about a third inspiratory (detection latency makes it a little less).
    assert 0.25 < insp / (insp + exp) < 0.36
    # Before the first detected breath some aerosol is not in any report (addendum §3).
    assert end.delivered_ul - 30 <= insp + exp <= end.delivered_ul + 1
    assert {s.state for s in host.statuses()} <= {DeviceState.IDLE, DeviceState.NEBULISING}


def test_breath_reports_also_when_idle_with_session_zero_and_numbered() -> None:
    host = head("severe")
    host.run_for(20_000)
    reports = breaths(host)
    assert len(reports) >= 9  # 32/min
    assert {b.session_id for b in reports} == {0}
    assert [b.breath_no for b in reports] == list(range(len(reports)))
    assert {b.tidal_ml for b in reports} == {350}
    cycle_ms = {b.insp_ms + b.exp_ms for b in reports}
    assert all(abs(c - 1875) <= 2 for c in cycle_ms)


# --- apnoea, mask off, sensor stuck, pattern change --------------------------------------------


def test_apnoea_waits_after_apnoea_s_then_resumes_when_breathing_returns() -> None:
    host = head("iso27427")
    host.send(gated(target_ul=400, lead_breaths=1, apnoea_s=5))
    host.run_for(20_000)
    assert host.last_status().state is DeviceState.NEBULISING
    reply = execute_control(host.model, {"cmd": "apnoea", "seconds": 14}, now_ms=host.now_ms)
    assert reply["ok"], reply
    apnoea_ms = host.now_ms
    host.run_for(20_000)
    during = [
        (t, s) for t, s in host.timed_statuses() if apnoea_ms + 10_000 <= t < apnoea_ms + 14_000
    ]
    assert {s.state for _, s in during} == {DeviceState.WAITING}
    assert len({s.delivered_ul for _, s in during}) == 1
    assert host.last_status().state is DeviceState.NEBULISING  # breathing came back
    end = run_to_end(host)
    assert end.reason is StopReason.TARGET_REACHED


def test_mask_off_ends_the_gated_session_no_breathing_after_apnoea_then_3x() -> None:
    host = head("iso27427")
    host.send(gated(target_ul=2000, lead_breaths=0, apnoea_s=5))
    host.run_for(12_000)
    assert execute_control(host.model, {"cmd": "mask", "off": True}, now_ms=host.now_ms)["ok"]
    end = run_to_end(host, timeout_ms=60_000)
    assert end.reason is StopReason.NO_BREATHING
    last_detect = host.model.truth().breathing["last_detect_ms"]  # type: ignore[index]
    ended_ms = host.session_ends()[0].at_ms
    assert ended_ms - last_detect == 4 * 5_000  # apnoea_s to WAITING, then 3 × apnoea_s
    host.run_for(200)
    assert host.last_status().last_stop is StopReason.NO_BREATHING
    assert host.last_status().state is DeviceState.IDLE


def test_mask_off_in_a_continuous_session_sends_the_aerosol_into_the_room() -> None:
    host = head("adult")
    host.send(Start(session_id=1, target_ul=2000, max_duration_s=600, output_pct=100))
    host.run_for(5_000)
    execute_control(host.model, {"cmd": "mask", "off": True}, now_ms=host.now_ms)
    before = host.model.truth().breathing["aerosol_mask_off_ul"]  # type: ignore[index]
    host.run_for(10_000)
    after = host.model.truth().breathing["aerosol_mask_off_ul"]  # type: ignore[index]
    assert after - before == pytest.approx(400 * 10 / 60, rel=0.06)
    assert host.last_status().state is DeviceState.NEBULISING  # continuous: no gating


def test_sensor_stuck_stops_detection_but_not_the_patient() -> None:
    host = head("adult")
    host.run_for(10_000)
    detections = host.model.truth().breathing["detections"]  # type: ignore[index]
    execute_control(host.model, {"cmd": "sensor_stuck", "active": True}, now_ms=host.now_ms)
    host.run_for(20_000)
    assert host.model.truth().breathing["detections"] == detections  # type: ignore[index]
    execute_control(host.model, {"cmd": "sensor_stuck", "active": False}, now_ms=host.now_ms)
    host.run_for(10_000)
    assert host.model.truth().breathing["detections"] > detections  # type: ignore[index]


def test_pattern_change_applies_from_the_next_breath() -> None:
    host = head("adult")
    host.run_for(20_000)
    execute_control(host.model, {"cmd": "pattern", "name": "severe"}, now_ms=host.now_ms)
    changed_ms = host.now_ms
    host.run_for(20_000)
    late = [
        r.message
        for r in host.received
        if isinstance(r.message, Breath) and r.at_ms > changed_ms + 8_000
    ]
    assert late
    assert {b.tidal_ml for b in late} == {350}


def test_irregular_pattern_is_seeded_and_sighs() -> None:
    first, second = head("irregular", seed=7), head("irregular", seed=7)
    other = head("irregular", seed=8)
    for host in (first, second, other):
        host.run_for(120_000)
    assert breaths(first) == breaths(second)
    assert breaths(first) != breaths(other)
    tidal = [b.tidal_ml for b in breaths(first)]
    assert max(tidal) >= 1.6 * sorted(tidal)[len(tidal) // 2]  # a sigh
    assert len({b.insp_ms + b.exp_ms for b in breaths(first)}) > 5  # the rate varies


def test_breath_control_commands_on_a_version_1_head_say_how_to_fix() -> None:
    model = DeviceModel()
    reply = execute_control(model, {"cmd": "apnoea", "seconds": 5}, now_ms=0)
    assert reply == {
        "ok": False,
        "error": "this simulated head is ICD version 1 and has no breath sensor; "
        "start it with --icd 1.1",
    }


def test_reboot_restarts_breath_numbering() -> None:
    host = head("severe")
    host.run_for(10_000)
    assert breaths(host)[-1].breath_no > 2
    execute_control(host.model, {"cmd": "reboot"}, now_ms=host.now_ms)
    rebooted_ms = host.now_ms
    host.run_for(10_000)
    after = [
        r.message for r in host.received if isinstance(r.message, Breath) and r.at_ms > rebooted_ms
    ]
    assert after[0].breath_no == 0


def test_status_state_waiting_only_in_gated_sessions() -> None:
    host = head("slow-deep")
    host.send(Start(session_id=1, target_ul=100, max_duration_s=600, output_pct=100))
    run_to_end(host)
    assert DeviceState.WAITING not in {s.state for s in host.statuses()}
    assert all(isinstance(s, Status) for s in host.statuses())


@settings(max_examples=12, deadline=None)
@given(
    pattern=st.sampled_from(PATTERN_NAMES),
    seed=st.integers(0, 1000),
    gate_pct=st.integers(30, 90),
    lead_breaths=st.integers(0, 10),
    gated_run=st.booleans(),
)
def test_every_microlitre_is_in_a_breath_report(
    pattern: str, seed: int, gate_pct: int, lead_breaths: int, gated_run: bool
) -> None:
    host = head(pattern, seed=seed)
    host.run_for(seed % 5000)  # start anywhere in a breath
    command: Start | StartGated = (
        gated(target_ul=60, gate_pct=gate_pct, lead_breaths=lead_breaths)
        if gated_run
        else Start(session_id=1, target_ul=60, max_duration_s=600, output_pct=100)
    )
    host.send(command)
    end = run_to_end(host)
    host.run_for(40_000)  # slow-deep: the next inspiration may be 10 s away, sighs longer
    assert end.delivered_ul == 60
    # Session 0 reports after the START hold what began mid-breath (see BreathAccumulator).
    reports = [b for b in breaths(host) if b.session_id in (0, 1)]
    total_dul = sum(b.aerosol_insp_dul + b.aerosol_exp_dul for b in reports)
    assert abs(total_dul / 10 - end.delivered_ul) <= 1
    if gated_run:
        exp_dul = sum(b.aerosol_exp_dul for b in reports)
        assert exp_dul * 100 <= 5 * total_dul
