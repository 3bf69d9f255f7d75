"""The firmware's session slot: the session running now and what the last one left.

STATUS carries `session_id`, `delivered_ul` and `last_stop` whether or not a
session is running: while one runs they are its figures, afterwards those of the
last one to end (until the next START, or a power-up, which starts an empty slot).
"""

from __future__ import annotations

import math

from drivers.mn1 import Start, StartGated, StopReason

from ._breathing import Gate
from ._device_types import Session

__all__ = ["SessionSlot"]


class SessionSlot:
    """The running session (or None) and the figures the last one left for STATUS."""

    def __init__(self) -> None:
        """An empty slot, as at power-up."""
        self.session: Session | None = None
        self.session_id = 0
        self.last_stop = StopReason.NONE
        self._last_delivered_ul = 0.0
        self._last_target_ul = 0
        self._last_output_pct = 0

    def start(self, start: Start | StartGated, now_ms: int) -> None:
        """START (or START_GATED) accepted at `now_ms`: the session runs."""
        self.session_id = start.session_id
        self.session = Session(
            session_id=start.session_id,
            target_ul=start.target_ul,
            max_duration_ms=start.max_duration_s * 1000,
            output_pct=start.output_pct,
            started_ms=now_ms,
            gate=Gate(
                gate_pct=start.gate_pct,
                lead_breaths=start.lead_breaths,
                apnoea_ms=start.apnoea_s * 1000,
                started_ms=now_ms,
            )
            if isinstance(start, StartGated)
            else None,
        )

    def end(self, reason: StopReason) -> Session:
        """The running session ends for `reason`; its figures stay for STATUS."""
        session = self.session
        assert session is not None
        self.session = None
        self._last_delivered_ul = session.delivered_ul
        self._last_target_ul = session.target_ul
        self._last_output_pct = session.output_pct
        self.last_stop = reason
        return session

    @property
    def delivered_ul(self) -> float:
        """True volume of the running or last session (µL, not rounded)."""
        session = self.session
        return session.delivered_ul if session else self._last_delivered_ul

    @property
    def target_ul(self) -> int:
        """Target of the running or last session (µL)."""
        session = self.session
        return session.target_ul if session else self._last_target_ul

    @property
    def output_pct(self) -> int:
        """Output setting of the running or last session (%)."""
        session = self.session
        return session.output_pct if session else self._last_output_pct

    def reported_delivered_ul(self) -> int:
        """`delivered_ul` as STATUS and SESSION_END carry it: whole µL, rounded down."""
        return min(0xFFFFFFFF, math.floor(self.delivered_ul + 1e-9))
