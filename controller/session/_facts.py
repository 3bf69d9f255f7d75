"""The alarm evaluator's inputs, built from the runtime's facts (one pure function)."""

from __future__ import annotations

from controller.alarms import AlarmInputs, SessionProgress
from drivers.mn1 import Status

from ._running import Conditions, RunningSession

__all__ = ["alarm_inputs"]


def _progress(session: RunningSession, now_ms: int) -> SessionProgress | None:
    if session.nebulising_since_ms is None:
        return None
    expected_ms = (
        session.cap_ul * 60_000 // max(1, session.expected_flow_ul_min)
        if session.expected_flow_ul_min
        else session.max_duration_s * 1000
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
    watchdog_stop: bool,
    uncertain_session_id: int | None,
    swapped_to_serial: str | None,
    rebooted_mid_session: bool,
    stop_unconfirmed_session_id: int | None,
    now_ms: int,
) -> AlarmInputs:
    """Every fact the alarm table looks at, from the runtime's view of the bed."""
    running = session if device_nebulising else None
    return AlarmInputs(
        device_faults=int(status.faults) if status is not None else 0,
        link_lost=link_lost,
        session_open=session is not None,
        flow_ul_min=running.flow_ul_min if running is not None else None,
        expected_flow_ul_min=running.expected_flow_ul_min if running is not None else None,
        session=_progress(session, now_ms) if session is not None else None,
        device_nebulising=device_nebulising,
        stop_sent_at_ms=session.stop_sent_ms if session is not None else None,
        session_stopped_by_watchdog=watchdog_stop,
        uncertain_session_id=uncertain_session_id,
        clock_trusted=conditions.clock_trusted,
        storage_low=conditions.storage_low,
        storage_free_mib=conditions.storage_free_mib,
        ledger_ok=conditions.ledger_failures == 0,
        swapped_to_serial=swapped_to_serial,
        device_rebooted_mid_session=rebooted_mid_session,
        telemetry_dropped_total=conditions.telemetry_dropped_total,
        stop_unconfirmed_session_id=stop_unconfirmed_session_id,
    )
