"""The session state table: (state, event) → next state, and one pure `transition`.

The flow it is built for (design guide §1, safety rules 3-5):

admit → write intent → START with the device cap → confirm NEBULISING from STATUS
→ watch (host stop rules) → STOP → record.

* A START whose answer is lost (START_UNANSWERED) is resolved by reading STATUS
  (START_UNKNOWN), never by a blind second START: the only way into STARTING is
  IDLE + START_REQUESTED.
* NEBULISING is entered only on STATUS_NEBULISING_OUR_SESSION: an ACK alone is
  not proof that aerosol is flowing.
* After link loss during a session the host keeps sending STOP; when the link
  returns it goes to STOPPING and keeps sending STOP until the device confirms.
* After a controller restart with an open session: never resume. The runtime
  sends STOP at once and the session is UNCERTAIN until RECONCILED.

The runtime classifies what it observes into events (see docs/alarms.md,
"Session states"), calls `transition`, and performs the duties of the new state
(`STOP_SENDING_STATES`, `START_ALLOWED_STATES`).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType

__all__ = [
    "OBSERVATION_EVENTS",
    "SESSION_OPEN_STATES",
    "START_ALLOWED_STATES",
    "STOP_SENDING_STATES",
    "TRANSITIONS",
    "InvalidTransitionError",
    "SessionEvent",
    "SessionState",
    "transition",
]


class SessionState(StrEnum):
    """Where the host is in a session's life."""

    IDLE = "idle"  # no open session; a start may be admitted
    STARTING = "starting"  # intent written, START sent, waiting for ACK/NAK
    START_UNKNOWN = "start_unknown"  # START unanswered: reading STATUS to learn the outcome
    CONFIRMING = "confirming"  # START ACKed, waiting for STATUS to show our session
    NEBULISING = "nebulising"  # STATUS confirms our session is running; host stop rules watch
    STOPPING = "stopping"  # STOP sent; repeated until the device shows it stopped
    FAULT = "fault"  # device reports fault bits, no open session; starts refused
    LINK_LOST = "link_lost"  # no STATUS for 300 ms during a session; STOP sent on every try
    UNCERTAIN = "uncertain"  # delivery unknown; STOP kept up; full cap counted until reconciled


class SessionEvent(StrEnum):
    """What the runtime observed or decided."""

    # Decisions and commands.
    START_REQUESTED = "start_requested"  # admitted and intent written; START goes out
    STOP_REQUESTED = "stop_requested"  # host stop rule, operator, remote or button
    # Answers to START.
    START_ACKED = "start_acked"
    START_NAKED = "start_naked"
    START_UNANSWERED = "start_unanswered"  # retransmissions exhausted, no answer
    CONFIRM_TIMEOUT = "confirm_timeout"  # ACKed, but no STATUS showed our session in time
    # Device observations (from STATUS, SESSION_END, IDENT).
    STATUS_NEBULISING_OUR_SESSION = "status_nebulising_our_session"
    STATUS_NEBULISING_OTHER_SESSION = "status_nebulising_other_session"
    STATUS_IDLE = "status_idle"  # not nebulising, and no open session of ours is contradicted
    SESSION_END_RECEIVED = "session_end_received"  # device's final figures for our session
    FAULT_RAISED = "fault_raised"
    FAULTS_CLEARED = "faults_cleared"
    DEVICE_REBOOTED = "device_rebooted"  # STATUS uptime dropped
    DEVICE_SWAPPED = "device_swapped"  # IDENT serial changed
    LINK_LOST = "link_lost"  # 300 ms without a valid STATUS, or retransmissions exhausted
    LINK_RESTORED = "link_restored"
    # Controller life and records.
    RESTART_WITH_OPEN_SESSION = "restart_with_open_session"  # ledger has an unfinished session
    DELIVERY_UNKNOWN = "delivery_unknown"  # our session cannot be accounted from device figures
    RECONCILED = "reconciled"  # device figures or a named person settled the uncertain session


_S = SessionState
_E = SessionEvent

#: Events that come from watching the device. Every state has an entry for each of
#: them, so a STATUS arriving at an odd moment never breaks the runtime.
OBSERVATION_EVENTS: frozenset[SessionEvent] = frozenset(
    {
        _E.STATUS_NEBULISING_OUR_SESSION,
        _E.STATUS_NEBULISING_OTHER_SESSION,
        _E.STATUS_IDLE,
        _E.SESSION_END_RECEIVED,
        _E.FAULT_RAISED,
        _E.FAULTS_CLEARED,
        _E.DEVICE_REBOOTED,
        _E.DEVICE_SWAPPED,
        _E.LINK_LOST,
        _E.LINK_RESTORED,
    }
)

