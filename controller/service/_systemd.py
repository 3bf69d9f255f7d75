"""systemd's notify protocol (`Type=notify`, `WatchdogSec=`), spoken over its socket.

systemd passes `NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace) and,
when the unit has `WatchdogSec=`, `WATCHDOG_USEC` (and `WATCHDOG_PID`). We send
newline-separated `KEY=value` datagrams: `READY=1` once the control socket serves,
`WATCHDOG=1` at half the watchdog interval, `STOPPING=1` when shutdown begins.

The pings are sent by a coroutine on the service's event loop, so a loop that hangs
(a blocking call, a busy task) stops the pings and systemd restarts the process. A
restarted controller never resumes a session (safety rule 4).

No libsystemd binding is needed: the protocol is one datagram per message.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Mapping
from typing import TYPE_CHECKING

from controller.logging import get_logger

if TYPE_CHECKING:  # a type only: no import at run time
    from ._context import ServiceContext

__all__ = ["SystemdNotifier", "systemd_notify_task", "watchdog_interval_s"]

_log = get_logger(__name__)

_US_PER_S = 1_000_000
_STOPPING_STATUS = "STATUS=stopping: any running session is stopped and recorded first"


class SystemdNotifier:
    """Sends notify messages to systemd's socket; does nothing without one."""

    def __init__(self, *, address: str | None) -> None:
        self._address: str | None = None
        if address:
            # "@name" is Linux's abstract namespace: a leading NUL byte on the wire.
            self._address = "\0" + address[1:] if address.startswith("@") else address

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> SystemdNotifier:
        """A notifier for `$NOTIFY_SOCKET` (disabled when it is unset or empty)."""
        env = os.environ if environ is None else environ
        return cls(address=env.get("NOTIFY_SOCKET") or None)

    @property
    def enabled(self) -> bool:
        """True when systemd (or a test) is listening."""
        return self._address is not None

    def notify(self, *assignments: str) -> bool:
        """Send `KEY=value` lines in one datagram; True when it was handed to the socket.

        Never raises and never blocks: a full or vanished socket is logged, because a
        notify failure must not stop the controller (systemd acts on the missing ping).
        """
        if self._address is None:
            return False
        message = "\n".join(assignments).encode("utf-8")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            try:
                sock.sendto(message, self._address)
            except OSError as exc:
                _log.warning("systemd notify failed", error=str(exc), message=assignments[0])
                return False
        return True


def watchdog_interval_s(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between watchdog pings (half of `WATCHDOG_USEC`), or None when not asked.

    `WATCHDOG_PID`, when set, must be this process: a child process inherits the
    environment but is not the one systemd watches.
    """
    env = os.environ if environ is None else environ
    usec_text = env.get("WATCHDOG_USEC", "")
    pid_text = env.get("WATCHDOG_PID", "")
    if not usec_text.isdigit() or int(usec_text) == 0:
        return None
    if pid_text and (not pid_text.isdigit() or int(pid_text) != os.getpid()):
        return None
    return int(usec_text) / _US_PER_S / 2


async def systemd_notify_task(
    ctx: ServiceContext, *, environ: Mapping[str, str] | None = None
) -> None:
    """READY=1 now, WATCHDOG=1 every half interval, STOPPING=1 when a stop is requested.

    Runs in the service's TaskGroup after the control socket is serving; returns at
    once when there is no `NOTIFY_SOCKET` (started by hand, in a container, in tests).
    """
    notifier = SystemdNotifier.from_environment(environ)
    if not notifier.enabled:
        return
    interval_s = watchdog_interval_s(environ)
    notifier.notify(
        "READY=1",
        f"MAINPID={os.getpid()}",
        f"STATUS=serving; device {ctx.config.device.port}, control {ctx.config.control_socket}",
    )
    _log.info("systemd notified: ready", watchdog_interval_s=interval_s)
    stopping_sent = False
    try:
        while True:
            if interval_s is not None:
                notifier.notify("WATCHDOG=1")
            if stopping_sent:
                if interval_s is None:
                    return
                # Keep pinging while the running session is stopped and recorded.
                await asyncio.sleep(interval_s)
                continue
            try:
                async with asyncio.timeout(interval_s):
                    await ctx.stop_requested.wait()
            except TimeoutError:
                continue
            notifier.notify("STOPPING=1", _STOPPING_STATUS)
            stopping_sent = True
    finally:
        # The service may cancel this task before it sees the stop request.
        if not stopping_sent:
            notifier.notify("STOPPING=1", _STOPPING_STATUS)
