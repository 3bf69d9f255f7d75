"""Stateful property test: doses, crashes, reboots with a wrong clock, NTP steps, operator steps.

The model keeps true time beside the controller's clocks. Whatever happens, every
session the engine admits respects, in TRUE time, the interval, the rolling 24 h and
the course limits. The clock policy is `ntp` as on the bedside Pi (no RTC): after a
reboot the wall clock may be hours off until NTP synchronises and steps it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from controller.clock import ClockTrustMonitor, ClockTrustPolicy, ManualClock, NtpStatus
from controller.dosing import SessionRecord, SessionStatus, decide
from tests.dosing._factories import SUBJECT, T0, make_prescription, request

HOUR_S = 3600
LIMITS: dict[str, Any] = {
    "session_ul": 3000,
    "min_interval_s": 6 * HOUR_S,
    "rolling_24h_max_sessions": 2,
    "rolling_24h_max_ul": 6000,
    "course_max_sessions": 20,
    "course_max_ul": 40_000,
}


@dataclass
class _Given:
    record: SessionRecord
    true_start_s: float
    true_delivered_ul: int


class DosingUnderClockTrouble(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.rx = make_prescription(**LIMITS)
        self.true_s = 0.0
        self.wall_error_s = 0.0
        self.boot = 1
        self.clock = ManualClock(utc=T0, boot_id="boot-1")
        self.monitor = self._monitor()
        self.given: list[_Given] = []

    def _monitor(self) -> ClockTrustMonitor:
        # NTP reports synchronised exactly when the wall clock is right.
        return ClockTrustMonitor(
            clock=self.clock,
            policy=ClockTrustPolicy(mode="ntp", step_threshold_s=2.0, retrust_after_s=60.0),
            ntp_reader=lambda: NtpStatus(synchronized=self.wall_error_s == 0.0, source="model"),
        )

    def _replace(self, index: int, **changes: object) -> None:
        item = self.given[index]
        self.given[index] = replace(item, record=replace(item.record, **changes))  # type: ignore[arg-type]

    @rule(
        seconds=st.sampled_from([60, HOUR_S, 6 * HOUR_S, 17 * HOUR_S, 18 * HOUR_S - 1])
        | st.integers(1, 30 * HOUR_S),
        cap_fraction=st.floats(0.0, 1.0),
        true_fraction=st.sampled_from([0.0, 1.0]) | st.floats(0.0, 1.0),
    )
    def time_passes_then_nurse_asks(
        self, seconds: int, cap_fraction: float, true_fraction: float
    ) -> None:
        self.clock.advance(seconds)
        self.true_s += seconds
        self.try_to_start(cap_fraction, true_fraction)

    @rule(
        cap_fraction=st.floats(0.0, 1.0),
        true_fraction=st.sampled_from([0.0, 1.0]) | st.floats(0.0, 1.0),
    )
    def try_to_start(self, cap_fraction: float, true_fraction: float) -> None:
        """Ask to start; the device then NAKs, completes, or is still running."""
        now = self.monitor.check()
        decision = decide(self.rx, [g.record for g in self.given], request(), now)
        if not decision.allowed:
            return
        cap = decision.session_cap_ul
        self._check_true_time_limits(cap)
        record = SessionRecord(
            session_id=len(self.given) + 1,
            subject_id=SUBJECT,
            started=now.instant,
            planned_cap_ul=cap,
            delivered_ul=None,
            status=SessionStatus.OPEN,
        )
        true_ul = 0 if cap_fraction < 0.1 else int(cap * true_fraction)
        self.given.append(
            _Given(record=record, true_start_s=self.true_s, true_delivered_ul=true_ul)
        )
        # Sessions last minutes: most end within this step, some stay open (then a crash
        # may leave them UNCERTAIN).
        if cap_fraction < 0.1:
            self._replace(-1, status=SessionStatus.REFUSED_BY_DEVICE)
        elif cap_fraction < 0.8:
            self._replace(-1, status=SessionStatus.COMPLETED, delivered_ul=true_ul)

    @rule()
    def open_session_ends(self) -> None:
        for index, item in enumerate(self.given):
            if item.record.status is SessionStatus.OPEN:
                self._replace(
                    index, status=SessionStatus.COMPLETED, delivered_ul=item.true_delivered_ul
                )

    def _check_true_time_limits(self, cap_ul: int) -> None:
        started = [g for g in self.given if g.record.counts_as_session]
        recent = [g for g in started if self.true_s - g.true_start_s < 24 * HOUR_S]
        if started:
            assert self.true_s - max(g.true_start_s for g in started) >= LIMITS["min_interval_s"]
        assert len(recent) + 1 <= LIMITS["rolling_24h_max_sessions"]
        # What really left the device (an UNCERTAIN session may have delivered its cap).
        assert sum(g.true_delivered_ul for g in recent) + cap_ul <= LIMITS["rolling_24h_max_ul"]
        assert len(started) + 1 <= LIMITS["course_max_sessions"]
        assert sum(g.true_delivered_ul for g in started) + cap_ul <= LIMITS["course_max_ul"]

    @rule(downtime_s=st.integers(0, 4 * HOUR_S), wall_error_s=st.integers(-48, 48))
    def crash_and_reboot(self, downtime_s: int, wall_error_s: int) -> None:
        """Power loss: open sessions become UNCERTAIN; the Pi may boot with a wrong clock."""
        for index, item in enumerate(self.given):
            if item.record.status is SessionStatus.OPEN:
                self._replace(index, status=SessionStatus.UNCERTAIN)
        self.boot += 1
        error_s = wall_error_s * HOUR_S
        self.clock.reboot(
            boot_id=f"boot-{self.boot}",
            downtime_s=downtime_s,
            wall_error_s=error_s - self.wall_error_s,
        )
        self.true_s += downtime_s
        self.wall_error_s = float(error_s)
        self.monitor = self._monitor()

    @precondition(lambda self: self.wall_error_s != 0.0)
    @rule()
    def ntp_synchronises(self) -> None:
        self.clock.step_wall(-self.wall_error_s)
        self.wall_error_s = 0.0

    @rule(step_s=st.integers(-48 * HOUR_S, 48 * HOUR_S))
    def operator_steps_the_clock(self, step_s: int) -> None:
        self.clock.step_wall(step_s)
        self.wall_error_s += step_s

    @rule()
    def reconcile_uncertain(self) -> None:
        """The device's own figures arrive for the oldest UNCERTAIN session."""
        for index, item in enumerate(self.given):
            if item.record.status is SessionStatus.UNCERTAIN:
                self._replace(
                    index, status=SessionStatus.RECONCILED, delivered_ul=item.true_delivered_ul
                )
                return

    @invariant()
    def counted_volume_never_below_true_volume(self) -> None:
        for item in self.given:
            assert item.record.counted_ul >= item.true_delivered_ul


DosingUnderClockTrouble.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None
)
TestDosingUnderClockTrouble = DosingUnderClockTrouble.TestCase
