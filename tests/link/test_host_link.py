"""Sans-IO host link (ICD §5–§6): simulated time, no port, no asyncio."""

from __future__ import annotations

import pytest

from drivers.mn1 import (
    Ack,
    AckEnd,
    ClearFaults,
    CommandAnswered,
    CommandFailed,
    Deframer,
    DeviceMessage,
    DeviceRebooted,
    DeviceState,
    DeviceSwapped,
    FaultBits,
    Frame,
    HandshakeFailed,
    Heartbeat,
    Hello,
    HostLink,
    Ident,
    Identified,
    LinkEvent,
    LinkLost,
    LinkNotReadyError,
    LinkPhase,
    LinkRestored,
    Nak,
    NakReason,
    PortClosed,
    SessionEnd,
    SessionEndReceived,
    Start,
    Status,
    StatusReceived,
    Stop,
    StopReason,
    cobs_encode,
    crc16,
    encode_frame,
    encode_payload,
)

START = Start(session_id=7, target_ul=500, max_duration_s=600, output_pct=80)


def ident(serial: str = "MN1-0000001", *, ack_seq: int) -> Ident:
    return Ident(
        ack_seq=ack_seq,
        serial=serial,
        fw_major=1,
        fw_minor=4,
        fw_patch=2,
        hw_rev=3,
        nominal_ul_min=300,
        reservoir_capacity_ul=10_000,
    )


def status(uptime_ms: int) -> Status:
    return Status(
        uptime_ms=uptime_ms,
        state=DeviceState.IDLE,
        session_id=0,
        delivered_ul=0,
        flow_ul_min=0,
        reservoir_ul=5000,
        mesh_temp_cC=2500,
        drive_ma=0,
        faults=FaultBits(0),
        crc_errors=0,
        last_stop=StopReason.NONE,
        confirm_count=0,
    )


class Harness:
    """A HostLink plus a decoder of what it writes, in simulated milliseconds."""

    def __init__(self, link: HostLink | None = None) -> None:
        self.link = link if link is not None else HostLink()
        self.now_ms = 0
        self.device_seq = 0
        self._deframer = Deframer()
        self.sent: list[tuple[int, Frame]] = []  # (time, frame) of every frame written
        self.events: list[LinkEvent] = []

    def collect(self) -> None:
        for chunk in self.link.take_writes():
            for item in self._deframer.feed(chunk):
                assert isinstance(item, Frame), item
                self.sent.append((self.now_ms, item))
        self.events += self.link.take_events()

    def advance_to(self, t_ms: int) -> None:
        """Run every timer up to `t_ms`, exactly at each deadline."""
        turns = 0
        while (deadline := self.link.next_deadline_ms()) is not None and deadline <= t_ms:
            turns += 1  # a deadline that handling never moves on is a defect, not a hang
            assert turns <= 100_000, f"the link's deadline stays at {deadline} ms"
            self.now_ms = max(self.now_ms, deadline)
            self.link.handle_timers(self.now_ms)
            self.collect()
        self.now_ms = t_ms
        self.link.handle_timers(t_ms)
        self.collect()

    def device_says(self, message: DeviceMessage, *, seq: int | None = None) -> None:
        if seq is None:
            seq = self.device_seq
            self.device_seq = (self.device_seq + 1) & 0xFF
        self.link.receive_data(encode_frame(message, seq=seq), self.now_ms)
        self.collect()

    def last_sent(self, kind: type[object]) -> Frame:
        return [f for _, f in self.sent if isinstance(f.message, kind)][-1]

    def of(self, kind: type[object]) -> list[object]:
        return [e for e in self.events if isinstance(e, kind)]

    def open_and_identify(self, serial: str = "MN1-0000001") -> None:
        self.link.connection_made(self.now_ms)
        self.collect()
        hello = self.last_sent(Hello)
        self.device_says(ident(serial, ack_seq=hello.seq))


def test_hello_first_and_start_refused_until_ident() -> None:
    h = Harness()
    with pytest.raises(LinkNotReadyError, match="port is closed"):
        h.link.send_command(Stop(session_id=0), 0)
    h.link.connection_made(0)
    h.collect()
    assert [type(f.message) for _, f in h.sent] == [Hello]
    with pytest.raises(LinkNotReadyError, match="IDENT"):
        h.link.send_command(START, 0)
    with pytest.raises(LinkNotReadyError, match="IDENT"):
        h.link.send_command(ClearFaults(), 0)
    # STOP is allowed before IDENT: safe state first.
    h.link.send_command(Stop(session_id=0), 0)
    h.device_says(ident(ack_seq=h.last_sent(Hello).seq))
    assert h.link.phase is LinkPhase.IDENTIFIED
    [identified] = h.of(Identified)
    assert isinstance(identified, Identified)
    assert identified.ident.serial == "MN1-0000001"
    assert identified.ident.firmware == "1.4.2"
    h.link.send_command(START, 0)


