"""Breath-aware delivery (MN-1 ICD addendum 1.1): admission, per-run accounting, alarm facts.

Pure pieces the session runtime calls; no I/O, no clock of their own.
"""

from ._accumulator import BreathAccumulator, BreathSummary
from ._admission import DeliveryRefusal, delivery_refusal, start_command
from ._facts import breathing_facts

__all__ = [
    "BreathAccumulator",
    "BreathSummary",
    "DeliveryRefusal",
    "breathing_facts",
    "delivery_refusal",
    "start_command",
]
