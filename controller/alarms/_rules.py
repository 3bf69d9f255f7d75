"""The alarm rules as data: one row per alarm condition, in evaluation order.

The rows live with their domain: the dose (`_rules_delivery`), the head and its
link (`_rules_device`), the controller (`_rules_controller`) and breath-aware heads
(`_rules_breath`). Priorities, categories and the row type are in `_alarm_types`
(IEC 60601-1-8 priorities; latching alarms stay until a named person acknowledges
them). This module fixes the one order in which alarms are evaluated and listed:
HIGH first.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from ._alarm_types import AlarmCode, AlarmRule
from ._rules_breath import BREATH_RULES
from ._rules_controller import CONTROLLER_RULES
from ._rules_delivery import DELIVERY_RULES
from ._rules_device import DEVICE_RULES

__all__ = ["ALARM_RULES"]

_ORDER: Final = (
    AlarmCode.DELIVERY_ABOVE_CAP,
    AlarmCode.DEVICE_IGNORED_STOP,
    AlarmCode.STOP_UNCONFIRMED_AT_SHUTDOWN,
    AlarmCode.LINK_LOST_DURING_SESSION,
    AlarmCode.DEVICE_OVER_TEMPERATURE,
    AlarmCode.LEDGER_DISCONTINUITY,
    AlarmCode.DELIVERY_UNCERTAIN,
    AlarmCode.SESSION_STOPPED_BY_WATCHDOG,
    AlarmCode.DEVICE_SWAPPED,
    AlarmCode.DEVICE_REBOOTED,
    AlarmCode.LEDGER_UNAVAILABLE,
    AlarmCode.DEVICE_HEAD_DISCONNECTED,
    AlarmCode.DEVICE_MESH_CLOGGED,
    AlarmCode.DEVICE_WATCHDOG,
    AlarmCode.DEVICE_SUPPLY_LOW,
    AlarmCode.DEVICE_INTERNAL,
    AlarmCode.DEVICE_UNKNOWN_FAULT,
    AlarmCode.DEVICE_RESERVOIR_EMPTY,
    AlarmCode.DOSE_LATE,
    AlarmCode.DOSE_REACHED_EARLY,
    AlarmCode.STORAGE_LOW,
    AlarmCode.NO_BREATHING_DETECTED,
    AlarmCode.SESSION_ENDED_NO_BREATHING,
    AlarmCode.BREATH_GATING_INEFFECTIVE,
    AlarmCode.STORAGE_EMERGENCY,
    AlarmCode.LINK_LOST,
    AlarmCode.OUTPUT_LOW,
    AlarmCode.CLOCK_UNTRUSTED,
    AlarmCode.TELEMETRY_DROPPED,
    AlarmCode.BREATH_ACCOUNTING_MISMATCH,
    AlarmCode.COMMAND_FLOOD,
)

_BY_CODE: Final = {
    rule.code: rule for rule in (*DELIVERY_RULES, *DEVICE_RULES, *CONTROLLER_RULES, *BREATH_RULES)
}
if sorted(_BY_CODE) != sorted(_ORDER) or len(set(_ORDER)) != len(_ORDER):
    raise RuntimeError("every alarm rule must appear exactly once in the alarm table's order")

#: Alarm table, in the order alarms are evaluated and listed (HIGH first).
ALARM_RULES: Mapping[AlarmCode, AlarmRule] = MappingProxyType(
    {code: _BY_CODE[code] for code in _ORDER}
)
