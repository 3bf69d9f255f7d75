"""Starts waiting for the bedside CONFIRM: who asked, for how much, until when.

Local (`nebuliser session start`) and remote (`session.request_start`) starts both
register here while they wait, so that `session status` shows them and `session
stop` cancels them (a nurse who walks up to a bed must be able to see and stop a
start that somebody else asked for).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = ["PendingStart", "PendingStarts"]


@dataclass(slots=True, kw_only=True)
class PendingStart:
    """One start waiting for CONFIRM."""

    requested_by: str
    """Who asked: a person or OS user at the bedside, or the remote sender id."""
    channel: str
    """"control socket" or "remote command"."""
    cap_ul: int
    deadline_monotonic_s: float
    cancel: Callable[[str], None]
    """Ends the wait; the argument says who cancelled it and why."""
    requested_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    cancelled_by: str | None = None

    def view(self, now_monotonic_s: float) -> dict[str, Any]:
        """JSON-ready view for `session status`."""
        return {
            "requested_by": self.requested_by,
            "channel": self.channel,
            "cap_ul": self.cap_ul,
            "requested_utc": self.requested_at.isoformat(timespec="seconds"),
            "confirm_within_s": max(0, round(self.deadline_monotonic_s - now_monotonic_s)),
        }


class PendingStarts:
    """The starts of this bed now waiting for CONFIRM (normally none or one)."""

    def __init__(self) -> None:
        self._waiting: list[PendingStart] = []

    @contextlib.contextmanager
    def waiting(
        self,
        *,
        requested_by: str,
        channel: str,
        cap_ul: int,
        timeout_s: float,
        cancel: Callable[[str], None],
    ) -> Iterator[PendingStart]:
        """Register a start for the duration of its wait for CONFIRM."""
        entry = PendingStart(
            requested_by=requested_by,
            channel=channel,
            cap_ul=cap_ul,
            deadline_monotonic_s=time.monotonic() + timeout_s,
            cancel=cancel,
        )
        self._waiting.append(entry)
        try:
            yield entry
        finally:
            self._waiting.remove(entry)

    def views(self) -> list[dict[str, Any]]:
        """What `session status` shows, oldest first."""
        now_s = time.monotonic()
        return [entry.view(now_s) for entry in self._waiting]

    def cancel_all(self, by: str) -> int:
        """Cancel every waiting start (`session stop`); returns how many were waiting."""
        waiting = list(self._waiting)
        for entry in waiting:
            entry.cancelled_by = by
            entry.cancel(by)
        return len(waiting)
