"""The one canonical JSON encoding used for every signature and every audit hash.

canonical(x) = UTF-8 bytes of JSON with object keys sorted by Unicode code point,
no insignificant whitespace (separators "," and ":"), non-ASCII characters written
as themselves (not \\u escapes), NaN and Infinity forbidden. Command envelopes
additionally contain no floating-point numbers at all, so two correct encoders in
any language produce the same bytes.
"""

from __future__ import annotations

import base64
import binascii
import json

__all__ = ["COMMAND_DOMAIN", "PRESCRIPTION_DOMAIN", "canonical_json", "decode_signature_b64"]

# Domain-separation prefixes: a signature made for one purpose can never be
# presented as valid for the other (a pharmacy's prescription signature is not a
# command, and a command signature is not a prescription).
COMMAND_DOMAIN = b"nebuliser-command-v1\x00"
PRESCRIPTION_DOMAIN = b"nebuliser-prescription-v1\x00"


def canonical_json(value: object) -> bytes:
    """Encode `value` canonically (see module docstring).

    Raises ValueError for NaN/Infinity and UnicodeEncodeError for lone surrogates.
    """
    text = json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return text.encode("utf-8")


def decode_signature_b64(text: str) -> bytes:
    """Strict standard base64 (with padding) that has exactly one spelling per value.

    A lenient decoder ignores the unused low bits of the last character before
    ``=``, so several strings decode to the same signature; those are refused
    (binascii.Error) so that one signed envelope has exactly one accepted form.
    """
    raw = base64.b64decode(text, validate=True)
    if base64.b64encode(raw).decode("ascii") != text:
        raise binascii.Error("non-canonical base64 (unused bits set or wrong padding)")
    return raw
