"""The session state table: completeness, safety properties and the designed flows."""

from __future__ import annotations

from collections import deque

import pytest

from controller.session import (
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

S = SessionState
E = SessionEvent


def _walk(start: SessionState, events: list[SessionEvent]) -> list[SessionState]:
    states = [start]
    for event in events:
        states.append(transition(states[-1], event))
    return states


def _reachable(
    start: SessionState, *, skip: frozenset[SessionEvent] = frozenset()
) -> set[SessionState]:
    seen = {start}
    queue = deque([start])
    while queue:
        state = queue.popleft()
        for (source, event), target in TRANSITIONS.items():
            if source is state and event not in skip and target not in seen:
                seen.add(target)
                queue.append(target)
    return seen


# --- table completeness -----------------------------------------------------------


@pytest.mark.parametrize("state", list(SessionState))
def test_every_state_handles_every_device_observation_and_stop(state: SessionState) -> None:
    for event in [*OBSERVATION_EVENTS, E.STOP_REQUESTED]:
        assert (state, event) in TRANSITIONS, f"{state} has no row for {event}"


@pytest.mark.parametrize("state", list(SessionState))
def test_every_state_has_a_way_back_to_idle(state: SessionState) -> None:
    assert S.IDLE in _reachable(state)


@pytest.mark.parametrize("state", sorted(SESSION_OPEN_STATES))
def test_an_open_session_that_cannot_be_accounted_becomes_uncertain(state: SessionState) -> None:
    assert transition(state, E.DELIVERY_UNKNOWN) is S.UNCERTAIN


def test_every_state_is_used() -> None:
    assert {s for s, _ in TRANSITIONS} == set(SessionState)
    assert set(TRANSITIONS.values()) == set(SessionState)


def test_unknown_pair_raises_a_typed_error_naming_state_and_event() -> None:
    with pytest.raises(InvalidTransitionError) as info:
        transition(S.NEBULISING, E.START_REQUESTED)
    assert info.value.state is S.NEBULISING
    assert info.value.event is E.START_REQUESTED
    message = str(info.value)
    assert "'start_requested'" in message
    assert "'nebulising'" in message
    assert "stop_requested" in message  # lists what is allowed there


# --- safety properties ----------------------------------------------------------------


def test_uncertain_never_goes_to_nebulising() -> None:
    assert all(
        target is not S.NEBULISING
        for (source, _), target in TRANSITIONS.items()
        if source is S.UNCERTAIN
    )


def test_uncertain_is_left_only_by_reconciliation() -> None:
    leaving = {
        event
        for (source, event), target in TRANSITIONS.items()
        if source is S.UNCERTAIN and target is not S.UNCERTAIN
    }
    assert leaving == {E.RECONCILED}
    assert transition(S.UNCERTAIN, E.RECONCILED) is S.IDLE
    assert _reachable(S.UNCERTAIN, skip=frozenset({E.RECONCILED})) == {S.UNCERTAIN}


def test_nebulising_is_entered_only_on_status_confirmation() -> None:
    entering = {
        event
        for (source, event), target in TRANSITIONS.items()
        if target is S.NEBULISING and source is not S.NEBULISING
    }
    assert entering == {E.STATUS_NEBULISING_OUR_SESSION}


def test_no_blind_second_start() -> None:
    # The only way to (re)send START is a fresh admission from IDLE.
    into_starting = [
        (source, event)
        for (source, event), target in TRANSITIONS.items()
        if target is S.STARTING and source is not S.STARTING
    ]
    assert into_starting == [(S.IDLE, E.START_REQUESTED)]
    assert {s for (s, e) in TRANSITIONS if e is E.START_REQUESTED} == START_ALLOWED_STATES
    assert {S.IDLE} == START_ALLOWED_STATES


@pytest.mark.parametrize("state", list(SessionState))
def test_stop_never_leads_to_starting_or_nebulising(state: SessionState) -> None:
    assert transition(state, E.STOP_REQUESTED) not in {S.STARTING, S.NEBULISING}


@pytest.mark.parametrize("state", sorted(SESSION_OPEN_STATES))
@pytest.mark.parametrize("event", [E.DEVICE_REBOOTED, E.DEVICE_SWAPPED])
def test_reboot_or_swap_with_a_session_open_is_uncertain(
    state: SessionState, event: SessionEvent
) -> None:
    assert transition(state, event) is S.UNCERTAIN


def test_restart_with_open_session_is_only_at_boot_and_keeps_stopping() -> None:
    assert transition(S.IDLE, E.RESTART_WITH_OPEN_SESSION) is S.UNCERTAIN
    assert S.UNCERTAIN in STOP_SENDING_STATES
    # The device still running the old session does not resume it.
    assert transition(S.UNCERTAIN, E.STATUS_NEBULISING_OUR_SESSION) is S.UNCERTAIN


def test_start_is_refused_outside_idle() -> None:
    for state in set(SessionState) - {S.IDLE}:
        with pytest.raises(InvalidTransitionError):
            transition(state, E.START_REQUESTED)


# --- designed flows --------------------------------------------------------------------


def test_happy_path() -> None:
    assert _walk(
        S.IDLE,
        [
            E.START_REQUESTED,
            E.START_ACKED,
            E.STATUS_IDLE,  # a STATUS sent before the device read START
            E.STATUS_NEBULISING_OUR_SESSION,
            E.STATUS_NEBULISING_OUR_SESSION,
            E.STOP_REQUESTED,
            E.STATUS_NEBULISING_OUR_SESSION,  # STOP still in flight: keep sending
            E.SESSION_END_RECEIVED,
        ],
    ) == [
        S.IDLE,
        S.STARTING,
        S.CONFIRMING,
        S.CONFIRMING,
        S.NEBULISING,
        S.NEBULISING,
        S.STOPPING,
        S.STOPPING,
        S.IDLE,
    ]


def test_device_cap_ends_the_session() -> None:
    assert _walk(S.NEBULISING, [E.SESSION_END_RECEIVED]) == [S.NEBULISING, S.IDLE]


def test_device_refusal() -> None:
    assert _walk(S.IDLE, [E.START_REQUESTED, E.START_NAKED]) == [S.IDLE, S.STARTING, S.IDLE]


@pytest.mark.parametrize(
    ("observed", "outcome"),
    [
        (E.STATUS_NEBULISING_OUR_SESSION, S.NEBULISING),  # it did start
        (E.STATUS_IDLE, S.IDLE),  # it did not start
        (E.SESSION_END_RECEIVED, S.IDLE),  # it started and already ended
        (E.LINK_LOST, S.LINK_LOST),  # STATUS silent too
    ],
)
def test_lost_start_answer_is_resolved_by_status(
    observed: SessionEvent, outcome: SessionState
) -> None:
    state = _walk(S.IDLE, [E.START_REQUESTED, E.START_UNANSWERED])[-1]
    assert state is S.START_UNKNOWN
    assert S.START_UNKNOWN not in STOP_SENDING_STATES  # reading, not commanding
    assert transition(state, observed) is outcome


def test_link_loss_while_nebulising_stops_until_the_device_confirms() -> None:
    states = _walk(
        S.NEBULISING,
        [
            E.LINK_LOST,
            E.STOP_REQUESTED,
            E.LINK_RESTORED,
            E.STATUS_NEBULISING_OUR_SESSION,
            E.STATUS_NEBULISING_OUR_SESSION,
            E.SESSION_END_RECEIVED,
        ],
    )
    assert states == [
        S.NEBULISING,
        S.LINK_LOST,
        S.LINK_LOST,
        S.STOPPING,
        S.STOPPING,
        S.STOPPING,
        S.IDLE,
    ]
    assert {S.LINK_LOST, S.STOPPING} <= STOP_SENDING_STATES


def test_fault_while_nebulising_records_the_end_then_waits_for_clearing() -> None:
    assert _walk(
        S.NEBULISING,
        [E.FAULT_RAISED, E.SESSION_END_RECEIVED, E.FAULT_RAISED, E.FAULTS_CLEARED],
    ) == [S.NEBULISING, S.STOPPING, S.IDLE, S.FAULT, S.IDLE]


def test_ack_without_confirmation_is_stopped() -> None:
    assert _walk(S.CONFIRMING, [E.CONFIRM_TIMEOUT, E.STATUS_IDLE]) == [
        S.CONFIRMING,
        S.STOPPING,
        S.IDLE,
    ]


def test_session_vanishing_from_the_device_is_uncertain() -> None:
    assert transition(S.NEBULISING, E.STATUS_IDLE) is S.UNCERTAIN
    assert transition(S.NEBULISING, E.STATUS_NEBULISING_OTHER_SESSION) is S.UNCERTAIN


def test_foreign_session_on_an_idle_device_is_stopped() -> None:
    assert _walk(S.IDLE, [E.STATUS_NEBULISING_OTHER_SESSION, E.STATUS_IDLE]) == [
        S.IDLE,
        S.STOPPING,
        S.IDLE,
    ]
