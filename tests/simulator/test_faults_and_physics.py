"""Physics, device faults, link faults and firmware defects, in simulated time."""

from __future__ import annotations

import pytest

from drivers.mn1 import (
    Ack,
    ClearFaults,
    DeviceState,
    FaultBits,
    Hello,
    Ident,
    Nak,
    NakReason,
    SessionEnd,
    Start,
    Stop,
    StopReason,
    encode_frame,
)
from simulators.mn1 import ChannelFaults, DeviceModel, LinkFaults, SimulatedHost


def _start(host: SimulatedHost, *, target_ul: int = 20000, output_pct: int = 100) -> int:
    return host.send(
        Start(session_id=1, target_ul=target_ul, max_duration_s=3600, output_pct=output_pct)
    )


def _answer(host: SimulatedHost, seq: int) -> object:
    answers = host.answers_to(seq)
    assert len(answers) == 1, answers
    return answers[0].message


def _end(host: SimulatedHost) -> SessionEnd:
    message = host.session_ends()[0].message
    assert isinstance(message, SessionEnd)
    return message


# --- physics ----------------------------------------------------------------------------


@pytest.mark.parametrize("output_pct", [10, 40, 100])
def test_output_rate_is_pct_of_nominal_with_small_noise(output_pct: int) -> None:
    host = SimulatedHost(model=DeviceModel(nominal_ul_min=500, fill_ul=6000), heartbeat_ms=250)
    _start(host, output_pct=output_pct)
    host.run_for(60_000)
    expected = 500 * output_pct / 100
    flows = [s.flow_ul_min for s in host.statuses() if s.state == DeviceState.NEBULISING]
    assert all(abs(flow - expected) <= expected * 0.05 + 1 for flow in flows)
    assert len(set(flows)) > 1  # there is noise
    assert host.model.truth().delivered_ul == pytest.approx(expected, rel=0.01)


def test_same_seed_gives_the_same_bytes_and_another_seed_does_not() -> None:
    def run(seed: int) -> list[object]:
        host = SimulatedHost(model=DeviceModel(seed=seed), heartbeat_ms=250)
        _start(host)
        host.run_for(5000)
        return [r.message for r in host.received]

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_reservoir_is_depleted_by_what_is_nebulised() -> None:
    host = SimulatedHost(heartbeat_ms=250)
    _start(host)
    host.run_for(30_000)
    truth = host.model.truth()
    assert truth.reservoir_ul == pytest.approx(3000 - truth.delivered_ul)
    assert host.last_status().reservoir_ul == round(truth.reservoir_ul)


def test_mesh_temperature_rises_while_running_and_falls_after() -> None:
    host = SimulatedHost(heartbeat_ms=250)
    assert host.last_status().mesh_temp_cC == 2500
    _start(host)
    host.run_for(60_000)
    hot = host.last_status().mesh_temp_cC
    assert 3000 < hot < 4500  # warm, never over-temperature in normal use
    host.send(Stop(session_id=0))
    host.run_for(60_000)
    assert host.last_status().mesh_temp_cC < hot - 500
    assert host.last_status().faults == FaultBits(0)


def test_drive_current_flows_only_while_nebulising() -> None:
    host = SimulatedHost(heartbeat_ms=250)
    assert host.last_status().drive_ma == 0
    _start(host)
    host.run_for(200)
    assert host.last_status().drive_ma > 0


def test_refill_adds_liquid_up_to_capacity() -> None:
    model = DeviceModel(fill_ul=1000, capacity_ul=6000)
    model.refill(2000, now_ms=0)
    assert model.truth().reservoir_ul == 3000
    model.refill(10_000, now_ms=0)
    assert model.truth().reservoir_ul == 6000


# --- dry cup --------------------------------------------------------------------------------