# Rows for the states in which a session of ours may be open and may be running.
# Common outcomes first; each state then lists what differs.
_OPEN_SESSION_COMMON: dict[SessionEvent, SessionState] = {
    _E.STOP_REQUESTED: _S.STOPPING,
    _E.STATUS_NEBULISING_OTHER_SESSION: _S.STOPPING,
    _E.SESSION_END_RECEIVED: _S.IDLE,
    # The device stops by itself on a fault (ICD §4) and sends SESSION_END; we keep
    # sending STOP until its final figures for our session arrive.
    _E.FAULT_RAISED: _S.STOPPING,
    _E.FAULTS_CLEARED: _S.STOPPING,
    _E.DEVICE_REBOOTED: _S.UNCERTAIN,
    _E.DEVICE_SWAPPED: _S.UNCERTAIN,
    _E.LINK_LOST: _S.LINK_LOST,
    _E.LINK_RESTORED: _S.STOPPING,
    _E.DELIVERY_UNKNOWN: _S.UNCERTAIN,
}


def _rows(
    state: SessionState, rows: Mapping[SessionEvent, SessionState]
) -> dict[tuple[SessionState, SessionEvent], SessionState]:
    return {(state, event): target for event, target in rows.items()}


_TABLE: dict[tuple[SessionState, SessionEvent], SessionState] = {
    **_rows(
        _S.IDLE,
        {
            _E.START_REQUESTED: _S.STARTING,
            _E.STOP_REQUESTED: _S.STOPPING,  # STOP is always allowed (ACKed even when idle)
            _E.STATUS_NEBULISING_OUR_SESSION: _S.STOPPING,  # not ours to run any more
            _E.STATUS_NEBULISING_OTHER_SESSION: _S.STOPPING,
            _E.STATUS_IDLE: _S.IDLE,
            _E.SESSION_END_RECEIVED: _S.IDLE,  # a repeat of an end already recorded
            _E.FAULT_RAISED: _S.FAULT,
            _E.FAULTS_CLEARED: _S.IDLE,
            _E.DEVICE_REBOOTED: _S.IDLE,
            _E.DEVICE_SWAPPED: _S.IDLE,
            _E.LINK_LOST: _S.IDLE,  # no session to protect; admission refuses starts
            _E.LINK_RESTORED: _S.IDLE,
            _E.RESTART_WITH_OPEN_SESSION: _S.UNCERTAIN,
        },
    ),
    **_rows(
        _S.STARTING,
        {
            **_OPEN_SESSION_COMMON,
            _E.START_ACKED: _S.CONFIRMING,
            _E.START_NAKED: _S.IDLE,
            _E.START_UNANSWERED: _S.START_UNKNOWN,
            _E.STATUS_NEBULISING_OUR_SESSION: _S.NEBULISING,  # STATUS overtook a late ACK
            _E.STATUS_IDLE: _S.STARTING,  # STATUS sent before the device read START
        },
    ),
    **_rows(
        _S.START_UNKNOWN,
        {
            **_OPEN_SESSION_COMMON,
            _E.START_ACKED: _S.CONFIRMING,  # a late answer
            _E.START_NAKED: _S.IDLE,
            _E.STATUS_NEBULISING_OUR_SESSION: _S.NEBULISING,
            # Idle, most recent session not ours, no reboot: START was never executed.
            _E.STATUS_IDLE: _S.IDLE,
        },
    ),
    **_rows(
        _S.CONFIRMING,
        {
            **_OPEN_SESSION_COMMON,
            _E.START_ACKED: _S.CONFIRMING,  # a repeated answer
            _E.STATUS_NEBULISING_OUR_SESSION: _S.NEBULISING,
            _E.STATUS_IDLE: _S.CONFIRMING,  # STATUS sent before the device read START
            _E.CONFIRM_TIMEOUT: _S.STOPPING,
        },
    ),
    **_rows(
        _S.NEBULISING,
        {
            **_OPEN_SESSION_COMMON,
            _E.START_ACKED: _S.NEBULISING,  # a repeated answer
            _E.STATUS_NEBULISING_OUR_SESSION: _S.NEBULISING,
            # Our session was seen running; now the device is idle and its most recent
            # session is not ours, without a reboot: the figures do not add up.
            _E.STATUS_IDLE: _S.UNCERTAIN,
            _E.STATUS_NEBULISING_OTHER_SESSION: _S.UNCERTAIN,
        },
    ),
    **_rows(
        _S.STOPPING,
        {
            **_OPEN_SESSION_COMMON,
            _E.START_ACKED: _S.STOPPING,
            _E.START_NAKED: _S.STOPPING,
            _E.STATUS_NEBULISING_OUR_SESSION: _S.STOPPING,  # keep sending STOP
            _E.STATUS_IDLE: _S.IDLE,
            _E.FAULT_RAISED: _S.STOPPING,
            _E.CONFIRM_TIMEOUT: _S.STOPPING,
        },
    ),
    **_rows(
        _S.LINK_LOST,
        {
            **_OPEN_SESSION_COMMON,
            _E.STOP_REQUESTED: _S.LINK_LOST,  # STOP is already being sent on every try
            _E.START_ACKED: _S.STOPPING,
            _E.START_NAKED: _S.STOPPING,
            _E.STATUS_NEBULISING_OUR_SESSION: _S.STOPPING,  # link is back: stop it
            _E.STATUS_IDLE: _S.STOPPING,  # confirm the stop before trusting anything
            _E.LINK_LOST: _S.LINK_LOST,
        },
    ),
    **_rows(
        _S.FAULT,
        {
            _E.STOP_REQUESTED: _S.FAULT,  # STOP sent anyway; a faulted device does not nebulise
            _E.STATUS_NEBULISING_OUR_SESSION: _S.STOPPING,
            _E.STATUS_NEBULISING_OTHER_SESSION: _S.STOPPING,
            _E.STATUS_IDLE: _S.FAULT,
            _E.SESSION_END_RECEIVED: _S.FAULT,
            _E.FAULT_RAISED: _S.FAULT,
            _E.FAULTS_CLEARED: _S.IDLE,
            _E.DEVICE_REBOOTED: _S.IDLE,  # a power cycle clears the faults (ICD §5.8)
            _E.DEVICE_SWAPPED: _S.IDLE,
            _E.LINK_LOST: _S.FAULT,
            _E.LINK_RESTORED: _S.FAULT,
            _E.RESTART_WITH_OPEN_SESSION: _S.UNCERTAIN,
        },
    ),
    # UNCERTAIN: nothing but RECONCILED leaves it; STOP is kept up meanwhile.
    **_rows(
        _S.UNCERTAIN,
        dict.fromkeys(OBSERVATION_EVENTS, _S.UNCERTAIN)
        | {
            _E.STOP_REQUESTED: _S.UNCERTAIN,
            _E.START_ACKED: _S.UNCERTAIN,
            _E.START_NAKED: _S.UNCERTAIN,
            _E.DELIVERY_UNKNOWN: _S.UNCERTAIN,
            _E.RESTART_WITH_OPEN_SESSION: _S.UNCERTAIN,
            _E.RECONCILED: _S.IDLE,
        },
    ),
}

