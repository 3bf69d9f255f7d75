"""A host side for the device model in simulated time (tests, benchmarks, demos).

`SimulatedHost` owns the clock: it advances the model deadline by deadline, so a
10-minute session takes milliseconds of real time, and it decodes everything the
device sends with the real driver codec, stamped with the simulated time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from drivers.mn1 import (
    AckEnd,
    Breath,
    Deframer,
    DeviceMessage,
    Frame,
    FrameError,
    Heartbeat,
    HostMessage,
    SessionEnd,
    Status,
    encode_frame,
)

from ._model import DeviceModel

__all__ = ["Received", "SimulatedHost"]


@dataclass(frozen=True, slots=True)
class Received:
    """A device frame and the simulated time it left the device."""

    at_ms: int
    seq: int
    message: DeviceMessage


class SimulatedHost:
    """Drives a `DeviceModel` in simulated time and records what it says."""

    def __init__(
        self,
        *,
        model: DeviceModel | None = None,
        heartbeat_ms: int | None = None,
        auto_ack_end: bool = False,
        first_seq: int = 0,
    ) -> None:
        self.model = model if model is not None else DeviceModel()
        self.heartbeat_ms = heartbeat_ms
        self.auto_ack_end = auto_ack_end
        self.received: list[Received] = []
        self.bad_frames = 0
        self._deframer = Deframer()
        self._seq = first_seq & 0xFF
        self._next_heartbeat_ms = self.model.now_ms + (heartbeat_ms or 0)
        self.model.advance(self.model.now_ms)  # whatever is due at the start (first STATUS)
        self._collect()

    @property
    def now_ms(self) -> int:
        """Simulated time now."""
        return self.model.now_ms

    # --- sending -------------------------------------------------------------------

    def next_seq(self) -> int:
        """Take the next host sequence number (wraps 255 → 0)."""
        seq = self._seq
        self._seq = (seq + 1) & 0xFF
        return seq

    def send(self, message: HostMessage, *, seq: int | None = None) -> int:
        """Send one frame now; returns the seq used (pass `seq` to retransmit)."""
        used = self.next_seq() if seq is None else seq
        self.send_bytes(encode_frame(message, seq=used))
        return used

    def send_bytes(self, data: bytes) -> None:
        """Raw bytes to the device now (for broken frames and odd chunkings)."""
        self.model.receive(data, self.now_ms)
        self._collect()

    # --- time ----------------------------------------------------------------------

    def run_until(self, until_ms: int) -> None:
        """Let simulated time pass up to `until_ms`, deadline by deadline."""
        while self.now_ms < until_ms:
            step_ms = min(self.model.next_deadline_ms(), until_ms)
            if self.heartbeat_ms is not None:
                step_ms = min(step_ms, self._next_heartbeat_ms)
            step_ms = max(step_ms, self.now_ms + 1)
            self.model.advance(step_ms)
            self._collect()
            if self.heartbeat_ms is not None and self.now_ms >= self._next_heartbeat_ms:
                self.send(Heartbeat())
                self._next_heartbeat_ms = self.now_ms + self.heartbeat_ms

    def run_for(self, duration_ms: int) -> None:
        """Let `duration_ms` of simulated time pass."""
        self.run_until(self.now_ms + duration_ms)

    def run_until_message(
        self, predicate: Callable[[Received], bool], *, timeout_ms: int
    ) -> Received:
        """Run until a received frame (from now on) matches; AssertionError on timeout."""
        start = len(self.received)
        deadline_ms = self.now_ms + timeout_ms
        while True:
            for item in self.received[start:]:
                if predicate(item):
                    return item
            start = len(self.received)
            if self.now_ms >= deadline_ms:
                raise AssertionError(f"no matching device frame within {timeout_ms} ms")
            self.run_until(min(deadline_ms, self.model.next_deadline_ms()))

    # --- what the device said --------------------------------------------------------

    def statuses(self) -> list[Status]:
        """Every STATUS received, oldest first."""
        return [r.message for r in self.received if isinstance(r.message, Status)]

    def timed_statuses(self) -> list[tuple[int, Status]]:
        """Every STATUS received with the simulated time it left the device."""
        return [(r.at_ms, r.message) for r in self.received if isinstance(r.message, Status)]

    def last_status(self) -> Status:
        """The latest STATUS (AssertionError if none yet)."""
        statuses = self.statuses()
        assert statuses, "the device has sent no STATUS yet"
        return statuses[-1]

    def answers_to(self, seq: int) -> list[Received]:
        """IDENT/ACK/NAK frames answering the host frame `seq`."""
        return [
            r
            for r in self.received
            if not isinstance(r.message, Status | SessionEnd | Breath) and r.message.ack_seq == seq
        ]

    def session_ends(self) -> list[Received]:
        """Every SESSION_END received (repeats included)."""
        return [r for r in self.received if isinstance(r.message, SessionEnd)]

    def _collect(self) -> None:
        output = self.model.take_output()
        if not output:
            return
        for event in self._deframer.feed(output):
            if isinstance(event, FrameError):
                self.bad_frames += 1
                continue
            self._record(event)

    def _record(self, frame: Frame) -> None:
        message = frame.message
        assert not isinstance(message, HostMessage), f"device sent a host message: {message}"
        self.received.append(Received(self.now_ms, frame.seq, message))
        if self.auto_ack_end and isinstance(message, SessionEnd):
            self.send(AckEnd(end_seq=frame.seq))
