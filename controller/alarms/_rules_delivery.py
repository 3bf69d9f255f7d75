"""Alarm rules of the dose: over-delivery, unconfirmed stops, unknown, late, early or low output.

Rows of the alarm table (`_rules.ALARM_RULES` lists them in evaluation order).
"""

from __future__ import annotations

from ._alarm_types import AlarmCategory, AlarmCode, AlarmPriority, AlarmRule

__all__ = ["DELIVERY_RULES"]

DELIVERY_RULES: tuple[AlarmRule, ...] = (
    AlarmRule(
        code=AlarmCode.DELIVERY_ABOVE_CAP,
        cause=(
            "the session's delivered volume exceeds its cap by more than the "
            "overshoot budget (3 µL)"
        ),
        priority=AlarmPriority.HIGH,
        category=AlarmCategory.CLINICAL,
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
        priority=AlarmPriority.HIGH,
        category=AlarmCategory.CLINICAL,
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
        priority=AlarmPriority.HIGH,
        category=AlarmCategory.CLINICAL,
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
        code=AlarmCode.DELIVERY_UNCERTAIN,
        cause=(
            "a session's delivered volume is unknown (controller restart, device "
            "reboot or swap, device figures that do not add up)"
        ),
        priority=AlarmPriority.MEDIUM,
        category=AlarmCategory.CLINICAL,
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
        priority=AlarmPriority.MEDIUM,
        category=AlarmCategory.CLINICAL,
        latching=True,
        message="Session stopped by the nebuliser's watchdog: the controller went silent",
        action="Check the patient received the dose shown; call clinical engineering.",
        why="Therapy interrupted; the device reached its safe state by itself.",
    ),
    AlarmRule(
        code=AlarmCode.DOSE_LATE,
        cause="target not reached by the expected duration + 60 s",
        priority=AlarmPriority.MEDIUM,
        category=AlarmCategory.CLINICAL,
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
        priority=AlarmPriority.MEDIUM,
        category=AlarmCategory.CLINICAL,
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
        code=AlarmCode.OUTPUT_LOW,
        cause="measured flow below 70 % of the expected flow for 10 s while nebulising",
        priority=AlarmPriority.LOW,
        category=AlarmCategory.CLINICAL,
        latching=False,
        message=(
            "Nebuliser output low: {flow_ul_min} µL/min against {expected_flow_ul_min} "
            "µL/min expected for {low_for_s} s"
        ),
        action="Check the cup level and the mesh; the session will take longer.",
        why="Slower treatment only; the device itself faults at 50 % (MESH_CLOGGED).",
    ),
)
