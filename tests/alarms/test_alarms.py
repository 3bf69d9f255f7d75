"""Every alarm rule: raise, clear, latch, acknowledge, priority; timing boundaries."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.alarms import (
    ALARM_RULES,
    FAULT_BIT_ALARMS,
    AlarmCategory,
    AlarmCode,
    AlarmEvent,
    AlarmEventKind,
    AlarmInputs,
    AlarmNotActiveError,
    AlarmPriority,
    AlarmSettings,
    AlarmState,
    BreathingFacts,
    SessionProgress,
    acknowledge,
    evaluate,
)
from drivers.mn1 import FaultBits

QUIET = AlarmInputs(
    device_faults=0,
    link_lost=False,
    session_open=False,
    flow_ul_min=None,
    expected_flow_ul_min=None,
    session=None,
    device_nebulising=False,
    stop_sent_at_ms=None,
    session_stopped_by_watchdog=False,
    uncertain_session_id=None,
    clock_trusted=True,
    storage_low=False,
    storage_free_mib=4096,
    ledger_ok=True,
    swapped_to_serial=None,
    device_rebooted_mid_session=False,
    telemetry_dropped_total=0,
    command_flood=False,
    command_unrecorded_total=0,
)
T0 = 1_000_000  # an arbitrary monotonic time


def quiet(**changes: object) -> AlarmInputs:
    return dataclasses.replace(QUIET, **changes)  # type: ignore[arg-type]


def progress(**changes: object) -> SessionProgress:
    base = SessionProgress(
        session_id=7,
        delivered_ul=500,
        session_cap_ul=1000,
        elapsed_ms=150_000,
        expected_duration_ms=300_000,
        target_reached=False,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def breathing(**changes: object) -> BreathingFacts:
    base = BreathingFacts(
        session_id=7,
        gated=True,
        waiting=False,
        ms_without_breath=2_000,
        apnoea_s=15,
        ended_no_breathing=False,
        aerosol_insp_dul=1000,
        aerosol_exp_dul=0,
        breaths=20,
        lost_reports=0,
        delivered_ul=100,
        final=False,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def _raise_output_low() -> tuple[AlarmState, list[AlarmEvent]]:
    low = quiet(flow_ul_min=100, expected_flow_ul_min=400)
    state, events = evaluate(low, AlarmState(), T0)
    assert events == []
    return evaluate(low, state, T0 + 10_000)


def _simple(inputs: AlarmInputs) -> Callable[[], tuple[AlarmState, list[AlarmEvent]]]:
    return lambda: evaluate(inputs, AlarmState(), T0)


#: How to make each alarm's condition true (starting from no alarms).
SCENARIOS: dict[AlarmCode, Callable[[], tuple[AlarmState, list[AlarmEvent]]]] = {
    **{code: _simple(quiet(device_faults=int(bit))) for bit, code in FAULT_BIT_ALARMS},
    AlarmCode.DEVICE_UNKNOWN_FAULT: _simple(quiet(device_faults=1 << 9)),
    AlarmCode.LINK_LOST_DURING_SESSION: _simple(quiet(link_lost=True, session_open=True)),
    AlarmCode.LINK_LOST: _simple(quiet(link_lost=True)),
    AlarmCode.OUTPUT_LOW: _raise_output_low,
    AlarmCode.DOSE_REACHED_EARLY: _simple(
        quiet(session=progress(target_reached=True, delivered_ul=1000, elapsed_ms=60_000))
    ),
    AlarmCode.DOSE_LATE: _simple(quiet(session=progress(elapsed_ms=400_000))),
    AlarmCode.DELIVERY_ABOVE_CAP: _simple(
        quiet(session=progress(delivered_ul=1004, target_reached=True, elapsed_ms=300_000))
    ),
    AlarmCode.SESSION_STOPPED_BY_WATCHDOG: _simple(quiet(session_stopped_by_watchdog=True)),
    AlarmCode.DEVICE_IGNORED_STOP: _simple(quiet(device_nebulising=True, stop_sent_at_ms=T0 - 500)),
    AlarmCode.DELIVERY_UNCERTAIN: _simple(quiet(uncertain_session_id=7)),
    AlarmCode.STOP_UNCONFIRMED_AT_SHUTDOWN: _simple(quiet(stop_unconfirmed_session_id=7)),
    AlarmCode.DEVICE_SWAPPED: _simple(quiet(swapped_to_serial="MN1-000042")),
    AlarmCode.DEVICE_REBOOTED: _simple(quiet(device_rebooted_mid_session=True)),
    AlarmCode.CLOCK_UNTRUSTED: _simple(quiet(clock_trusted=False)),
    AlarmCode.STORAGE_LOW: _simple(quiet(storage_low=True, storage_free_mib=50)),
    AlarmCode.LEDGER_UNAVAILABLE: _simple(quiet(ledger_ok=False)),
    AlarmCode.LEDGER_DISCONTINUITY: _simple(quiet(ledger_discontinuity=True)),
    AlarmCode.STORAGE_EMERGENCY: _simple(quiet(storage_emergency=True, storage_free_mib=3)),
    AlarmCode.TELEMETRY_DROPPED: _simple(quiet(telemetry_dropped_total=5)),
    AlarmCode.NO_BREATHING_DETECTED: _simple(
        quiet(breathing=breathing(waiting=True, ms_without_breath=15_000))
    ),
    AlarmCode.SESSION_ENDED_NO_BREATHING: _simple(
        quiet(breathing=breathing(ended_no_breathing=True))
    ),
    AlarmCode.BREATH_GATING_INEFFECTIVE: _simple(
        quiet(breathing=breathing(aerosol_insp_dul=940, aerosol_exp_dul=60))
    ),
    AlarmCode.BREATH_ACCOUNTING_MISMATCH: _simple(
        quiet(breathing=breathing(final=True, aerosol_insp_dul=1000, delivered_ul=108))
    ),
    AlarmCode.COMMAND_FLOOD: _simple(quiet(command_flood=True, command_unrecorded_total=900)),
}


def _cleared_inputs(state: AlarmState) -> AlarmInputs:
    # The drop counter never goes back; "no new drops" means the same total.
    return quiet(telemetry_dropped_total=state.telemetry_dropped_seen)


# --- the table ----------------------------------------------------------------------


def test_every_code_has_one_rule_and_one_scenario() -> None:
    assert set(ALARM_RULES) == set(AlarmCode)
    assert set(SCENARIOS) == set(AlarmCode)


def test_every_fault_bit_has_an_alarm() -> None:
    assert {bit for bit, _ in FAULT_BIT_ALARMS} == set(FaultBits)


@pytest.mark.parametrize("code", list(AlarmCode))
def test_rule_rows_are_complete(code: AlarmCode) -> None:
    rule = ALARM_RULES[code]
    assert rule.code is code
    assert rule.message.strip()
    assert rule.action.strip()
    assert rule.why.strip()


def test_table_is_listed_high_priority_first() -> None:
    ranks = {AlarmPriority.HIGH: 0, AlarmPriority.MEDIUM: 1, AlarmPriority.LOW: 2}
    listed = [ranks[r.priority] for r in ALARM_RULES.values()]
    assert listed == sorted(listed)


@pytest.mark.parametrize(
    "code",
    [
        AlarmCode.DELIVERY_ABOVE_CAP,
        AlarmCode.DEVICE_IGNORED_STOP,
        AlarmCode.DEVICE_OVER_TEMPERATURE,
    ],
)
def test_over_delivery_and_loss_of_control_are_high_and_latching(code: AlarmCode) -> None:
    assert ALARM_RULES[code].priority is AlarmPriority.HIGH
    assert ALARM_RULES[code].latching


def test_link_loss_during_a_session_is_high_and_clears_when_status_returns() -> None:
    # A silence shorter than the head's watchdog does not end the session (the stop
    # rule bounds it); the alarm goes when STATUS is back (issue: brief silences).
    rule = ALARM_RULES[AlarmCode.LINK_LOST_DURING_SESSION]
    assert (rule.priority, rule.latching) == (AlarmPriority.HIGH, False)


def test_idle_link_loss_is_low_and_self_clearing() -> None:
    rule = ALARM_RULES[AlarmCode.LINK_LOST]
    assert (rule.priority, rule.latching) == (AlarmPriority.LOW, False)


def test_reservoir_empty_follows_the_icd_and_does_not_latch() -> None:
    # ICD §4: RESERVOIR_EMPTY is the one fault bit that is not latched.
    assert not ALARM_RULES[AlarmCode.DEVICE_RESERVOIR_EMPTY].latching
    assert all(ALARM_RULES[code].latching for bit, code in FAULT_BIT_ALARMS[1:])


def test_dose_alarms_are_clinical() -> None:
    for code in (
        AlarmCode.DELIVERY_ABOVE_CAP,
        AlarmCode.DOSE_LATE,
        AlarmCode.DOSE_REACHED_EARLY,
        AlarmCode.OUTPUT_LOW,
        AlarmCode.DELIVERY_UNCERTAIN,
    ):
        assert ALARM_RULES[code].category is AlarmCategory.CLINICAL


# --- each rule: raise, clear, latch, acknowledge --------------------------------------


@pytest.mark.parametrize("code", list(AlarmCode))
def test_raise_carries_the_rule(code: AlarmCode) -> None:
    state, events = SCENARIOS[code]()
    rule = ALARM_RULES[code]
    raised = [e for e in events if e.code is code]
    assert len(raised) == 1
    event = raised[0]
    assert event.kind is AlarmEventKind.RAISED
    assert (event.priority, event.category, event.latching) == (
        rule.priority,
        rule.category,
        rule.latching,
    )
    assert event.action == rule.action
    assert event.still_active
    assert "{" not in event.message  # every template field was filled
    alarm = state.get(code)
    assert alarm is not None
    assert alarm.condition_present


@pytest.mark.parametrize("code", list(AlarmCode))
def test_clear_then_latch_then_acknowledge(code: AlarmCode) -> None:
    state, _ = SCENARIOS[code]()
    now = T0 + 60_000  # past every hold time (telemetry drops: 60 s without a new drop)
    state, events = evaluate(_cleared_inputs(state), state, now)
    cleared = [e for e in events if e.code is code]
    assert [e.kind for e in cleared] == [AlarmEventKind.CLEARED]
    rule = ALARM_RULES[code]
    if not rule.latching:
        assert state.get(code) is None
        assert not cleared[0].still_active
        with pytest.raises(AlarmNotActiveError, match=code.value):
            acknowledge(state, code, "nurse A. Jones", now)
        return
    # Latching: still on the list, condition gone, until acknowledged.
    alarm = state.get(code)
    assert alarm is not None
    assert not alarm.condition_present
    assert cleared[0].still_active
    state, events = evaluate(_cleared_inputs(state), state, now + 1000)
    assert events == []
    assert state.get(code) is not None
    state, events = acknowledge(state, code, "nurse A. Jones", now + 2000)
    assert [(e.kind, e.by, e.at_ms, e.still_active) for e in events] == [
        (AlarmEventKind.ACKNOWLEDGED, "nurse A. Jones", now + 2000, False)
    ]
    assert state.get(code) is None


@pytest.mark.parametrize("code", list(AlarmCode))
def test_acknowledge_while_present_then_clear_removes(code: AlarmCode) -> None:
    state, _ = SCENARIOS[code]()
    state, events = acknowledge(state, code, "remote: ward station 3", T0 + 10_500)
    assert [(e.kind, e.still_active) for e in events] == [(AlarmEventKind.ACKNOWLEDGED, True)]
    alarm = state.get(code)
    assert alarm is not None
    assert (alarm.acknowledged_by, alarm.acknowledged_at_ms) == (
        "remote: ward station 3",
        T0 + 10_500,
    )
    # Acknowledging again changes nothing.
    assert acknowledge(state, code, "someone else", T0 + 10_600) == (state, [])
    state, events = evaluate(_cleared_inputs(state), state, T0 + 60_000)
    assert [(e.kind, e.still_active) for e in events if e.code is code] == [
        (AlarmEventKind.CLEARED, False)
    ]
    assert state.get(code) is None


def test_condition_still_present_stays_silent() -> None:
    inputs = quiet(device_faults=int(FaultBits.SUPPLY_LOW))
    state, _ = evaluate(inputs, AlarmState(), T0)
    again, events = evaluate(inputs, state, T0 + 100)
    assert events == []
    assert again == state


def test_latched_condition_returning_before_ack_is_raised_again() -> None:
    present = quiet(device_faults=int(FaultBits.HEAD_DISCONNECTED))
    state, _ = evaluate(present, AlarmState(), T0)
    state, _ = evaluate(QUIET, state, T0 + 100)
    state, events = evaluate(present, state, T0 + 200)
    assert [(e.kind, e.code) for e in events] == [
        (AlarmEventKind.RAISED, AlarmCode.DEVICE_HEAD_DISCONNECTED)
    ]
    alarm = state.get(AlarmCode.DEVICE_HEAD_DISCONNECTED)
    assert alarm is not None
    assert alarm.condition_present
    assert alarm.raised_at_ms == T0


def test_acknowledge_needs_a_name() -> None:
    state, _ = SCENARIOS[AlarmCode.LEDGER_UNAVAILABLE]()
    with pytest.raises(ValueError, match="who acknowledges"):
        acknowledge(state, AlarmCode.LEDGER_UNAVAILABLE, "  ", T0)


def test_acknowledge_of_unknown_alarm_names_it() -> None:
    with pytest.raises(AlarmNotActiveError, match="output_low") as info:
        acknowledge(AlarmState(), AlarmCode.OUTPUT_LOW, "nurse", T0)
    assert info.value.code is AlarmCode.OUTPUT_LOW


def test_simultaneous_alarms_are_reported_high_first() -> None:
    inputs = quiet(
        clock_trusted=False,
        link_lost=True,
        session_open=True,
        device_faults=int(FaultBits.SUPPLY_LOW),
    )
    state, events = evaluate(inputs, AlarmState(), T0)
    assert [e.code for e in events] == [
        AlarmCode.LINK_LOST_DURING_SESSION,
        AlarmCode.DEVICE_SUPPLY_LOW,
        AlarmCode.CLOCK_UNTRUSTED,
    ]
    assert state.highest_priority is AlarmPriority.HIGH
    assert AlarmState().highest_priority is None


def test_link_loss_priority_depends_on_an_open_session() -> None:
    state, events = evaluate(quiet(link_lost=True), AlarmState(), T0)
    assert [e.code for e in events] == [AlarmCode.LINK_LOST]
    assert state.highest_priority is AlarmPriority.LOW


def test_unknown_fault_bits_are_named_in_the_message() -> None:
    _, events = evaluate(quiet(device_faults=(1 << 9) | 1), AlarmState(), T0)
    assert {e.code for e in events} == {
        AlarmCode.DEVICE_RESERVOIR_EMPTY,
        AlarmCode.DEVICE_UNKNOWN_FAULT,
    }
    unknown = next(e for e in events if e.code is AlarmCode.DEVICE_UNKNOWN_FAULT)
    assert "0x0200" in unknown.message


def test_evaluate_is_pure() -> None:
    inputs = quiet(link_lost=True, session_open=True, telemetry_dropped_total=3)
    first = evaluate(inputs, AlarmState(), T0)
    assert evaluate(inputs, AlarmState(), T0) == first


# --- timing and threshold boundaries -------------------------------------------------


@pytest.mark.parametrize(("low_for_ms", "raised"), [(9_999, False), (10_000, True), (10_001, True)])
def test_output_low_duration_boundary(low_for_ms: int, raised: bool) -> None:
    low = quiet(flow_ul_min=100, expected_flow_ul_min=400)
    state, _ = evaluate(low, AlarmState(), T0)
    assert state.output_low_since_ms == T0
    state, events = evaluate(low, state, T0 + low_for_ms)
    assert (state.get(AlarmCode.OUTPUT_LOW) is not None) is raised
    assert bool(events) is raised


@pytest.mark.parametrize(("flow_ul_min", "low"), [(279, True), (280, False), (281, False)])
def test_output_low_threshold_is_exact(flow_ul_min: int, low: bool) -> None:
    # 70 % of 400 µL/min is 280: below it is low, at it is not.
    inputs = quiet(flow_ul_min=flow_ul_min, expected_flow_ul_min=400)
    state, _ = evaluate(inputs, AlarmState(), T0)
    state, _ = evaluate(inputs, state, T0 + 10_000)
    assert (state.get(AlarmCode.OUTPUT_LOW) is not None) is low


def test_output_low_timer_restarts_after_recovery() -> None:
    low = quiet(flow_ul_min=100, expected_flow_ul_min=400)
    good = quiet(flow_ul_min=400, expected_flow_ul_min=400)
    state, _ = evaluate(low, AlarmState(), T0)
    state, _ = evaluate(good, state, T0 + 5_000)
    assert state.output_low_since_ms is None
    state, _ = evaluate(low, state, T0 + 6_000)
    state, events = evaluate(low, state, T0 + 15_999)
    assert events == []
    state, events = evaluate(low, state, T0 + 16_000)
    assert [e.code for e in events] == [AlarmCode.OUTPUT_LOW]
    assert "for 10 s" in events[0].message


def test_output_low_timer_resets_when_not_nebulising() -> None:
    low = quiet(flow_ul_min=100, expected_flow_ul_min=400)
    state, _ = evaluate(low, AlarmState(), T0)
    state, _ = evaluate(quiet(flow_ul_min=0), state, T0 + 1)
    assert state.output_low_since_ms is None


def test_output_low_settings_are_used() -> None:
    settings = AlarmSettings(output_low_pct=50, output_low_for_ms=3_000)
    low = quiet(flow_ul_min=199, expected_flow_ul_min=400)
    state, _ = evaluate(low, AlarmState(), T0, settings=settings)
    state, events = evaluate(low, state, T0 + 3_000, settings=settings)
    assert [e.code for e in events] == [AlarmCode.OUTPUT_LOW]


@pytest.mark.parametrize(("pending_ms", "raised"), [(499, False), (500, True), (501, True)])
def test_ignored_stop_boundary(pending_ms: int, raised: bool) -> None:
    inputs = quiet(device_nebulising=True, stop_sent_at_ms=T0 - pending_ms)
    state, _ = evaluate(inputs, AlarmState(), T0)
    assert (state.get(AlarmCode.DEVICE_IGNORED_STOP) is not None) is raised


def test_stop_obeyed_raises_nothing() -> None:
    inputs = quiet(device_nebulising=False, stop_sent_at_ms=T0 - 5_000)
    assert evaluate(inputs, AlarmState(), T0)[1] == []


@pytest.mark.parametrize(("delivered_ul", "raised"), [(1002, False), (1003, False), (1004, True)])
def test_delivery_above_cap_boundary(delivered_ul: int, raised: bool) -> None:
    inputs = quiet(session=progress(delivered_ul=delivered_ul, target_reached=True))
    state, _ = evaluate(inputs, AlarmState(), T0)
    assert (state.get(AlarmCode.DELIVERY_ABOVE_CAP) is not None) is raised


@pytest.mark.parametrize(
    ("elapsed_ms", "early"), [(149_999, True), (150_000, False), (150_001, False)]
)
def test_dose_reached_early_boundary(elapsed_ms: int, early: bool) -> None:
    inputs = quiet(session=progress(target_reached=True, elapsed_ms=elapsed_ms))
    state, _ = evaluate(inputs, AlarmState(), T0)
    assert (state.get(AlarmCode.DOSE_REACHED_EARLY) is not None) is early
    assert state.get(AlarmCode.DOSE_LATE) is None


@pytest.mark.parametrize(
    ("elapsed_ms", "late"), [(359_999, False), (360_000, True), (360_001, True)]
)
def test_dose_late_boundary(elapsed_ms: int, late: bool) -> None:
    inputs = quiet(session=progress(elapsed_ms=elapsed_ms))
    state, _ = evaluate(inputs, AlarmState(), T0)
    assert (state.get(AlarmCode.DOSE_LATE) is not None) is late


def test_dose_reached_on_time_raises_nothing() -> None:
    inputs = quiet(session=progress(target_reached=True, delivered_ul=1000, elapsed_ms=290_000))
    assert evaluate(inputs, AlarmState(), T0)[1] == []


def test_telemetry_drops_latch_once_per_outage_with_a_running_count() -> None:
    # A 10 minute outage: the service reads the drop counter every 5 s and it grows
    # at every read once the outbox is full; the alarm rules run every 100 ms.
    state, events = evaluate(quiet(telemetry_dropped_total=5), AlarmState(), T0)
    assert [(e.kind, e.code) for e in events] == [
        (AlarmEventKind.RAISED, AlarmCode.TELEMETRY_DROPPED)
    ]
    assert "5 telemetry messages dropped" in events[0].message
    every: list[AlarmEvent] = []
    total = 5
    for now in range(T0 + 100, T0 + 600_000, 100):
        if (now - T0) % 5_000 == 0:
            total += 50
        state, events = evaluate(quiet(telemetry_dropped_total=total), state, now)
        every.extend(e for e in events if e.code is AlarmCode.TELEMETRY_DROPPED)
    assert every == [], "no raise/clear flapping during one outage"
    alarm = state.get(AlarmCode.TELEMETRY_DROPPED)
    assert alarm is not None
    assert f"{total} telemetry messages dropped" in alarm.message, "running count"
    # The outage ends (no new drops): one CLEARED after the quiet time, still latched.
    last_growth = T0 + 595_000
    state, events = evaluate(quiet(telemetry_dropped_total=total), state, last_growth + 59_999)
    assert events == []
    state, events = evaluate(quiet(telemetry_dropped_total=total), state, last_growth + 60_000)
    assert [(e.kind, e.still_active) for e in events] == [(AlarmEventKind.CLEARED, True)]
    # The next outage is a new occurrence with its own count.
    state, events = evaluate(quiet(telemetry_dropped_total=total + 3), state, T0 + 700_000)
    assert [(e.kind, e.code) for e in events] == [
        (AlarmEventKind.RAISED, AlarmCode.TELEMETRY_DROPPED)
    ]
    assert "3 telemetry messages dropped" in events[0].message
    assert f"({total + 3} in total)" in events[0].message


def test_telemetry_counter_reset_is_a_new_baseline() -> None:
    state = AlarmState(telemetry_dropped_seen=10)
    state, events = evaluate(quiet(telemetry_dropped_total=2), state, T0)
    assert events == []
    assert state.telemetry_dropped_seen == 2


@pytest.mark.parametrize(
    "changes",
    [{"output_low_pct": 0}, {"output_low_pct": 100}, {"stop_ignored_after_ms": 0}],
)
def test_settings_out_of_range_are_refused(changes: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=next(iter(changes))):
        AlarmSettings(**changes)


# --- property: a latching alarm is never lost without an acknowledgement -------------

_LATCH_CODES = [AlarmCode.DEVICE_HEAD_DISCONNECTED, AlarmCode.DEVICE_RESERVOIR_EMPTY]


@given(
    st.lists(
        st.tuples(st.sampled_from(["on", "off", "ack"]), st.sampled_from(_LATCH_CODES)),
        max_size=30,
    )
)
def test_latching_alarm_leaves_only_after_acknowledgement(
    steps: list[tuple[str, AlarmCode]],
) -> None:
    bits = {
        AlarmCode.DEVICE_HEAD_DISCONNECTED: FaultBits.HEAD_DISCONNECTED,
        AlarmCode.DEVICE_RESERVOIR_EMPTY: FaultBits.RESERVOIR_EMPTY,
    }
    faults = 0
    state = AlarmState()
    acked: set[AlarmCode] = set()
    for now, (op, code) in enumerate(steps, start=T0):
        before = {a.code for a in state.active}
        if op == "ack":
            if state.get(code) is None:
                continue
            state, _ = acknowledge(state, code, "nurse", now)
            acked.add(code)
        else:
            faults = faults | int(bits[code]) if op == "on" else faults & ~int(bits[code])
            state, _ = evaluate(quiet(device_faults=faults), state, now)
        after = {a.code for a in state.active}
        for gone in before - after:
            if ALARM_RULES[gone].latching:
                assert gone in acked, f"{gone} left the list unacknowledged"
        for new in after - before:
            acked.discard(new)
        # A present condition is always on the list.
        for code_, bit in bits.items():
            if faults & int(bit):
                assert code_ in after
