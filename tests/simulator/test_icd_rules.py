"""ICD §5 behaviour, NAK reasons and counters, one test per rule, in simulated time."""

from __future__ import annotations

import itertools

import pytest

from drivers.mn1 import (
    Ack,
    AckEnd,
    ClearFaults,
    DeviceState,
    FaultBits,
    Heartbeat,
    Hello,
    Ident,
    Nak,
    NakReason,
    SessionEnd,
    Start,
    Status,
    Stop,
    StopReason,
    cobs_encode,
    crc16,
    encode_frame,
    encode_payload,
)
from simulators.mn1 import DeviceModel, SimulatedHost


def _start(
    host: SimulatedHost,
    *,
    session_id: int = 1,
    target_ul: int = 1000,
    max_duration_s: int = 600,
    output_pct: int = 100,
) -> int:
    return host.send(
        Start(
            session_id=session_id,
            target_ul=target_ul,
            max_duration_s=max_duration_s,
            output_pct=output_pct,
        )
    )


def _answer(host: SimulatedHost, seq: int) -> Ack | Nak | Ident:
    answers = host.answers_to(seq)
    assert len(answers) == 1, answers
    message = answers[0].message
    assert isinstance(message, Ack | Nak | Ident)
    return message


# --- rule 1: STATUS every 100 ms in every state -----------------------------------------


def test_status_every_100_ms_in_idle_nebulising_and_fault() -> None:
    host = SimulatedHost(heartbeat_ms=250)
    host.run_for(1000)
    _start(host, target_ul=20000)
    host.run_for(1000)
    host.model.set_condition("head_disconnected", True, now_ms=host.now_ms)
    host.run_for(1000)
    times = [r.at_ms for r in host.received if isinstance(r.message, Status)]
    gaps = {b - a for a, b in itertools.pairwise(times)}
    assert gaps == {100}
    states = {s.state for s in host.statuses()}
    assert states == {DeviceState.IDLE, DeviceState.NEBULISING, DeviceState.FAULT}


def test_status_uptime_counts_from_power_up() -> None:
    host = SimulatedHost(model=DeviceModel(start_ms=5000))
    host.run_for(1000)
    uptimes = [s.uptime_ms for s in host.statuses()]
    assert uptimes[:3] == [0, 100, 200]
    assert uptimes[-1] == 1000


# --- rule 2: answers within 20 ms ------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [Hello(), Start(session_id=1, target_ul=10, max_duration_s=5, output_pct=50),
     Stop(session_id=0), ClearFaults()],
)  # fmt: skip
def test_answer_is_sent_at_the_moment_of_the_last_byte(message: object) -> None:
    host = SimulatedHost()
    host.run_for(35)
    frame = encode_frame(message, seq=9)  # type: ignore[arg-type]
    for byte in frame:  # one byte per millisecond, like a slow link
        host.send_bytes(bytes([byte]))
        host.run_for(1)
    last_byte_ms = host.now_ms - 1
    (answer,) = host.answers_to(9)
    assert answer.at_ms - last_byte_ms <= 20
    assert answer.at_ms == last_byte_ms  # the model answers inside the same call


# --- rule 3: STOP turns aerosol off at once ----------------------------------------------


def test_stop_turns_aerosol_off_at_once_and_next_status_is_idle() -> None:
    host = SimulatedHost(heartbeat_ms=250)
    _start(host, session_id=4, target_ul=5000)
    host.run_for(3005)
    seq = host.send(Stop(session_id=4))
    assert isinstance(_answer(host, seq), Ack)
    truth = host.model.truth()
    assert not truth.nebulising
    assert truth.flow_ul_min == 0
    delivered_at_stop = truth.delivered_ul
    assert 3000 / 60_000 * 400 * 0.95 < delivered_at_stop < 3010 / 60_000 * 400 * 1.05
    host.run_for(500)
    assert host.model.truth().delivered_ul == delivered_at_stop
    next_status = next(
        r.message for r in host.received if isinstance(r.message, Status) and r.at_ms > 3005
    )
    assert next_status.state == DeviceState.IDLE
    assert next_status.flow_ul_min == 0
    end = host.session_ends()[0].message
    assert isinstance(end, SessionEnd)
    assert end.reason == StopReason.HOST_STOP
    assert end.session_id == 4
    assert end.delivered_ul == int(delivered_at_stop)
    assert host.last_status().last_stop == StopReason.HOST_STOP


def test_stop_when_idle_is_acked() -> None:
    host = SimulatedHost()
    assert isinstance(_answer(host, host.send(Stop(session_id=0))), Ack)
    assert host.session_ends() == []


