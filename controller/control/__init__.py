"""The local control interface: JSON lines over a Unix socket (no network port).

Only processes that can open the socket file (its directory and mode, default
0660) can talk to the controller, so it is reachable only on the Pi itself.
"""

from ._client import ControlClient, ControlUnavailableError
from ._protocol import MAX_LINE_BYTES, ControlError, ControlRequest
from ._server import ControlServer, Handler, Reply

__all__ = [
    "MAX_LINE_BYTES",
    "ControlClient",
    "ControlError",
    "ControlRequest",
    "ControlServer",
    "ControlUnavailableError",
    "Handler",
    "Reply",
]
