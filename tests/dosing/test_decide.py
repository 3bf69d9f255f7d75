"""decide(): every constraint at its boundary (L-1, L, L+1), zero and missing."""

from __future__ import annotations

from datetime import date

import pytest

from controller.dosing import (
    CEILING_24H_UL,
    CEILING_SESSION_UL,
    Decision,
    Override,
    SessionRecord,
    SessionStatus,
    TrustedTime,
    decide,
)
from tests.dosing._factories import at, limit, make_prescription, request, session, trusted

DAY_S = 86_400


def result(decision: Decision, code: str) -> tuple[bool, int | None, str]:
    """(passed, remaining_ul, reason) of one constraint; fails if absent."""
    matches = [c for c in decision.constraints if c.code == code]
    assert len(matches) == 1, f"{code} evaluated {len(matches)} times"
    return matches[0].passed, matches[0].remaining_ul, matches[0].reason


def codes(decision: Decision) -> set[str]:
    return {c.code for c in decision.constraints}


def used(volume_ul: int, *, started_s: float = -3600) -> list[SessionRecord]:
    """History with `volume_ul` delivered one hour before now (within 24 h)."""
    if volume_ul == 0:
        return []
    return [session(1, at(started_s), delivered_ul=volume_ul, planned_cap_ul=volume_ul)]


# --- volume limits: rolling 24 h, course, ceilings --------------------------------------


@pytest.mark.parametrize(
    ("field", "code"),
    [("rolling_24h_max_ul", "rolling_24h_ul"), ("course_max_ul", "course_ul")],
)
@pytest.mark.parametrize(
    ("used_ul", "allowed", "cap_ul"),
    [(0, True, 3000), (2999, True, 1), (3000, False, 0), (3001, False, 0), (1000, True, 2000)],
)
def test_volume_limit_boundaries(
    field: str, code: str, used_ul: int, allowed: bool, cap_ul: int
) -> None:
    rx = make_prescription(**limit(field, 3000))
    decision = decide(rx, used(used_ul), request(), trusted(at(0)))
    assert decision.allowed is allowed
    assert decision.session_cap_ul == cap_ul
    passed, remaining_ul, _ = result(decision, code)
    assert passed is allowed
    assert remaining_ul == max(0, 3000 - used_ul)


def test_missing_limits_are_not_evaluated_and_ceilings_apply() -> None:
    decision = decide(make_prescription(), [], request(), trusted(at(0)))
    assert decision.allowed
    assert decision.session_cap_ul == CEILING_SESSION_UL
    assert decision.max_duration_s == 3600
    assert not codes(decision) & {
        "rolling_24h_ul",
        "course_ul",
        "interval",
        "session_ul",
        "session_dose",
        "course_sessions",
        "rolling_24h_sessions",
    }


@pytest.mark.parametrize(
    ("used_ul", "allowed", "cap_ul"),
    [(CEILING_24H_UL - 1, True, 1), (CEILING_24H_UL, False, 0), (CEILING_24H_UL + 1, False, 0)],
)
def test_code_daily_ceiling_applies_without_any_configured_limit(
    used_ul: int, allowed: bool, cap_ul: int
) -> None:
    history = [
        session(1, at(-7200), delivered_ul=6000, planned_cap_ul=6000),
        session(2, at(-3600), delivered_ul=used_ul - 6000, planned_cap_ul=6000),
    ]
    decision = decide(make_prescription(), history, request(), trusted(at(0)))
    assert (decision.allowed, decision.session_cap_ul) == (allowed, cap_ul)
    assert result(decision, "ceiling_24h_ul")[0] is allowed


@pytest.mark.parametrize(
    ("age_s", "counted"), [(DAY_S - 1, True), (DAY_S, False), (DAY_S + 1, False)]
)
def test_rolling_window_edge(age_s: int, counted: bool) -> None:
    rx = make_prescription(rolling_24h_max_ul=3000)
    decision = decide(rx, used(3000, started_s=-age_s), request(), trusted(at(0)))
    assert decision.allowed is not counted


@pytest.mark.parametrize(("limit_ul", "cap_ul"), [(1, 1), (2999, 2999), (3000, 3000)])
def test_session_ul_sets_the_cap(limit_ul: int, cap_ul: int) -> None:
    decision = decide(make_prescription(session_ul=limit_ul), [], request(), trusted(at(0)))
    assert decision.session_cap_ul == cap_ul


@pytest.mark.parametrize(
    ("requested_ul", "allowed", "cap_ul"),
    [(0, False, 0), (1, True, 1), (2999, True, 2999), (3000, True, 3000), (3001, False, 0)],
)
def test_requested_volume_lowers_never_raises(
    requested_ul: int, allowed: bool, cap_ul: int
) -> None:
    rx = make_prescription(session_ul=3000)
    decision = decide(rx, [], request(requested_ul=requested_ul), trusted(at(0)))
    assert (decision.allowed, decision.session_cap_ul) == (allowed, cap_ul)
    if requested_ul > 3000:  # above the prescription: refused, never silently cut to 3000
        assert decision.refusal_codes == ("reduced_dose",)