def test_stop_for_another_session_is_acked_and_stops_nothing() -> None:
    host = SimulatedHost(heartbeat_ms=250)
    _start(host, session_id=5, target_ul=5000)
    host.run_for(500)
    assert isinstance(_answer(host, host.send(Stop(session_id=6))), Ack)
    assert host.model.truth().nebulising
    assert isinstance(_answer(host, host.send(Stop(session_id=0))), Ack)
    assert not host.model.truth().nebulising


# --- rule 4: target cap ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target_ul", "output_pct", "nominal_ul_min"),
    [(1, 100, 400), (25, 10, 400), (333, 55, 400), (2500, 100, 400), (50, 100, 3000)],
)
def test_device_stops_at_target_within_1_ul_plus_10_ms_of_flow(
    target_ul: int, output_pct: int, nominal_ul_min: int
) -> None:
    model = DeviceModel(nominal_ul_min=nominal_ul_min, fill_ul=6000)
    host = SimulatedHost(model=model, heartbeat_ms=250)
    _start(host, target_ul=target_ul, output_pct=output_pct, max_duration_s=3600)
    host.run_until_message(lambda r: isinstance(r.message, SessionEnd), timeout_ms=3_600_000)
    truth = host.model.truth()
    ten_ms_of_flow_ul = nominal_ul_min * output_pct / 100 * 1.05 * 10 / 60_000
    assert target_ul <= truth.delivered_ul <= target_ul + 1 + ten_ms_of_flow_ul
    end = host.session_ends()[0].message
    assert isinstance(end, SessionEnd)
    assert end.reason == StopReason.TARGET_REACHED
    assert end.delivered_ul == target_ul
    expected_ms = target_ul / (nominal_ul_min * output_pct / 100) * 60_000
    assert abs(end.duration_ms - expected_ms) <= expected_ms * 0.06 + 10
    host.run_for(100)
    assert host.last_status().delivered_ul == target_ul
    assert host.last_status().last_stop == StopReason.TARGET_REACHED


def test_max_duration_stops_the_session() -> None:
    host = SimulatedHost(heartbeat_ms=250)
    _start(host, target_ul=20000, max_duration_s=2)
    start_ms = host.now_ms
    received = host.run_until_message(lambda r: isinstance(r.message, SessionEnd), timeout_ms=5000)
    assert isinstance(received.message, SessionEnd)
    assert received.message.reason == StopReason.MAX_DURATION
    assert received.at_ms - start_ms == 2000
    assert received.message.duration_ms == 2000
    assert host.model.truth().delivered_ul == pytest.approx(400 * 2 / 60, rel=0.05)


# --- rule 5: watchdog --------------------------------------------------------------------


def test_watchdog_stops_a_silent_host_after_1000_ms() -> None:
    host = SimulatedHost()
    _start(host, session_id=8, target_ul=5000)
    start_ms = host.now_ms
    received = host.run_until_message(lambda r: isinstance(r.message, SessionEnd), timeout_ms=5000)
    assert received.at_ms - start_ms == 1000
    assert isinstance(received.message, SessionEnd)
    assert received.message.reason == StopReason.WATCHDOG
    host.run_for(100)
    status = host.last_status()
    assert status.faults == FaultBits.WATCHDOG
    assert status.state == DeviceState.FAULT
    assert status.last_stop == StopReason.WATCHDOG


def test_watchdog_is_fed_by_any_valid_host_frame_but_not_by_a_bad_one() -> None:
    host = SimulatedHost()
    _start(host, target_ul=20000, max_duration_s=3600)
    for message in (Heartbeat(), Hello(), ClearFaults(), AckEnd(end_seq=200), Stop(session_id=99)):
        host.run_for(900)
        host.send(message)
    assert host.model.truth().nebulising  # 4.5 s without a gap of 1000 ms
    host.run_for(900)
    bad = bytearray(encode_frame(Heartbeat(), seq=1))
    bad[2] ^= 0xFF
    host.send_bytes(bytes(bad))
    host.run_for(100)
    assert not host.model.truth().nebulising
    assert host.model.ended_sessions[-1].reason == "WATCHDOG"


def test_watchdog_fault_is_latched_until_clear_faults() -> None:
    host = SimulatedHost()
    _start(host, target_ul=5000)
    host.run_for(1500)
    assert host.last_status().faults == FaultBits.WATCHDOG
    host.run_for(5000)
    assert host.last_status().faults == FaultBits.WATCHDOG
    assert isinstance(_answer(host, _start(host, session_id=2)), Nak)
    assert _answer(host, host.send(ClearFaults())) == Ack(ack_seq=host.received[-1].message.ack_seq)  # type: ignore[union-attr]
    host.run_for(100)
    assert host.last_status().state == DeviceState.IDLE


