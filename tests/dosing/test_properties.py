"""Property tests: the allowed cap never breaks a limit; wall-clock steps never shrink windows."""

from __future__ import annotations

from datetime import timedelta
from fractions import Fraction
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.clock import ClockTrustPolicy, NtpStatus, evaluate_clock_trust
from controller.dosing import (
    CEILING_24H_UL,
    CEILING_SESSION_UL,
    ROLLING_WINDOW_S,
    Instant,
    Prescription,
    SessionRecord,
    SessionStatus,
    decide,
    elapsed_s,
)
from tests.dosing._factories import BOOT, at, make_prescription, request, session, trusted

DAY_S = 86_400
_SETTINGS = settings(max_examples=300, deadline=None)


def _optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


@st.composite
def prescriptions(draw: st.DrawFn) -> Prescription:
    """Random limits on a 1 mg/mL lot (0.001 mg per µL)."""
    session_ul = draw(_optional(st.integers(1, CEILING_SESSION_UL)))
    limits: dict[str, Any] = {
        "session_ul": session_ul,
        "min_interval_s": draw(_optional(st.integers(1, 2 * DAY_S))),
        "rolling_24h_max_sessions": draw(_optional(st.integers(1, 4))),
        "rolling_24h_max_ul": draw(_optional(st.integers(1, CEILING_24H_UL))),
        "rolling_24h_max_dose": draw(_optional(st.floats(0.001, 15.0))),
        "course_max_sessions": draw(_optional(st.integers(1, 12))),
        "course_max_ul": draw(_optional(st.integers(1, 40_000))),
        "course_max_dose": draw(_optional(st.floats(0.001, 40.0))),
    }
    if session_ul is not None and draw(st.booleans()):
        limits["session_dose"] = session_ul * 0.001 * draw(st.floats(0.51, 1.99))
    return make_prescription(
        amount=1.0,
        per_volume_ml=1.0,
        unit="mg",
        **{k: v for k, v in limits.items() if v is not None},
    )


@st.composite
def histories(draw: st.DrawFn) -> list[SessionRecord]:
    """Sessions over the last 5 days (some stamped in the future), this boot or an old one."""
    records = []
    for session_id in range(1, draw(st.integers(0, 12)) + 1):
        started_s = draw(st.integers(-5 * DAY_S, 2 * 3600))
        boot = draw(st.sampled_from([BOOT, "old-boot"]))
        status = draw(st.sampled_from(list(SessionStatus)))
        planned = draw(st.integers(1, CEILING_SESSION_UL))
        delivered = draw(_optional(st.integers(0, planned + 1)))
        if status in {SessionStatus.COMPLETED, SessionStatus.RECONCILED} and delivered is None:
            delivered = planned
        records.append(
            session(
                session_id,
                at(started_s, boot=boot),
                status=status,
                planned_cap_ul=planned,
                delivered_ul=delivered,
            )
        )
    return records


@_SETTINGS
@given(
    rx=prescriptions(),
    history=histories(),
    requested_ul=_optional(st.integers(0, 7000)),
    accept_reduced_ul=_optional(st.integers(0, 7000)),
)
def test_allowed_cap_never_exceeds_any_limit(
    rx: Prescription,
    history: list[SessionRecord],
    requested_ul: int | None,
    accept_reduced_ul: int | None,
) -> None:
    now = at(0)
    ask = request(requested_ul=requested_ul, accept_reduced_ul=accept_reduced_ul)
    decision = decide(rx, history, ask, trusted(now))
    if not decision.allowed:
        assert decision.session_cap_ul == 0
        return
    cap = decision.session_cap_ul
    limits = rx.limits
    started = [s for s in history if s.counts_as_session]
    recent = [s for s in started if elapsed_s(s.started, now) < ROLLING_WINDOW_S]
    used_24h = sum(s.counted_ul for s in recent)
    used_course = sum(s.counted_ul for s in started)
    per_ul = Fraction(1, 1000)  # mg per µL

    assert 1 <= cap <= CEILING_SESSION_UL
    assert used_24h + cap <= CEILING_24H_UL
    assert requested_ul is None or cap <= requested_ul
    assert accept_reduced_ul is None or cap <= accept_reduced_ul
    assert limits.session_ul is None or cap <= limits.session_ul
    assert limits.session_dose is None or cap * per_ul <= Fraction(limits.session_dose)
    assert limits.rolling_24h_max_ul is None or used_24h + cap <= limits.rolling_24h_max_ul
    assert limits.rolling_24h_max_dose is None or (used_24h + cap) * per_ul <= Fraction(
        limits.rolling_24h_max_dose
    )
    assert limits.course_max_ul is None or used_course + cap <= limits.course_max_ul
    assert limits.course_max_dose is None or (used_course + cap) * per_ul <= Fraction(
        limits.course_max_dose
    )
    assert (
        limits.rolling_24h_max_sessions is None
        or len(recent) + 1 <= limits.rolling_24h_max_sessions
    )
    assert limits.course_max_sessions is None or len(started) + 1 <= limits.course_max_sessions
    if limits.min_interval_s is not None and started:
        assert min(elapsed_s(s.started, now) for s in started) >= limits.min_interval_s
    assert not any(s.status is SessionStatus.OPEN for s in started)