# --- dose limits (drug units converted via the lot, rounded down) -------------------------


def test_session_dose_rounds_down_to_whole_ul() -> None:
    # 1 mg/mL -> 0.001 mg/µL; 2.9995 mg -> 2999.5 µL -> 2999 µL (never over the dose).
    rx = make_prescription(
        amount=1.0, per_volume_ml=1.0, unit="mg", session_ul=3000, session_dose=2.9995
    )
    decision = decide(rx, [], request(), trusted(at(0)))
    assert decision.session_cap_ul == 2999
    assert rx.ul_to_dose(decision.session_cap_ul) <= 2.9995


@pytest.mark.parametrize(
    ("field", "code"),
    [("rolling_24h_max_dose", "rolling_24h_dose"), ("course_max_dose", "course_dose")],
)
@pytest.mark.parametrize(
    ("used_ul", "allowed", "cap_ul"),
    [(0, True, 3000), (2999, True, 1), (3000, False, 0), (3001, False, 0)],
)
def test_dose_limit_boundaries(
    field: str, code: str, used_ul: int, allowed: bool, cap_ul: int
) -> None:
    rx = make_prescription(**limit(field, 2.0e8))  # 2.0e8 vesicles = 3000 µL of this lot
    decision = decide(rx, used(used_ul), request(), trusted(at(0)))
    assert (decision.allowed, decision.session_cap_ul) == (allowed, cap_ul)
    assert result(decision, code)[0] is allowed


# --- counts and interval --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "code"),
    [
        ("rolling_24h_max_sessions", "rolling_24h_sessions"),
        ("course_max_sessions", "course_sessions"),
    ],
)
@pytest.mark.parametrize(("previous", "allowed"), [(0, True), (1, True), (2, False), (3, False)])
def test_session_count_boundaries(field: str, code: str, previous: int, allowed: bool) -> None:
    rx = make_prescription(**limit(field, 2))
    history = [session(i + 1, at(-3600 * (i + 1)), delivered_ul=10) for i in range(previous)]
    decision = decide(rx, history, request(), trusted(at(0)))
    assert decision.allowed is allowed
    assert result(decision, code)[0] is allowed


@pytest.mark.parametrize(
    ("since_s", "allowed"), [(DAY_S - 1, False), (DAY_S, True), (DAY_S + 1, True), (0, False)]
)
def test_interval_boundaries(since_s: int, allowed: bool) -> None:
    rx = make_prescription(min_interval_s=DAY_S)
    decision = decide(rx, [session(1, at(-since_s))], request(), trusted(at(0)))
    assert decision.allowed is allowed
    assert result(decision, "interval")[0] is allowed


def test_interval_without_previous_session_passes() -> None:
    decision = decide(make_prescription(min_interval_s=DAY_S), [], request(), trusted(at(0)))
    assert result(decision, "interval") == (True, None, "interval: no previous start (minimum 24h)")


def test_interval_reason_is_human() -> None:
    rx = make_prescription(min_interval_s=DAY_S)
    decision = decide(rx, [session(1, at(-(23 * 3600 + 2 * 60)))], request(), trusted(at(0)))
    assert "interval: last start 23h02m ago < 24h" in decision.refusal_reasons


# --- statuses of past sessions ------------------------------------------------------------


def test_uncertain_session_counts_its_full_planned_cap() -> None:
    rx = make_prescription(rolling_24h_max_ul=6000)
    history = [
        session(1, at(-3600), status=SessionStatus.UNCERTAIN, planned_cap_ul=3000, delivered_ul=200)
    ]
    assert decide(rx, history, request(), trusted(at(0))).session_cap_ul == 3000


def test_reconciled_session_counts_what_was_delivered() -> None:
    rx = make_prescription(rolling_24h_max_ul=6000)
    history = [
        session(
            1, at(-3600), status=SessionStatus.RECONCILED, planned_cap_ul=3000, delivered_ul=200
        )
    ]
    assert decide(rx, history, request(), trusted(at(0))).session_cap_ul == 5800


def test_device_refused_session_counts_nothing() -> None:
    rx = make_prescription(rolling_24h_max_ul=3000, min_interval_s=DAY_S, course_max_sessions=1)
    history = [session(1, at(-60), status=SessionStatus.REFUSED_BY_DEVICE, delivered_ul=None)]
    decision = decide(rx, history, request(), trusted(at(0)))
    assert decision.allowed
    assert decision.session_cap_ul == 3000


def test_open_session_blocks_a_second_start() -> None:
    history = [session(7, at(-60), status=SessionStatus.OPEN, delivered_ul=None)]
    decision = decide(make_prescription(), history, request(), trusted(at(0)))
    assert not decision.allowed
    assert "open_session: session(s) 7 still open" in decision.refusal_reasons


def test_other_subjects_history_is_ignored() -> None:
    rx = make_prescription(rolling_24h_max_ul=3000)
    history = [session(1, at(-60), subject_id="S-999")]
    assert decide(rx, history, request(), trusted(at(0))).session_cap_ul == 3000


# --- gates: time, storage, subject, output ---------------------------------------------------


