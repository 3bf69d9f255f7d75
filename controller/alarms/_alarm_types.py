"""The alarm table's vocabulary: priorities, categories, condition codes and the row type.

Priorities follow IEC 60601-1-8:

* HIGH — immediate response: a risk of harm now (over-delivery, a device that may
  still be nebulising out of the host's control, a hot mesh at the patient).
* MEDIUM — prompt response: therapy interrupted or the dose record is in doubt;
  the device is already in a safe state.
* LOW — awareness: nothing unsafe is happening, but something needs attention
  before it becomes a problem.

Category says who is affected: CLINICAL (physiological/treatment: the dose the
patient receives) or TECHNICAL (the equipment). Latching alarms stay on the list
after their condition is gone until a named person acknowledges them, so that an
event that came and went (a dropped link, an over-delivery) cannot be missed.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "AlarmCategory",
    "AlarmCode",
    "AlarmPriority",
    "AlarmRule",
]


class AlarmPriority(StrEnum):
    """IEC 60601-1-8 alarm priority."""

    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


class AlarmCategory(StrEnum):
    """Whether the alarm concerns the treatment (clinical) or the equipment (technical)."""

    CLINICAL = "clinical"
    TECHNICAL = "technical"


class AlarmCode(StrEnum):
    """Machine-readable alarm condition codes (stable: they appear in the ledger and MQTT)."""

    # Device fault bits (ICD §4), one alarm per bit.
    DEVICE_RESERVOIR_EMPTY = "device_reservoir_empty"
    DEVICE_HEAD_DISCONNECTED = "device_head_disconnected"
    DEVICE_MESH_CLOGGED = "device_mesh_clogged"
    DEVICE_OVER_TEMPERATURE = "device_over_temperature"
    DEVICE_WATCHDOG = "device_watchdog"
    DEVICE_SUPPLY_LOW = "device_supply_low"
    DEVICE_INTERNAL = "device_internal"
    DEVICE_UNKNOWN_FAULT = "device_unknown_fault"
    # Link.
    LINK_LOST_DURING_SESSION = "link_lost_during_session"
    LINK_LOST = "link_lost"
    # Treatment.
    OUTPUT_LOW = "output_low"
    DOSE_REACHED_EARLY = "dose_reached_early"
    DOSE_LATE = "dose_late"
    DELIVERY_ABOVE_CAP = "delivery_above_cap"
    SESSION_STOPPED_BY_WATCHDOG = "session_stopped_by_watchdog"
    DEVICE_IGNORED_STOP = "device_ignored_stop"
    STOP_UNCONFIRMED_AT_SHUTDOWN = "stop_unconfirmed_at_shutdown"
    DELIVERY_UNCERTAIN = "delivery_uncertain"
    DEVICE_SWAPPED = "device_swapped"
    DEVICE_REBOOTED = "device_rebooted"
    # Controller.
    CLOCK_UNTRUSTED = "clock_untrusted"
    STORAGE_LOW = "storage_low"
    LEDGER_UNAVAILABLE = "ledger_unavailable"
    TELEMETRY_DROPPED = "telemetry_dropped"
    # Breath-aware heads (MN-1 ICD addendum 1.1).
    NO_BREATHING_DETECTED = "no_breathing_detected"
    SESSION_ENDED_NO_BREATHING = "session_ended_no_breathing"
    BREATH_GATING_INEFFECTIVE = "breath_gating_ineffective"
    BREATH_ACCOUNTING_MISMATCH = "breath_accounting_mismatch"
    LEDGER_DISCONTINUITY = "ledger_discontinuity"
    STORAGE_EMERGENCY = "storage_emergency"
    COMMAND_FLOOD = "command_flood"


@dataclass(frozen=True, slots=True, kw_only=True)
class AlarmRule:
    """One row of the alarm table.

    `cause` says when the condition holds (for the docs and engineers). `message`
    is a `str.format` template; the evaluator supplies the named fields
    (see `controller.alarms.evaluate`). `action` tells the nurse what to do.
    `why` justifies the priority (shown in the docs, not to the nurse).
    """

    code: AlarmCode
    cause: str
    priority: AlarmPriority
    category: AlarmCategory
    latching: bool
    message: str
    action: str
    why: str
