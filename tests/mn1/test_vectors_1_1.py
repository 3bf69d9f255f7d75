"""Every vector in mn1-vectors-1.1.json (addendum 1.1; copied from shared/spec)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from drivers.mn1 import (
    BodyLengthError,
    CapBits,
    Caps,
    CrcError,
    DeviceState,
    FrameError,
    MsgType,
    NakReason,
    StopReason,
    decode_frame,
)

from ._vector_checks import (
    check_decodes_to_fields,
    check_encodes_exactly,
    check_rejected_as,
)

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parent / "mn1-vectors-1.1.json").read_text(encoding="utf-8")
)

EXPECTED_ERROR: dict[str, type[FrameError]] = {
    "START_GATED body one byte short (apnoea_s missing)": BodyLengthError,
    "BREATH with a bad crc": CrcError,
}


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


def test_new_codes_decode_to_their_names() -> None:
    by_name = {v["name"]: v for v in VECTORS["valid"]}
    status = decode_frame(bytes.fromhex(by_name["STATUS seq 37"]["wire_hex"])[:-1]).message
    end = decode_frame(bytes.fromhex(by_name["SESSION_END seq 38"]["wire_hex"])[:-1]).message
    nak = decode_frame(bytes.fromhex(by_name["NAK seq 39"]["wire_hex"])[:-1]).message
    caps = decode_frame(bytes.fromhex(by_name["CAPS seq 32"]["wire_hex"])[:-1]).message
    assert getattr(status, "state", None) is DeviceState.WAITING
    assert getattr(end, "reason", None) is StopReason.NO_BREATHING
    assert getattr(nak, "reason", None) is NakReason.UNSUPPORTED
    assert isinstance(caps, Caps)
    assert caps.caps == CapBits.BREATH_SENSING | CapBits.BREATH_GATED
    assert caps.breath_gated
    assert caps.breath_sensing


def test_sizes_match_addendum_section_5() -> None:
    # START_GATED 19 payload bytes, CAPS 13, BREATH 23, QUERY_CAPS 5 (addendum 1.1 §5).
    sizes = {v["type"]: len(bytes.fromhex(v["payload_hex"])) + 2 for v in VECTORS["valid"]}
    assert sizes["START_GATED"] == 19
    assert sizes["CAPS"] == 13
    assert sizes["BREATH"] == 23
    assert sizes["QUERY_CAPS"] == 5
    assert int(MsgType.QUERY_CAPS) == 0x07
