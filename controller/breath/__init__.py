"""Breath-aware delivery (MN-1 ICD addendum 1.1): admission, per-run accounting, alarm facts.

Pure pieces the session runtime calls; no I/O, no clock of their own.
"""

from ._accumulator import BreathAccumulator, BreathSummary
from ._admission import DeliveryRefusal, delivery_refusal, start_command
from ._facts import breathing_facts
from ._telemetry import BREATHING_PERIOD_MS, BreathingCadence, RecentBreathing, breathing_fields

__all__ = [
    "BREATHING_PERIOD_MS",
    "BreathAccumulator",
    "BreathSummary",
    "BreathingCadence",
    "DeliveryRefusal",
    "RecentBreathing",
    "breathing_facts",
    "breathing_fields",
    "delivery_refusal",
    "start_command",
]
