"""Alarm rules of the head and its link: ICD fault bits, link loss, a swapped or rebooted head.

Rows of the alarm table (`_rules.ALARM_RULES` lists them in evaluation order).
"""

from __future__ import annotations

from ._alarm_types import AlarmCategory, AlarmCode, AlarmPriority, AlarmRule

__all__ = ["DEVICE_RULES"]

DEVICE_RULES: tuple[AlarmRule, ...] = (
    AlarmRule(
        code=AlarmCode.LINK_LOST_DURING_SESSION,
        cause=(
            "no valid STATUS for 300 ms (or 5 unanswered retransmissions) while a session is "
            "open; clears when STATUS returns (the session goes on if STATUS returned within "
            "the head's 1 s watchdog, otherwise it was stopped and its end is recorded)"
        ),
        priority=AlarmPriority.HIGH,
        category=AlarmCategory.TECHNICAL,
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
        priority=AlarmPriority.HIGH,
        category=AlarmCategory.TECHNICAL,
        latching=True,
        message="Nebuliser mesh over temperature (above 45 °C); nebulising stopped",
        action=(
            "Remove the mask from the patient, check the skin near the mouthpiece, "
            "let the head cool; call clinical engineering before reuse."
        ),
        why="A hot mesh at the patient interface risks a burn; act at once.",
    ),
    AlarmRule(
        code=AlarmCode.DEVICE_SWAPPED,
        cause="IDENT reports a different serial number while a session is open",
        priority=AlarmPriority.MEDIUM,
        category=AlarmCategory.TECHNICAL,
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
        priority=AlarmPriority.MEDIUM,
        category=AlarmCategory.TECHNICAL,
        latching=True,
        message="The nebuliser restarted during a session; its delivery record was lost",
        action=(
            "Check the power and cable of the head; reconcile the interrupted session; "
            "call clinical engineering if it happens again."
        ),
        why="Therapy interrupted and the dose record is lost; the device is safe (idle).",
    ),
    AlarmRule(
        code=AlarmCode.DEVICE_HEAD_DISCONNECTED,
        cause="fault bit 1: nebuliser head unplugged",
        priority=AlarmPriority.MEDIUM,
        category=AlarmCategory.TECHNICAL,
        latching=True,
        message="Nebuliser head disconnected",
        action="Reconnect the head, then clear the fault at the controller.",
        why="Therapy interrupted; no aerosol is produced.",
    ),
    AlarmRule(
        code=AlarmCode.DEVICE_MESH_CLOGGED,
        cause="fault bit 2: output below 50 % of expected for 3 s (device's own check)",
        priority=AlarmPriority.MEDIUM,
        category=AlarmCategory.TECHNICAL,
        latching=True,
        message="Nebuliser mesh clogged (output below half of expected)",
        action="Clean or replace the mesh as per the instructions for use, then clear the fault.",
        why="Therapy interrupted or under-delivered; device stopped.",
    ),
    AlarmRule(
        code=AlarmCode.DEVICE_WATCHDOG,
        cause="fault bit 4: the device's watchdog expired while nebulising",
        priority=AlarmPriority.MEDIUM,
        category=AlarmCategory.TECHNICAL,
        latching=True,
        message="Nebuliser watchdog fault: the controller stopped talking to it",
        action="Clear the fault; call clinical engineering if it repeats.",
        why="The device stopped itself safely; the controller or cable misbehaved.",
    ),
    AlarmRule(
        code=AlarmCode.DEVICE_SUPPLY_LOW,
        cause="fault bit 5: supply voltage low",
        priority=AlarmPriority.MEDIUM,
        category=AlarmCategory.TECHNICAL,
        latching=True,
        message="Nebuliser supply voltage low",
        action="Check the power supply and cable of the head, then clear the fault.",
        why="Therapy interrupted; device stopped.",
    ),
    AlarmRule(
        code=AlarmCode.DEVICE_INTERNAL,
        cause="fault bit 6: firmware self-test failure",
        priority=AlarmPriority.MEDIUM,
        category=AlarmCategory.TECHNICAL,
        latching=True,
        message="Nebuliser internal self-test failure",
        action="Take the head out of service and call clinical engineering.",
        why="The device refuses to nebulise (safe) but cannot be used.",
    ),
    AlarmRule(
        code=AlarmCode.DEVICE_UNKNOWN_FAULT,
        cause="a fault bit this controller does not know (bits 7-15)",
        priority=AlarmPriority.MEDIUM,
        category=AlarmCategory.TECHNICAL,
        latching=True,
        message="Nebuliser reports an unknown fault (bits {fault_bits})",
        action="Take the head out of service and call clinical engineering.",
        why="Unknown firmware state; the device refuses to nebulise while faulted.",
    ),
    AlarmRule(
        code=AlarmCode.DEVICE_RESERVOIR_EMPTY,
        cause="fault bit 0: the mesh runs dry",
        priority=AlarmPriority.MEDIUM,
        category=AlarmCategory.TECHNICAL,
        latching=False,
        message="Nebuliser cup empty",
        action="Refill the cup with the prescribed medication if the dose is not complete.",
        why="Therapy interrupted; clears by itself when liquid is added (ICD).",
    ),
    AlarmRule(
        code=AlarmCode.LINK_LOST,
        cause="no valid STATUS for 300 ms while no session is open",
        priority=AlarmPriority.LOW,
        category=AlarmCategory.TECHNICAL,
        latching=False,
        message="No contact with the nebuliser (no session running); starts are refused",
        action="Check the head's cable to the controller.",
        why="Nothing is being delivered; only future doses are blocked.",
    ),
)
