"""Hard ceilings: limits that live in code. Configuration can lower them, never raise them.

Changing a value here is a design change: it needs review, a CHANGELOG entry and an
update of `docs/dosing.md`.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "CEILING_24H_UL",
    "CEILING_MAX_DURATION_S",
    "CEILING_OUTPUT_PCT_MAX",
    "CEILING_OUTPUT_PCT_MIN",
    "CEILING_SESSION_UL",
    "DEFAULT_CONTINUATION_WINDOW_S",
    "ICD_MAX_TARGET_UL",
    "RESERVOIR_CAPACITY_UL",
    "ROLLING_WINDOW_S",
]

ICD_MAX_TARGET_UL: Final = 20_000
"""Largest `target_ul` the MN-1 accepts in START (ICD §START ranges)."""

RESERVOIR_CAPACITY_UL: Final = 6_000
"""Capacity of the MN-1 medication cup: no single session can exceed one fill."""

CEILING_SESSION_UL: Final = min(RESERVOIR_CAPACITY_UL, ICD_MAX_TARGET_UL)
"""Largest volume of one session, whatever the prescription says."""

CEILING_24H_UL: Final = 12_000
"""Largest volume per subject in any rolling 24 h (two full reservoirs)."""

CEILING_MAX_DURATION_S: Final = 3_600
"""Longest session (ICD `max_duration_s` range 1..3600)."""

CEILING_OUTPUT_PCT_MIN: Final = 10
CEILING_OUTPUT_PCT_MAX: Final = 100
"""Output setting range the device accepts (ICD `output_pct` 10..100)."""

ROLLING_WINDOW_S: Final = 24 * 3600
"""Length of the rolling window of the per-24 h limits."""

DEFAULT_CONTINUATION_WINDOW_S: Final = 3600
"""How long after an interruption a continuation run may start, unless the prescription
says otherwise (`limits.continuation_window_s`, never above 24 h; 0 turns them off)."""
