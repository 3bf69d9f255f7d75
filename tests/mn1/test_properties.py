"""Property tests of the MN-1 codec: round trips, garbage in any chunking, COBS oracle."""

from __future__ import annotations

import itertools
from typing import cast

from cobs import cobs as cobs_oracle
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.mn1 import (
    MAX_ENCODED_LEN,
    Ack,
    AckEnd,
    Breath,
    CapBits,
    Caps,
    ClearFaults,
    CobsDecodeError,
    Deframer,
    DeviceState,
    FaultBits,
    Frame,
    FrameError,
    Heartbeat,
    Hello,
    Ident,
    Message,
    Nak,
    NakReason,
    QueryCaps,
    SessionEnd,
    Start,
    StartGated,
    Status,
    Stop,
    StopReason,
    cobs_decode,
    cobs_encode,
    decode_frame,
    encode_frame,
)

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)
i16 = st.integers(-0x8000, 0x7FFF)
# IDENT serial: up to 12 ASCII characters; NUL is the padding, so not inside the text.
serials = st.text(alphabet=st.characters(min_codepoint=1, max_codepoint=127), max_size=12)

messages: st.SearchStrategy[Message] = st.one_of(
    st.just(Hello()),
    st.just(Heartbeat()),
    st.just(ClearFaults()),
    st.builds(Start, session_id=u32, target_ul=u32, max_duration_s=u16, output_pct=u8),
    st.builds(Stop, session_id=u32),
    st.builds(AckEnd, end_seq=u8),
    st.builds(
        Ident,
        ack_seq=u8,
        serial=serials,
        fw_major=u8,
        fw_minor=u8,
        fw_patch=u8,
        hw_rev=u8,
        nominal_ul_min=u16,
        reservoir_capacity_ul=u16,
    ),
    st.builds(Ack, ack_seq=u8),
    st.builds(Nak, ack_seq=u8, reason=st.sampled_from(NakReason)),
    st.builds(
        Status,
        uptime_ms=u32,
        state=st.sampled_from(DeviceState),
        session_id=u32,
        delivered_ul=u32,
        flow_ul_min=u16,
        reservoir_ul=u16,
        mesh_temp_cC=i16,
        drive_ma=u16,
        faults=u16.map(FaultBits),
        crc_errors=u16,
        last_stop=st.sampled_from(StopReason),
        confirm_count=u8,
    ),
    st.builds(
        SessionEnd,
        session_id=u32,
        delivered_ul=u32,
        duration_ms=u32,
        reason=st.sampled_from([r for r in StopReason if r is not StopReason.NONE]),
    ),
    # addendum 1.1
    st.just(QueryCaps()),
    st.builds(
        StartGated,
        session_id=u32,
        target_ul=u32,
        max_duration_s=u16,
        output_pct=u8,
        gate_pct=u8,
        lead_breaths=u8,
        apnoea_s=u8,
    ),
    st.builds(
        Caps,
        ack_seq=u8,
        icd_minor=u8,
        caps=u16.map(CapBits),  # unknown bits are kept
        trigger_ml_s=u16,
        detect_latency_ms=u16,
    ),
    st.builds(
        Breath,
        session_id=u32,
        breath_no=u16,
        insp_ms=u16,
        exp_ms=u16,
        tidal_ml=u16,
        peak_flow_ml_s=u16,
        aerosol_insp_dul=u16,
        aerosol_exp_dul=u16,
    ),
)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    """Split `data` at the given offsets (any order, duplicates allowed)."""
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@given(message=messages, seq=u8)
def test_every_message_round_trips(message: Message, seq: int) -> None:
    wire = encode_frame(message, seq=seq)
    assert wire.endswith(b"\x00")
    assert b"\x00" not in wire[:-1]
    assert len(wire) - 1 <= MAX_ENCODED_LEN
    assert decode_frame(wire[:-1]) == Frame(seq, message)


@given(garbage=st.binary(max_size=600), cuts=st.lists(st.integers(0, 600), max_size=40))
@settings(max_examples=300)
def test_garbage_in_any_chunking_never_raises_and_stays_bounded(
    garbage: bytes, cuts: list[int]
) -> None:
    deframer = Deframer()
    for chunk in chunked(garbage, cuts):
        events = deframer.feed(chunk)  # an exception here fails the test
        assert all(isinstance(e, Frame | FrameError) for e in events)
        assert len(deframer._buffer) <= MAX_ENCODED_LEN


@given(
    garbage=st.binary(max_size=300),
    message=messages,
    seq=u8,
    cuts=st.lists(st.integers(0, 400), max_size=20),
)
@settings(max_examples=300)
def test_resynchronises_on_the_next_delimiter(
    garbage: bytes, message: Message, seq: int, cuts: list[int]
) -> None:
    deframer = Deframer()
    events: list[Frame | FrameError] = []
    wire = garbage + b"\x00" + encode_frame(message, seq=seq)
    for chunk in chunked(wire, cuts):
        events += deframer.feed(chunk)
    assert events[-1] == Frame(seq, message)


@given(data=st.binary(max_size=700))
def test_cobs_encode_matches_the_reference_package(data: bytes) -> None:
    encoded = cobs_encode(data)
    assert encoded == cast(bytes, cobs_oracle.encode(data))
    assert cobs_decode(encoded) == data


@given(encoded=st.binary(min_size=1, max_size=600))
@settings(max_examples=500)
def test_cobs_decode_agrees_with_the_reference_package(encoded: bytes) -> None:
    try:
        expected: bytes | None = cast(bytes, cobs_oracle.decode(encoded))
    except cobs_oracle.DecodeError:
        expected = None
    try:
        actual: bytes | None = cobs_decode(encoded)
    except CobsDecodeError:
        actual = None
    assert actual == expected


@given(
    data=st.binary(max_size=600),
    index=st.integers(0, 700),
    value=st.integers(1, 0xFF),
)
@settings(max_examples=500)
def test_cobs_decode_of_a_corrupted_code_agrees_with_the_reference(
    data: bytes, index: int, value: int
) -> None:
    # Near-valid input (one byte replaced, no 0x00 added) reaches the deep branches.
    corrupted = bytearray(cobs_encode(data))
    corrupted[index % len(corrupted)] = value
    try:
        expected: bytes | None = cast(bytes, cobs_oracle.decode(bytes(corrupted)))
    except cobs_oracle.DecodeError:
        expected = None
    try:
        actual: bytes | None = cobs_decode(bytes(corrupted))
    except CobsDecodeError:
        actual = None
    assert actual == expected