def test_untrusted_time_refuses_with_reason() -> None:
    now = TrustedTime(instant=at(0), trusted=False, reason="NTP not synchronised")
    decision = decide(make_prescription(), [], request(), now)
    assert not decision.allowed
    assert decision.session_cap_ul == 0
    assert decision.refusal_codes == ("time_trusted",)
    assert "time_trusted: time not trusted: NTP not synchronised" in decision.refusal_reasons


def test_storage_below_floor_refuses_with_reason() -> None:
    decision = decide(make_prescription(), [], request(storage_ok=False), trusted(at(0)))
    assert decision.refusal_codes == ("storage",)
    assert "12 MB free" in decision.refusal_reasons[0]


def test_wrong_subject_refused() -> None:
    decision = decide(make_prescription(), [], request(subject_id="S-002"), trusted(at(0)))
    assert decision.refusal_codes == ("subject",)


@pytest.mark.parametrize(("pct", "allowed"), [(49, False), (50, True), (80, True), (81, False)])
def test_output_pct_range(pct: int, allowed: bool) -> None:
    rx = make_prescription(output_pct=60, output_pct_min=50, output_pct_max=80)
    decision = decide(rx, [], request(output_pct=pct), trusted(at(0)))
    assert decision.allowed is allowed
    assert decision.output_pct == pct


def test_output_pct_defaults_to_prescribed_set_point() -> None:
    rx = make_prescription(output_pct=60, output_pct_min=50, output_pct_max=80)
    assert decide(rx, [], request(), trusted(at(0))).output_pct == 60


# --- course dates in the configured time zone ---------------------------------------------


@pytest.mark.parametrize(
    ("zone", "hours_after_t0", "allowed"),
    # T0 is 2026-12-01 09:00 UTC. -8 h = 01:00 UTC on 1 Dec, 20:00 on 30 Nov in New York;
    # -12 h = 21:00 UTC on 30 Nov, already 10:00 on 1 Dec in Auckland.
    [
        ("UTC", -8, True),
        ("America/New_York", -8, False),
        ("America/New_York", -3, True),
        ("UTC", -12, False),
        ("Pacific/Auckland", -12, True),
    ],
)
def test_course_start_uses_configured_zone(zone: str, hours_after_t0: int, allowed: bool) -> None:
    rx = make_prescription(timezone=zone, course_start=date(2026, 12, 1))
    decision = decide(rx, [], request(), trusted(at(hours_after_t0 * 3600)))
    assert decision.allowed is allowed


@pytest.mark.parametrize(("offset_days", "allowed"), [(-1, True), (0, True), (1, False)])
def test_course_end_is_inclusive(offset_days: int, allowed: bool) -> None:
    rx = make_prescription(course_end=date(2026, 12, 1))
    decision = decide(rx, [], request(), trusted(at(offset_days * DAY_S)))
    assert decision.allowed is allowed


# --- overrides of soft limits -------------------------------------------------------------


def test_valid_override_lifts_a_soft_limit_and_is_traced() -> None:
    rx = make_prescription(
        min_interval_s=DAY_S,
        rolling_24h_max_ul=6000,
        soft_limits=["interval"],
        override_roles=["investigator"],
    )
    override = Override(
        role="investigator",
        reason="dose stopped by clog at 1000 µL",
        constraint_codes=frozenset({"interval"}),
    )
    history = [session(1, at(-3600), delivered_ul=1000)]
    decision = decide(rx, history, request(override=override), trusted(at(0)))
    assert decision.allowed
    assert decision.session_cap_ul == 5000
    assert decision.override == override
    interval = next(c for c in decision.constraints if c.code == "interval")
    assert interval.overridden
    assert interval.passed
    assert "overridden by investigator: dose stopped by clog" in interval.reason


@pytest.mark.parametrize(
    ("role", "reason", "codes_", "message"),
    [
        ("nurse", "x", {"interval"}, "role 'nurse' may not override"),
        ("investigator", "  ", {"interval"}, "a reason is required"),
        ("investigator", "x", {"rolling_24h_ul"}, "rolling_24h_ul not soft"),
        ("investigator", "x", set(), "no constraint codes named"),
    ],
)
def test_invalid_override_is_refused_and_lifts_nothing(
    role: str, reason: str, codes_: set[str], message: str
) -> None:
    rx = make_prescription(
        min_interval_s=DAY_S, soft_limits=["interval"], override_roles=["investigator"]
    )
    override = Override(role=role, reason=reason, constraint_codes=frozenset(codes_))
    decision = decide(rx, [session(1, at(-3600))], request(override=override), trusted(at(0)))
    assert not decision.allowed
    assert {"override", "interval"} <= set(decision.refusal_codes)
    assert any(message in r for r in decision.refusal_reasons)


def test_override_never_lifts_a_hard_limit_even_if_named() -> None:
    rx = make_prescription(
        rolling_24h_max_ul=3000, soft_limits=["interval"], override_roles=["investigator"]
    )
    override = Override(role="investigator", reason="x", constraint_codes=frozenset({"interval"}))
    decision = decide(rx, used(3000), request(override=override), trusted(at(0)))
    assert decision.refusal_codes == ("rolling_24h_ul", "cap")
