"""Record third: the runtime's ledger-write effects, carried out on the ledger.

`Publications` builds the MQTT messages that go into the outbox in the same
transaction as their ledger row (built on the event loop, where the telemetry
state lives); `perform_write` runs on the ledger's writer thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from controller.alarms import AlarmEvent, AlarmState
from controller.dosing import Decision
from controller.ledger import AlarmAction, Ledger, OutboxMessage
from controller.session import (
    LedgerWrite,
    WriteAlarm,
    WriteBreaths,
    WriteBreathSummary,
    WriteCommand,
    WriteDecision,
    WriteEnded,
    WriteIntent,
    WriteOverride,
    WriteProgress,
    WriteReconciled,
    WriteStarted,
    WriteStartRefused,
    WriteUncertain,
)

__all__ = ["Publications", "messages_for", "perform_write", "write_intent"]

#: The actor named on alarm events the controller raises or clears itself.
_HOST = "controller"


class Publications:
    """Builds the MQTT messages that accompany ledger rows (None: MQTT not configured)."""

    def session(self, body: dict[str, Any]) -> Sequence[OutboxMessage]:
        """Messages for a session event (started/ended/uncertain/reconciled)."""
        return ()

    def alarm(self, event: AlarmEvent, active: AlarmState) -> Sequence[OutboxMessage]:
        """Messages for an alarm event and the new active set."""
        return ()

    def decision(self, decision: Decision, body: dict[str, Any]) -> Sequence[OutboxMessage]:
        """Message for an allow/refuse/stop decision."""
        return ()

    def committed(self) -> None:
        """Called on the event loop once rows carrying messages are committed."""


def messages_for(write: LedgerWrite, publications: Publications) -> Sequence[OutboxMessage]:
    """The messages committed with this row (built on the event loop)."""
    match write:
        case WriteStarted() | WriteEnded() | WriteUncertain() | WriteReconciled():
            return publications.session(write.body())
        case WriteAlarm(event=event, active=active):
            return publications.alarm(event, active)
        case WriteDecision(decision=decision, trace=trace) if decision is not None:
            return publications.decision(decision, dict(trace))
        case _:
            return ()


def write_intent(ledger: Ledger, intent: WriteIntent) -> int:
    """Commit the intent row (before START goes out); returns the new session id."""
    return ledger.record_intent(
        subject_id=intent.subject_id,
        planned_cap_ul=intent.planned_cap_ul,
        device_target_ul=intent.planned_cap_ul,
        device_max_duration_s=intent.max_duration_s,
        output_pct=intent.output_pct,
        decision_trace=intent.decision_trace,
        at=intent.at,
        drug=intent.drug,
        concentration_per_ml=intent.concentration_per_ml,
        dose_unit=intent.dose_unit,
        administration_id=intent.administration_id,
        delivery=intent.delivery,
    )


def perform_write(  # noqa: PLR0911 - one arm per record kind
    ledger: Ledger, write: LedgerWrite, publish: Sequence[OutboxMessage]
) -> object:
    """Write one record (on the writer thread), with its messages."""
    match write:
        case WriteStarted(session_id=sid, at=at):
            return ledger.record_started(sid, at=at, publish=publish)
        case WriteEnded():
            return ledger.record_ended(
                write.session_id,
                delivered_ul=write.delivered_ul,
                duration_ms=write.duration_ms,
                reason=write.reason,
                source=write.source,
                host_reason=write.host_reason,
                device_reason=write.device_reason,
                at=write.at,
                publish=publish,
            )
        case WriteUncertain(session_id=sid, reason=reason, at=at, upper_bound_ul=bound):
            return ledger.mark_uncertain(
                sid, reason=reason, at=at, upper_bound_ul=bound, publish=publish
            )
        case WriteReconciled():
            return ledger.reconcile(
                write.session_id,
                delivered_ul=write.delivered_ul,
                source=write.source,
                device_reason=write.device_reason,
                duration_ms=write.duration_ms,
                at=write.at,
                publish=publish,
            )
        case WriteStartRefused(session_id=sid, nak_reason=nak, at=at):
            return ledger.record_start_refused(sid, nak_reason=nak, at=at)
        case WriteProgress():
            return ledger.record_progress(
                write.session_id,
                delivered_ul=write.delivered_ul,
                flow_ul_min=write.flow_ul_min,
                reservoir_ul=write.reservoir_ul,
                at=write.at,
            )
        case WriteDecision():
            return ledger.record_decision(
                subject_id=write.subject_id,
                allowed=write.allowed,
                trace=write.trace,
                at=write.at,
                session_id=write.session_id,
                publish=publish,
            )
        case WriteBreathSummary(session_id=sid, figures=figures, at=at):
            ledger.record_breath_summary(sid, figures=figures, at=at)
            return None
        case WriteBreaths(rows=rows):
            ledger.record_breaths(rows)
            return None
        case WriteOverride(override=override, subject_id=subject, at=at):
            return ledger.record_override(override, subject_id=subject, at=at)
        case WriteAlarm(event=event, session_id=sid, at=at):
            return ledger.record_alarm(
                alarm_code=str(event.code),
                action=AlarmAction(str(event.kind)),
                actor=event.by or _HOST,
                at=at,
                priority=str(event.priority),
                message=event.message,
                session_id=sid,
                publish=publish,
            )
        case WriteCommand(command=command, origin=origin, body=body, at=at, session_id=sid):
            return ledger.record_command(
                command=command, origin=origin, body=body, at=at, session_id=sid
            )
