"""Sessions whose delivery is unknown (safety rule 4): kept, reconciled or accepted.

A session becomes uncertain when its outcome cannot be read from the device (a
controller restart with the session open, a rebooted or swapped head, an ACKed START
the device no longer knows). It counts its full planned cap until the device's own
figures reconcile it; while no person has accepted it, it blocks new starts.
"""

from __future__ import annotations

from controller.ledger import ReconcileSource

from ._effects import (
    DEVICE_SESSION_END_COMMAND,
    Effect,
    Now,
    WriteCommand,
    WriteReconciled,
    WriteUncertain,
)
from ._running import UncertainSession

__all__ = ["UncertainSessions"]


class UncertainSessions:
    """The uncertain sessions of one bed, and the rows that record what becomes of them."""

    def __init__(self) -> None:
        self._by_id: dict[int, UncertainSession] = {}
        self._reconciled_from_status: set[int] = set()  # awaiting the head's SESSION_END

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._by_id

    def __bool__(self) -> bool:
        return bool(self._by_id)

    def all(self) -> list[UncertainSession]:
        """Oldest first."""
        return [self._by_id[sid] for sid in sorted(self._by_id)]

    def unaccepted_id(self) -> int | None:
        """The newest session no person has accepted yet (None: all accepted)."""
        ids = [u.session_id for u in self._by_id.values() if u.acknowledged_by is None]
        return max(ids) if ids else None

    def keep(self, session_id: int, planned_cap_ul: int, reason: str) -> None:
        """Track a session the ledger already holds as uncertain (after a restart)."""
        self._by_id[session_id] = UncertainSession(
            session_id=session_id, planned_cap_ul=planned_cap_ul, reason=reason
        )

    def add(
        self,
        session_id: int,
        planned_cap_ul: int,
        reason: str,
        now: Now,
        *,
        upper_bound_ul: int | None = None,
    ) -> Effect:
        """A session becomes uncertain now: the row that makes its cap (or, where the
        head's figures are gone for good, its upper bound) count."""
        self.keep(session_id, planned_cap_ul, reason)
        return WriteUncertain(
            session_id=session_id,
            reason=reason,
            planned_cap_ul=planned_cap_ul,
            at=now.at,
            upper_bound_ul=upper_bound_ul,
        )

    def reconcile(
        self,
        session_id: int,
        delivered_ul: int,
        source: ReconcileSource,
        now: Now,
        *,
        device_reason: str | None = None,
        duration_ms: int | None = None,
    ) -> WriteReconciled:
        """The device's own figures settle the session."""
        entry = self._by_id.pop(session_id)
        if source is ReconcileSource.DEVICE_STATUS:
            self._reconciled_from_status.add(session_id)
        return WriteReconciled(
            session_id=session_id,
            delivered_ul=delivered_ul,
            source=source,
            planned_cap_ul=entry.planned_cap_ul,
            device_reason=device_reason,
            duration_ms=duration_ms,
            at=now.at,
        )

    def late_end(
        self,
        session_id: int,
        *,
        delivered_ul: int,
        duration_ms: int | None,
        device_reason: str,
        now: Now,
    ) -> Effect | None:
        """A SESSION_END for a session STATUS already reconciled: keep its figures."""
        if session_id not in self._reconciled_from_status or duration_ms is None:
            return None
        self._reconciled_from_status.discard(session_id)
        return WriteCommand(
            command=DEVICE_SESSION_END_COMMAND,
            origin="device",
            body={
                "session_id": session_id,
                "delivered_ul": delivered_ul,
                "duration_ms": duration_ms,
                "device_reason": device_reason,
            },
            at=now.at,
            session_id=session_id,
        )

    def accept(self, by: str, now: Now) -> Effect | None:
        """A person accepts every unaccepted session (their full cap keeps counting)."""
        accepted = [u for u in self._by_id.values() if u.acknowledged_by is None]
        for entry in accepted:
            entry.acknowledged_by = by
        if not accepted:
            return None
        return WriteCommand(
            command="session.accept_uncertain",
            origin=by,
            body={
                "sessions": [u.session_id for u in accepted],
                "planned_cap_ul": [u.planned_cap_ul for u in accepted],
            },
            at=now.at,
        )
