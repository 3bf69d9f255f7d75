"""The per-vector checks both ICD vector files run (version 1 and addendum 1.1)."""

from __future__ import annotations

import dataclasses
from typing import Any

from drivers.mn1 import Deframer, Frame, FrameError, decode_frame, encode_frame, encode_payload


def fields_of(frame: Frame) -> dict[str, Any]:
    """The decoded message's fields by name, as the vector files list them."""
    return {f.name: getattr(frame.message, f.name) for f in dataclasses.fields(frame.message)}


def check_encodes_exactly(vector: dict[str, Any]) -> None:
    """A valid vector's message encodes to its wire bytes, payload and CRC."""
    frame = decode_frame(bytes.fromhex(vector["wire_hex"])[:-1])
    assert encode_frame(frame.message, seq=vector["seq"]).hex() == vector["wire_hex"]
    payload = encode_payload(frame.message, seq=vector["seq"])
    assert payload.hex()[:-4] == vector["payload_hex"]
    assert int.from_bytes(payload[-2:], "little") == vector["crc"]


def check_decodes_to_fields(vector: dict[str, Any]) -> None:
    """A valid vector's wire bytes decode to one frame with its seq, type and fields."""
    events = Deframer().feed(bytes.fromhex(vector["wire_hex"]))
    assert len(events) == 1
    frame = events[0]
    assert isinstance(frame, Frame)
    assert frame.seq == vector["seq"]
    assert int(frame.message.TYPE) == vector["type_code"]
    assert frame.message.TYPE.name == vector["type"]
    assert fields_of(frame) == vector["fields"]


def check_rejected_as(vector: dict[str, str], expected: type[FrameError]) -> None:
    """An invalid vector gives one error of the expected class, counted, and no frame."""
    deframer = Deframer()
    events = deframer.feed(bytes.fromhex(vector["wire_hex"]))
    assert len(events) == 1
    assert type(events[0]) is expected
    assert deframer.counters[expected.kind] == 1
    assert deframer.frames_ok == 0