def test_retransmit_after_50ms_same_seq_five_times_then_failed() -> None:
    h = Harness()
    h.open_and_identify()
    h.sent.clear()
    seq = h.link.send_command(START, h.now_ms)
    t0 = h.now_ms
    h.collect()
    h.advance_to(t0 + 1000)
    starts = [(t, f) for t, f in h.sent if isinstance(f.message, Start)]
    assert [t - t0 for t, _ in starts] == [0, 50, 100, 150, 200, 250]
    assert {f.seq for _, f in starts} == {seq}
    [failed] = h.of(CommandFailed)
    assert isinstance(failed, CommandFailed)
    assert (failed.seq, failed.command, failed.transmissions, failed.at_ms) == (
        seq,
        START,
        6,
        t0 + 300,
    )
    assert h.link.outstanding_seqs == ()


def test_answer_to_a_retransmission_matches_by_ack_seq() -> None:
    h = Harness()
    h.open_and_identify()
    seq = h.link.send_command(START, h.now_ms)
    other = h.link.send_command(Stop(session_id=7), h.now_ms)
    h.collect()
    h.advance_to(h.now_ms + 120)  # two retransmissions of each
    h.device_says(Nak(ack_seq=seq, reason=NakReason.FAULT_ACTIVE))
    h.device_says(Ack(ack_seq=other))
    h.device_says(Ack(ack_seq=seq))  # a late duplicate answer: ignored
    answered = [e for e in h.of(CommandAnswered) if isinstance(e, CommandAnswered)]
    assert [(e.seq, e.command, e.answer, e.transmissions) for e in answered[-2:]] == [
        (seq, START, Nak(ack_seq=seq, reason=NakReason.FAULT_ACTIVE), 3),
        (other, Stop(session_id=7), Ack(ack_seq=other), 3),
    ]
    h.advance_to(h.now_ms + 1000)
    assert h.of(CommandFailed) == []


def test_heartbeat_keeps_every_gap_at_most_250ms() -> None:
    h = Harness()
    h.open_and_identify()
    h.advance_to(2000)
    h.link.send_command(Stop(session_id=0), 2010)  # any frame counts, answered or not
    h.collect()
    h.advance_to(5000)
    times = [t for t, _ in h.sent]
    gaps = [b - a for a, b in zip([0, *times], times, strict=False)]
    assert max(gaps) <= 250
    assert any(isinstance(f.message, Heartbeat) for _, f in h.sent)


def test_link_lost_after_300ms_without_status_and_restored_on_next() -> None:
    h = Harness()
    h.open_and_identify()
    h.advance_to(100)
    h.device_says(status(1000))
    h.advance_to(200)
    h.device_says(status(1100))
    h.advance_to(499)
    assert h.of(LinkLost) == []
    h.advance_to(600)
    [lost] = h.of(LinkLost)
    assert isinstance(lost, LinkLost)
    assert (lost.at_ms, lost.last_status_ms) == (500, 200)
    assert not h.link.link_up
    h.advance_to(900)
    h.device_says(status(1800))
    assert [e.at_ms for e in h.events if isinstance(e, LinkRestored)] == [100, 900]
    assert h.link.link_up


def test_ack_end_for_each_session_end_repeat_reported_once() -> None:
    h = Harness()
    h.open_and_identify()
    end = SessionEnd(
        session_id=7, delivered_ul=500, duration_ms=90_000, reason=StopReason.TARGET_REACHED
    )
    for repeat in range(3):
        h.advance_to(h.now_ms + 200)
        h.device_says(end, seq=42)
        acks = [f for _, f in h.sent if isinstance(f.message, AckEnd)]
        assert len(acks) == repeat + 1
        assert acks[-1].message == AckEnd(end_seq=42)
    ack_seqs = [f.seq for _, f in h.sent if isinstance(f.message, AckEnd)]
    assert len(set(ack_seqs)) == 3  # each ACK_END is a new frame with its own seq
    assert len(h.of(SessionEndReceived)) == 1
    h.device_says(
        SessionEnd(session_id=8, delivered_ul=1, duration_ms=1, reason=StopReason.HOST_STOP), seq=43
    )
    assert len(h.of(SessionEndReceived)) == 2


