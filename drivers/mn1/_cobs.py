"""Consistent Overhead Byte Stuffing (Cheshire & Baker, 1999), standard 254-byte blocks.

Our own ~40 lines instead of the `cobs` package: that package ships no wheels for
every Python/arch we deploy on (it compiles a C extension, so a Raspberry Pi or a
slim container would need a compiler), and these functions are small enough to
read in a review. The `cobs` package stays a test-only oracle (tests/mn1/test_properties.py).
"""

from __future__ import annotations

__all__ = ["CobsDecodeError", "cobs_decode", "cobs_encode"]


class CobsDecodeError(ValueError):
    """The bytes are not a valid COBS encoding."""


def cobs_encode(data: bytes) -> bytes:
    """Encode `data` so that the result contains no 0x00 byte (delimiter not added)."""
    out = bytearray()
    code_index = 0
    out.append(0)  # placeholder for the current block's code byte
    code = 1
    block_just_filled = False  # a 254-byte block closed and nothing has followed yet
    for byte in data:
        block_just_filled = False
        if byte == 0:
            out[code_index] = code
            code_index = len(out)
            out.append(0)
            code = 1
            continue
        out.append(byte)
        code += 1
        if code == 0xFF:
            out[code_index] = code
            code_index = len(out)
            out.append(0)
            code = 1
            block_just_filled = True
    if block_just_filled:
        out.pop()  # data ended exactly on a full block: no empty block after it
    else:
        out[code_index] = code
    return bytes(out)


def cobs_decode(encoded: bytes) -> bytes:
    """Decode one COBS block sequence (without its 0x00 delimiter).

    Raises CobsDecodeError when a code byte is 0x00 or points past the end.
    """
    out = bytearray()
    index = 0
    length = len(encoded)
    if length == 0:
        raise CobsDecodeError("empty COBS input")
    while index < length:
        code = encoded[index]
        if code == 0:
            raise CobsDecodeError(f"zero code byte at offset {index}")
        end = index + code
        if end > length:
            raise CobsDecodeError(
                f"code byte 0x{code:02x} at offset {index} points past the frame end ({length})"
            )
        block = encoded[index + 1 : end]
        if 0 in block:
            raise CobsDecodeError(f"0x00 inside a COBS block at offset {index}")
        out += block
        index = end
        if code != 0xFF and index < length:
            out.append(0)
    return bytes(out)
