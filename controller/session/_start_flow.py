"""The start flow of the session runtime: a pending START, its deadlines, its answer.

`StartFlow` sits between `DeviceObserver` (what the device shows) and
`SessionRuntime` (what people ask): it keeps the pending start request and settles it
once the device has shown what became of the START — running, refused, or unknown
(safety rule 5: never a blind second START).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from controller.dosing import Decision

from ._effects import (
    Effect,
    LogLine,
    Now,
    SendStop,
    StartOutcome,
    StartSettled,
    WriteAlarm,
    WriteStartRefused,
)
from ._observe import DeviceObserver
from ._states import SessionEvent, SessionState

__all__ = [
    "CONFIRM_NEBULISING_MS",
    "DEFAULT_NOMINAL_UL_MIN",
    "PENDING_STATES",
    "RESOLVE_START_MS",
    "StartFlow",
    "effect_rank",
]

#: After START is ACKed, STATUS must show our session nebulising within this time.
CONFIRM_NEBULISING_MS: Final = 1000
#: After an unanswered START, wait this long for a STATUS that tells the outcome.
RESOLVE_START_MS: Final = 700
#: The flow assumed before IDENT names the head's nominal output (ICD §4: 400 µL/min).
DEFAULT_NOMINAL_UL_MIN: Final = 400
PENDING_STATES: Final = frozenset(
    {SessionState.STARTING, SessionState.START_UNKNOWN, SessionState.CONFIRMING}
)


def effect_rank(effect: Effect) -> int:
    """Safe state first, alarm second, record third (rule 2): the sort key of effects."""
    match effect:
        case SendStop():
            return 0
        case WriteAlarm():
            return 1
        case LogLine():
            return 3
        case _:
            return 2


@dataclass(slots=True, kw_only=True)
class _PendingStart:
    decision: Decision
    expected_flow_ul_min: int
    worst_flow_ul_min: int
    session_id: int | None = None
    answered: bool = False
    deadline_ms: int | None = None


class StartFlow(DeviceObserver):
    """The pending start and the CONFIRM-button watch (state only; no public inputs)."""

    _start: _PendingStart | None
    _confirm_baseline: int | None
    _confirm_armed: bool
    confirm_pressed: bool

    # ------------------------------------------------------------------ start flow

    def _observed_confirm(self) -> None:
        status = self.last_status
        if not self._confirm_armed or status is None:
            return
        if self._confirm_baseline is None:
            self._confirm_baseline = status.confirm_count
        elif status.confirm_count != self._confirm_baseline:
            self.confirm_pressed = True

    def _start_refused(self, pending: _PendingStart, reason: str, now: Now) -> None:
        sid = pending.session_id
        assert sid is not None
        if self._session is not None and self._session.session_id == sid:
            self._session = None
        if self.state in (SessionState.STARTING, SessionState.START_UNKNOWN):
            self._apply(SessionEvent.START_NAKED)
        self._effects.append(WriteStartRefused(session_id=sid, nak_reason=reason, at=now.at))
        self._settle(
            StartOutcome(
                started=False,
                session_id=sid,
                reasons=(f"device refused START: {reason}",),
                decision=pending.decision,
            )
        )

    def _start_deadline_passed(self, pending: _PendingStart, now: Now) -> None:
        pending.deadline_ms = None
        if self.state is SessionState.CONFIRMING:
            self._apply(SessionEvent.CONFIRM_TIMEOUT)
            self._stop("confirm_timeout", now)
        elif self.state is SessionState.START_UNKNOWN:
            self._lose_session(SessionEvent.DELIVERY_UNKNOWN, "start_unanswered", now)
        self._settle_start(now, deadline_passed=True)

    def _settle_start(self, now: Now, *, deadline_passed: bool = False) -> None:
        """Answer the pending start once the device has shown what became of it."""
        pending = self._start
        if pending is None or not pending.answered or pending.session_id is None:
            return
        sid = pending.session_id
        session = self._session
        ours_open = session is not None and session.session_id == sid
        if ours_open and self.state in PENDING_STATES and not deadline_passed:
            return
        if ours_open and self.state is SessionState.IDLE:
            self._start_refused(pending, "NOT_RUNNING_AFTER_UNANSWERED_START", now)
            return
        if sid in self._ran:
            self._settle(
                StartOutcome(started=True, session_id=sid, reasons=(), decision=pending.decision)
            )
            return
        self._settle(
            StartOutcome(
                started=False,
                session_id=sid,
                reasons=(f"device did not confirm session {sid} running ({self.state.value})",),
                decision=pending.decision,
            )
        )

    def _settle(self, outcome: StartOutcome) -> None:
        self._start = None
        self._effects.append(StartSettled(outcome))