# --- rule 6: idempotence -----------------------------------------------------------------


def test_repeated_start_gets_the_same_answer_and_no_second_session() -> None:
    host = SimulatedHost(heartbeat_ms=250)
    seq = _start(host, session_id=3, target_ul=50)
    host.run_until_message(lambda r: isinstance(r.message, SessionEnd), timeout_ms=60_000)
    first = host.answers_to(seq)
    # A retransmission of the START (same seq, type and body) after the session ended;
    # heartbeats in between do not make it a new command.
    host.send(Start(session_id=3, target_ul=50, max_duration_s=600, output_pct=100), seq=seq)
    again = host.answers_to(seq)
    assert len(again) == 2
    assert again[1].message == first[0].message
    assert again[1].seq == first[0].seq  # the same answer frame, resent


def test_retransmitted_start_after_session_end_does_not_start_again() -> None:
    host = SimulatedHost(heartbeat_ms=250)
    seq = _start(host, session_id=3, target_ul=20)
    host.run_until_message(lambda r: isinstance(r.message, SessionEnd), timeout_ms=60_000)
    host.send(Start(session_id=3, target_ul=20, max_duration_s=600, output_pct=100), seq=seq)
    host.run_for(1000)
    assert not host.model.truth().nebulising
    assert len(host.model.ended_sessions) == 1
    assert host.model.truth().total_delivered_ul == pytest.approx(20)


def test_start_for_the_session_already_nebulising_is_acked_and_changes_nothing() -> None:
    host = SimulatedHost(heartbeat_ms=250)
    _start(host, session_id=7, target_ul=1000, output_pct=50)
    host.run_for(2000)
    before = host.model.truth()
    seq = _start(host, session_id=7, target_ul=20000, output_pct=100)
    assert isinstance(_answer(host, seq), Ack)
    after = host.model.truth()
    assert (after.target_ul, after.output_pct) == (1000, 50)
    assert after.delivered_ul == before.delivered_ul
    assert after.nebulising


def test_a_command_is_new_again_once_another_command_was_answered() -> None:
    host = SimulatedHost(heartbeat_ms=250)
    seq = host.send(Stop(session_id=0))
    _start(host, session_id=4)
    host.run_for(500)
    host.send(Stop(session_id=0), seq=seq)  # same seq and body as an older STOP: acts
    assert not host.model.truth().nebulising
    assert len(host.answers_to(seq)) == 2


def test_repeated_clear_faults_answers_the_same() -> None:
    host = SimulatedHost()
    host.model.set_condition("supply_low", True, now_ms=0)
    seq = host.send(ClearFaults())
    host.model.set_condition("supply_low", False, now_ms=0)
    host.send(ClearFaults(), seq=seq)  # repeat: the same NAK, no second effect
    answers = [r.message for r in host.answers_to(seq)]
    assert answers == [Nak(ack_seq=seq, reason=NakReason.FAULT_PERSISTS)] * 2
    assert host.model.truth().faults == ["supply_low"]
    assert isinstance(_answer(host, host.send(ClearFaults())), Ack)


# --- rule 7: SESSION_END repeated until ACK_END ---------------------------------------------


def test_session_end_repeats_every_200_ms_with_the_same_seq_until_ack_end() -> None:
    host = SimulatedHost(heartbeat_ms=250)
    _start(host, target_ul=5000)
    host.run_for(500)
    host.send(Stop(session_id=0))
    host.run_for(1000)
    ends = host.session_ends()
    assert len(ends) == 6  # at 0, 200, ..., 1000 ms
    assert {r.seq for r in ends} == {ends[0].seq}
    assert [b.at_ms - a.at_ms for a, b in itertools.pairwise(ends)] == [200] * 5
    host.send(AckEnd(end_seq=(ends[0].seq + 1) & 0xFF))  # wrong seq: keeps repeating
    host.run_for(400)
    assert len(host.session_ends()) == 8
    host.send(AckEnd(end_seq=ends[0].seq))
    host.run_for(2000)
    assert len(host.session_ends()) == 8
    assert len(host.statuses()) > 30  # STATUS keeps flowing


def test_session_end_is_sent_at_most_50_times() -> None:
    host = SimulatedHost(heartbeat_ms=250)
    _start(host, target_ul=5)
    host.run_for(30_000)
    ends = host.session_ends()
    assert len(ends) == 50
    assert ends[-1].at_ms - ends[0].at_ms == 49 * 200