def test_reboot_detected_when_uptime_drops_but_not_on_wrap() -> None:
    h = Harness()
    h.open_and_identify()
    h.device_says(status(60_000))
    h.device_says(status(60_100))
    h.device_says(status(40))
    [rebooted] = h.of(DeviceRebooted)
    assert isinstance(rebooted, DeviceRebooted)
    assert (rebooted.previous_uptime_ms, rebooted.uptime_ms) == (60_100, 40)
    h.device_says(status(2**32 - 30))
    h.device_says(status(70))  # 49.7-day counter wrap
    assert len(h.of(DeviceRebooted)) == 1


def test_swap_detected_after_rehandshake() -> None:
    h = Harness()
    h.open_and_identify("MN1-AAAA")
    h.device_says(status(10_000))
    h.link.connection_lost(h.now_ms, reason="unplugged")
    h.collect()
    assert h.link.phase is LinkPhase.PORT_CLOSED
    assert len(h.of(PortClosed)) == 1
    assert len(h.of(LinkLost)) == 1
    h.open_and_identify("MN1-AAAA")
    assert h.of(DeviceSwapped) == []
    h.link.connection_lost(h.now_ms, reason="unplugged")
    h.open_and_identify("MN1-BBBB")
    [swapped] = h.of(DeviceSwapped)
    assert isinstance(swapped, DeviceSwapped)
    assert (swapped.previous.serial, swapped.current.serial) == ("MN1-AAAA", "MN1-BBBB")
    h.device_says(status(5))  # a new head's small uptime is not a reboot
    assert h.of(DeviceRebooted) == []


def test_port_loss_fails_outstanding_commands_at_once() -> None:
    h = Harness()
    h.open_and_identify()
    seq = h.link.send_command(START, h.now_ms)
    h.link.connection_lost(h.now_ms + 5, reason="EIO")
    h.collect()
    [failed] = h.of(CommandFailed)
    assert isinstance(failed, CommandFailed)
    assert failed.seq == seq
    assert "port closed: EIO" in failed.reason
    assert h.link.next_deadline_ms() is None  # nothing to do until the port reopens


def test_seq_wraps_255_to_0() -> None:
    h = Harness(HostLink(first_seq=253))
    h.link.connection_made(0)  # HELLO takes 253
    h.collect()
    h.device_says(ident(ack_seq=253))  # QUERY_CAPS (addendum 1.1) takes 254
    a = h.link.send_command(Stop(session_id=0), 0)
    b = h.link.send_command(Stop(session_id=0), 0)
    assert (a, b) == (255, 0)
    h.collect()
    assert [f.seq for _, f in h.sent] == [253, 254, 255, 0]


def test_byte_at_a_time_delivery() -> None:
    h = Harness()
    h.link.connection_made(0)
    h.collect()
    wire = b"\x00\x00" + encode_frame(ident(ack_seq=0), seq=0) + encode_frame(status(123), seq=1)
    for index in range(len(wire)):
        h.link.receive_data(wire[index : index + 1], 0)
    h.collect()
    assert h.link.phase is LinkPhase.IDENTIFIED
    [received] = h.of(StatusReceived)
    assert isinstance(received, StatusReceived)
    assert received.status.uptime_ms == 123


def test_other_protocol_version_refused_with_reason() -> None:
    h = Harness()
    h.link.connection_made(0)
    h.collect()
    payload = bytearray(encode_payload(ident(ack_seq=0), seq=0))
    payload[0] = 2  # a version-2 device; CRC recomputed so only the version is wrong
    body = bytes(payload[:-2])
    wire = cobs_encode(body + crc16(body).to_bytes(2, "little")) + b"\x00"
    for t in (0, 50, 100):
        h.advance_to(t)
        h.link.receive_data(wire, t)
    h.advance_to(400)
    assert h.link.phase is LinkPhase.HANDSHAKING
    [failed] = h.of(HandshakeFailed)
    assert isinstance(failed, HandshakeFailed)
    assert failed.version_errors == 3
    assert "protocol version" in failed.reason
    h.advance_to(1300)  # a new HELLO with a new seq after handshake_retry_ms
    hellos = [(t, f.seq) for t, f in h.sent if isinstance(f.message, Hello)]
    assert hellos[-1][0] == 1300
    assert hellos[-1][1] != hellos[0][1]


def test_heartbeat_interval_above_icd_limit_rejected() -> None:
    with pytest.raises(ValueError, match="250"):
        HostLink(heartbeat_interval_ms=300)
