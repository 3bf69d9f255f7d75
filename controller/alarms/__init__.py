"""Alarm rules as data and one pure evaluator (latching, acknowledgement).

See docs/alarms.md for the table with causes and nurse actions.
"""

from ._alarm_inputs import DEFAULT_ALARM_SETTINGS, AlarmInputs, AlarmSettings, SessionProgress
from ._alarm_state import ActiveAlarm, AlarmEvent, AlarmEventKind, AlarmNotActiveError, AlarmState
from ._alarm_types import AlarmCategory, AlarmCode, AlarmPriority, AlarmRule
from ._breathing import BreathingFacts
from ._conditions import FAULT_BIT_ALARMS
from ._evaluate import acknowledge, evaluate
from ._rules import ALARM_RULES

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
