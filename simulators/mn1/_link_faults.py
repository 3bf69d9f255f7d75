"""Link faults between the device and the wire, sans-IO and seeded.

Each direction (`rx` host → device, `tx` device → host) can flip bits, drop
bytes, duplicate bytes and delay bytes by a fixed time. A delayed chunk keeps
its order. Everything is driven by the caller's clock, so it runs in simulated
time like the rest of the model.

`DeviceLine` is the device's end of the line: both directions with the faults in
force, plus the two faults that act on whole frames (answers dropped, a silent
device).
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

__all__ = ["ChannelFaults", "DeviceLine", "LinkFaults"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelFaults:
    """Faults applied to one direction of the serial line (all off by default)."""

    #: Probability that any one bit is flipped (0..1).
    bit_error_rate: float = 0.0
    #: Probability that a byte is lost (0..1).
    drop_rate: float = 0.0
    #: Probability that a byte is sent twice (0..1).
    duplicate_rate: float = 0.0
    #: Fixed delay added to every byte, in milliseconds (order is kept).
    delay_ms: int = 0

    def __post_init__(self) -> None:
        for name in ("bit_error_rate", "drop_rate", "duplicate_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in 0..1, got {value}")
        if not 0 <= self.delay_ms <= 60_000:
            raise ValueError(f"delay_ms must be 0..60000 ms, got {self.delay_ms}")

    @property
    def active(self) -> bool:
        """True when this direction changes the bytes or their timing."""
        return bool(self.bit_error_rate or self.drop_rate or self.duplicate_rate or self.delay_ms)


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkFaults:
    """Every link fault the simulator can inject (all off by default)."""

    #: Host → device bytes.
    rx: ChannelFaults = field(default_factory=ChannelFaults)
    #: Device → host bytes.
    tx: ChannelFaults = field(default_factory=ChannelFaults)
    #: Probability that an answer (IDENT, ACK, NAK) is not sent at all (0..1).
    drop_answer_rate: float = 0.0
    #: The device stops talking entirely (still listens and acts).
    silent: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.drop_answer_rate <= 1.0:
            raise ValueError(
                f"drop_answer_rate must be a probability in 0..1, got {self.drop_answer_rate}"
            )


class _Channel:
    """Applies one direction's faults to byte chunks and holds delayed bytes."""

    __slots__ = ("_queue", "_rng", "faults")

    def __init__(self, *, rng: random.Random) -> None:
        self._rng = rng
        self._queue: deque[tuple[int, bytes]] = deque()
        self.faults = ChannelFaults()

    def _corrupt(self, data: bytes) -> bytes:
        faults = self.faults
        if not (faults.bit_error_rate or faults.drop_rate or faults.duplicate_rate):
            return data
        out = bytearray()
        rng = self._rng
        for byte in data:
            if faults.drop_rate and rng.random() < faults.drop_rate:
                continue
            value = byte
            if faults.bit_error_rate:
                for bit in range(8):
                    if rng.random() < faults.bit_error_rate:
                        value ^= 1 << bit
            out.append(value)
            if faults.duplicate_rate and rng.random() < faults.duplicate_rate:
                out.append(value)
        return bytes(out)

    def push(self, data: bytes, now_ms: int) -> None:
        """Queue bytes sent at `now_ms`; they are released after the delay."""
        corrupted = self._corrupt(data)
        if corrupted:
            self._queue.append((now_ms + self.faults.delay_ms, corrupted))

    def pop_due(self, now_ms: int) -> bytes:
        """Every byte whose release time has come, in order."""
        out = bytearray()
        while self._queue and self._queue[0][0] <= now_ms:
            out += self._queue.popleft()[1]
        return bytes(out)

    def next_release_ms(self) -> int | None:
        """When the oldest held chunk is due, or None when nothing is held."""
        return self._queue[0][0] if self._queue else None

    def clear(self) -> None:
        """Forget every held byte (a power cycle empties the UART buffers)."""
        self._queue.clear()


class DeviceLine:
    """The device's end of the serial line: host bytes in, device frames out, with faults."""

    __slots__ = ("_rx", "_tx", "faults")

    def __init__(self, *, seed: int) -> None:
        """A healthy line; each direction's fault noise is seeded from `seed`."""
        self.faults = LinkFaults()
        self._rx = _Channel(rng=random.Random(seed + 1))  # noqa: S311 - simulation noise
        self._tx = _Channel(rng=random.Random(seed + 2))  # noqa: S311 - simulation noise

    def set_faults(self, faults: LinkFaults) -> None:
        """Replace every link fault (`LinkFaults()` heals the line)."""
        self.faults = faults
        self._rx.faults = faults.rx
        self._tx.faults = faults.tx

    def clear(self) -> None:
        """Forget every byte in flight (a power cycle empties the UART buffers)."""
        self._rx.clear()
        self._tx.clear()

    def host_sent(self, data: bytes, now_ms: int) -> None:
        """Bytes the host wrote at `now_ms` (they reach the device after the rx faults)."""
        self._rx.push(data, now_ms)

    def host_bytes_due(self, now_ms: int) -> bytes:
        """Host bytes that reach the device by `now_ms`, in order."""
        return self._rx.pop_due(now_ms)

    def answer_dropped(self, rng: random.Random) -> bool:
        """True if this answer is lost whole (`drop_answer_rate`; draws only when set)."""
        rate = self.faults.drop_answer_rate
        return bool(rate) and rng.random() < rate

    def device_sent(self, frame: bytes, now_ms: int) -> None:
        """A frame the device sends at `now_ms` (nothing goes out while the line is silent)."""
        if self.faults.silent:
            return
        self._tx.push(frame, now_ms)

    def device_bytes_due(self, now_ms: int) -> bytes:
        """Device bytes that reach the host by `now_ms`, in order."""
        return self._tx.pop_due(now_ms)

    def deadlines(self, now_ms: int) -> list[int]:
        """When held bytes are next released (a due device chunk waits for the caller)."""
        deadlines: list[int] = []
        rx_release = self._rx.next_release_ms()
        if rx_release is not None:
            deadlines.append(rx_release)
        tx_release = self._tx.next_release_ms()
        if tx_release is not None and tx_release > now_ms:
            # A due chunk waits for take_output; only a future one is a timer.
            deadlines.append(tx_release)
        return deadlines
