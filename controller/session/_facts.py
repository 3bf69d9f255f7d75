"""The runtime's alarm book: the alarm state, the facts only the runtime knows, the
inputs of the pure alarm table, and the alarm rows to record.

STATUS carries the device's facts; some facts only the runtime knows (a watchdog end
just seen, a head swapped or rebooted mid-session, a shutdown with the head not
confirmed stopped). Those that latch stay set until a person acknowledges the alarm.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from controller.alarms import (
    AlarmCode,
    AlarmEvent,
    AlarmInputs,
    AlarmSettings,
    AlarmState,
    BreathingFacts,
    SessionProgress,
    acknowledge,
    evaluate,
)
from drivers.mn1 import DeviceState, FaultBits, Status

from ._effects import Effect, LogLine, Now, WriteAlarm
from ._running import Conditions, RunningSession

__all__ = ["ALARM_AFTER_END_MS", "AlarmBook", "AlarmFacts", "alarm_inputs"]

#: An alarm raised this soon after a session ended is recorded against that session.
ALARM_AFTER_END_MS: Final = 2000
#: The actor named on alarm events the controller raises or clears itself.
_HOST: Final = "controller"


@dataclass(slots=True)
class AlarmFacts:
    """Facts for the alarm table that STATUS does not carry."""

    watchdog_stop: bool = False  # one-shot: evaluated once, the alarm latches
    swapped_to_serial: str | None = None  # latched until `device_swapped` is acknowledged
    rebooted_mid_session: bool = False  # latched until `device_rebooted` is acknowledged
    stop_unconfirmed_session_id: int | None = None
    last_end: tuple[int, int] | None = None  # (session id, ms) the last session ended
    dry_end_expected: bool = False  # the cup ran dry at a to-dryness dose's expected volume


def _progress(session: RunningSession, now_ms: int, *, gated: bool) -> SessionProgress | None:
    if session.nebulising_since_ms is None:
        return None
    expected_ms = (
        session.cap_ul * 60_000 // max(1, session.expected_flow_ul_min)
        if session.expected_flow_ul_min
        else session.max_duration_s * 1000
    )
    if gated:
        # A gated run pulses only in inspiration and pauses while the patient does not
        # breathe: it is late only when the head's own limit ends it (max duration).
        # The continuous figure stays the lower bound for "reached early".
        return SessionProgress(
            session_id=session.session_id,
            delivered_ul=session.delivered_ul,
            session_cap_ul=session.cap_ul,
            elapsed_ms=max(0, now_ms - session.nebulising_since_ms),
            expected_duration_ms=expected_ms,
            target_reached=session.delivered_ul >= session.cap_ul,
            late_after_ms=session.max_duration_s * 1000,
        )
    return SessionProgress(
        session_id=session.session_id,
        delivered_ul=session.delivered_ul,
        session_cap_ul=session.cap_ul,
        elapsed_ms=max(0, now_ms - session.nebulising_since_ms),
        expected_duration_ms=expected_ms,
        target_reached=session.delivered_ul >= session.cap_ul,
    )


def alarm_inputs(
    *,
    session: RunningSession | None,
    status: Status | None,
    device_nebulising: bool,
    link_lost: bool,
    conditions: Conditions,
    facts: AlarmFacts,
    uncertain_session_id: int | None,
    now_ms: int,
    breathing: BreathingFacts | None = None,
    gated: bool = False,
) -> AlarmInputs:
    """Every fact the alarm table looks at, from the runtime's view of the bed.

    `device_nebulising` includes WAITING (a gated session paused: still in session
    for the ignored-STOP alarm); the flow alarms only look at NEBULISING, since a
    head that waits for a breath emits nothing on purpose.
    """
    emitting = status is not None and status.state is DeviceState.NEBULISING
    running = session if device_nebulising and emitting else None
    faults = int(status.faults) if status is not None else 0
    if facts.dry_end_expected:
        faults &= ~int(FaultBits.RESERVOIR_EMPTY)  # the planned end of a to-dryness dose
    return AlarmInputs(
        device_faults=faults,
        link_lost=link_lost,
        session_open=session is not None,
        flow_ul_min=running.flow_ul_min if running is not None else None,
        expected_flow_ul_min=running.expected_flow_ul_min if running is not None else None,
        session=_progress(session, now_ms, gated=gated) if session is not None else None,
        device_nebulising=device_nebulising,
        stop_sent_at_ms=session.stop_sent_ms if session is not None else None,
        session_stopped_by_watchdog=facts.watchdog_stop,
        uncertain_session_id=uncertain_session_id,
        clock_trusted=conditions.clock_trusted,
        storage_low=conditions.storage_low,
        storage_emergency=conditions.storage_emergency,
        storage_free_mib=conditions.storage_free_mib,
        ledger_ok=conditions.ledger_failures == 0,
        swapped_to_serial=facts.swapped_to_serial,
        device_rebooted_mid_session=facts.rebooted_mid_session,
        telemetry_dropped_total=conditions.telemetry_dropped_total,
        stop_unconfirmed_session_id=facts.stop_unconfirmed_session_id,
        command_flood=conditions.command_flood,
        command_unrecorded_total=conditions.command_unrecorded_total,
        breathing=breathing,
    )


class AlarmBook:
    """The active alarms, their latched facts, and the rows that record each change."""

    def __init__(self, settings: AlarmSettings) -> None:
        self.state = AlarmState()
        self.facts = AlarmFacts()
        self._settings = settings

    def evaluate(
        self, inputs: AlarmInputs, *, open_session_id: int | None, now: Now
    ) -> list[Effect]:
        """Apply the alarm table; the rows (and log lines) for what changed."""
        self.state, events = evaluate(inputs, self.state, now.ms, settings=self._settings)
        self.facts.watchdog_stop = False  # one-shot; the alarm latches
        return self._rows(events, open_session_id, now)

    def acknowledge(
        self, code: AlarmCode, by: str, *, open_session_id: int | None, now: Now
    ) -> tuple[list[AlarmEvent], list[Effect]]:
        """A person acknowledges `code`; a latched head fact ends with it."""
        self.state, events = acknowledge(self.state, code, by, now.ms)
        if code is AlarmCode.DEVICE_SWAPPED:
            self.facts.swapped_to_serial = None
        elif code is AlarmCode.DEVICE_REBOOTED:
            self.facts.rebooted_mid_session = False
        return events, self._rows(events, open_session_id, now)

    def _rows(
        self, events: list[AlarmEvent], open_session_id: int | None, now: Now
    ) -> list[Effect]:
        session_id = open_session_id
        last_end = self.facts.last_end
        if (
            session_id is None
            and last_end is not None
            and now.ms - last_end[1] <= ALARM_AFTER_END_MS
        ):
            # A fault that ends a session is seen in the STATUS after its SESSION_END.
            session_id = last_end[0]
        rows: list[Effect] = []
        for event in events:
            rows.append(
                WriteAlarm(event=event, active=self.state, session_id=session_id, at=now.at)
            )
            rows.append(
                LogLine(
                    "warning",
                    "alarm",
                    {
                        "kind": str(event.kind),
                        "code": str(event.code),
                        "priority": str(event.priority),
                        "message": event.message,
                        "by": event.by or _HOST,
                    },
                )
            )
        return rows