#: The transition table. A pair that is not here is a programming or protocol error.
TRANSITIONS: Mapping[tuple[SessionState, SessionEvent], SessionState] = MappingProxyType(_TABLE)

#: States in which the host keeps sending STOP (every link retry) until the device
#: shows it is not nebulising.
STOP_SENDING_STATES: frozenset[SessionState] = frozenset({_S.STOPPING, _S.LINK_LOST, _S.UNCERTAIN})

#: The only state in which a new start may be admitted.
START_ALLOWED_STATES: frozenset[SessionState] = frozenset({_S.IDLE})

#: States in which a session of ours may be open (its planned cap counts).
SESSION_OPEN_STATES: frozenset[SessionState] = frozenset(
    {
        _S.STARTING,
        _S.START_UNKNOWN,
        _S.CONFIRMING,
        _S.NEBULISING,
        _S.STOPPING,
        _S.LINK_LOST,
        _S.UNCERTAIN,
    }
)


class InvalidTransitionError(ValueError):
    """An event that the session table does not allow in the current state."""

    def __init__(self, state: SessionState, event: SessionEvent) -> None:
        allowed = sorted(e.value for (s, e) in TRANSITIONS if s is state)
        super().__init__(
            f"session event {event.value!r} is not allowed in state {state.value!r}; "
            f"allowed there: {', '.join(allowed)}. This is a bug in the caller's event "
            "classification (see docs/alarms.md, 'Session states')"
        )
        self.state = state
        self.event = event


def transition(state: SessionState, event: SessionEvent) -> SessionState:
    """The next state for `event` in `state`; raises `InvalidTransitionError` if the
    table has no such pair."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise InvalidTransitionError(state, event) from None
