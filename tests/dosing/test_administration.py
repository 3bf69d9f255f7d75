"""Administrations in several runs: continuation after a technical interruption."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.dosing import (
    CONTINUABLE_END_REASONS,
    DoseRequest,
    SessionRecord,
    SessionStatus,
    StorageStatus,
    decide,
    is_continuable,
)

from ._factories import at, make_prescription, request, trusted

DAY_S = 24 * 3600


def run(
    session_id: int,
    started_s: float,
    *,
    delivered_ul: int,
    end_reason: str,
    ended_s: float | None = None,
    administration_id: int | None = None,
    status: SessionStatus = SessionStatus.COMPLETED,
    upper_bound_ul: int | None = None,
) -> SessionRecord:
    return SessionRecord(
        session_id=session_id,
        subject_id="S-001",
        started=at(started_s),
        planned_cap_ul=3000,
        delivered_ul=delivered_ul,
        status=status,
        administration_id=administration_id,
        ended=at(started_s + 60 if ended_s is None else ended_s),
        end_reason=end_reason,
        upper_bound_ul=upper_bound_ul,
    )


def request_continue() -> DoseRequest:
    return DoseRequest(
        subject_id="S-001", storage=StorageStatus(ok=True, reason=""), continue_last=True
    )


def test_an_interrupted_dose_may_be_continued_for_the_rest_of_its_cap() -> None:
    prescription = make_prescription(session_ul=3000, min_interval_s=DAY_S)
    history = [run(1, 0, delivered_ul=235, end_reason="status_silent")]
    plain = decide(prescription, history, request(), trusted(at(600)))
    assert not plain.allowed
    assert "interval" in plain.refusal_codes
    hint = plain.refusal_reasons[-1]
    assert "--continue" in hint
    assert "2765 µL" in hint
    assert "status_silent" in hint
    continued = decide(prescription, history, request_continue(), trusted(at(600)))
    assert continued.allowed, continued.refusal_reasons
    assert continued.session_cap_ul == 2765
    assert continued.continues_administration == 1


def test_a_continuation_after_its_window_is_refused() -> None:
    prescription = make_prescription(session_ul=3000, min_interval_s=DAY_S)
    history = [run(1, 0, delivered_ul=235, end_reason="WATCHDOG", ended_s=60)]
    late = decide(prescription, history, request_continue(), trusted(at(60 + 3601)))
    assert not late.allowed
    assert "continuation" in late.refusal_codes
    in_time = decide(prescription, history, request_continue(), trusted(at(60 + 3599)))
    assert in_time.allowed


def test_the_window_is_configurable_and_zero_turns_continuations_off() -> None:
    history = [run(1, 0, delivered_ul=235, end_reason="WATCHDOG")]
    off = make_prescription(session_ul=3000, continuation_window_s=0)
    assert not decide(off, history, request_continue(), trusted(at(120))).allowed
    short = make_prescription(session_ul=3000, continuation_window_s=300)
    assert not decide(short, history, request_continue(), trusted(at(60 + 301))).allowed


def test_a_dose_stopped_by_a_person_or_a_limit_is_not_continuable() -> None:
    prescription = make_prescription(session_ul=3000, min_interval_s=DAY_S)
    for reason in ("operator_stop:nurse Ada", "remote_stop:ward", "BUTTON_STOP", "max_duration"):
        history = [run(1, 0, delivered_ul=700, end_reason=reason)]
        decision = decide(prescription, history, request_continue(), trusted(at(600)))
        assert not decision.allowed, reason
        plain = decide(prescription, history, request(), trusted(at(600)))
        assert not any("--continue" in r for r in plain.refusal_reasons), reason
    assert not is_continuable("cap_predicted")
    assert {"status_silent", "WATCHDOG", "RESERVOIR_EMPTY", "device_rebooted"} <= set(
        CONTINUABLE_END_REASONS
    )


def test_runs_of_one_administration_count_once_for_interval_and_session_counts() -> None:
    prescription = make_prescription(
        session_ul=3000, min_interval_s=DAY_S, rolling_24h_max_sessions=1, course_max_sessions=5
    )
    history = [
        run(1, 0, delivered_ul=1000, end_reason="WATCHDOG"),
        run(2, 600, delivered_ul=2000, end_reason="cap_predicted", administration_id=1),
    ]
    # A day after the FIRST run, a new administration is allowed (the continuation's
    # later start does not push the interval).
    next_day = decide(prescription, history, request(), trusted(at(DAY_S + 1)))
    assert next_day.allowed, next_day.refusal_reasons
    sessions = {c.code: c for c in next_day.constraints}
    assert sessions["course_sessions"].current == 1


def test_an_uncertain_run_whose_figures_are_gone_counts_its_upper_bound() -> None:
    prescription = make_prescription(session_ul=3000, min_interval_s=DAY_S)
    history = [
        run(
            1,
            0,
            delivered_ul=400,
            end_reason="device_rebooted",
            status=SessionStatus.UNCERTAIN,
            upper_bound_ul=410,
        )
    ]
    continued = decide(prescription, history, request_continue(), trusted(at(600)))
    assert continued.allowed
    assert continued.session_cap_ul == 3000 - 410


@settings(max_examples=200, deadline=None)
@given(
    runs=st.lists(
        st.tuples(st.integers(0, 3000), st.sampled_from(sorted(CONTINUABLE_END_REASONS))),
        min_size=1,
        max_size=5,
    )
)
def test_the_runs_of_an_administration_never_total_more_than_its_cap(
    runs: list[tuple[int, str]],
) -> None:
    prescription = make_prescription(session_ul=3000)
    history: list[SessionRecord] = []
    given_ul = 0
    for index, (wanted_ul, reason) in enumerate(runs, start=1):
        delivered = min(wanted_ul, 3000 - given_ul)
        history.append(
            run(
                index,
                index * 120,
                delivered_ul=delivered,
                end_reason=reason,
                administration_id=None if index == 1 else 1,
            )
        )
        given_ul += delivered
    decision = decide(prescription, history, request_continue(), trusted(at(len(runs) * 120 + 90)))
    if decision.allowed:
        assert given_ul + decision.session_cap_ul <= 3000
    else:
        assert given_ul >= 2999 or "continuation" in decision.refusal_codes
