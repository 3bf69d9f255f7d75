"""Alarm rules of the controller: ledger, storage, clock, telemetry, the command channel.

Rows of the alarm table (`_rules.ALARM_RULES` lists them in evaluation order).
"""

from __future__ import annotations

from ._alarm_types import AlarmCategory, AlarmCode, AlarmPriority, AlarmRule

__all__ = ["CONTROLLER_RULES"]

CONTROLLER_RULES: tuple[AlarmRule, ...] = (
    AlarmRule(
        code=AlarmCode.LEDGER_DISCONTINUITY,
        cause=(
            "at start-up the dose ledger is missing, empty, unreadable, of another device, "
            "of an unexpected schema, or older than its anchors (audit log, anchor file, "
            "ward station)"
        ),
        priority=AlarmPriority.HIGH,
        category=AlarmCategory.CLINICAL,
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
        code=AlarmCode.LEDGER_UNAVAILABLE,
        cause="the dose ledger cannot be written or failed its integrity check",
        priority=AlarmPriority.MEDIUM,
        category=AlarmCategory.TECHNICAL,
        latching=True,
        message="The dose record (ledger) is unavailable or damaged; new starts are refused",
        action="Call clinical engineering; give doses by another device meanwhile.",
        why=(
            "Dose history cannot be trusted, so starts are refused (no over-delivery) "
            "but therapy is blocked."
        ),
    ),
    AlarmRule(
        code=AlarmCode.STORAGE_LOW,
        cause="free disk space below the ledger's warning level",
        priority=AlarmPriority.MEDIUM,
        category=AlarmCategory.TECHNICAL,
        latching=False,
        message="Controller storage low ({free_mib} MiB free); records may soon be refused",
        action="Call clinical engineering to free storage.",
        why="Dose records are at risk soon; starts will be refused at the floor.",
    ),
    AlarmRule(
        code=AlarmCode.STORAGE_EMERGENCY,
        cause=(
            "free disk space below the emergency level, or the ledger's end-record reserve "
            "is used up"
        ),
        priority=AlarmPriority.MEDIUM,
        category=AlarmCategory.TECHNICAL,
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
        code=AlarmCode.CLOCK_UNTRUSTED,
        cause="the clock-trust rule does not trust the wall clock",
        priority=AlarmPriority.LOW,
        category=AlarmCategory.TECHNICAL,
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
        priority=AlarmPriority.LOW,
        category=AlarmCategory.TECHNICAL,
        latching=True,
        message=(
            "{dropped_now} telemetry messages dropped by the disk budget in this outage "
            "({dropped_total} in total); dose records are kept"
        ),
        action="Call clinical engineering: the ward monitor is missing data.",
        why="Only monitoring samples are lost (dose records are never dropped).",
    ),
    AlarmRule(
        code=AlarmCode.COMMAND_FLOOD,
        cause=(
            "the command intake has refused or dropped messages beyond its per-sender "
            "record rate for 1.5 s or more (no quiet gap over 5 s)"
        ),
        priority=AlarmPriority.LOW,
        category=AlarmCategory.TECHNICAL,
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