def test_auto_ack_end_stops_repeats() -> None:
    host = SimulatedHost(heartbeat_ms=250, auto_ack_end=True)
    _start(host, target_ul=5)
    host.run_for(5000)
    assert len(host.session_ends()) == 1
    assert host.model.truth().pending_session_end_seqs == []


# --- rule 8: power-up ----------------------------------------------------------------------


def test_power_up_is_idle_with_session_0_and_nothing_kept() -> None:
    host = SimulatedHost(heartbeat_ms=250)
    first = host.statuses()[0]
    assert (first.state, first.session_id, first.delivered_ul, first.last_stop) == (
        DeviceState.IDLE,
        0,
        0,
        StopReason.NONE,
    )
    _start(host, session_id=12, target_ul=5000)
    host.model.press_confirm_button(now_ms=host.now_ms)
    host.send_bytes(b"\x01\x00")  # one bad frame
    host.run_for(2000)
    ends_before = len(host.session_ends())
    host.model.reboot(now_ms=host.now_ms)
    host.run_for(300)
    status = host.last_status()
    assert status.uptime_ms == 300
    assert (status.state, status.session_id, status.delivered_ul) == (DeviceState.IDLE, 0, 0)
    assert (status.crc_errors, status.confirm_count, status.faults) == (0, 0, FaultBits(0))
    assert len(host.session_ends()) == ends_before  # a power cut sends no SESSION_END
    assert host.model.ended_sessions[-1].reason == "POWER_LOSS"
    assert host.model.truth().reservoir_ul < 3000  # the liquid used stays used


def test_reboot_with_boot_time_is_silent_then_restarts_uptime() -> None:
    host = SimulatedHost()
    host.run_for(5000)
    host.model.reboot(now_ms=host.now_ms, boot_ms=700)
    count = len(host.received)
    host.run_for(650)
    host.send(Hello())
    assert len(host.received) == count  # booting: deaf and mute
    host.run_for(150)
    after = [(at_ms, s) for at_ms, s in host.timed_statuses() if at_ms > host.now_ms - 800]
    assert after[0][0] == host.now_ms - 100  # boot done 700 ms after the reboot
    assert [s.uptime_ms for _, s in after] == [0, 100]


# --- NAK reasons ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("session_id", "target_ul", "max_duration_s", "output_pct"),
    [(0, 10, 10, 50), (1, 0, 10, 50), (1, 20001, 10, 50), (1, 10, 0, 50), (1, 10, 3601, 50),
     (1, 10, 10, 9), (1, 10, 10, 101)],
)  # fmt: skip
def test_start_out_of_range_is_nak_bad_value(
    session_id: int, target_ul: int, max_duration_s: int, output_pct: int
) -> None:
    host = SimulatedHost()
    seq = _start(
        host,
        session_id=session_id,
        target_ul=target_ul,
        max_duration_s=max_duration_s,
        output_pct=output_pct,
    )
    assert _answer(host, seq) == Nak(ack_seq=seq, reason=NakReason.BAD_VALUE)
    assert not host.model.truth().nebulising


@pytest.mark.parametrize(
    ("target_ul", "max_duration_s", "output_pct"),
    [(1, 1, 10), (20000, 3600, 100)],
)
def test_start_at_range_edges_is_acked(
    target_ul: int, max_duration_s: int, output_pct: int
) -> None:
    host = SimulatedHost(model=DeviceModel(fill_ul=6000))
    seq = _start(
        host,
        session_id=0xFFFFFFFF,
        target_ul=target_ul,
        max_duration_s=max_duration_s,
        output_pct=output_pct,
    )
    assert _answer(host, seq) == Ack(ack_seq=seq)


def test_start_while_another_session_runs_is_nak_wrong_state() -> None:
    host = SimulatedHost(heartbeat_ms=250)
    _start(host, session_id=1)
    seq = _start(host, session_id=2)
    assert _answer(host, seq) == Nak(ack_seq=seq, reason=NakReason.WRONG_STATE)
    assert host.model.truth().session_id == 1


def test_start_with_a_fault_set_is_nak_fault_active() -> None:
    host = SimulatedHost()
    host.model.set_condition("internal", True, now_ms=0)
    seq = _start(host)
    assert _answer(host, seq) == Nak(ack_seq=seq, reason=NakReason.FAULT_ACTIVE)


