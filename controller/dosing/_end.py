"""How a session ended, in the prescription's terms: complete, complete to dryness, early.

Pure. The runtime calls `classify_end` when a session ends (to decide whether an
empty cup is an alarm) and the reports call it to name the outcome.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from controller.dosing._prescription import Delivery

__all__ = [
    "COMPLETED_REASONS",
    "HOST_REASON_RESERVOIR_EMPTY",
    "EndClass",
    "EndClassification",
    "classify_end",
    "dry_end_expected",
]

COMPLETED_REASONS: Final = frozenset({"cap_reached", "cap_predicted", "TARGET_REACHED"})
"""End reasons that mean "the planned volume was given" (host cap stops, device target)."""

_DRY: Final = "RESERVOIR_EMPTY"
HOST_REASON_RESERVOIR_EMPTY: Final = "reservoir_empty"
"""The host's stop reason when its STOP answers the RESERVOIR_EMPTY fault bit alone
(so that a dry cup is still recognised when the host's STOP overtook the head's own)."""


class EndClass(enum.StrEnum):
    """What one run's end means for the administration."""

    COMPLETED = "completed"
    """The planned volume was reached (device target, or the host's cap stop)."""
    COMPLETED_TO_DRYNESS = "completed_to_dryness"
    """A to-dryness prescription ran dry at its expected volume: complete, no alarm."""
    EARLY_END = "early_end"
    """Anything else: dry well before the expected volume, a fault, a lost link, a stop.
    Whether it may be continued is the continuation rule's question (issue 15 item 1)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EndClassification:
    """The class of an end and the sentence that explains it."""

    end: EndClass
    reason: str
    expected_ul: int | None = None
    """For a to-dryness prescription: fill − residual."""


def classify_end(
    delivery: Delivery,
    *,
    delivered_ul: int,
    device_reason: str | None,
    host_reason: str | None = None,
    residual_ul: int | None = None,
) -> EndClassification:
    """Classify one run's end (`delivery` is the prescription's `[prescription.delivery]`).

    `device_reason` is the ICD stop reason name (`TARGET_REACHED`, `RESERVOIR_EMPTY`,
    `FAULT`, ...); `residual_ul` is the head's residual volume when it is known
    better than the prescription's `delivery.residual_ul`. A dry cup counts as
    complete only for a to-dryness prescription and only from
    `fill - residual - tolerance` µL on.
    """
    reasons = {r for r in (device_reason, host_reason) if r}
    if reasons & COMPLETED_REASONS:
        why = " / ".join(sorted(reasons & COMPLETED_REASONS))
        return EndClassification(end=EndClass.COMPLETED, reason=f"planned volume reached ({why})")
    dry = device_reason == _DRY or host_reason == HOST_REASON_RESERVOIR_EMPTY
    if dry and delivery.fill_ul is not None:
        residual = delivery.residual_ul if residual_ul is None else residual_ul
        expected_ul = delivery.fill_ul - (residual or 0)
        floor_ul = expected_ul - delivery.dryness_tolerance_ul
        figures = (
            f"{delivered_ul} µL of the {expected_ul} µL expected from a {delivery.fill_ul} µL "
            f"fill (residual {residual} µL, tolerance {delivery.dryness_tolerance_ul} µL)"
        )
        if delivered_ul >= floor_ul:
            return EndClassification(
                end=EndClass.COMPLETED_TO_DRYNESS,
                reason=f"nebulised to dryness: {figures}",
                expected_ul=expected_ul,
            )
        return EndClassification(
            end=EndClass.EARLY_END,
            reason=f"cup dry early: {figures}",
            expected_ul=expected_ul,
        )
    why = " / ".join(r for r in (device_reason, host_reason) if r) or "no reason recorded"
    return EndClassification(
        end=EndClass.EARLY_END, reason=f"ended before the planned volume: {why}"
    )


def dry_end_expected(
    delivery: Delivery, *, delivered_ul: int, residual_ul: int | None = None
) -> bool:
    """True when a dry cup now would be the planned end (no alarm): a to-dryness
    prescription at or above `fill - residual - tolerance` µL delivered."""
    end = classify_end(
        delivery, delivered_ul=delivered_ul, device_reason=_DRY, residual_ul=residual_ul
    )
    return end.end is EndClass.COMPLETED_TO_DRYNESS
