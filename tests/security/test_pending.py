"""Remote start request: only a bedside CONFIRM inside the window starts anything."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.security import PendingStartRequest, StartRequestStatus


def _request(window_s: float = 60.0) -> PendingStartRequest:
    return PendingStartRequest(
        command_id="c-1", sender_id="ward-3west", requested_at_s=1000.0, confirm_window_s=window_s
    )


def test_confirm_inside_window_confirms() -> None:
    done = _request().confirm(1059.9)
    assert done.status is StartRequestStatus.CONFIRMED
    assert done.closed_at_s == 1059.9


def test_confirm_at_deadline_counts_and_just_after_expires() -> None:
    assert _request().confirm(1060.0).status is StartRequestStatus.CONFIRMED
    late = _request().confirm(1060.001)
    assert late.status is StartRequestStatus.EXPIRED
    assert late.closed_at_s == 1060.0


def test_expired_and_expire() -> None:
    request = _request()
    assert not request.expired(1060.0)
    assert request.expired(1060.5)
    expired = request.expire(1061.0)
    assert expired.status is StartRequestStatus.EXPIRED
    assert expired.confirm(1061.0).status is StartRequestStatus.EXPIRED  # too late forever
    assert request.expire(1030.0) is request


def test_cancelled_request_cannot_be_confirmed() -> None:
    cancelled = _request().cancel(1010.0)
    assert cancelled.status is StartRequestStatus.CANCELLED
    assert cancelled.confirm(1011.0).status is StartRequestStatus.CANCELLED
    assert cancelled.remaining_s(1011.0) == 0.0


def test_window_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        _request(window_s=0)


@given(
    window_s=st.floats(min_value=0.1, max_value=300),
    press_s=st.floats(min_value=0, max_value=1000),
)
def test_confirmed_only_within_window(window_s: float, press_s: float) -> None:
    outcome = _request(window_s).confirm(1000.0 + press_s)
    assert (outcome.status is StartRequestStatus.CONFIRMED) == (
        1000.0 + press_s <= 1000.0 + window_s
    )
