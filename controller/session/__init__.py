"""Session control: the state table and host-side stop rules (pure).

The runtime that ties the link, dosing, ledger and alarms lives beside these.
"""

from ._states import (
    OBSERVATION_EVENTS,
    SESSION_OPEN_STATES,
    START_ALLOWED_STATES,
    STOP_SENDING_STATES,
    TRANSITIONS,
    InvalidTransitionError,
    SessionEvent,
    SessionState,
    transition,
)
from ._stop_rules import (
    ASSUMED_STOP_LATENCY_MS,
    DELIVERED_RESOLUTION_UL,
    DEVICE_STOP_REACTION_MS,
    HOST_CHECK_PERIOD_MS,
    LINK_LOSS_MS,
    STATUS_JITTER_MS,
    STATUS_PERIOD_MS,
    STOP_FRAME_TX_MS,
    STOP_REASON_TEXT,
    STOP_RETRANSMIT_MS,
    StopReasonCode,
    estimate_delivered_ul,
    host_stop_reason,
)

__all__ = [
    "ASSUMED_STOP_LATENCY_MS",
    "DELIVERED_RESOLUTION_UL",
    "DEVICE_STOP_REACTION_MS",
    "HOST_CHECK_PERIOD_MS",
    "LINK_LOSS_MS",
    "OBSERVATION_EVENTS",
    "SESSION_OPEN_STATES",
    "START_ALLOWED_STATES",
    "STATUS_JITTER_MS",
    "STATUS_PERIOD_MS",
    "STOP_FRAME_TX_MS",
    "STOP_REASON_TEXT",
    "STOP_RETRANSMIT_MS",
    "STOP_SENDING_STATES",
    "TRANSITIONS",
    "InvalidTransitionError",
    "SessionEvent",
    "SessionState",
    "StopReasonCode",
    "estimate_delivered_ul",
    "host_stop_reason",
    "transition",
]
