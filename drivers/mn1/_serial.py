"""Asyncio transport for the MN-1 host link: a port, a reader, timers, reconnection.

Physical failure modes handled here (the sans-IO `HostLink` handles the protocol):

- the port is missing at start (head unplugged) → keep trying to open it, with
  backoff `reconnect_min_ms` → `reconnect_max_ms`;
- the port vanishes or errors while open (USB unplug: EIO, file gone; a pty whose
  other side closed: EIO) → `PortClosed` and `LinkLost` events, never an exception
  out of the link; then reopen with backoff and a new handshake;
- another program holds the port → `PortInUseError` from `__aenter__`, naming the
  port and the processes that have it open (read from /proc when we may);
- a slow consumer → the event queue is bounded; the oldest events are dropped and
  counted in `events_dropped` (never silently).

Backend: pyserial-asyncio-fast over pyserial (`serial_for_url`), chosen by
measurement (docs/decisions/0002-serial-backend.md). Its `transport.write` tries
`os.write` at once, so `send_stop_now` puts the STOP bytes in the kernel before
it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import Final, Self

import serial
import serial_asyncio_fast

from ._events import (
    CapabilitiesDiscovered,
    CapsDiscovery,
    Command,
    CommandAnswered,
    CommandFailed,
    CommandOutcome,
    Identified,
    LinkEvent,
    LinkNotReadyError,
    LinkPhase,
    NoCapabilities,
    PortClosed,
)
from ._link import HostLink
from ._messages import Caps, Ident, Stop

__all__ = ["PendingCommand", "PortInUseError", "SerialLink", "port_holders"]

_BAUDRATE: Final = 115200  # ICD §1 (ignored by CDC-ACM and ptys)


class PortInUseError(OSError):
    """Another process (or another SerialLink) already has the port open exclusively."""


def port_holders(path: str) -> list[str]:
    """Processes that have `path` open, as `pid (command)`, as far as /proc lets us see."""
    try:
        target = os.path.realpath(path)
    except OSError:
        return []
    holders: list[str] = []
    proc = Path("/proc")
    if not proc.is_dir():
        return holders
    for pid_dir in proc.iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            fds = list((pid_dir / "fd").iterdir())
        except OSError:
            continue  # not ours to read, or gone
        for fd in fds:
            try:
                if os.readlink(fd) == target:
                    comm = (pid_dir / "comm").read_text(encoding="utf-8").strip()
                    holders.append(f"{pid_dir.name} ({comm})")
                    break
            except OSError:
                continue
    return holders


class PendingCommand:
    """A command handed to the link; `await pending.outcome()` for its answer or failure."""

    __slots__ = ("_future", "command", "seq")

    def __init__(
        self, *, command: Command, seq: int | None, future: asyncio.Future[CommandOutcome]
    ) -> None:
        self.command = command
        #: The seq the frame carries, or None if it could not be sent at all.
        self.seq = seq
        self._future = future

    def done(self) -> bool:
        """True once the answer or the failure is known."""
        return self._future.done()

    async def outcome(self) -> CommandOutcome:
        """Wait for `CommandAnswered` (ACK, NAK, IDENT) or `CommandFailed`."""
        return await asyncio.shield(self._future)


class _PortProtocol(asyncio.Protocol):
    def __init__(self, owner: SerialLink) -> None:
        self._owner = owner
        self.closed: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self._owner._on_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(str(exc) if exc is not None else "closed")


class SerialLink:
    """The MN-1 host link over a serial port, pty or `socket://host:port` URL.

    Use as `async with SerialLink(url=...) as link:`; iterate `link.events()` for
    `LinkEvent`s; `await link.command(msg)`; `link.send_stop_now(session_id)`.
    """

    def __init__(
        self,
        *,
        url: str,
        link: HostLink | None = None,
        reconnect_min_ms: int = 50,
        reconnect_max_ms: int = 1000,
        event_queue_size: int = 1024,
    ) -> None:
        """Prepare (not open) a link to `url`; a device path is opened exclusively."""
        self.url = url
        self._link = link if link is not None else HostLink()
        self._reconnect_min_ms = reconnect_min_ms
        self._reconnect_max_ms = reconnect_max_ms
        self._events: asyncio.Queue[LinkEvent] = asyncio.Queue()
        self._event_queue_size = event_queue_size
        #: Events dropped because nobody consumed them (queue bound reached).
        self.events_dropped = 0
        self._transport: asyncio.Transport | None = None
        self._protocol: _PortProtocol | None = None
        self._pending: dict[int, asyncio.Future[CommandOutcome]] = {}
        self._wake = asyncio.Event()
        self._identified = asyncio.Event()
        self._caps_known = asyncio.Event()
        self._task_group: asyncio.TaskGroup | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # --- life cycle --------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Open the port (or start retrying if it is absent); raise PortInUseError if held."""
        try:
            await self._open()
        except PortInUseError:
            raise
        except (OSError, serial.SerialException) as exc:
            first_error: str | None = str(exc)  # absent for now: the runner retries
            self._queue_event_list(
                [PortClosed(at_ms=self._now_ms(), reason=f"cannot open {self.url}: {exc}")]
            )
        else:
            first_error = None
        self._task_group = asyncio.TaskGroup()
        await self._task_group.__aenter__()
        self._tasks = [
            self._task_group.create_task(self._run(first_error)),
            self._task_group.create_task(self._timers()),
        ]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Close the port and stop the background tasks."""
        assert self._task_group is not None
        for task in self._tasks:
            task.cancel()
        # The body's own exception is not handed to the TaskGroup: it propagates
        # unchanged instead of arriving wrapped in an ExceptionGroup.
        await self._task_group.__aexit__(None, None, None)
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.abort()
        # Fails every outstanding command, so no `await pending.outcome()` hangs.
        self._link.connection_lost(self._now_ms(), reason="link closed by the host")
        self._dispatch()

    # --- public API --------------------------------------------------------------

    @property
    def phase(self) -> LinkPhase:
        """PORT_CLOSED, HANDSHAKING or IDENTIFIED."""
        return self._link.phase

    @property
    def link_up(self) -> bool:
        """True while STATUS frames arrive in time."""
        return self._link.link_up

    @property
    def ident(self) -> Ident | None:
        """The device's last IDENT (serial, firmware), or None before the first one."""
        return self._link.ident

    @property
    def caps_discovery(self) -> CapsDiscovery:
        """Addendum 1.1 capability discovery: PENDING, VERSION_1 or DISCOVERED."""
        return self._link.caps_discovery

    @property
    def capabilities(self) -> Caps | None:
        """The head's CAPS (addendum 1.1), or None for a version-1 head or while pending."""
        return self._link.capabilities

    @property
    def host_link(self) -> HostLink:
        """The sans-IO state machine underneath (counters, deframer statistics)."""
        return self._link

    async def events(self) -> AsyncIterator[LinkEvent]:
        """Every `LinkEvent`, in order, until the link is closed."""
        while True:
            yield await self._events.get()

    async def next_event(self) -> LinkEvent:
        """The next `LinkEvent`."""
        return await self._events.get()

    async def wait_identified(self) -> Ident:
        """Wait until the device has answered HELLO with IDENT on the current port."""
        while True:
            await self._identified.wait()
            ident = self._link.ident
            if ident is not None and self._link.phase is LinkPhase.IDENTIFIED:
                return ident
            self._identified.clear()

    async def wait_capabilities(self) -> Caps | None:
        """Wait until the head's capabilities are known (addendum 1.1 discovery).

        Returns its CAPS, or None for a version-1 head (no answer to QUERY_CAPS).
        """
        while True:
            await self._caps_known.wait()
            if self._link.caps_discovery is not CapsDiscovery.PENDING:
                return self._link.capabilities
            self._caps_known.clear()

    def submit(self, command: Command) -> PendingCommand:
        """Write `command` now (synchronously) and return a handle on its outcome."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[CommandOutcome] = loop.create_future()
        try:
            seq = self._link.send_command(command, self._now_ms())
        except LinkNotReadyError as exc:
            future.set_result(
                CommandFailed(
                    at_ms=self._now_ms(),
                    seq=None,
                    command=command,
                    reason=str(exc),
                    transmissions=0,
                )
            )
            return PendingCommand(command=command, seq=None, future=future)
        self._flush_writes()
        self._pending[seq] = future
        self._wake.set()
        return PendingCommand(command=command, seq=seq, future=future)

    async def command(self, command: Command) -> CommandOutcome:
        """Send `command` and wait for its answer (ACK/NAK/IDENT) or its failure."""
        return await self.submit(command).outcome()

    def send_stop_now(self, session_id: int) -> PendingCommand:
        """Write STOP to the port before returning: no await, no disk, no log first.

        If the port is closed the returned handle has already failed (`seq` None);
        the caller sends STOP again when the link returns.
        """
        return self.submit(Stop(session_id=session_id))

    # --- internals ---------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(asyncio.get_running_loop().time() * 1000)

    def _flush_writes(self) -> None:
        writes = self._link.take_writes()
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        for frame in writes:
            transport.write(frame)
        self._dispatch()

    def _dispatch(self) -> None:
        self._queue_event_list(self._link.take_events())

    def _queue_event_list(self, events: list[LinkEvent]) -> None:
        for event in events:
            if isinstance(event, CommandAnswered | CommandFailed) and event.seq is not None:
                future = self._pending.pop(event.seq, None)
                if future is not None and not future.done():
                    future.set_result(event)
            if isinstance(event, Identified):
                self._identified.set()
            if isinstance(event, CapabilitiesDiscovered | NoCapabilities):
                self._caps_known.set()
            while self._events.qsize() >= self._event_queue_size:
                self._events.get_nowait()
                self.events_dropped += 1
            self._events.put_nowait(event)

    def _on_data(self, data: bytes) -> None:
        self._link.receive_data(data, self._now_ms())
        self._flush_writes()
        self._dispatch()
        self._wake.set()

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        kwargs: dict[str, object] = {"baudrate": _BAUDRATE}
        if "://" not in self.url:
            kwargs["exclusive"] = True
        try:
            transport, protocol = await serial_asyncio_fast.create_serial_connection(
                loop, lambda: _PortProtocol(self), self.url, **kwargs
            )
        except serial.SerialException as exc:
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK) or "exclusively lock" in str(exc):
                holders = port_holders(self.url)
                held_by = ", ".join(holders) if holders else "a process we cannot see"
                raise PortInUseError(
                    errno.EBUSY,
                    f"serial port {self.url} is already open exclusively (held by: "
                    f"{held_by}); stop the other controller or choose another port",
                ) from exc
            raise
        assert isinstance(protocol, _PortProtocol)
        self._transport = transport
        self._protocol = protocol
        self._link.connection_made(self._now_ms())
        self._flush_writes()
        self._dispatch()
        self._wake.set()

    async def _run(self, first_error: str | None) -> None:
        backoff_ms = self._reconnect_min_ms
        error = first_error
        while True:
            if error is None:
                assert self._protocol is not None
                reason = await self._protocol.closed
                self._on_port_closed(reason)
                backoff_ms = self._reconnect_min_ms
            await asyncio.sleep(backoff_ms / 1000)
            try:
                await self._open()
            except (OSError, serial.SerialException) as exc:
                # Absent, or held by someone else for now: keep trying, slower.
                error = str(exc)
                backoff_ms = min(backoff_ms * 2, self._reconnect_max_ms)
            else:
                error = None

    def _on_port_closed(self, reason: str) -> None:
        transport, self._transport = self._transport, None
        self._protocol = None
        if transport is not None and not transport.is_closing():
            transport.abort()
        self._identified.clear()
        self._link.connection_lost(self._now_ms(), reason=reason)
        self._dispatch()
        self._wake.set()

    async def _timers(self) -> None:
        while True:
            deadline_ms = self._link.next_deadline_ms()
            self._wake.clear()
            if deadline_ms is None:
                await self._wake.wait()
            else:
                delay_s = max(0.0, (deadline_ms - self._now_ms()) / 1000)
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a
                # cancellation that arrives as the event is set.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay_s):
                        await self._wake.wait()
            self._link.handle_timers(self._now_ms())
            self._flush_writes()
            self._dispatch()
