"""A remote start request waiting for the bedside CONFIRM (design guide rule 9).

Pure state: no clock of its own. Times are *monotonic* seconds (e.g.
`time.monotonic()`), so a wall-clock step can neither stretch nor shrink the window.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

__all__ = ["PendingStartRequest", "StartRequestStatus"]


class StartRequestStatus(StrEnum):
    """Where a start request stands."""

    PENDING = "pending"
    CONFIRMED = "confirmed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


@dataclass(frozen=True, kw_only=True)
class PendingStartRequest:
    """An accepted `session.request_start`; becomes CONFIRMED only by a timely CONFIRM."""

    command_id: str
    sender_id: str
    requested_at_s: float
    confirm_window_s: float
    status: StartRequestStatus = StartRequestStatus.PENDING
    closed_at_s: float | None = None

    def __post_init__(self) -> None:
        if self.confirm_window_s <= 0:
            raise ValueError("confirm_window_s must be positive")

    @property
    def deadline_s(self) -> float:
        """Monotonic time after which a CONFIRM no longer counts."""
        return self.requested_at_s + self.confirm_window_s

    def expired(self, now: float) -> bool:
        """True once the window has passed while still pending (or already expired)."""
        if self.status is StartRequestStatus.EXPIRED:
            return True
        return self.status is StartRequestStatus.PENDING and now > self.deadline_s

    def remaining_s(self, now: float) -> float:
        """Seconds left to press CONFIRM (0 when not pending any more)."""
        if self.status is not StartRequestStatus.PENDING:
            return 0.0
        return max(0.0, self.deadline_s - now)

    def confirm(self, now: float) -> PendingStartRequest:
        """The bedside CONFIRM was pressed at `now`.

        Returns the CONFIRMED request when pressed inside the window (deadline
        inclusive), otherwise the EXPIRED one; the caller records either. A request
        that is no longer pending is returned unchanged (a second press does nothing).
        """
        if self.status is not StartRequestStatus.PENDING:
            return self
        if now > self.deadline_s:
            return replace(self, status=StartRequestStatus.EXPIRED, closed_at_s=self.deadline_s)
        return replace(self, status=StartRequestStatus.CONFIRMED, closed_at_s=now)

    def expire(self, now: float) -> PendingStartRequest:
        """Mark EXPIRED if the window has passed (call from a periodic tick)."""
        if self.status is StartRequestStatus.PENDING and now > self.deadline_s:
            return replace(self, status=StartRequestStatus.EXPIRED, closed_at_s=self.deadline_s)
        return self

    def cancel(self, now: float) -> PendingStartRequest:
        """Cancel a pending request (a stop command or a newer request supersedes it)."""
        if self.status is not StartRequestStatus.PENDING:
            return self
        return replace(self, status=StartRequestStatus.CANCELLED, closed_at_s=now)

    def audit_body(self) -> dict[str, object]:
        """JSON body for the audit log."""
        return {
            "command_id": self.command_id,
            "sender_id": self.sender_id,
            "status": self.status.value,
            "confirm_window_s": self.confirm_window_s,
        }