def test_dry_cup_ends_the_session_with_reservoir_empty_until_refilled() -> None:
    host = SimulatedHost(model=DeviceModel(fill_ul=150, residual_ul=100), heartbeat_ms=250)
    _start(host)
    host.run_until_message(lambda r: isinstance(r.message, SessionEnd), timeout_ms=60_000)
    end = _end(host)
    assert end.reason == StopReason.RESERVOIR_EMPTY
    assert end.delivered_ul == 50  # the residual 100 µL cannot be nebulised
    host.run_for(100)
    status = host.last_status()
    assert (status.state, status.faults) == (DeviceState.FAULT, FaultBits.RESERVOIR_EMPTY)
    assert status.reservoir_ul == 100
    seq = host.send(Start(session_id=2, target_ul=10, max_duration_s=60, output_pct=50))
    assert _answer(host, seq) == Nak(ack_seq=seq, reason=NakReason.NO_MEDICATION)
    seq = host.send(ClearFaults())
    assert _answer(host, seq) == Nak(ack_seq=seq, reason=NakReason.FAULT_PERSISTS)
    host.model.refill(1000, now_ms=host.now_ms)  # not latched: clears when liquid is added
    host.run_for(100)
    assert (host.last_status().state, host.last_status().faults) == (DeviceState.IDLE, 0)
    seq = host.send(Start(session_id=2, target_ul=10, max_duration_s=60, output_pct=50))
    assert _answer(host, seq) == Ack(ack_seq=seq)


def test_injected_reservoir_empty_drains_the_cup() -> None:
    host = SimulatedHost(heartbeat_ms=250)
    _start(host)
    host.run_for(1000)
    host.model.set_condition("reservoir_empty", True, now_ms=host.now_ms)
    host.run_for(100)
    assert _end(host).reason == StopReason.RESERVOIR_EMPTY
    host.model.set_condition("reservoir_empty", False, now_ms=host.now_ms)
    assert host.model.truth().faults == []


# --- latched faults ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "bit"),
    [
        ("head_disconnected", FaultBits.HEAD_DISCONNECTED),
        ("supply_low", FaultBits.SUPPLY_LOW),
        ("internal", FaultBits.INTERNAL),
    ],
)
def test_latched_fault_stops_the_session_and_stays_until_clear_faults(
    name: str, bit: FaultBits
) -> None:
    host = SimulatedHost(heartbeat_ms=250)
    _start(host)
    host.run_for(1000)
    host.model.set_condition(name, True, now_ms=host.now_ms)
    assert host.model.truth().flow_ul_min == 0
    host.run_for(100)
    assert _end(host).reason == StopReason.FAULT
    status = host.last_status()
    assert (status.state, status.faults, status.last_stop) == (
        DeviceState.FAULT,
        bit,
        StopReason.FAULT,
    )
    assert status.drive_ma == 0
    seq = host.send(ClearFaults())
    assert _answer(host, seq) == Nak(ack_seq=seq, reason=NakReason.FAULT_PERSISTS)
    host.model.set_condition(name, False, now_ms=host.now_ms)
    host.run_for(1000)
    assert host.last_status().faults == bit  # latched although the cause has gone
    seq = host.send(ClearFaults())
    assert _answer(host, seq) == Ack(ack_seq=seq)
    host.run_for(100)
    assert host.last_status().state == DeviceState.IDLE


def test_a_fault_present_at_power_up_is_raised_by_the_self_test() -> None:
    host = SimulatedHost()
    host.model.set_condition("head_disconnected", True, now_ms=0)
    host.model.reboot(now_ms=10)
    host.run_for(100)
    assert host.last_status().faults == FaultBits.HEAD_DISCONNECTED


def test_over_temperature_stops_and_clears_only_after_cooling() -> None:
    host = SimulatedHost(heartbeat_ms=250)
    _start(host)
    host.run_for(1000)
    host.model.set_condition("over_temperature", True, now_ms=host.now_ms)
    host.run_for(100)
    assert _end(host).reason == StopReason.FAULT
    assert host.last_status().faults == FaultBits.OVER_TEMPERATURE
    assert host.last_status().mesh_temp_cC > 4500
    host.model.set_condition("over_temperature", False, now_ms=host.now_ms)
    seq = host.send(ClearFaults())
    assert _answer(host, seq) == Nak(ack_seq=seq, reason=NakReason.FAULT_PERSISTS)
    host.run_for(20_000)
    assert host.last_status().mesh_temp_cC <= 4500
    seq = host.send(ClearFaults())
    assert _answer(host, seq) == Ack(ack_seq=seq)


