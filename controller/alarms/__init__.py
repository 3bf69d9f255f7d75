"""Alarm rules as data and one pure evaluator (latching, acknowledgement).

See docs/alarms.md for the table with causes and nurse actions.
"""

from ._breathing import BreathingFacts
from ._evaluate import (
    DEFAULT_ALARM_SETTINGS,
    FAULT_BIT_ALARMS,
    ActiveAlarm,
    AlarmEvent,
    AlarmEventKind,
    AlarmInputs,
    AlarmNotActiveError,
    AlarmSettings,
    AlarmState,
    SessionProgress,
    acknowledge,
    evaluate,
)
from ._rules import ALARM_RULES, AlarmCategory, AlarmCode, AlarmPriority, AlarmRule

__all__ = [
    "ALARM_RULES",
    "DEFAULT_ALARM_SETTINGS",
    "FAULT_BIT_ALARMS",
    "ActiveAlarm",
    "AlarmCategory",
    "AlarmCode",
    "AlarmEvent",
    "AlarmEventKind",
    "AlarmInputs",
    "AlarmNotActiveError",
    "AlarmPriority",
    "AlarmRule",
    "AlarmSettings",
    "AlarmState",
    "BreathingFacts",
    "SessionProgress",
    "acknowledge",
    "evaluate",
]
