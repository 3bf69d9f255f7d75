"""Stream deframer: bytes in any chunking → decoded frames or typed errors.

Physical failure modes it is built for (the serial line is a noisy wire, not a
message queue): bytes lost (a frame is truncated or two frames merge → COBS,
length or CRC error), bytes flipped (CRC error), bytes added or a line held
low (runaway data with no delimiter → bounded buffer, one length error), and a
receiver that starts mid-frame (the first partial frame fails and the next
0x00 resynchronises). Empty frames (two 0x00 in a row) are idle fill, not errors.
"""

from __future__ import annotations

from collections import Counter
from typing import Final

from ._codec import MAX_ENCODED_LEN, FrameError, PayloadLengthError, decode_frame
from ._messages import Frame

__all__ = ["Deframer"]

_DELIMITER: Final = 0


class Deframer:
    """Accumulates bytes and splits them on 0x00; memory is bounded by one frame."""

    __slots__ = ("_buffer", "_discarding", "counters", "frames_ok")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._discarding = False
        #: Count of dropped frames by `FrameError.kind`.
        self.counters: Counter[str] = Counter()
        self.frames_ok = 0

    @property
    def frames_bad(self) -> int:
        """Total frames dropped, of every kind."""
        return sum(self.counters.values())

    def feed(self, data: bytes) -> list[Frame | FrameError]:
        """Add received bytes; return what they completed, in order."""
        events: list[Frame | FrameError] = []
        start = 0
        while True:
            end = data.find(_DELIMITER, start)
            if end < 0:
                self._append(data[start:])
                return events
            self._append(data[start:end])
            start = end + 1
            event = self._finish_frame()
            if event is not None:
                events.append(event)

    def _append(self, chunk: bytes) -> None:
        if self._discarding or not chunk:
            return
        if len(self._buffer) + len(chunk) > MAX_ENCODED_LEN:
            # Longer than any valid frame: drop it all until the next delimiter.
            self._buffer.clear()
            self._discarding = True
            return
        self._buffer += chunk

    def _finish_frame(self) -> Frame | FrameError | None:
        if self._discarding:
            self._discarding = False
            error: FrameError = PayloadLengthError(
                f"more than {MAX_ENCODED_LEN} bytes without a delimiter"
            )
            self.counters[error.kind] += 1
            return error
        if not self._buffer:
            return None  # idle fill between frames
        encoded = bytes(self._buffer)
        self._buffer.clear()
        try:
            frame = decode_frame(encoded)
        except FrameError as error:
            self.counters[error.kind] += 1
            return error
        self.frames_ok += 1
        return frame