def test_over_temperature_from_heating_alone() -> None:
    model = DeviceModel(fill_ul=6000)
    model.set_condition("over_temperature", True, now_ms=0)
    model.set_condition("over_temperature", False, now_ms=0)
    model.advance(30_000)  # cooled down; the latched bit stays
    assert model.truth().mesh_temp_cC < 4500
    assert model.truth().faults == ["over_temperature"]


def test_clog_drift_lowers_output_until_mesh_clogged() -> None:
    host = SimulatedHost(model=DeviceModel(fill_ul=6000), heartbeat_ms=250)
    host.model.set_clog_drift(60.0, now_ms=0)  # -60 % of nominal per minute of nebulising
    _start(host)
    host.run_until_message(lambda r: isinstance(r.message, SessionEnd), timeout_ms=120_000)
    end = _end(host)
    assert end.reason == StopReason.FAULT
    flows = [s.flow_ul_min for s in host.statuses() if s.state == DeviceState.NEBULISING]
    assert flows[0] > 380
    assert flows[-1] < 200
    # below 50 % (factor 0.5 after 50 s of drift) for 3 s, give or take the noise
    assert 50_000 <= end.duration_ms <= 56_000
    host.run_for(100)
    assert host.last_status().faults == FaultBits.MESH_CLOGGED
    seq = host.send(ClearFaults())
    assert _answer(host, seq) == Nak(ack_seq=seq, reason=NakReason.FAULT_PERSISTS)
    host.model.set_condition("mesh_clogged", False, now_ms=host.now_ms)  # mesh cleaned
    seq = host.send(ClearFaults())
    assert _answer(host, seq) == Ack(ack_seq=seq)


def test_severe_clog_is_detected_after_3_s_of_low_output() -> None:
    host = SimulatedHost(heartbeat_ms=250)
    host.model.set_condition("mesh_clogged", True, now_ms=0)
    _start(host)
    start_ms = host.now_ms
    received = host.run_until_message(
        lambda r: isinstance(r.message, SessionEnd), timeout_ms=10_000
    )
    assert 3000 <= received.at_ms - start_ms <= 3020
    assert host.model.truth().faults == ["mesh_clogged"]


# --- link faults ---------------------------------------------------------------------------------


def _with_link(faults: LinkFaults) -> SimulatedHost:
    host = SimulatedHost(heartbeat_ms=250)
    host.model.set_link_faults(faults, now_ms=0)
    return host


def test_tx_bit_errors_corrupt_frames_the_host_sees() -> None:
    host = _with_link(LinkFaults(tx=ChannelFaults(bit_error_rate=0.002)))
    host.run_for(20_000)
    assert host.bad_frames > 10
    assert len(host.statuses()) > 100  # most still arrive


def test_rx_bit_errors_are_counted_by_the_device() -> None:
    host = SimulatedHost()
    host.model.set_link_faults(LinkFaults(rx=ChannelFaults(bit_error_rate=0.01)), now_ms=0)
    for _ in range(200):
        host.send(Hello())
        host.run_for(10)
    crc_errors = host.last_status().crc_errors
    good = host.model.truth().host_frames_received
    assert 20 < crc_errors < 200
    assert good < 200
    # A flipped delimiter merges two frames into one bad one, a new 0x00 splits one in two.
    assert 180 <= good + crc_errors <= 220


def test_dropped_and_duplicated_bytes_break_some_frames() -> None:
    host = _with_link(LinkFaults(tx=ChannelFaults(drop_rate=0.01, duplicate_rate=0.01)))
    host.run_for(20_000)
    assert host.bad_frames > 10


def test_rx_and_tx_delays_hold_bytes_back() -> None:
    host = _with_link(LinkFaults(rx=ChannelFaults(delay_ms=30), tx=ChannelFaults(delay_ms=20)))
    host.run_for(1000)
    sent_ms = host.now_ms
    seq = host.send(Hello())
    host.run_for(100)
    (answer,) = host.answers_to(seq)
    assert answer.at_ms - sent_ms == 50
    at_ms, status = host.timed_statuses()[-1]
    assert at_ms - status.uptime_ms == 20


