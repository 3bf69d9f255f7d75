"""The local control interface: JSON lines over a Unix socket (no network port).

Only processes that can open the socket file (its directory and mode, default
0660) can talk to the controller, so it is reachable only on the Pi itself. Every
request carries the caller's pid/uid/gid (SO_PEERCRED); starting and confirming a
dose need the bedside role (`ControlAccess`).
"""

from ._access import (
    BEDSIDE_OPS,
    ControlAccess,
    PeerCredentials,
    peer_credentials,
    resolve_group,
    socket_mode_problem,
)
from ._client import ControlClient, ControlUnavailableError
from ._protocol import MAX_LINE_BYTES, ControlError, ControlRequest
from ._server import ControlServer, Handler, Reply

__all__ = [
    "BEDSIDE_OPS",
    "MAX_LINE_BYTES",
    "ControlAccess",
    "ControlClient",
    "ControlError",
    "ControlRequest",
    "ControlServer",
    "ControlUnavailableError",
    "Handler",
    "PeerCredentials",
    "Reply",
    "peer_credentials",
    "resolve_group",
    "socket_mode_problem",
]
