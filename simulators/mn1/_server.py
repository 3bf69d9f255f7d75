"""The device model in real time, on a pty and/or a TCP port, with a control socket.

The pty is what a host sees as a serial port: raw mode (no echo, no line
discipline), opened and closed by the host as often as it likes. The simulator
keeps the master side and detects the host side closing (reads fail with EIO)
and reopening (reads stop failing). While no host has the port open the device
keeps running (its watchdog sees a silent host) and what it sends is lost, as on
a real cable; bytes left in the pty buffer are flushed so a host that reopens the
port does not read stale STATUS frames.

TCP serves pyserial's `socket://HOST:PORT` URLs; one host at a time, a new
connection replaces the old one.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import termios
import time
import tty
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from controller.logging import get_logger

from ._control import ControlServer, execute_control
from ._device_types import DeviceTruth
from ._model import DeviceModel

__all__ = ["RunningSimulator", "run_pty_simulator", "run_simulator"]

_log = get_logger(__name__)

_REOPEN_POLL_S: Final = 0.02
_READ_CHUNK: Final = 4096
_TCP_BACKLOG_LIMIT: Final = 64 * 1024


class _RealtimeDevice:
    """The model on the monotonic clock; transports feed it and register as sinks."""

    def __init__(self, model: DeviceModel) -> None:
        self.model = model
        self._offset_ms = model.now_ms - time.monotonic_ns() // 1_000_000
        self._sinks: list[Callable[[bytes], None]] = []
        self._wake = asyncio.Event()

    def now_ms(self) -> int:
        return max(self.model.now_ms, time.monotonic_ns() // 1_000_000 + self._offset_ms)

    def add_sink(self, sink: Callable[[bytes], None]) -> None:
        self._sinks.append(sink)

    def feed(self, data: bytes) -> None:
        self.model.receive(data, self.now_ms())
        self._flush()

    def apply(self, action: Callable[[DeviceModel, int], Any]) -> Any:
        result = action(self.model, self.now_ms())
        self._flush()
        return result

    def _flush(self) -> None:
        output = self.model.take_output()
        if output:
            for sink in self._sinks:
                sink(output)
        self._wake.set()  # deadlines may have moved

    async def run(self) -> None:
        while True:
            self.model.advance(self.now_ms())
            self._flush()
            self._wake.clear()
            delay_s = (self.model.next_deadline_ms() - self.now_ms()) / 1000
            if delay_s > 0:
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay_s):
                        await self._wake.wait()


class _PtyPort:
    """The master side of a pty whose slave is the host's serial port."""

    def __init__(self, device: _RealtimeDevice) -> None:
        self._device = device
        self._master, slave = os.openpty()
        try:
            tty.setraw(slave)  # raw, no echo; kept by the tty while the master is open
            self.path = os.ttyname(slave)
        finally:
            os.close(slave)
        os.set_blocking(self._master, False)
        self.host_open = False
        device.add_sink(self.write)

    def close(self) -> None:
        os.close(self._master)

    def write(self, data: bytes) -> None:
        if not self.host_open:
            return  # nobody listens: the bytes are lost, as on an unplugged cable
        try:
            os.write(self._master, data)  # a partial write drops the rest, like a full UART
        except BlockingIOError:
            pass  # the host does not read; drop rather than block the device
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise

    def _read(self) -> bytes | None:
        """Bytes from the host, b'' for none yet, None when no host has the port open."""
        try:
            return os.read(self._master, _READ_CHUNK)
        except BlockingIOError:
            return b""
        except OSError as exc:
            if exc.errno == errno.EIO:
                return None
            raise

    def _flush_stale(self) -> None:
        # Flushing on the master does not reach the slave's input queue: open the
        # slave briefly and flush there.
        with contextlib.suppress(OSError):
            fd = os.open(self.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
            try:
                termios.tcflush(fd, termios.TCIFLUSH)
            finally:
                os.close(fd)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = self._read()
            if data is None:
                await asyncio.sleep(_REOPEN_POLL_S)
                continue
            self.host_open = True
            _log.info("pty_host_opened", path=self.path)
            if data:
                self._device.feed(data)
            closed: asyncio.Future[None] = loop.create_future()

            def on_readable(closed: asyncio.Future[None] = closed) -> None:
                chunk = self._read()
                if chunk is None:
                    if not closed.done():
                        closed.set_result(None)
                elif chunk:
                    self._device.feed(chunk)

            loop.add_reader(self._master, on_readable)
            try:
                await closed
            finally:
                loop.remove_reader(self._master)
            self.host_open = False
            self._flush_stale()
            _log.info("pty_host_closed", path=self.path)


class _TcpPort:
    """One TCP host at a time (pyserial `socket://`)."""

    def __init__(self, device: _RealtimeDevice) -> None:
        self._device = device
        self._writer: asyncio.StreamWriter | None = None
        device.add_sink(self.write)

    def write(self, data: bytes) -> None:
        writer = self._writer
        if writer is None or writer.is_closing():
            return
        if writer.transport.get_write_buffer_size() > _TCP_BACKLOG_LIMIT:
            return  # the host does not read: drop, never block the device
        writer.write(data)

    def close_client(self) -> None:
        if self._writer is not None:
            self._writer.close()

    async def on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        previous, self._writer = self._writer, writer
        if previous is not None:
            previous.close()
        _log.info("tcp_host_connected", peer=str(writer.get_extra_info("peername")))
        try:
            while data := await reader.read(_READ_CHUNK):
                self._device.feed(data)
        except ConnectionError:
            pass
        finally:
            if self._writer is writer:
                self._writer = None
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


@dataclass(kw_only=True)
class RunningSimulator:
    """A simulator serving in real time (yielded by `run_simulator`)."""

    model: DeviceModel
    #: The host's serial port path (the pty slave), or None without a pty.
    pty_path: str | None = None
    #: The symlink made to the pty, or None.
    link_path: str | None = None
    #: (host, port) actually listened on, or None without TCP.
    tcp_address: tuple[str, int] | None = None
    #: The Unix socket of the control interface, or None.
    control_path: str | None = None
    _device: _RealtimeDevice | None = field(default=None, repr=False)

    @property
    def device_path(self) -> str:
        """The path a host opens: the link if any, else the pty."""
        path = self.link_path or self.pty_path
        if path is None:
            raise RuntimeError("this simulator has no pty; use tcp_address")
        return path

    @property
    def tcp_url(self) -> str:
        """pyserial URL for the TCP port."""
        if self.tcp_address is None:
            raise RuntimeError("this simulator has no TCP port; start it with tcp=(host, port)")
        host, port = self.tcp_address
        return f"socket://{host}:{port}"

    def now_ms(self) -> int:
        """The model's clock now (monotonic, ms)."""
        assert self._device is not None
        return self._device.now_ms()

    def apply(self, action: Callable[[DeviceModel, int], Any]) -> Any:
        """Run `action(model, now_ms)` now and send what it made the device say.

        Example: `sim.apply(lambda m, t: m.set_condition("head_disconnected", True, now_ms=t))`.
        """
        assert self._device is not None
        return self._device.apply(action)

    def control(self, request: object) -> dict[str, Any]:
        """Execute a control-socket request in process (same JSON in and out)."""
        return dict(self.apply(lambda model, now: execute_control(model, request, now_ms=now)))

    def truth(self) -> DeviceTruth:
        """The model's truth now."""
        truth: DeviceTruth = self.apply(_truth_at)
        return truth


def _truth_at(model: DeviceModel, now_ms: int) -> DeviceTruth:
    model.advance(now_ms)
    return model.truth()


def _make_link(link: str, target: str) -> None:
    path = Path(link)
    if path.is_symlink():
        path.unlink()  # a leftover from an earlier run
    elif path.exists():
        raise FileExistsError(
            f"--link {link} exists and is not a symlink; remove it or pick another"
        )
    path.symlink_to(target)


def _remove_link(link: str, target: str) -> None:
    path = Path(link)
    if path.is_symlink() and os.readlink(path) == target:
        path.unlink()


@contextlib.asynccontextmanager
async def run_simulator(
    model: DeviceModel | None = None,
    *,
    pty: bool = True,
    link: str | os.PathLike[str] | None = None,
    tcp: tuple[str, int] | None = None,
    control: str | os.PathLike[str] | None = None,
) -> AsyncIterator[RunningSimulator]:
    """Serve `model` in real time until the block exits.

    `pty`: make a pty (its slave path is `pty_path`); `link`: also a symlink to it;
    `tcp`: (host, port) to listen on (port 0 picks a free one); `control`: path of
    the JSON-lines control socket.
    """
    if not pty and tcp is None:
        raise ValueError("nothing to serve on: pass pty=True and/or tcp=(host, port)")
    if link is not None and not pty:
        raise ValueError("link needs pty=True")
    model = model if model is not None else DeviceModel()
    device = _RealtimeDevice(model)
    sim = RunningSimulator(model=model, _device=device)
    link_str = os.fspath(link) if link is not None else None
    control_str = os.fspath(control) if control is not None else None
    async with contextlib.AsyncExitStack() as stack:
        # Resources are released after the TaskGroup has finished every task.
        runners: list[Callable[[], Coroutine[Any, Any, None]]] = []
        if pty:
            port = _PtyPort(device)
            stack.callback(port.close)
            sim.pty_path = port.path
            if link_str is not None:
                _make_link(link_str, port.path)
                stack.callback(_remove_link, link_str, port.path)
                sim.link_path = link_str
            runners.append(port.run)
        if tcp is not None:
            tcp_port = _TcpPort(device)
            server = await asyncio.start_server(tcp_port.on_client, tcp[0], tcp[1])
            stack.push_async_callback(server.wait_closed)
            stack.callback(tcp_port.close_client)
            stack.callback(server.close)
            sockname = server.sockets[0].getsockname()
            sim.tcp_address = (str(sockname[0]), int(sockname[1]))
        if control_str is not None:
            control_server = ControlServer(path=control_str, handle=sim.control)
            await control_server.start()
            stack.push_async_callback(control_server.aclose)
            sim.control_path = control_str
        runners.append(device.run)
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(runner()) for runner in runners]
            try:
                yield sim
            finally:
                for task in tasks:
                    task.cancel()


@contextlib.asynccontextmanager
async def run_pty_simulator(
    model: DeviceModel | None = None,
    *,
    link: str | os.PathLike[str] | None = None,
    control: str | os.PathLike[str] | None = None,
) -> AsyncIterator[RunningSimulator]:
    """Serve `model` on a fresh pty (and `link`, `control` if given) until the block exits."""
    async with run_simulator(model, pty=True, link=link, control=control) as sim:
        yield sim
