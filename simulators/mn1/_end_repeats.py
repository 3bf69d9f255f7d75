"""SESSION_END repeats (ICD §5): the same frame every 200 ms until ACK_END, 50 sends at most.

The device cannot know whether the host saw a SESSION_END, so it repeats the very
frame (same seq) until the host acknowledges that seq with ACK_END or the repeats
run out. Repeats are data: the device model asks `due(now_ms)` for the frames to
send again and `deadlines()` for its timers.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from ._device_types import SESSION_END_MAX_SENDS, SESSION_END_REPEAT_MS

__all__ = ["SessionEndRepeats"]


@dataclass(slots=True, kw_only=True)
class _PendingEnd:
    seq: int
    frame: bytes
    sends: int
    next_ms: int


class SessionEndRepeats:
    """The SESSION_END frames not yet acknowledged, with their next send time."""

    def __init__(self) -> None:
        """No SESSION_END pending."""
        self._pending: list[_PendingEnd] = []

    def sent(self, *, seq: int, frame: bytes, now_ms: int) -> None:
        """A SESSION_END went out for the first time at `now_ms`."""
        self._pending.append(
            _PendingEnd(seq=seq, frame=frame, sends=1, next_ms=now_ms + SESSION_END_REPEAT_MS)
        )

    def acknowledged(self, end_seq: int) -> None:
        """ACK_END for `end_seq`: stop repeating that frame."""
        self._pending = [p for p in self._pending if p.seq != end_seq]

    def due(self, now_ms: int) -> list[bytes]:
        """The frames to send again now, oldest first (each counted as sent)."""
        frames: list[bytes] = []
        for pending in list(self._pending):
            if now_ms >= pending.next_ms:
                frames.append(pending.frame)
                pending.sends += 1
                pending.next_ms = now_ms + SESSION_END_REPEAT_MS
                if pending.sends >= SESSION_END_MAX_SENDS:
                    self._pending.remove(pending)
        return frames

    def deadlines(self) -> Iterator[int]:
        """When each pending frame is next due."""
        return (pending.next_ms for pending in self._pending)

    @property
    def seqs(self) -> list[int]:
        """The seqs of the frames still repeated."""
        return [pending.seq for pending in self._pending]
