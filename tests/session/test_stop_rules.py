"""Host-side stop rules: precedence, boundaries, and the cap property in simulated time."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.session import (
    ASSUMED_STOP_LATENCY_MS,
    DEVICE_STOP_REACTION_MS,
    HOST_CHECK_PERIOD_MS,
    STATUS_JITTER_MS,
    STATUS_PERIOD_MS,
    STOP_FRAME_TX_MS,
    STOP_REASON_TEXT,
    STOP_RETRANSMIT_MS,
    StopReasonCode,
    estimate_delivered_ul,
    host_stop_reason,
)
from drivers.mn1 import FaultBits

NOMINAL_UL_MIN = 400  # IDENT nominal_ul_min in the ICD vectors
MIN_FLOW_UL_MIN = 10  # output_pct 10 % of a 100 µL/min head; slower flows only take longer
NO_LIMIT_MS = 10**12


def reason(**changes: int) -> StopReasonCode | None:
    args = {
        "delivered_ul": 500,
        "flow_ul_min": 600,
        "session_cap_ul": 1000,
        "status_age_ms": 0,
        "elapsed_ms": 60_000,
        "max_duration_ms": 600_000,
        "faults": 0,
    }
    args.update(changes)
    return host_stop_reason(**args)


def test_latency_arithmetic_matches_the_icd() -> None:
    assert STOP_FRAME_TX_MS >= 11 * 10 / 115_200 * 1000  # 11 bytes, 10 bits each
    assert ASSUMED_STOP_LATENCY_MS == 100 + 10 + 25 + 1 + 10 + 50 == 196


@pytest.mark.parametrize(("cap_ul", "fires"), [(3, True), (4, False)])
def test_a_cap_too_small_to_guarantee_fires_before_start(cap_ul: int, fires: bool) -> None:
    # 1 µL resolution + 800 µL/min × 196 ms = 3.61 µL: the runtime checks before START.
    got = reason(delivered_ul=0, flow_ul_min=800, session_cap_ul=cap_ul)
    assert (got is StopReasonCode.CAP_PREDICTED) is fires


def test_every_reason_has_a_sentence() -> None:
    assert set(STOP_REASON_TEXT) == set(StopReasonCode)


def test_carry_on_when_nothing_is_wrong() -> None:
    assert reason() is None


@pytest.mark.parametrize("bit", list(FaultBits))
def test_any_fault_bit_stops(bit: FaultBits) -> None:
    assert reason(faults=int(bit)) is StopReasonCode.DEVICE_FAULT


def test_unknown_fault_bit_stops() -> None:
    assert reason(faults=1 << 12) is StopReasonCode.DEVICE_FAULT


def test_precedence_fault_then_silence_then_cap_then_duration() -> None:
    everything = {
        "faults": 1,
        "status_age_ms": 1000,
        "delivered_ul": 1000,
        "elapsed_ms": 600_000,
    }
    assert reason(**everything) is StopReasonCode.DEVICE_FAULT
    everything["faults"] = 0
    assert reason(**everything) is StopReasonCode.STATUS_SILENT
    everything["status_age_ms"] = 0
    assert reason(**everything) is StopReasonCode.CAP_REACHED
    everything["delivered_ul"] = 998
    assert reason(**everything) is StopReasonCode.CAP_PREDICTED
    everything["delivered_ul"] = 0
    assert reason(**everything) is StopReasonCode.MAX_DURATION


# 600 µL/min is 0.01 µL per ms. With 997 µL delivered, +1 µL resolution, the cap of
# 1000 µL is 2 µL = 200 ms of flow away: the rule fires when age + latency ≥ 200 ms.


@pytest.mark.parametrize(("latency_ms", "fires"), [(199, False), (200, True), (201, True)])
def test_prediction_boundary_in_latency(latency_ms: int, fires: bool) -> None:
    got = reason(delivered_ul=997, stop_latency_ms=latency_ms)
    assert (got is StopReasonCode.CAP_PREDICTED) is fires
    assert fires or got is None


@pytest.mark.parametrize(("age_ms", "fires"), [(3, False), (4, True), (5, True)])
def test_prediction_boundary_in_status_age(age_ms: int, fires: bool) -> None:
    got = reason(delivered_ul=997, status_age_ms=age_ms)  # latency 196 + age
    assert (got is StopReasonCode.CAP_PREDICTED) is fires


@pytest.mark.parametrize(
    ("delivered_ul", "expected"),
    [
        (997, None),
        (998, StopReasonCode.CAP_PREDICTED),
        (999, StopReasonCode.CAP_PREDICTED),
        (1000, StopReasonCode.CAP_REACHED),
        (1001, StopReasonCode.CAP_REACHED),
    ],
)
def test_cap_boundary_in_volume(delivered_ul: int, expected: StopReasonCode | None) -> None:
    assert reason(delivered_ul=delivered_ul) is expected


@pytest.mark.parametrize(
    ("age_ms", "expected"),
    [(999, None), (1000, StopReasonCode.STATUS_SILENT), (1001, StopReasonCode.STATUS_SILENT)],
)
def test_status_silence_boundary(age_ms: int, expected: StopReasonCode | None) -> None:
    # Shorter silences do not end a session (the head's watchdog is 1000 ms).
    assert reason(delivered_ul=0, flow_ul_min=0, status_age_ms=age_ms) is expected


def test_shorter_silence_time_is_honoured() -> None:
    assert reason(status_age_ms=150, silence_stop_ms=150) is StopReasonCode.STATUS_SILENT


@pytest.mark.parametrize(("age_ms", "expected"), [(110, None), (111, StopReasonCode.CAP_PREDICTED)])
def test_overdue_status_predicts_with_the_heads_maximum_output(
    age_ms: int, expected: StopReasonCode | None
) -> None:
    # 900 µL, last flow 100 µL/min, head's maximum 6000 µL/min: with the last flow the
    # estimate is far below the cap; once STATUS is overdue (> 110 ms) the maximum
    # output is assumed: 900 + 1 + 6000 × (111 + 196) / 60000 = 931.7 ≥ 930.
    got = reason(
        delivered_ul=900,
        flow_ul_min=100,
        session_cap_ul=930,
        status_age_ms=age_ms,
        worst_flow_ul_min=6000,
    )
    assert got is expected


@pytest.mark.parametrize(
    ("elapsed_ms", "expected"),
    [
        (599_999, None),
        (600_000, StopReasonCode.MAX_DURATION),
        (600_001, StopReasonCode.MAX_DURATION),
    ],
)
def test_max_duration_boundary(elapsed_ms: int, expected: StopReasonCode | None) -> None:
    assert reason(elapsed_ms=elapsed_ms) is expected


@pytest.mark.parametrize(
    ("changes", "complaint"),
    [
        ({"delivered_ul": -1}, "delivered_ul=-1"),
        ({"flow_ul_min": -5}, "flow_ul_min=-5"),
        ({"status_age_ms": -1}, "status_age_ms=-1"),
        ({"session_cap_ul": 0}, "session_cap_ul=0"),
        ({"max_duration_ms": 0}, "max_duration_ms=0"),
        ({"stop_latency_ms": 195}, "may only be raised"),
        ({"silence_stop_ms": 1001}, "may only be lowered"),
        ({"worst_flow_ul_min": -1}, "worst_flow_ul_min=-1"),
    ],
)
def test_bad_arguments_are_refused_with_the_field_named(
    changes: dict[str, int], complaint: str
) -> None:
    with pytest.raises(ValueError, match=complaint):
        reason(**changes)


def test_estimator_adds_flow_times_age_rounded_up() -> None:
    assert (
        estimate_delivered_ul(delivered_at_status_ul=100, flow_ul_min=600, status_age_ms=0) == 100
    )
    assert (
        estimate_delivered_ul(delivered_at_status_ul=100, flow_ul_min=600, status_age_ms=100) == 101
    )
    assert (
        estimate_delivered_ul(delivered_at_status_ul=100, flow_ul_min=600, status_age_ms=150) == 102
    )
    with pytest.raises(ValueError, match="status_age_ms"):
        estimate_delivered_ul(delivered_at_status_ul=0, flow_ul_min=0, status_age_ms=-1)


# --- the cap property, in simulated time ----------------------------------------------
#
# A device that IGNORES its own cap nebulises at a constant flow. It reports whole µL
# (rounded down) in a STATUS every 100 ± 10 ms. The host runs the rule on every STATUS
# and, in timer mode, every `tick_ms` ≤ 25 ms in between, using the estimator through
# `status_age_ms`. When the rule fires, STOP goes out; the aerosol is off after the
# frame time and the device reaction, plus one retransmission if the first STOP is lost.
# The true volume at aerosol-off must not exceed the cap.


def _simulate(
    *,
    cap_ul: int,
    flow_ul_min: int,
    tick_ms: int,
    timer_mode: bool,
    status_phase_ms: int,
    jitters_ms: list[int],
    stop_lost: bool,
) -> tuple[Fraction, int]:
    def true_ul(t_ms: int) -> Fraction:
        return Fraction(flow_ul_min * t_ms, 60_000)

    # Start where the rule cannot fire yet: its reach is at most 1 µL resolution + 1 µL
    # rounding + flow × (110 ms STATUS age + 196 ms latency); start 2 µL + 400 ms out.
    lead_ms = -(-2 * 60_000 // flow_ul_min) + 400
    t_cap_ms = cap_ul * 60_000 // flow_ul_min
    t_ms = max(0, t_cap_ms - lead_ms)
    status_t_ms = t_ms - status_phase_ms
    status_ul = int(true_ul(max(status_t_ms, 0)))
    next_status_ms = status_t_ms + STATUS_PERIOD_MS + jitters_ms[0]
    n = 1

    def check(t_ms: int) -> StopReasonCode | None:
        return host_stop_reason(
            delivered_ul=status_ul,
            flow_ul_min=flow_ul_min,
            session_cap_ul=cap_ul,
            status_age_ms=t_ms - status_t_ms,
            elapsed_ms=t_ms,
            max_duration_ms=NO_LIMIT_MS,
            faults=0,
        )

    # The runtime runs the rule before START too: a cap too small for the host to
    # guarantee (it fires at 0 µL) is refused, nothing is delivered.
    if t_ms == 0 and check(0) is not None:
        return Fraction(0), 0
    assert check(t_ms) is None, "simulation started too close to the cap"
    while t_ms <= t_cap_ms + 2000:
        t_ms = min(t_ms + tick_ms, next_status_ms) if timer_mode else next_status_ms
        if t_ms == next_status_ms:
            status_t_ms, status_ul = t_ms, int(true_ul(t_ms))
            next_status_ms = t_ms + STATUS_PERIOD_MS + jitters_ms[n % len(jitters_ms)]
            n += 1
        got = check(t_ms)
        if got is not None:
            assert got in {StopReasonCode.CAP_PREDICTED, StopReasonCode.CAP_REACHED}
            off_ms = t_ms + STOP_FRAME_TX_MS + DEVICE_STOP_REACTION_MS
            if stop_lost:
                off_ms += STOP_RETRANSMIT_MS
            return true_ul(off_ms), t_ms
    raise AssertionError("the host never stopped a device that ignores its cap")


@settings(deadline=None)  # slow flows take a few thousand simulated checks
@given(
    cap_ul=st.integers(1, 20_000),
    flow_ul_min=st.integers(MIN_FLOW_UL_MIN, 2 * NOMINAL_UL_MIN),
    tick_ms=st.integers(1, HOST_CHECK_PERIOD_MS),
    timer_mode=st.booleans(),
    status_phase_ms=st.integers(0, STATUS_PERIOD_MS - STATUS_JITTER_MS - 1),
    jitters_ms=st.lists(st.integers(-STATUS_JITTER_MS, STATUS_JITTER_MS), min_size=1, max_size=20),
    stop_lost=st.booleans(),
)
def test_stopping_when_the_rule_fires_never_passes_the_cap(
    cap_ul: int,
    flow_ul_min: int,
    tick_ms: int,
    timer_mode: bool,
    status_phase_ms: int,
    jitters_ms: list[int],
    stop_lost: bool,
) -> None:
    final_ul, fired_at_ms = _simulate(
        cap_ul=cap_ul,
        flow_ul_min=flow_ul_min,
        tick_ms=tick_ms,
        timer_mode=timer_mode,
        status_phase_ms=status_phase_ms,
        jitters_ms=jitters_ms,
        stop_lost=stop_lost,
    )
    assert final_ul <= cap_ul, (
        f"{float(final_ul):.3f} µL delivered against a cap of {cap_ul} µL "
        f"(rule fired at {fired_at_ms} ms)"
    )


@settings(deadline=None)
@given(
    cap_ul=st.integers(100, 20_000),
    flow_ul_min=st.integers(MIN_FLOW_UL_MIN, 2 * NOMINAL_UL_MIN),
)
def test_the_price_of_the_prediction_is_small(cap_ul: int, flow_ul_min: int) -> None:
    # Checking every ms, the rule stops no more than 1 µL resolution + flow × (latency
    # + 1 ms) + 1 µL of STATUS rounding short of the cap.
    final_ul, _ = _simulate(
        cap_ul=cap_ul,
        flow_ul_min=flow_ul_min,
        tick_ms=1,
        timer_mode=True,
        status_phase_ms=0,
        jitters_ms=[0],
        stop_lost=False,
    )
    shortfall = cap_ul - final_ul
    assert shortfall <= 2 + Fraction(flow_ul_min * (ASSUMED_STOP_LATENCY_MS + 1), 60_000)
