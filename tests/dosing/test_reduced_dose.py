"""A reduced dose is the nurse's decision: refused with what is still allowed, unless accepted."""

from __future__ import annotations

import pytest

from controller.dosing import Decision, decide
from tests.dosing._factories import at, make_prescription, request, session, trusted


def _pilot_after(
    used_ul: int, *, requested_ul: int | None = None, accept_reduced_ul: int | None = None
) -> Decision:
    """The pilot's volume limits with `used_ul` delivered one hour ago."""
    rx = make_prescription(session_ul=3000, rolling_24h_max_ul=3000)
    history = [session(1, at(-3600), delivered_ul=used_ul, planned_cap_ul=3000)]
    ask = request(requested_ul=requested_ul, accept_reduced_ul=accept_reduced_ul)
    return decide(rx, history, ask, trusted(at(0)))


def _entry(decision: Decision) -> tuple[bool, str]:
    (found,) = [c for c in decision.constraints if c.code == "reduced_dose"]
    return found.passed, found.reason


def test_less_left_than_prescribed_is_refused_with_the_limit_and_the_amount() -> None:
    decision = _pilot_after(2831)
    assert not decision.allowed
    assert decision.session_cap_ul == 0
    assert decision.refusal_codes == ("reduced_dose",)
    passed, reason = _entry(decision)
    assert not passed
    assert "only 169 µL of the 3000 µL wanted remain because rolling_24h_ul" in reason
    offer = decision.reduced_dose_offer
    assert offer is not None
    assert (offer.allowed_ul, offer.wanted_ul, offer.limiting_code) == (169, 3000, "rolling_24h_ul")
    assert offer.question().startswith("only 169 µL of 3000 µL remain because rolling_24h_ul")
    assert offer.question().endswith(": give 169 µL?")


def test_a_request_above_what_is_left_is_refused_not_cut_to_169() -> None:
    # The case: 3400 µL asked, 169 µL left; it used to start with a 169 µL cap.
    decision = _pilot_after(2831, requested_ul=3400)
    assert not decision.allowed
    offer = decision.reduced_dose_offer
    assert offer is not None
    assert (offer.allowed_ul, offer.wanted_ul) == (169, 3400)


@pytest.mark.parametrize(("accept_ul", "allowed", "cap_ul"), [(169, True, 169), (100, True, 100)])
def test_an_accepted_reduced_dose_starts_with_at_most_what_was_accepted(
    accept_ul: int, allowed: bool, cap_ul: int
) -> None:
    decision = _pilot_after(2831, accept_reduced_ul=accept_ul)
    assert (decision.allowed, decision.session_cap_ul) == (allowed, cap_ul)
    passed, reason = _entry(decision)
    assert passed
    assert f"{accept_ul} µL accepted explicitly" in reason
    assert "rolling_24h_ul" in reason  # the trace keeps the limiting constraint


@pytest.mark.parametrize("accept_ul", [170, 3000, 0])
def test_accepting_more_than_is_left_or_nothing_is_refused(accept_ul: int) -> None:
    decision = _pilot_after(2831, accept_reduced_ul=accept_ul)
    assert not decision.allowed
    assert decision.refusal_codes == ("reduced_dose",)


def test_an_explicit_smaller_request_is_recorded_as_the_nurses_choice() -> None:
    decision = _pilot_after(0, requested_ul=1500)
    assert (decision.allowed, decision.session_cap_ul) == (True, 1500)
    assert _entry(decision) == (
        True,
        "reduced_dose: 1500 µL asked for, below the prescribed 3000 µL",
    )


def test_full_dose_available_needs_no_acceptance_and_adds_no_entry() -> None:
    decision = _pilot_after(0)
    assert (decision.allowed, decision.session_cap_ul) == (True, 3000)
    assert "reduced_dose" not in {c.code for c in decision.constraints}


def test_nothing_left_is_refused_by_the_limit_itself_without_an_offer() -> None:
    decision = _pilot_after(3000)
    assert decision.refusal_codes == ("rolling_24h_ul", "cap")
    assert decision.reduced_dose_offer is None


def test_no_offer_when_another_rule_refuses_too() -> None:
    rx = make_prescription(session_ul=3000, rolling_24h_max_ul=3000, min_interval_s=86_400)
    history = [session(1, at(-3600), delivered_ul=2831, planned_cap_ul=3000)]
    decision = decide(rx, history, request(), trusted(at(0)))
    assert set(decision.refusal_codes) == {"interval", "reduced_dose"}
    assert decision.reduced_dose_offer is None


def test_without_a_prescribed_session_volume_the_limits_set_the_cap() -> None:
    # No session_ul/session_dose: the prescription wants what its limits allow.
    rx = make_prescription(rolling_24h_max_ul=3000)
    history = [session(1, at(-3600), delivered_ul=2831, planned_cap_ul=3000)]
    decision = decide(rx, history, request(), trusted(at(0)))
    assert (decision.allowed, decision.session_cap_ul) == (True, 169)
