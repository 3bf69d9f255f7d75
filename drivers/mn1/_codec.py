"""Frame encoding and decoding (ICD §2), sans-IO.

A frame on the wire is `COBS(header | body | crc16_le) 0x00`. Decoding checks,
in the ICD's order, and raises the first failing check as a `FrameError`
subclass, so a caller can count each kind of bad frame:

1. COBS decoding                         → `CobsError`
2. payload length 5..64 bytes            → `PayloadLengthError`
3. CRC-16/CCITT-FALSE, little-endian     → `CrcError`
4. protocol version 1                    → `VersionError`
5. known message type                    → `UnknownTypeError`
6. body length for that type             → `BodyLengthError`
7. enumerated field values / ASCII serial → `FieldValueError` (not in the ICD's
   list; an unknown device state cannot be acted on safely, so it is dropped too)
"""

from __future__ import annotations

import binascii
import dataclasses
import struct
from collections.abc import Callable
from typing import Any, Final

from ._cobs import CobsDecodeError, cobs_decode, cobs_encode
from ._messages import (
    PROTOCOL_VERSION,
    Ack,
    AckEnd,
    Breath,
    CapBits,
    Caps,
    ClearFaults,
    DeviceState,
    FaultBits,
    Frame,
    Heartbeat,
    Hello,
    Ident,
    Message,
    MsgType,
    Nak,
    NakReason,
    QueryCaps,
    SessionEnd,
    Start,
    StartGated,
    Status,
    Stop,
    StopReason,
)

__all__ = [
    "MAX_ENCODED_LEN",
    "MAX_PAYLOAD_LEN",
    "MIN_PAYLOAD_LEN",
    "BodyLengthError",
    "CobsError",
    "CrcError",
    "FieldValueError",
    "FrameError",
    "PayloadLengthError",
    "UnknownTypeError",
    "VersionError",
    "crc16",
    "decode_frame",
    "decode_payload",
    "encode_frame",
    "encode_payload",
]

MIN_PAYLOAD_LEN: Final = 5
MAX_PAYLOAD_LEN: Final = 64
#: COBS adds one byte per 254 (and at least one): a valid frame is at most this long.
MAX_ENCODED_LEN: Final = MAX_PAYLOAD_LEN + 1

_HEADER = struct.Struct("<BBB")
_CRC = struct.Struct("<H")
_SERIAL_LEN: Final = 12


class FrameError(ValueError):
    """A frame the receiver must drop. `kind` names the counter it belongs to."""

    kind: str = "frame"


class CobsError(FrameError):
    """The bytes between two delimiters are not valid COBS."""

    kind = "cobs"


class PayloadLengthError(FrameError):
    """Decoded payload shorter than 5 or longer than 64 bytes (or runaway bytes)."""

    kind = "length"


class CrcError(FrameError):
    """CRC-16/CCITT-FALSE mismatch."""

    kind = "crc"


class VersionError(FrameError):
    """Protocol version other than 1."""

    kind = "version"


class UnknownTypeError(FrameError):
    """Message type not in the ICD."""

    kind = "type"


class BodyLengthError(FrameError):
    """Body length wrong for the message type."""

    kind = "body_length"


