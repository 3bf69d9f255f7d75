"""Which alarm conditions hold now: pure functions from the facts to message fields.

`present_conditions` reads one `AlarmInputs` snapshot (with the previous state for
the timed rows) and returns, for each condition that holds, the named fields of
its message, plus the timers the next evaluation needs: when the output went low,
and the current telemetry drop episode. Integer arithmetic throughout: no
rounding at a threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.mn1 import FaultBits

from ._alarm_inputs import AlarmInputs, AlarmSettings
from ._alarm_state import AlarmState
from ._alarm_types import AlarmCode
from ._breathing import breathing_conditions

__all__ = ["FAULT_BIT_ALARMS", "DropEpisode", "Present", "present_conditions"]

#: One alarm per ICD fault bit.
FAULT_BIT_ALARMS: tuple[tuple[FaultBits, AlarmCode], ...] = (
    (FaultBits.RESERVOIR_EMPTY, AlarmCode.DEVICE_RESERVOIR_EMPTY),
    (FaultBits.HEAD_DISCONNECTED, AlarmCode.DEVICE_HEAD_DISCONNECTED),
    (FaultBits.MESH_CLOGGED, AlarmCode.DEVICE_MESH_CLOGGED),
    (FaultBits.OVER_TEMPERATURE, AlarmCode.DEVICE_OVER_TEMPERATURE),
    (FaultBits.WATCHDOG, AlarmCode.DEVICE_WATCHDOG),
    (FaultBits.SUPPLY_LOW, AlarmCode.DEVICE_SUPPLY_LOW),
    (FaultBits.INTERNAL, AlarmCode.DEVICE_INTERNAL),
)
_KNOWN_FAULT_MASK = sum(int(bit) for bit, _ in FAULT_BIT_ALARMS)  # the bits are disjoint


def _ceil_s(ms: int) -> int:
    return -(-ms // 1000)


#: Condition → the named fields of its message, for every condition that holds.
Present = dict[AlarmCode, dict[str, object]]


def _device_conditions(inputs: AlarmInputs, present: Present) -> None:
    for bit, code in FAULT_BIT_ALARMS:
        if inputs.device_faults & int(bit):
            present[code] = {}
    unknown_bits = inputs.device_faults & ~_KNOWN_FAULT_MASK
    if unknown_bits:
        present[AlarmCode.DEVICE_UNKNOWN_FAULT] = {"fault_bits": f"0x{unknown_bits:04X}"}
    if inputs.link_lost:
        code = AlarmCode.LINK_LOST_DURING_SESSION if inputs.session_open else AlarmCode.LINK_LOST
        present[code] = {}
    if inputs.swapped_to_serial is not None:
        present[AlarmCode.DEVICE_SWAPPED] = {"serial": inputs.swapped_to_serial}
    if inputs.device_rebooted_mid_session:
        present[AlarmCode.DEVICE_REBOOTED] = {}


def _output_low(
    inputs: AlarmInputs,
    previous: AlarmState,
    now_ms: int,
    settings: AlarmSettings,
    present: Present,
) -> int | None:
    """Measured flow below output_low_pct % of expected, continuously for
    output_low_for_ms. Integer arithmetic: no rounding at the threshold. Returns
    when the flow first went low (None when it is not low)."""
    expected = inputs.expected_flow_ul_min
    flow = inputs.flow_ul_min
    if expected is None or expected <= 0 or flow is None:
        return None
    if flow * 100 >= expected * settings.output_low_pct:
        return None
    since = previous.output_low_since_ms
    low_since_ms = now_ms if since is None else since
    low_for_ms = now_ms - low_since_ms
    if low_for_ms >= settings.output_low_for_ms:
        present[AlarmCode.OUTPUT_LOW] = {
            "flow_ul_min": flow,
            "expected_flow_ul_min": expected,
            "low_for_s": low_for_ms // 1000,
        }
    return low_since_ms


def _treatment_conditions(
    inputs: AlarmInputs, now_ms: int, settings: AlarmSettings, present: Present
) -> None:
    session = inputs.session
    if session is not None:
        fields: dict[str, object] = {
            "session_id": session.session_id,
            "delivered_ul": session.delivered_ul,
            "session_cap_ul": session.session_cap_ul,
            "elapsed_s": _ceil_s(session.elapsed_ms),
            "expected_s": _ceil_s(session.expected_duration_ms),
            "overshoot_budget_ul": settings.overshoot_budget_ul,
        }
        if session.delivered_ul > session.session_cap_ul + settings.overshoot_budget_ul:
            present[AlarmCode.DELIVERY_ABOVE_CAP] = fields
        if session.target_reached:
            if session.elapsed_ms * 100 < session.expected_duration_ms * settings.dose_early_pct:
                present[AlarmCode.DOSE_REACHED_EARLY] = fields
        elif session.elapsed_ms >= (
            session.late_after_ms
            if session.late_after_ms is not None
            else session.expected_duration_ms + settings.dose_late_margin_ms
        ):
            present[AlarmCode.DOSE_LATE] = fields
    if inputs.stop_sent_at_ms is not None and inputs.device_nebulising:
        stop_pending_ms = now_ms - inputs.stop_sent_at_ms
        if stop_pending_ms >= settings.stop_ignored_after_ms:
            present[AlarmCode.DEVICE_IGNORED_STOP] = {"stop_pending_ms": stop_pending_ms}
    if inputs.session_stopped_by_watchdog:
        present[AlarmCode.SESSION_STOPPED_BY_WATCHDOG] = {}
    if inputs.uncertain_session_id is not None:
        present[AlarmCode.DELIVERY_UNCERTAIN] = {"session_id": inputs.uncertain_session_id}
    if inputs.stop_unconfirmed_session_id is not None:
        present[AlarmCode.STOP_UNCONFIRMED_AT_SHUTDOWN] = {
            "session_id": inputs.stop_unconfirmed_session_id
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class DropEpisode:
    """The telemetry drop counter seen, and the current outage (None: none running)."""

    seen: int
    baseline: int
    grew_at_ms: int | None


def _controller_conditions(
    inputs: AlarmInputs,
    previous: AlarmState,
    now_ms: int,
    settings: AlarmSettings,
    present: Present,
) -> DropEpisode:
    if not inputs.clock_trusted:
        present[AlarmCode.CLOCK_UNTRUSTED] = {}
    if inputs.storage_low:
        present[AlarmCode.STORAGE_LOW] = {"free_mib": inputs.storage_free_mib}
    if not inputs.ledger_ok:
        present[AlarmCode.LEDGER_UNAVAILABLE] = {}
    if inputs.ledger_discontinuity:
        present[AlarmCode.LEDGER_DISCONTINUITY] = {}
    if inputs.storage_emergency:
        present[AlarmCode.STORAGE_EMERGENCY] = {"free_mib": inputs.storage_free_mib}
    if inputs.command_flood:
        present[AlarmCode.COMMAND_FLOOD] = {"unrecorded_total": inputs.command_unrecorded_total}
    return _telemetry_drops(inputs, previous, now_ms, settings, present)


def _telemetry_drops(
    inputs: AlarmInputs,
    previous: AlarmState,
    now_ms: int,
    settings: AlarmSettings,
    present: Present,
) -> DropEpisode:
    """One latching alarm per outage with a running count (no raise/clear flapping).

    An episode starts when the outbox's drop counter grows and lasts while it keeps
    growing within `telemetry_drop_quiet_ms`; the alarm's text carries the count of
    this episode and the total. A smaller total (a counter reset) is taken as the new
    baseline.
    """
    total = inputs.telemetry_dropped_total
    seen = previous.telemetry_dropped_seen
    grew_at_ms = previous.telemetry_drop_grew_at_ms
    baseline = previous.telemetry_drop_baseline
    if total < seen:
        return DropEpisode(seen=total, baseline=total, grew_at_ms=None)
    if grew_at_ms is not None and now_ms - grew_at_ms >= settings.telemetry_drop_quiet_ms:
        grew_at_ms = None  # the outage is over: the next drop opens a new episode
    if total > seen:
        if grew_at_ms is None:
            baseline = seen
        grew_at_ms = now_ms
    if grew_at_ms is not None:
        present[AlarmCode.TELEMETRY_DROPPED] = {
            "dropped_now": total - baseline,
            "dropped_total": total,
        }
    return DropEpisode(seen=total, baseline=baseline, grew_at_ms=grew_at_ms)


def present_conditions(
    inputs: AlarmInputs, previous: AlarmState, now_ms: int, settings: AlarmSettings
) -> tuple[Present, int | None, DropEpisode]:
    """Which conditions hold now (with their message fields), and the new timers."""
    present: Present = {}
    _device_conditions(inputs, present)
    output_low_since_ms = _output_low(inputs, previous, now_ms, settings, present)
    _treatment_conditions(inputs, now_ms, settings, present)
    if inputs.breathing is not None:
        present |= breathing_conditions(inputs.breathing)
    drops = _controller_conditions(inputs, previous, now_ms, settings, present)
    return present, output_low_since_ms, drops