def _prescribed_ul(rx: Prescription) -> int | None:
    """The prescribed session volume: session_ul and session_dose (as whole µL)."""
    limits = rx.limits
    volumes = [] if limits.session_ul is None else [limits.session_ul]
    if limits.session_dose is not None:
        volumes.append(rx.dose_to_ul_floor(limits.session_dose))
    return min(volumes) if volumes else None


@_SETTINGS
@given(
    rx=prescriptions(),
    history=histories(),
    requested_ul=_optional(st.integers(0, 7000)),
)
def test_a_dose_is_never_reduced_silently(
    rx: Prescription, history: list[SessionRecord], requested_ul: int | None
) -> None:
    """Without an explicit acceptance, the cap is what was wanted, or the start is refused.

    When the only refusal is `reduced_dose`, accepting the offered amount is allowed
    with exactly that cap.
    """
    now = trusted(at(0))
    decision = decide(rx, history, request(requested_ul=requested_ul), now)
    wanted = requested_ul if requested_ul is not None else _prescribed_ul(rx)
    if decision.allowed and wanted is not None:
        assert decision.session_cap_ul == wanted
    offer = decision.reduced_dose_offer
    if offer is None:
        return
    assert 1 <= offer.allowed_ul < offer.wanted_ul == wanted
    accepted = decide(
        rx, history, request(requested_ul=requested_ul, accept_reduced_ul=offer.allowed_ul), now
    )
    assert accepted.allowed
    assert accepted.session_cap_ul == offer.allowed_ul


def _stepped(instant: Instant, step_s: int) -> Instant:
    return Instant(
        utc=instant.utc + timedelta(seconds=step_s),
        boot_id=instant.boot_id,
        monotonic_ns=instant.monotonic_ns,
    )


@_SETTINGS
@given(
    rx=prescriptions(),
    history=histories(),
    step_s=st.integers(-3 * DAY_S, 3 * DAY_S),
)
def test_wall_clock_steps_never_shrink_windows_or_intervals(
    rx: Prescription, history: list[SessionRecord], step_s: int
) -> None:
    now = at(0)
    stepped_now = _stepped(now, step_s)
    for record in history:
        before_s, after_s = elapsed_s(record.started, now), elapsed_s(record.started, stepped_now)
        if record.started.boot_id == now.boot_id:
            # Same boot: the monotonic clock decides; a wall step changes nothing.
            assert after_s == before_s
        elif step_s <= 0:
            # Earlier boot and the clock stepped back: records look newer, never older.
            assert after_s <= before_s
    same_boot = [s for s in history if s.started.boot_id == now.boot_id]
    plain = decide(rx, same_boot, request(), trusted(now))
    stepped = decide(rx, same_boot, request(), trusted(stepped_now))
    assert (stepped.allowed, stepped.session_cap_ul, stepped.refusal_codes) == (
        plain.allowed,
        plain.session_cap_ul,
        plain.refusal_codes,
    )


@_SETTINGS
@given(
    step_s=st.floats(-3 * DAY_S, 3 * DAY_S).filter(lambda s: abs(s) > 2.0),
    mode=st.sampled_from(["system", "ntp"]),
)
def test_any_wall_step_beyond_threshold_makes_time_untrusted(step_s: float, mode: str) -> None:
    policy = ClockTrustPolicy(mode="ntp" if mode == "ntp" else "system", step_threshold_s=2.0)
    synced = NtpStatus(synchronized=True, source="test")
    first, state = evaluate_clock_trust(policy=policy, instant=at(0), ntp=synced, previous=None)
    assert first.trusted
    later = at(10)
    jumped = Instant(
        utc=later.utc + timedelta(seconds=step_s), boot_id=BOOT, monotonic_ns=later.monotonic_ns
    )
    trusted_now, _ = evaluate_clock_trust(policy=policy, instant=jumped, ntp=synced, previous=state)
    assert not trusted_now.trusted
    rx = make_prescription()
    assert decide(rx, [], request(), trusted_now).refusal_codes == ("time_trusted",)