class FieldValueError(FrameError):
    """A field holds a value the ICD does not define (unknown state, non-ASCII serial)."""

    kind = "value"


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF): `binascii.crc_hqx` is exactly this."""
    return binascii.crc_hqx(data, 0xFFFF)


# --- per-type body layouts -----------------------------------------------------

_BODY: Final[dict[MsgType, struct.Struct]] = {
    MsgType.HELLO: struct.Struct("<"),
    MsgType.HEARTBEAT: struct.Struct("<"),
    MsgType.START: struct.Struct("<IIHB"),
    MsgType.STOP: struct.Struct("<I"),
    MsgType.CLEAR_FAULTS: struct.Struct("<"),
    MsgType.ACK_END: struct.Struct("<B"),
    MsgType.IDENT: struct.Struct(f"<B{_SERIAL_LEN}sBBBBHH"),
    MsgType.ACK: struct.Struct("<B"),
    MsgType.NAK: struct.Struct("<BB"),
    MsgType.STATUS: struct.Struct("<IBIIHHhHHHBB"),
    MsgType.SESSION_END: struct.Struct("<IIIB"),
    # addendum 1.1
    MsgType.QUERY_CAPS: struct.Struct("<"),
    MsgType.START_GATED: struct.Struct("<IIHBBBB"),
    MsgType.CAPS: struct.Struct("<BBHHH"),
    MsgType.BREATH: struct.Struct("<IHHHHHHH"),
}


def _serial_bytes(serial: str) -> bytes:
    raw = serial.encode("ascii")
    if len(raw) > _SERIAL_LEN:
        raise ValueError(f"IDENT serial {serial!r} is longer than {_SERIAL_LEN} ASCII characters")
    return raw


_CLASS: Final[dict[MsgType, type[Message]]] = {
    cls.TYPE: cls
    for cls in (
        Hello, Heartbeat, Start, Stop, ClearFaults, AckEnd, Ident, Ack, Nak, Status, SessionEnd,
        QueryCaps, StartGated, Caps, Breath,
    )
}  # fmt: skip


def _body_values(message: Message) -> tuple[Any, ...]:
    # Dataclass fields are declared in wire order, so the body is the field tuple.
    values = tuple(getattr(message, field.name) for field in dataclasses.fields(message))
    if isinstance(message, Ident):
        return (values[0], _serial_bytes(message.serial), *values[2:])
    return values


def encode_payload(message: Message, *, seq: int) -> bytes:
    """`header | body | crc` for `message` (before COBS).

    Values must fit their wire types (ValueError otherwise); ICD *ranges* are not
    checked here, so a test can send an out-of-range START and see the NAK.
    """
    if not 0 <= seq <= 0xFF:
        raise ValueError(f"seq {seq} does not fit in u8 (0..255)")
    try:
        body = _BODY[message.TYPE].pack(*_body_values(message))
    except struct.error as exc:
        raise ValueError(f"{type(message).__name__} field out of its wire range: {exc}") from exc
    header_body = _HEADER.pack(PROTOCOL_VERSION, message.TYPE, seq) + body
    return header_body + _CRC.pack(crc16(header_body))


def encode_frame(message: Message, *, seq: int) -> bytes:
    """The complete wire frame, COBS-encoded with its trailing 0x00 delimiter."""
    return cobs_encode(encode_payload(message, seq=seq)) + b"\x00"


def _enum(enum_type: Callable[[int], Any], value: int, field: str) -> Any:
    try:
        return enum_type(value)
    except ValueError as exc:
        raise FieldValueError(f"{field} value {value} is not defined by the ICD") from exc


def _decode_serial(raw: bytes) -> str:
    text = raw.rstrip(b"\x00")
    if b"\x00" in text:
        raise FieldValueError(f"IDENT serial {raw!r} has a NUL before its end")
    try:
        return text.decode("ascii")
    except UnicodeDecodeError as exc:
        raise FieldValueError(f"IDENT serial {raw!r} is not ASCII") from exc


def _session_end_reason(value: int) -> StopReason:
    if value == StopReason.NONE:
        raise FieldValueError("SESSION_END reason 0 is not defined by the ICD")
    reason: StopReason = _enum(StopReason, value, "SESSION_END reason")
    return reason


# Decoders for enumerated or text fields, by message type and field name.
_FIELD_DECODERS: Final[dict[tuple[MsgType, str], Callable[[Any], Any]]] = {
    (MsgType.IDENT, "serial"): _decode_serial,
    (MsgType.NAK, "reason"): lambda v: _enum(NakReason, v, "NAK reason"),
    (MsgType.STATUS, "state"): lambda v: _enum(DeviceState, v, "STATUS state"),
    (MsgType.STATUS, "faults"): FaultBits,
    (MsgType.STATUS, "last_stop"): lambda v: _enum(StopReason, v, "STATUS last_stop"),
    (MsgType.SESSION_END, "reason"): _session_end_reason,
    (MsgType.CAPS, "caps"): CapBits,
}


def _build(msg_type: MsgType, values: tuple[Any, ...]) -> Message:
    cls = _CLASS[msg_type]
    kwargs = {}
    for field, value in zip(dataclasses.fields(cls), values, strict=True):
        decoder = _FIELD_DECODERS.get((msg_type, field.name))
        kwargs[field.name] = decoder(value) if decoder is not None else value
    return cls(**kwargs)


def decode_payload(payload: bytes) -> Frame:
    """Check and decode `header | body | crc` (already COBS-decoded)."""
    if not MIN_PAYLOAD_LEN <= len(payload) <= MAX_PAYLOAD_LEN:
        raise PayloadLengthError(
            f"payload of {len(payload)} bytes; the ICD allows {MIN_PAYLOAD_LEN}..{MAX_PAYLOAD_LEN}"
        )
    header_body, (crc,) = payload[:-2], _CRC.unpack(payload[-2:])
    expected = crc16(header_body)
    if crc != expected:
        raise CrcError(f"CRC 0x{crc:04x} on the wire, 0x{expected:04x} computed")
    version, type_code, seq = _HEADER.unpack(header_body[:3])
    if version != PROTOCOL_VERSION:
        raise VersionError(f"protocol version {version}; this driver speaks {PROTOCOL_VERSION}")
    try:
        msg_type = MsgType(type_code)
    except ValueError as exc:
        raise UnknownTypeError(f"unknown message type 0x{type_code:02x}") from exc
    body = header_body[3:]
    layout = _BODY[msg_type]
    if len(body) != layout.size:
        raise BodyLengthError(
            f"{msg_type.name} body of {len(body)} bytes; the ICD says {layout.size}"
        )
    return Frame(seq, _build(msg_type, layout.unpack(body)))


def decode_frame(encoded: bytes) -> Frame:
    """Decode one frame's COBS bytes (without the 0x00 delimiter)."""
    try:
        payload = cobs_decode(encoded)
    except CobsDecodeError as exc:
        raise CobsError(str(exc)) from exc
    return decode_payload(payload)
