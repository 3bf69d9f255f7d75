"""The time model and the history record: elapsed_s and counted volumes."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from controller.dosing import (
    ConstraintResult,
    Decision,
    Instant,
    SessionStatus,
    elapsed_s,
)
from tests.dosing._factories import BOOT, T0, at, session


def test_same_boot_uses_monotonic_and_ignores_wall_steps() -> None:
    earlier = at(0)
    stepped_forward = at(3600, wall_offset_s=7200)
    stepped_back = at(3600, wall_offset_s=-7200)
    assert elapsed_s(earlier, stepped_forward) == 3600
    assert elapsed_s(earlier, stepped_back) == 3600


def test_different_boot_uses_utc_difference() -> None:
    earlier = at(0, boot="old-boot")
    now = Instant(utc=T0.replace(hour=10), boot_id=BOOT, monotonic_ns=5)
    assert elapsed_s(earlier, now) == 3600


def test_future_record_counts_as_now() -> None:
    future = at(7200, boot="old-boot")
    assert elapsed_s(future, at(0)) == 0.0
    same_boot_future = at(10)
    assert elapsed_s(same_boot_future, at(5)) == 0.0


def test_instant_rejects_naive_and_non_utc() -> None:
    with pytest.raises(ValueError, match="aware UTC"):
        Instant(utc=datetime(2026, 1, 1), boot_id=BOOT, monotonic_ns=0)  # noqa: DTZ001 - the naive value is the point of the test
    with pytest.raises(ValueError, match="boot_id"):
        Instant(utc=T0, boot_id="", monotonic_ns=0)


def test_from_parts_converts_to_utc() -> None:
    local = T0.astimezone(ZoneInfo("Pacific/Auckland"))
    assert Instant.from_parts(utc=local, boot_id=BOOT, monotonic_ns=0).utc == T0


@pytest.mark.parametrize(
    ("status", "delivered", "expected_ul", "is_session"),
    [
        (SessionStatus.OPEN, None, 3000, True),
        (SessionStatus.OPEN, 1200, 3000, True),
        (SessionStatus.UNCERTAIN, 500, 3000, True),
        (SessionStatus.COMPLETED, 2990, 2990, True),
        (SessionStatus.COMPLETED, None, 3000, True),
        (SessionStatus.RECONCILED, 1700, 1700, True),
        (SessionStatus.REFUSED_BY_DEVICE, None, 0, False),
    ],
)
def test_counted_ul_by_status(
    status: SessionStatus, delivered: int | None, expected_ul: int, is_session: bool
) -> None:
    record = session(1, at(0), status=status, delivered_ul=delivered)
    if status is SessionStatus.COMPLETED and delivered is None:
        record = session(1, at(0), status=status, delivered_ul=None, planned_cap_ul=3000)
        object.__setattr__(record, "delivered_ul", None)
    assert record.counted_ul == expected_ul
    assert record.counts_as_session is is_session


def test_refusal_reasons_lists_failed_constraints_only() -> None:
    decision = Decision(
        allowed=False,
        session_cap_ul=0,
        max_duration_s=60,
        output_pct=100,
        constraints=(
            ConstraintResult(code="interval", passed=False, reason="interval: too soon"),
            ConstraintResult(code="storage", passed=True, reason="storage: ok"),
        ),
    )
    assert decision.refusal_reasons == ("interval: too soon",)
    assert decision.refusal_codes == ("interval",)


def test_public_refusal_reasons_of_a_blinded_arm_name_no_dose_figure_or_lot() -> None:
    dose_reason = "session_dose: 6.67e+06 vesicles per session is 100 µL of lot LOT-2026-0042"
    decision = Decision(
        allowed=False,
        session_cap_ul=0,
        max_duration_s=60,
        output_pct=100,
        constraints=(
            ConstraintResult(
                code="interval", passed=False, reason="interval: too soon", unit="s", limit=60
            ),
            ConstraintResult(
                code="session_dose", passed=False, reason=dose_reason, unit="vesicles", limit=6e6
            ),
        ),
        continuation_available="its remaining 40 µL may be given as a continuation",
    )
    blinded = decision.public_refusal_reasons(blinded=True)
    assert blinded == (
        "interval",
        "session_dose",
        "its remaining 40 µL may be given as a continuation",
    )
    assert decision.public_refusal_reasons(blinded=False) == decision.refusal_reasons
    assert dose_reason in decision.refusal_reasons