def test_dropped_answers_still_act_and_a_retransmit_gets_the_answer() -> None:
    host = _with_link(LinkFaults(drop_answer_rate=1.0))
    seq = _start(host)
    assert host.answers_to(seq) == []
    assert host.model.truth().nebulising  # the START took effect
    host.model.set_link_faults(LinkFaults(), now_ms=host.now_ms)
    host.send(Start(session_id=1, target_ul=20000, max_duration_s=3600, output_pct=100), seq=seq)
    assert _answer(host, seq) == Ack(ack_seq=seq)
    assert len(host.model.ended_sessions) == 0


def test_silent_device_sends_nothing_but_still_listens() -> None:
    host = _with_link(LinkFaults(silent=True))
    count = len(host.received)
    _start(host)
    host.run_for(2000)
    assert len(host.received) == count
    assert host.model.truth().nebulising
    host.model.set_link_faults(LinkFaults(), now_ms=host.now_ms)
    host.run_for(100)
    assert host.last_status().state == DeviceState.NEBULISING


def test_link_fault_values_are_checked() -> None:
    with pytest.raises(ValueError, match="bit_error_rate"):
        ChannelFaults(bit_error_rate=2.0)
    with pytest.raises(ValueError, match="delay_ms"):
        ChannelFaults(delay_ms=-1)


# --- firmware defects ----------------------------------------------------------------------------


def test_defect_ignore_target_cap_overshoots() -> None:
    host = SimulatedHost(heartbeat_ms=250)
    host.model.set_defect("ignore_target_cap", True, now_ms=0)
    _start(host, target_ul=20)
    host.run_for(10_000)
    assert host.model.truth().delivered_ul > 60
    assert host.model.truth().nebulising


def test_defect_ignore_stop_acks_but_keeps_nebulising() -> None:
    host = SimulatedHost(heartbeat_ms=250)
    host.model.set_defect("ignore_stop", True, now_ms=0)
    _start(host)
    host.run_for(500)
    seq = host.send(Stop(session_id=0))
    assert _answer(host, seq) == Ack(ack_seq=seq)
    host.run_for(1000)
    assert host.last_status().state == DeviceState.NEBULISING
    host.model.press_stop_button(now_ms=host.now_ms)  # the button still works
    assert not host.model.truth().nebulising


def test_defect_frozen_delivered_reports_a_constant_while_truth_grows() -> None:
    host = SimulatedHost(heartbeat_ms=250)
    _start(host)
    host.run_for(3000)
    host.model.set_defect("frozen_delivered", True, now_ms=host.now_ms)
    frozen = host.model.truth().reported_delivered_ul
    host.run_for(5000)
    recent = {s.delivered_ul for s in host.statuses()[-40:]}
    assert recent == {frozen}
    assert host.model.truth().delivered_ul > frozen + 20
    host.model.set_defect("frozen_delivered", False, now_ms=host.now_ms)
    host.run_for(100)
    assert host.last_status().delivered_ul > frozen + 20


def test_unknown_names_are_refused_with_the_list() -> None:
    model = DeviceModel()
    with pytest.raises(ValueError, match="head_disconnected"):
        model.set_condition("unplugged", True, now_ms=0)
    with pytest.raises(ValueError, match="ignore_stop"):
        model.set_defect("lazy", True, now_ms=0)


def test_model_refuses_time_going_backwards() -> None:
    model = DeviceModel(start_ms=1000)
    with pytest.raises(ValueError, match="backwards"):
        model.advance(999)


def test_hello_works_after_many_sessions() -> None:
    host = SimulatedHost(heartbeat_ms=250, auto_ack_end=True)
    for session_id in range(1, 6):
        host.send(Start(session_id=session_id, target_ul=5, max_duration_s=60, output_pct=100))
        host.run_for(2000)
    assert [s.reason for s in host.model.ended_sessions] == ["TARGET_REACHED"] * 5
    host.send_bytes(encode_frame(Hello(), seq=77))
    assert isinstance(host.answers_to(77)[0].message, Ident)