def test_start_with_an_empty_reservoir_is_nak_no_medication() -> None:
    host = SimulatedHost(model=DeviceModel(fill_ul=100, residual_ul=100))
    seq = _start(host)
    assert _answer(host, seq) == Nak(ack_seq=seq, reason=NakReason.NO_MEDICATION)


def test_clear_faults_with_nothing_set_is_acked() -> None:
    host = SimulatedHost()
    seq = host.send(ClearFaults())
    assert _answer(host, seq) == Ack(ack_seq=seq)


# --- bad frames and crc_errors ---------------------------------------------------------------


def _bad_frames() -> dict[str, bytes]:
    good = encode_payload(Hello(), seq=1)
    bad_crc = bytearray(good)
    bad_crc[-1] ^= 0x01

    def framed(payload: bytes) -> bytes:
        return cobs_encode(payload) + b"\x00"

    def with_crc(header_body: bytes) -> bytes:
        return header_body + crc16(header_body).to_bytes(2, "little")

    return {
        "crc": framed(bytes(bad_crc)),
        "cobs": b"\x05\x01\x00",
        "short": framed(b"\x01\x01"),
        "version": framed(with_crc(b"\x02\x01\x01")),
        "type": framed(with_crc(b"\x01\x07\x01")),
        "body_length": framed(with_crc(b"\x01\x01\x01\x00")),
        "device_type": encode_frame(Ack(ack_seq=1), seq=1),
        "too_long": b"\x11" * 80 + b"\x00",
    }


@pytest.mark.parametrize("kind", sorted(_bad_frames()))
def test_bad_frames_are_dropped_unanswered_and_counted(kind: str) -> None:
    host = SimulatedHost()
    host.send_bytes(_bad_frames()[kind])
    host.run_for(100)
    assert [r for r in host.received if not isinstance(r.message, Status)] == []
    assert host.last_status().crc_errors == 1
    # ...and the next good frame is understood (resynchronised on 0x00).
    assert isinstance(_answer(host, host.send(Hello())), Ident)


def test_empty_frames_between_frames_are_ignored() -> None:
    host = SimulatedHost()
    host.send_bytes(b"\x00\x00\x00" + encode_frame(Hello(), seq=4) + b"\x00\x00")
    host.run_for(100)
    assert host.last_status().crc_errors == 0
    assert isinstance(_answer(host, 4), Ident)


def test_crc_errors_saturate_at_65535() -> None:
    host = SimulatedHost()
    host.send_bytes(b"\x01\x00" * 65_540)
    host.run_for(100)
    assert host.last_status().crc_errors == 65535


def test_ident_carries_the_configured_identity() -> None:
    model = DeviceModel(serial="MN1-00042", nominal_ul_min=350, capacity_ul=5000, fill_ul=100,
                        fw_version=(2, 3, 4), hw_rev=7)  # fmt: skip
    host = SimulatedHost(model=model)
    seq = host.send(Hello())
    assert _answer(host, seq) == Ident(
        ack_seq=seq,
        serial="MN1-00042",
        fw_major=2,
        fw_minor=3,
        fw_patch=4,
        hw_rev=7,
        nominal_ul_min=350,
        reservoir_capacity_ul=5000,
    )


# --- buttons --------------------------------------------------------------------------------


def test_stop_button_ends_the_session_with_button_stop() -> None:
    host = SimulatedHost(heartbeat_ms=250)
    _start(host, session_id=9, target_ul=5000)
    host.run_for(1000)
    host.model.press_stop_button(now_ms=host.now_ms)
    assert host.model.truth().flow_ul_min == 0
    host.run_for(100)
    end = host.session_ends()[0].message
    assert isinstance(end, SessionEnd)
    assert (end.session_id, end.reason) == (9, StopReason.BUTTON_STOP)
    assert host.last_status().last_stop == StopReason.BUTTON_STOP
    assert host.last_status().state == DeviceState.IDLE


def test_confirm_button_counts_presses_and_wraps() -> None:
    host = SimulatedHost()
    for _ in range(3):
        host.model.press_confirm_button(now_ms=host.now_ms)
    host.run_for(100)
    assert host.last_status().confirm_count == 3
    for _ in range(253):
        host.model.press_confirm_button(now_ms=host.now_ms)
    host.run_for(100)
    assert host.last_status().confirm_count == 0
    assert host.last_status().state == DeviceState.IDLE  # CONFIRM does nothing by itself


def test_device_seq_increments_and_wraps() -> None:
    host = SimulatedHost()
    host.run_for(30_000)
    seqs = [r.seq for r in host.received]
    assert all((b - a) & 0xFF == 1 for a, b in itertools.pairwise(seqs))
    assert 0 in seqs[1:]
