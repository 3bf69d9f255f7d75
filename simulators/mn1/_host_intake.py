"""Host bytes → host commands on the device side: deframing, counters, repeated commands.

- Bad frames (CRC, COBS, length, version) and frames of a type the head does not
  take from a host (device types 0x81..0x87; the 1.1 types on a version-1 head)
  are dropped and counted in STATUS `crc_errors` (saturating at 0xFFFF).
- A repeated command (same seq and body as the last one answered) is answered
  again from the cache without acting twice (ICD §5.6). Only the last answered
  command counts: a host retransmits one unanswered command at a time (ICD §6),
  and a longer memory would wrongly swallow a new command from a restarted host
  that happens to reuse an old seq and body.

One intake lives from one power-up to the next.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

from drivers.mn1 import Deframer, Frame, FrameError

from ._device_types import ANSWER_CACHE_SIZE, CRC_ERRORS_MAX
from ._host_rules import is_host_command

__all__ = ["HostIntake"]


class HostIntake:
    """The device's receiver: frames in, counted; answers to repeats remembered."""

    def __init__(self) -> None:
        """Nothing received yet."""
        self._deframer = Deframer()
        self._answers: OrderedDict[tuple[int, object], bytes] = OrderedDict()
        #: Bad or unknown frames since power-up (STATUS `crc_errors`).
        self.crc_errors = 0
        #: Valid host commands since power-up (truth).
        self.host_frames = 0

    def commands(self, data: bytes, *, breath_aware: bool) -> Iterator[Frame]:
        """The host commands in `data`, one at a time (each counted as it is yielded)."""
        for event in self._deframer.feed(data):
            if isinstance(event, FrameError):
                self._count_bad_frame()
            elif is_host_command(event.message, breath_aware=breath_aware):
                self.host_frames += 1
                yield event
            else:
                self._count_bad_frame()  # a device message type is unknown to the device

    def _count_bad_frame(self) -> None:
        self.crc_errors = min(CRC_ERRORS_MAX, self.crc_errors + 1)

    def cached_answer(self, frame: Frame) -> bytes | None:
        """The encoded answer already given to this very command, or None."""
        key = (frame.seq, frame.message)
        cached = self._answers.get(key)
        if cached is not None:
            self._answers.move_to_end(key)
        return cached

    def remember(self, frame: Frame, answer: bytes) -> None:
        """`answer` (encoded) answered `frame`: a repeat gets the same bytes."""
        self._answers[(frame.seq, frame.message)] = answer
        while len(self._answers) > ANSWER_CACHE_SIZE:
            self._answers.popitem(last=False)
