"""Every vector in mn1-vectors.json (copied from shared/spec; computed independently)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from drivers.mn1 import (
    BodyLengthError,
    CobsError,
    CrcError,
    Deframer,
    Frame,
    FrameError,
    PayloadLengthError,
    UnknownTypeError,
    VersionError,
    cobs_decode,
    cobs_encode,
    crc16,
)

from ._vector_checks import (
    check_decodes_to_fields,
    check_encodes_exactly,
    check_rejected_as,
)

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parent / "mn1-vectors.json").read_text(encoding="utf-8")
)

# The class of error each invalid vector must produce (ICD §2 check order).
EXPECTED_ERROR: dict[str, type[FrameError]] = {
    "bad crc (last crc byte flipped)": CrcError,
    "crc appended big-endian": CrcError,
    "protocol version 2": VersionError,
    "unknown type 0x7f": UnknownTypeError,
    "STOP body one byte short": BodyLengthError,
    "payload shorter than 5 bytes": PayloadLengthError,
    "payload of 65 bytes": PayloadLengthError,
    "COBS code byte points past the frame": CobsError,
    "truncated frame (last 3 bytes lost)": CrcError,
}
STREAM_ERRORS: dict[str, type[FrameError]] = {"noise frame": CobsError, "bad crc": CrcError}


def test_crc_check_value() -> None:
    check = VECTORS["crc_check"]
    assert crc16(check["input_ascii"].encode("ascii")) == check["crc"]


@pytest.mark.parametrize("vector", VECTORS["cobs"], ids=lambda v: v["decoded_hex"][:16])
def test_cobs_vectors(vector: dict[str, str]) -> None:
    decoded = bytes.fromhex(vector["decoded_hex"])
    encoded = bytes.fromhex(vector["encoded_hex"])
    assert cobs_encode(decoded) == encoded
    assert cobs_decode(encoded) == decoded


@pytest.mark.parametrize("vector", VECTORS["valid"], ids=lambda v: v["name"])
def test_valid_vector_encodes_exactly(vector: dict[str, Any]) -> None:
    check_encodes_exactly(vector)


@pytest.mark.parametrize("vector", VECTORS["valid"], ids=lambda v: v["name"])
def test_valid_vector_decodes_to_fields(vector: dict[str, Any]) -> None:
    check_decodes_to_fields(vector)


def test_every_invalid_vector_has_an_expected_class() -> None:
    assert {v["name"] for v in VECTORS["invalid"]} == set(EXPECTED_ERROR)


@pytest.mark.parametrize("vector", VECTORS["invalid"], ids=lambda v: v["name"])
def test_invalid_vector_rejected_with_right_class(vector: dict[str, str]) -> None:
    check_rejected_as(vector, EXPECTED_ERROR[vector["name"]])


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 1000])
def test_stream_vector_yields_listed_sequence(chunk: int) -> None:
    wire = bytes.fromhex(VECTORS["stream"]["wire_hex"])
    deframer = Deframer()
    events: list[Frame | FrameError] = []
    for i in range(0, len(wire), chunk):
        events += deframer.feed(wire[i : i + chunk])
    expected = VECTORS["stream"]["expect"]
    assert len(events) == len(expected)
    for event, want in zip(events, expected, strict=True):
        if "error" in want:
            assert type(event) is STREAM_ERRORS[want["error"]]
        else:
            assert isinstance(event, Frame)
            assert event.message.TYPE.name == want["type"]
            assert event.seq == want["seq"]
