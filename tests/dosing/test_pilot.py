"""The pilot protocol from config/example.toml, day by day on a simulated clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.clock import ClockTrustMonitor, ClockTrustPolicy, ManualClock, NtpStatus
from controller.dosing import (
    BedsideScan,
    DoseRequest,
    Prescription,
    SessionRecord,
    TrustedTime,
    decide,
    load_prescription,
)
from tests.dosing._factories import T0, request, session

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "example.toml"
DAY_S = 86_400


def scanned() -> DoseRequest:
    """A start after the nurse scanned the wristband and the pilot's vial (five rights)."""
    return request(scan=BedsideScan(subject_id="S-001", lot_id="LOT-2026-0042"))


@pytest.fixture
def pilot() -> Prescription:
    rx = load_prescription(EXAMPLE)
    # Make the fixture independent of the example's subject id.
    return rx.model_copy(update={"subject_id": "S-001"})


def _give(history: list[SessionRecord], now: TrustedTime, cap_ul: int) -> None:
    history.append(
        session(len(history) + 1, now.instant, delivered_ul=cap_ul, planned_cap_ul=cap_ul)
    )


def test_five_daily_sessions_then_course_complete(pilot: Prescription) -> None:
    clock = ManualClock(utc=T0)
    monitor = ClockTrustMonitor(clock=clock, policy=ClockTrustPolicy(mode="system"))
    history: list[SessionRecord] = []
    for day in range(5):
        now = monitor.check()
        decision = decide(pilot, history, scanned(), now)
        assert decision.allowed, (day, decision.refusal_reasons)
        assert decision.session_cap_ul == 3000
        assert decision.max_duration_s == 1200
        _give(history, now, decision.session_cap_ul)
        clock.advance(DAY_S)
    sixth = decide(pilot, history, scanned(), monitor.check())
    assert not sixth.allowed
    assert sixth.session_cap_ul == 0
    assert {"course_sessions", "course_ul", "course_dose", "course_end"} <= set(sixth.refusal_codes)
    assert "course_sessions: 5 sessions in the course >= limit 5" in sixth.refusal_reasons


def test_second_session_after_23h_refused_even_after_wall_clock_jumps_2h(
    pilot: Prescription,
) -> None:
    clock = ManualClock(utc=T0)
    policy = ClockTrustPolicy(mode="system", step_threshold_s=2.0, retrust_after_s=60.0)
    monitor = ClockTrustMonitor(clock=clock, policy=policy)
    history: list[SessionRecord] = []
    first = monitor.check()
    _give(history, first, decide(pilot, history, scanned(), first).session_cap_ul)

    clock.advance(23 * 3600)
    at_23h = decide(pilot, history, scanned(), monitor.check())
    assert not at_23h.allowed
    assert "interval: last start 23h ago < 24h" in at_23h.refusal_reasons

    clock.step_wall(2 * 3600)  # wall clock now reads 25 h after the first start
    stepped = monitor.check()
    assert not stepped.trusted
    assert "stepped by +7200.0 s" in stepped.reason
    after_step = decide(pilot, history, scanned(), stepped)
    assert {"time_trusted", "interval"} <= set(after_step.refusal_codes)

    # Even once the clock is trusted again, the interval is measured on the monotonic
    # clock: 23 h 01 min have passed, not 25 h.
    clock.advance(60)
    retrusted = monitor.check()
    assert retrusted.trusted
    later = decide(pilot, history, scanned(), retrusted)
    assert later.refusal_codes == (
        "interval",
        "rolling_24h_sessions",
        "rolling_24h_ul",
        "rolling_24h_dose",
        "cap",
    )
    assert "interval: last start 23h01m ago < 24h" in later.refusal_reasons

    clock.advance(59 * 60)
    assert decide(pilot, history, scanned(), monitor.check()).allowed


def test_reboot_after_23h_still_refused(pilot: Prescription) -> None:
    clock = ManualClock(utc=T0, boot_id="boot-1")
    monitor = ClockTrustMonitor(clock=clock, policy=ClockTrustPolicy(mode="system"))
    history: list[SessionRecord] = []
    first = monitor.check()
    _give(history, first, 3000)
    clock.reboot(boot_id="boot-2", downtime_s=23 * 3600)
    decision = decide(pilot, history, scanned(), monitor.check())
    assert "interval" in decision.refusal_codes


def test_ntp_policy_refuses_until_synchronised(pilot: Prescription) -> None:
    clock = ManualClock(utc=T0)
    status = NtpStatus(synchronized=False, source="timedatectl", detail="NTPSynchronized=no")
    monitor = ClockTrustMonitor(
        clock=clock, policy=ClockTrustPolicy(mode="ntp"), ntp_reader=lambda: status
    )
    decision = decide(pilot, [], scanned(), monitor.check())
    # Without trusted time the vial's expiry date cannot be judged either (issue 20).
    assert decision.refusal_codes == ("time_trusted", "lot_expiry")
    assert "NTP not synchronised (timedatectl: NTPSynchronized=no)" in decision.refusal_reasons[0]
