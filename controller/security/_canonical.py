"""The one canonical JSON encoding used for every signature and every audit hash.

canonical(x) = UTF-8 bytes of JSON with object keys sorted by Unicode code point,
no insignificant whitespace (separators "," and ":"), non-ASCII characters written
as themselves (not \\u escapes), NaN and Infinity forbidden. Command envelopes
additionally contain no floating-point numbers at all, so two correct encoders in
any language produce the same bytes.
"""

from __future__ import annotations

import json

__all__ = ["COMMAND_DOMAIN", "PRESCRIPTION_DOMAIN", "canonical_json"]

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
