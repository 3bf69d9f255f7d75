"""Wire format of the control socket: one JSON object per line, UTF-8.

Request: `{"op": "session.start", ...arguments}`. The server answers with one or
more reply lines; the last one has `"final": true`. A long operation (a start
waiting for the bedside CONFIRM) streams progress lines first and reads further
request lines (`{"op": "confirm"}`) from the same connection.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from ._access import PeerCredentials

__all__ = ["MAX_LINE_BYTES", "ControlError", "ControlRequest", "decode_line", "encode_line"]

#: Longest accepted line; a longer one is refused and the connection closed.
MAX_LINE_BYTES: Final = 16 * 1024


class ControlError(ValueError):
    """A request the controller cannot parse; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class ControlRequest:
    """A parsed request line."""

    op: str
    args: dict[str, Any]
    #: The connecting process (SO_PEERCRED), set by the server on every request.
    peer: PeerCredentials | None = None


def decode_line(line: bytes) -> ControlRequest:
    """Parse one request line or raise ControlError naming the problem."""
    if len(line) > MAX_LINE_BYTES:
        raise ControlError(f"request longer than {MAX_LINE_BYTES} bytes")
    try:
        value = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ControlError(f"request is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ControlError("request must be a JSON object with an 'op' key")
    op = value.pop("op", None)
    if not isinstance(op, str) or not op:
        raise ControlError('request has no \'op\' string (e.g. {"op": "session.status"})')
    return ControlRequest(op=op, args=value)


def encode_line(message: dict[str, Any]) -> bytes:
    """One reply line."""
    return json.dumps(message, separators=(",", ":"), default=str).encode("utf-8") + b"\n"
