"""The alarm rules as data: one row per alarm condition.

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

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

__all__ = [
    "ALARM_RULES",
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


_H = AlarmPriority.HIGH
_M = AlarmPriority.MEDIUM
_L = AlarmPriority.LOW
_CLIN = AlarmCategory.CLINICAL
_TECH = AlarmCategory.TECHNICAL

_RULES: tuple[AlarmRule, ...] = (
    AlarmRule(
        code=AlarmCode.DELIVERY_ABOVE_CAP,
        cause=(
            "the session's delivered volume exceeds its cap by more than the "
            "overshoot budget (3 µL)"
        ),
        priority=_H,
        category=_CLIN,
        latching=True,
        message=(
            "Over-delivery: {delivered_ul} µL delivered against a session cap of "
            "{session_cap_ul} µL (allowed overshoot {overshoot_budget_ul} µL)"
        ),
        action=(
            "Check the patient now and inform the prescriber; take the head out of "
            "service and call clinical engineering."
        ),
        why="The patient received more drug than prescribed: direct risk of harm.",
    ),
    AlarmRule(
        code=AlarmCode.DEVICE_IGNORED_STOP,
        cause="the device still reports NEBULISING 500 ms after the host's STOP",
        priority=_H,
        category=_CLIN,
        latching=True,
        message="Nebuliser still running {stop_pending_ms} ms after the controller sent STOP",
        action=(
            "Press the STOP button on the nebuliser head now; if the mist continues, "
            "remove the mask and unplug the head. Call clinical engineering."
        ),
        why="Delivery continues outside the controller's control: over-delivery risk.",
    ),
    AlarmRule(
        code=AlarmCode.STOP_UNCONFIRMED_AT_SHUTDOWN,
        cause=(
            "the controller was asked to shut down during session N and the head did not "
            "confirm STOP within the shutdown bound"
        ),
        priority=_H,
        category=_CLIN,
        latching=True,
        message=(
            "Controller shut down while session {session_id} may still be running: the "
            "head did not confirm STOP; recorded as uncertain (full cap counted)"
        ),
        action=(
            "Go to the bed now: press the STOP button on the nebuliser head; if the mist "
            "continues, remove the mask and unplug the head. Call clinical engineering."
        ),
        why="Nothing supervises the head any more: only its own watchdog can stop it.",
    ),
    AlarmRule(
        code=AlarmCode.LINK_LOST_DURING_SESSION,
        cause=(
            "no valid STATUS for 300 ms (or 5 unanswered retransmissions) while a session is "
            "open; clears when STATUS returns (the session goes on if STATUS returned within "
            "the head's 1 s watchdog, otherwise it was stopped and its end is recorded)"
        ),
        priority=_H,
        category=_TECH,
        latching=False,
        message="Lost contact with the nebuliser during a session",
        action=(
            "Go to the bedside; press STOP on the head if mist is still coming out; "
            "check the head's cable to the controller."
        ),
        why=(
            "The controller cannot see or stop delivery; only the device's own cap "
            "and 1 s watchdog protect the patient."
        ),
    ),
    AlarmRule(
        code=AlarmCode.DEVICE_OVER_TEMPERATURE,
        cause="fault bit 3: mesh above 45.00 °C",
        priority=_H,
        category=_TECH,
        latching=True,
        message="Nebuliser mesh over temperature (above 45 °C); nebulising stopped",
        action=(
            "Remove the mask from the patient, check the skin near the mouthpiece, "
            "let the head cool; call clinical engineering before reuse."
        ),
        why="A hot mesh at the patient interface risks a burn; act at once.",
    ),
    AlarmRule(
        code=AlarmCode.LEDGER_DISCONTINUITY,
        cause=(
            "at start-up the dose ledger is missing, empty, unreadable, of another device, "
            "of an unexpected schema, or older than its anchors (audit log, anchor file, "
            "ward station)"
        ),
        priority=_H,
        category=_CLIN,
        latching=True,
        message=(
            "Dose history missing or rolled back: the controller refuses every start until "
            "the ledger is restored"
        ),
        action=(
            "Give no dose from this controller; call clinical engineering to restore the "
            "ledger (docs/ledger.md) and check the ward record for doses since the backup."
        ),
        why=(
            "With part of the history gone the dose limits would admit a dose already "
            "given (e.g. a second once-daily dose): direct risk of over-delivery."
        ),
    ),
    AlarmRule(
        code=AlarmCode.DELIVERY_UNCERTAIN,
        cause=(
            "a session's delivered volume is unknown (controller restart, device "
            "reboot or swap, device figures that do not add up)"
        ),
        priority=_M,
        category=_CLIN,
        latching=True,
        message=(
            "Delivered volume of session {session_id} is unknown; its full planned cap "
            "counts against the dose limits until reconciled"
        ),
        action=(
            "Check the nebuliser cup and the patient; record the observed dose in the "
            "reconciliation screen or inform the prescriber."
        ),
        why=(
            "The dose record is in doubt but further doses are already limited "
            "conservatively; a prompt review is needed, not an emergency."
        ),
    ),
    AlarmRule(
        code=AlarmCode.SESSION_STOPPED_BY_WATCHDOG,
        cause="the device ended the session with reason WATCHDOG (no host frame for 1000 ms)",
        priority=_M,
        category=_CLIN,
        latching=True,
        message="Session stopped by the nebuliser's watchdog: the controller went silent",
        action="Check the patient received the dose shown; call clinical engineering.",
        why="Therapy interrupted; the device reached its safe state by itself.",
    ),
    AlarmRule(
        code=AlarmCode.DEVICE_SWAPPED,
        cause="IDENT reports a different serial number while a session is open",
        priority=_M,
        category=_TECH,
        latching=True,
        message="A different nebuliser head ({serial}) was connected during a session",
        action=(
            "Confirm the right head is on the right patient; the interrupted session "
            "must be reconciled before a new start."
        ),
        why="The session's device figures are lost; further doses are already blocked.",
    ),
    AlarmRule(
        code=AlarmCode.DEVICE_REBOOTED,
        cause="STATUS uptime went backwards while a session was open",
        priority=_M,
        category=_TECH,
        latching=True,
        message="The nebuliser restarted during a session; its delivery record was lost",
        action=(
            "Check the power and cable of the head; reconcile the interrupted session; "
            "call clinical engineering if it happens again."
        ),
        why="Therapy interrupted and the dose record is lost; the device is safe (idle).",
    ),
    AlarmRule(
        code=AlarmCode.LEDGER_UNAVAILABLE,
        cause="the dose ledger cannot be written or failed its integrity check",
        priority=_M,
        category=_TECH,
        latching=True,
        message="The dose record (ledger) is unavailable or damaged; new starts are refused",
        action="Call clinical engineering; give doses by another device meanwhile.",
        why=(
            "Dose history cannot be trusted, so starts are refused (no over-delivery) "
            "but therapy is blocked."
        ),
    ),
    AlarmRule(
        code=AlarmCode.DEVICE_HEAD_DISCONNECTED,
        cause="fault bit 1: nebuliser head unplugged",
        priority=_M,
        category=_TECH,
        latching=True,
        message="Nebuliser head disconnected",
        action="Reconnect the head, then clear the fault at the controller.",
        why="Therapy interrupted; no aerosol is produced.",
    ),
    AlarmRule(
        code=AlarmCode.DEVICE_MESH_CLOGGED,
        cause="fault bit 2: output below 50 % of expected for 3 s (device's own check)",
        priority=_M,
        category=_TECH,
        latching=True,
        message="Nebuliser mesh clogged (output below half of expected)",
        action="Clean or replace the mesh as per the instructions for use, then clear the fault.",
        why="Therapy interrupted or under-delivered; device stopped.",
    ),
    AlarmRule(
        code=AlarmCode.DEVICE_WATCHDOG,
        cause="fault bit 4: the device's watchdog expired while nebulising",
        priority=_M,
        category=_TECH,
        latching=True,
        message="Nebuliser watchdog fault: the controller stopped talking to it",
        action="Clear the fault; call clinical engineering if it repeats.",
        why="The device stopped itself safely; the controller or cable misbehaved.",
    ),
    AlarmRule(
        code=AlarmCode.DEVICE_SUPPLY_LOW,
        cause="fault bit 5: supply voltage low",
        priority=_M,
        category=_TECH,
        latching=True,
        message="Nebuliser supply voltage low",
        action="Check the power supply and cable of the head, then clear the fault.",
        why="Therapy interrupted; device stopped.",
    ),
    AlarmRule(
        code=AlarmCode.DEVICE_INTERNAL,
        cause="fault bit 6: firmware self-test failure",
        priority=_M,
        category=_TECH,
        latching=True,
        message="Nebuliser internal self-test failure",
        action="Take the head out of service and call clinical engineering.",
        why="The device refuses to nebulise (safe) but cannot be used.",
    ),
    AlarmRule(
        code=AlarmCode.DEVICE_UNKNOWN_FAULT,
        cause="a fault bit this controller does not know (bits 7-15)",
        priority=_M,
        category=_TECH,
        latching=True,
        message="Nebuliser reports an unknown fault (bits {fault_bits})",
        action="Take the head out of service and call clinical engineering.",
        why="Unknown firmware state; the device refuses to nebulise while faulted.",
    ),
    AlarmRule(
        code=AlarmCode.DEVICE_RESERVOIR_EMPTY,
        cause="fault bit 0: the mesh runs dry",
        priority=_M,
        category=_TECH,
        latching=False,
        message="Nebuliser cup empty",
        action="Refill the cup with the prescribed medication if the dose is not complete.",
        why="Therapy interrupted; clears by itself when liquid is added (ICD).",
    ),
    AlarmRule(
        code=AlarmCode.DOSE_LATE,
        cause="target not reached by the expected duration + 60 s",
        priority=_M,
        category=_CLIN,
        latching=True,
        message=(
            "Dose not complete after {elapsed_s} s (expected {expected_s} s): "
            "{delivered_ul} of {session_cap_ul} µL"
        ),
        action="Check the mask fit, the cup level and the mesh; consider cleaning the mesh.",
        why="The patient is under-treated; needs a prompt look, not an emergency.",
    ),
    AlarmRule(
        code=AlarmCode.DOSE_REACHED_EARLY,
        cause="target reached in under 50 % of the expected duration",
        priority=_M,
        category=_CLIN,
        latching=True,
        message=(
            "Dose reached after {elapsed_s} s, much sooner than the expected "
            "{expected_s} s: check the delivered amount"
        ),
        action=(
            "Check the patient and the cup level: a leak, a wrong medication volume or "
            "a faulty flow sensor are possible. Inform the prescriber if in doubt."
        ),
        why="The device figures may be wrong (over-delivery not excluded); prompt review.",
    ),
    AlarmRule(
        code=AlarmCode.STORAGE_LOW,
        cause="free disk space below the ledger's warning level",
        priority=_M,
        category=_TECH,
        latching=False,
        message="Controller storage low ({free_mib} MiB free); records may soon be refused",
        action="Call clinical engineering to free storage.",
        why="Dose records are at risk soon; starts will be refused at the floor.",
    ),
    AlarmRule(
        code=AlarmCode.NO_BREATHING_DETECTED,
        cause=(
            "a breath-gated session is WAITING and no inspiration was detected (no BREATH "
            "report) for the prescription's apnoea_s"
        ),
        priority=_M,
        category=_CLIN,
        latching=False,
        message=(
            "No breathing detected for {no_breath_s} s: the nebuliser has paused "
            "(session {session_id}) — check patient and mask"
        ),
        action=(
            "Check the patient's breathing now, then the mask or mouthpiece fit; the "
            "dose resumes by itself when breathing is detected."
        ),
        why=(
            "The patient may not be breathing, or the mask is off; the device is safe "
            "(no aerosol) but the patient needs a prompt look."
        ),
    ),
    AlarmRule(
        code=AlarmCode.SESSION_ENDED_NO_BREATHING,
        cause="the device ended a breath-gated session with reason NO_BREATHING",
        priority=_M,
        category=_CLIN,
        latching=True,
        message=(
            "Session {session_id} ended: no breathing detected for {waited_s} s — check "
            "patient and mask"
        ),
        action=(
            "Check the patient's breathing and the mask or mouthpiece fit; the dose is "
            "incomplete: restart only with a new confirmation at the bedside."
        ),
        why="Therapy interrupted and the patient may not be breathing; the device is safe.",
    ),
    AlarmRule(
        code=AlarmCode.BREATH_GATING_INEFFECTIVE,
        cause=(
            "in a breath-gated session, expiratory-phase aerosol above 5 % of the session's "
            "reported aerosol (judged from 10 µL on)"
        ),
        priority=_M,
        category=_CLIN,
        latching=True,
        message=(
            "Breath gating ineffective: {exp_pct} % of the aerosol of session {session_id} "
            "was released while the patient breathed out (limit 5 %)"
        ),
        action=(
            "Check the mask or mouthpiece fit and the head's flow sensor; if it persists, "
            "take the head out of service and call clinical engineering."
        ),
        why=(
            "The patient is under-treated and staff are exposed to the drug; the dose "
            "limits are unaffected (they use the volume that left the cup)."
        ),
    ),
    AlarmRule(
        code=AlarmCode.STORAGE_EMERGENCY,
        cause=(
            "free disk space below the emergency level, or the ledger's end-record reserve "
            "is used up"
        ),
        priority=_M,
        category=_TECH,
        latching=True,
        message=(
            "Controller storage critically low ({free_mib} MiB free): the running session "
            "was stopped so that its end could still be recorded"
        ),
        action="Call clinical engineering to free storage before the next dose.",
        why=(
            "Therapy is interrupted (device safe, end recorded); without space no further "
            "dose record could be kept."
        ),
    ),
    AlarmRule(
        code=AlarmCode.LINK_LOST,
        cause="no valid STATUS for 300 ms while no session is open",
        priority=_L,
        category=_TECH,
        latching=False,
        message="No contact with the nebuliser (no session running); starts are refused",
        action="Check the head's cable to the controller.",
        why="Nothing is being delivered; only future doses are blocked.",
    ),
    AlarmRule(
        code=AlarmCode.OUTPUT_LOW,
        cause="measured flow below 70 % of the expected flow for 10 s while nebulising",
        priority=_L,
        category=_CLIN,
        latching=False,
        message=(
            "Nebuliser output low: {flow_ul_min} µL/min against {expected_flow_ul_min} "
            "µL/min expected for {low_for_s} s"
        ),
        action="Check the cup level and the mesh; the session will take longer.",
        why="Slower treatment only; the device itself faults at 50 % (MESH_CLOGGED).",
    ),
    AlarmRule(
        code=AlarmCode.CLOCK_UNTRUSTED,
        cause="the clock-trust rule does not trust the wall clock",
        priority=_L,
        category=_TECH,
        latching=False,
        message="Controller clock not trusted; new starts are refused",
        action="Call clinical engineering (network time / real-time clock).",
        why="A running session is unaffected; a start attempt shows the refusal reason.",
    ),
    AlarmRule(
        code=AlarmCode.TELEMETRY_DROPPED,
        cause=(
            "the outbox dropped telemetry samples to stay within its disk budget "
            "(one alarm per outage: drops less than 60 s apart belong to one outage)"
        ),
        priority=_L,
        category=_TECH,
        latching=True,
        message=(
            "{dropped_now} telemetry messages dropped by the disk budget in this outage "
            "({dropped_total} in total); dose records are kept"
        ),
        action="Call clinical engineering: the ward monitor is missing data.",
        why="Only monitoring samples are lost (dose records are never dropped).",
    ),
    AlarmRule(
        code=AlarmCode.BREATH_ACCOUNTING_MISMATCH,
        cause=(
            "after a session's last BREATH report, the reports' aerosol (lost reports "
            "estimated) differs from delivered_ul by more than 2 % + 5 µL"
        ),
        priority=_L,
        category=_TECH,
        latching=True,
        message=(
            "Breath reports of session {session_id} account for {accounted_ul} µL of the "
            "{delivered_ul} µL delivered ({lost_reports} reports lost)"
        ),
        action=(
            "No action at the bedside: the dose record uses the delivered volume. Call "
            "clinical engineering if it repeats (flow sensor or head firmware)."
        ),
        why=(
            "Only the inspiratory-phase estimate is in doubt; the dose and its limits "
            "are unaffected."
        ),
    ),
    AlarmRule(
        code=AlarmCode.COMMAND_FLOOD,
        cause=(
            "the command intake has refused or dropped messages beyond its per-sender "
            "record rate for 1.5 s or more (no quiet gap over 5 s)"
        ),
        priority=_L,
        category=_TECH,
        latching=True,
        message=(
            "Command channel flooded: {unrecorded_total} messages refused or dropped "
            "without an individual record (counted in the audit log)"
        ),
        action=(
            "Call clinical engineering / IT security: someone is flooding this bed's "
            "command topic. Use the STOP button at the bedside if needed."
        ),
        why=(
            "Nothing unsafe happens (signed STOP and acknowledgements still pre-empt the "
            "flood, the bedside stop does not use the network), but the ward network is "
            "under attack or misconfigured."
        ),
    ),
)

#: Alarm table, in the order alarms are evaluated and listed (HIGH first).
ALARM_RULES: Mapping[AlarmCode, AlarmRule] = MappingProxyType({r.code: r for r in _RULES})
