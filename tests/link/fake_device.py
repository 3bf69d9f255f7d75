"""A minimal MN-1 device for transport tests: the codec on the master side of a real pty.

The full simulator lives in `simulators/mn1`; this fake only answers what the host
link needs (HELLO → IDENT, commands → ACK, STATUS every 100 ms, SESSION_END on
demand) and lets a test cut the line, silence the device, or swallow answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty
from dataclasses import dataclass, field
from pathlib import Path

from drivers.mn1 import (
    Ack,
    ClearFaults,
    Deframer,
    DeviceState,
    FaultBits,
    Frame,
    Hello,
    Ident,
    SessionEnd,
    Start,
    Status,
    Stop,
    StopReason,
    encode_frame,
)


@dataclass
class Pty:
    """A pty pair; the host opens `link_path` (a symlink, like /dev/serial/by-id/...)."""

    master_fd: int
    slave_fd: int
    link_path: Path

    @classmethod
    def open(cls, link_path: Path) -> Pty:
        master_fd, slave_fd = os.openpty()
        tty.setraw(slave_fd)  # no echo or line editing before the host configures it
        os.set_blocking(master_fd, False)
        with contextlib.suppress(FileNotFoundError):
            link_path.unlink()
        link_path.symlink_to(os.ttyname(slave_fd))
        return cls(master_fd=master_fd, slave_fd=slave_fd, link_path=link_path)

    closed: bool = False

    def hang_up(self) -> None:
        """Close both ends (once): the host's reads fail with EIO, the node goes away."""
        if not self.closed:
            self.closed = True
            os.close(self.master_fd)
            os.close(self.slave_fd)


@dataclass
class FakeDevice:
    """Speaks the device side of the ICD on `pty.master_fd` (call `attach` inside a loop)."""

    serial: str = "MN1-0000001"
    uptime_base_ms: int = 5_000
    answer_commands: bool = True
    send_status: bool = True
    received: list[Frame] = field(default_factory=list)
    received_at_s: list[float] = field(default_factory=list)  # loop time of each frame
    received_bytes: bytearray = field(default_factory=bytearray)
    _deframer: Deframer = field(default_factory=Deframer)
    _seq: int = 0
    _fd: int | None = None
    _started_s: float = 0.0
    _tick: asyncio.TimerHandle | None = None

    def attach(self, pty: Pty) -> None:
        """Start reading `pty`'s master side on the running loop."""
        loop = asyncio.get_running_loop()
        self._fd = pty.master_fd
        self._started_s = loop.time()
        self._deframer = Deframer()
        loop.add_reader(pty.master_fd, self._on_readable)
        self._tick = loop.call_later(0.1, self._send_status)

    def detach(self) -> None:
        """Stop reading and sending (before the pty is closed)."""
        if self._fd is not None:
            asyncio.get_running_loop().remove_reader(self._fd)
            self._fd = None
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None

    def _next_seq(self) -> int:
        seq = self._seq
        self._seq = (seq + 1) & 0xFF
        return seq

    def send(self, message: Ident | Ack | Status | SessionEnd, *, seq: int | None = None) -> int:
        """Write one frame; returns its seq."""
        assert self._fd is not None
        seq = self._next_seq() if seq is None else seq
        os.write(self._fd, encode_frame(message, seq=seq))
        return seq

    def status(self) -> Status:
        """The STATUS this device would send now."""
        now_s = asyncio.get_running_loop().time()
        return Status(
            uptime_ms=self.uptime_base_ms + int((now_s - self._started_s) * 1000),
            state=DeviceState.IDLE,
            session_id=0,
            delivered_ul=0,
            flow_ul_min=0,
            reservoir_ul=5000,
            mesh_temp_cC=2500,
            drive_ma=0,
            faults=FaultBits(0),
            crc_errors=0,
            last_stop=StopReason.NONE,
            confirm_count=0,
        )

    def _send_status(self) -> None:
        """STATUS every 100 ms while attached and `send_status` (ICD §5.1)."""
        if self._fd is None:
            return
        if self.send_status:
            with contextlib.suppress(OSError):
                self.send(self.status())
        self._tick = asyncio.get_running_loop().call_later(0.1, self._send_status)

    def _on_readable(self) -> None:
        assert self._fd is not None
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return
        except OSError:  # EIO: the host side is closed; a real UART would just be quiet
            return
        self.received_bytes += data
        for item in self._deframer.feed(data):
            if isinstance(item, Frame):
                self.received.append(item)
                self.received_at_s.append(asyncio.get_running_loop().time())
                self._answer(item)

    def _answer(self, frame: Frame) -> None:
        if not self.answer_commands:
            return
        message = frame.message
        if isinstance(message, Hello):
            self.send(
                Ident(
                    ack_seq=frame.seq,
                    serial=self.serial,
                    fw_major=1,
                    fw_minor=4,
                    fw_patch=2,
                    hw_rev=3,
                    nominal_ul_min=300,
                    reservoir_capacity_ul=10_000,
                )
            )
        elif isinstance(message, Start | Stop | ClearFaults):
            self.send(Ack(ack_seq=frame.seq))

    def frames_of(self, kind: type[object]) -> list[Frame]:
        """Received frames whose message is a `kind`."""
        return [f for f in self.received if isinstance(f.message, kind)]
