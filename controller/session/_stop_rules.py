"""Host-side stop rules (design guide safety rule 1): one pure function.

The host does not trust the device's own cap (ICD §6): it stops *predictively*,
so that the volume delivered by the time the aerosol is actually off never passes
the session cap, even if the device ignored its `target_ul` altogether.

Latency arithmetic (ICD numbers; all in ms)::

    STATUS period + jitter ........ 100 + 10  the delivered figure may be this old
                                              when the runtime checks only on STATUS
    host check period .............. 25       the runtime's timer; the rule may fire
                                              up to one tick after the boundary
    STOP frame on the wire ......... 1        11 bytes at 115200 8N1 = 0.95 ms
    device reaction ................ 10       aerosol off within 10 ms of STOP (§5.3)
    one lost STOP (retransmit) ..... 50       host retransmits after 50 ms (§6)
    ------------------------------------
    ASSUMED_STOP_LATENCY_MS ........ 196

The rule fires when

    delivered_ul + 1 + flow_ul_min × (status_age_ms + stop_latency_ms) / 60000 ≥ cap

computed exactly in integers (µL·ms/min). `+ 1` covers the device reporting
whole microlitres; `flow × status_age` is the estimate of what was delivered since
the last STATUS (so the runtime may check on a timer, not only on STATUS arrival).

Bound: with a constant flow, a check at least every 25 ms (or at every STATUS,
≤ 110 ms apart) and at most one lost STOP, the volume at aerosol-off is ≤ cap:
at the last check that did not fire, delivered + flow × 196 ms < cap, and the
aerosol is off at most 25 + 61 ms (or 110 + 61 ms) of flow later. At twice the
nominal flow (2 × 400 = 800 µL/min) the rule stops 196 ms × 800/60000 + 1 ≈ 3.6 µL
short of the cap at worst, which is its price.

STATUS silence (issue: a stalled event loop or a lost frame must not cost the
patient the day's dose): a silence shorter than the head's 1000 ms watchdog
(`SILENCE_STOP_MS`) does not end a session. While STATUS is overdue (> 110 ms old)
the prediction uses the head's maximum output (`worst_flow_ul_min`, IDENT
`nominal_ul_min` at 100 %) instead of the last reported flow, so the bound above
holds with `flow` replaced by an upper bound of the true flow; at 1000 ms of
silence the host stops the session (`status_silent`).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType

__all__ = [
    "ASSUMED_STOP_LATENCY_MS",
    "DELIVERED_RESOLUTION_UL",
    "DEVICE_STOP_REACTION_MS",
    "HOST_CHECK_PERIOD_MS",
    "LINK_LOSS_MS",
    "SILENCE_STOP_MS",
    "STATUS_JITTER_MS",
    "STATUS_OVERDUE_MS",
    "STATUS_PERIOD_MS",
    "STOP_FRAME_TX_MS",
    "STOP_REASON_TEXT",
    "STOP_RETRANSMIT_MS",
    "StopReasonCode",
    "estimate_delivered_ul",
    "host_stop_reason",
]

STATUS_PERIOD_MS = 100  # ICD §5.1
STATUS_JITTER_MS = 10  # ICD §5.1
HOST_CHECK_PERIOD_MS = 25  # the runtime must run the rule at least this often
STOP_FRAME_TX_MS = 1  # ICD §7: 0.95 ms, rounded up
DEVICE_STOP_REACTION_MS = 10  # ICD §5.3
STOP_RETRANSMIT_MS = 50  # ICD §6: one lost STOP costs one retransmission interval
ASSUMED_STOP_LATENCY_MS = (
    STATUS_PERIOD_MS
    + STATUS_JITTER_MS
    + HOST_CHECK_PERIOD_MS
    + STOP_FRAME_TX_MS
    + DEVICE_STOP_REACTION_MS
    + STOP_RETRANSMIT_MS
)
LINK_LOSS_MS = 300  # ICD §6: 300 ms without a valid STATUS is link loss (alarm)
#: ICD §5.5: the head's watchdog. A STATUS silence shorter than this does not end a
#: session within its limits: meanwhile the prediction assumes the head's maximum
#: output (`worst_flow_ul_min`), so the cap still cannot be passed. This long, and the
#: host stops the session (the head may still hear us, so its watchdog may not).
SILENCE_STOP_MS = 1000
#: A STATUS older than this is overdue (ICD §5.1: every 100 ± 10 ms).
STATUS_OVERDUE_MS = STATUS_PERIOD_MS + STATUS_JITTER_MS
DELIVERED_RESOLUTION_UL = 1  # STATUS reports whole µL
_MS_PER_MIN = 60_000


class StopReasonCode(StrEnum):
    """Why the host stops a session by itself (machine-readable; ledger and MQTT)."""

    DEVICE_FAULT = "device_fault"
    STATUS_SILENT = "status_silent"
    CAP_REACHED = "cap_reached"
    CAP_PREDICTED = "cap_predicted"
    MAX_DURATION = "max_duration"


#: A human sentence for each reason.
STOP_REASON_TEXT: Mapping[StopReasonCode, str] = MappingProxyType(
    {
        StopReasonCode.DEVICE_FAULT: "the device reports a fault bit",
        StopReasonCode.STATUS_SILENT: "no STATUS from the device for the watchdog time (1 s)",
        StopReasonCode.CAP_REACHED: "the delivered volume reached the session cap",
        StopReasonCode.CAP_PREDICTED: (
            "the delivered volume would pass the session cap within the stop latency"
        ),
        StopReasonCode.MAX_DURATION: "the session reached its maximum duration",
    }
)


def _require_non_negative(**values: int) -> None:
    for name, value in values.items():
        if value < 0:
            raise ValueError(f"{name}={value} must not be negative")


def estimate_delivered_ul(
    *, delivered_at_status_ul: int, flow_ul_min: int, status_age_ms: int
) -> int:
    """Delivered volume now: the last STATUS figure plus flow × its age, rounded up
    (conservative for dose limits)."""
    _require_non_negative(
        delivered_at_status_ul=delivered_at_status_ul,
        flow_ul_min=flow_ul_min,
        status_age_ms=status_age_ms,
    )
    return delivered_at_status_ul + -(-flow_ul_min * status_age_ms // _MS_PER_MIN)


def host_stop_reason(
    *,
    delivered_ul: int,
    flow_ul_min: int,
    session_cap_ul: int,
    status_age_ms: int,
    elapsed_ms: int,
    max_duration_ms: int,
    faults: int,
    stop_latency_ms: int = ASSUMED_STOP_LATENCY_MS,
    silence_stop_ms: int = SILENCE_STOP_MS,
    worst_flow_ul_min: int = 0,
) -> StopReasonCode | None:
    """Whether the host must stop the session now, and why (None: carry on).

    `delivered_ul` and `flow_ul_min` are from the last STATUS of our session and
    `status_age_ms` is how long ago it arrived (monotonic clock); `elapsed_ms` is
    the session's age. Checks, first match wins: any fault bit, STATUS silent for
    `silence_stop_ms`, cap reached, cap predicted within `stop_latency_ms`, maximum
    duration. While STATUS is overdue (older than `STATUS_OVERDUE_MS`) the prediction
    uses `max(flow_ul_min, worst_flow_ul_min)`: the head's maximum output, not its last
    figure. `stop_latency_ms` may be raised above the ICD-derived
    `ASSUMED_STOP_LATENCY_MS` but not lowered; `silence_stop_ms` may be lowered
    below the 1000 ms watchdog but not raised.
    """
    _require_non_negative(
        delivered_ul=delivered_ul,
        flow_ul_min=flow_ul_min,
        status_age_ms=status_age_ms,
        elapsed_ms=elapsed_ms,
        faults=faults,
        worst_flow_ul_min=worst_flow_ul_min,
    )
    if session_cap_ul < 1:
        raise ValueError(f"session_cap_ul={session_cap_ul} must be at least 1 µL")
    if max_duration_ms < 1:
        raise ValueError(f"max_duration_ms={max_duration_ms} must be at least 1 ms")
    if stop_latency_ms < ASSUMED_STOP_LATENCY_MS:
        raise ValueError(
            f"stop_latency_ms={stop_latency_ms} is below the ICD-derived minimum "
            f"{ASSUMED_STOP_LATENCY_MS} ms; it may only be raised"
        )
    if not 1 <= silence_stop_ms <= SILENCE_STOP_MS:
        raise ValueError(
            f"silence_stop_ms={silence_stop_ms} must be 1..{SILENCE_STOP_MS} (ICD §5.5 "
            "watchdog); it may only be lowered"
        )

    if faults:
        return StopReasonCode.DEVICE_FAULT
    if status_age_ms >= silence_stop_ms:
        return StopReasonCode.STATUS_SILENT
    if delivered_ul >= session_cap_ul:
        return StopReasonCode.CAP_REACHED
    # Exact integer form of: delivered + resolution + flow × (age + latency) / 60000 ≥ cap.
    flow = (
        flow_ul_min if status_age_ms <= STATUS_OVERDUE_MS else max(flow_ul_min, worst_flow_ul_min)
    )
    predicted_scaled = (delivered_ul + DELIVERED_RESOLUTION_UL) * _MS_PER_MIN + flow * (
        status_age_ms + stop_latency_ms
    )
    if predicted_scaled >= session_cap_ul * _MS_PER_MIN:
        return StopReasonCode.CAP_PREDICTED
    if elapsed_ms >= max_duration_ms:
        return StopReasonCode.MAX_DURATION
    return None
