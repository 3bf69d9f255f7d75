"""Admission reads only the windows it needs, and decides exactly as on the whole
history (issue 14; docs/safety.md rule 12).

Random histories are written to a real ledger through its API: several boots whose
wall clocks may be off (records stamped in the future), gaps from seconds to weeks,
continuations, heads that refuse a START, runs left open, uncertain runs (with and
without an upper bound) reconciled or not, and a second subject. Then, for random
limits and a random request, `decide()` on `Ledger.admission_history` must equal
`decide()` on `Ledger.history` — the whole decision, trace included.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.dosing import (
    DoseRequest,
    Instant,
    StorageStatus,
    decide,
    full_history,
)
from controller.ledger import LEDGER_FILE_NAME, EndSource, Ledger, ReconcileSource, _admission
from tests.dosing._factories import SUBJECT, T0, make_prescription, trusted
from tests.ledger.conftest import DEVICE_ID

OTHER = "S-002"
NS = 1_000_000_000
GAPS_S = (1, 600, 3_600, 6 * 3_600, 86_399, 86_400, 86_401, 2 * 86_400, 9 * 86_400, 30 * 86_400)
WALL_ERRORS_S = (0, 0, 0, -3 * 86_400, -600, 600, 2 * 86_400)
OUTCOMES = ("done", "interrupted", "refused", "open", "uncertain", "bounded", "reconciled")


@dataclass
class _Clock:
    utc_s: int = 0
    boot: int = 0
    mono_s: int = 100

    def instant(self) -> Instant:
        return Instant(
            utc=T0 + timedelta(seconds=self.utc_s),
            boot_id=f"boot-{self.boot}",
            monotonic_ns=self.mono_s * NS,
        )

    def advance(self, seconds: int) -> None:
        self.utc_s += seconds
        self.mono_s += seconds

    def step_wall(self, seconds: int) -> None:
        self.utc_s += seconds

    def reboot(self, wall_error_s: int) -> None:
        self.boot += 1
        self.mono_s = 5
        self.utc_s += wall_error_s


steps = st.lists(
    st.fixed_dictionaries(
        {
            "gap_s": st.sampled_from(GAPS_S[3:]) | st.sampled_from(GAPS_S),
            "reboot": st.booleans(),
            "wall_error_s": st.sampled_from(WALL_ERRORS_S),
            "wall_step_s": st.sampled_from(WALL_ERRORS_S),
            "subject": st.sampled_from((SUBJECT, SUBJECT, SUBJECT, OTHER)),
            "continues": st.booleans(),
            "outcome": st.sampled_from(OUTCOMES),
            "delivered_ul": st.integers(0, 400),
        }
    ),
    min_size=4,
    max_size=24,
)

limits = st.fixed_dictionaries(
    {},
    optional={
        "min_interval_s": st.sampled_from((60, 3_600, 20 * 3_600, 3 * 86_400)),
        "rolling_24h_max_sessions": st.integers(1, 4),
        "rolling_24h_max_ul": st.integers(1, 1_500),
        "course_max_sessions": st.integers(1, 12),
        "course_max_ul": st.integers(1, 4_000),
        "continuation_window_s": st.sampled_from((0, 600, 3_600, 86_400)),
        "session_ul": st.integers(1, 400),
    },
)


def _write(ledger: Ledger, clock: _Clock, step: dict[str, Any]) -> None:
    clock.advance(step["gap_s"])
    if step["reboot"]:
        clock.reboot(step["wall_error_s"])
    else:
        clock.step_wall(step["wall_step_s"])
    subject = step["subject"]
    first_runs = [
        r.session_id
        for r in ledger.history(subject)
        if r.administration_id is None and r.counts_as_session
    ]
    continues = first_runs[-1] if step["continues"] and first_runs else None
    at = clock.instant()
    session_id = ledger.record_intent(
        subject_id=subject,
        planned_cap_ul=400,
        device_target_ul=400,
        device_max_duration_s=600,
        output_pct=80,
        decision_trace={"allowed": True},
        at=at,
        administration_id=continues,
    )
    outcome = step["outcome"]
    delivered = step["delivered_ul"]
    if outcome == "refused":
        ledger.record_start_refused(session_id, nak_reason="BUSY", at=at)
        return
    ledger.record_started(session_id, at=at)
    if outcome == "open":
        return
    clock.advance(60)
    at = clock.instant()
    if outcome in ("done", "interrupted"):
        reason = "cap_predicted" if outcome == "done" else "status_silent"
        ledger.record_ended(
            session_id,
            delivered_ul=delivered,
            duration_ms=60_000,
            reason=reason,
            source=EndSource.HOST,
            host_reason=reason,
            at=at,
        )
        return
    bound = delivered if outcome == "bounded" else None
    ledger.mark_uncertain(session_id, reason="controller_restart", upper_bound_ul=bound, at=at)
    if outcome == "reconciled":
        ledger.reconcile(
            session_id, delivered_ul=delivered, source=ReconcileSource.DEVICE_STATUS, at=at
        )


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    history=steps,
    final_gap_s=st.sampled_from(GAPS_S),
    final_reboot=st.booleans(),
    final_wall_error_s=st.sampled_from(WALL_ERRORS_S),
    prescribed=limits,
    continue_last=st.booleans(),
    requested_ul=st.none() | st.integers(1, 400),
)
def test_admission_decides_on_its_windows_exactly_as_on_the_whole_history(
    history: list[dict[str, Any]],
    final_gap_s: int,
    final_reboot: bool,
    final_wall_error_s: int,
    prescribed: dict[str, Any],
    continue_last: bool,
    requested_ul: int | None,
) -> None:
    _assert_same_decision(
        history,
        final_gap_s=final_gap_s,
        final_reboot=final_reboot,
        final_wall_error_s=final_wall_error_s,
        prescribed=prescribed,
        continue_last=continue_last,
        requested_ul=requested_ul,
    )


def _assert_same_decision(
    history: list[dict[str, Any]],
    *,
    final_gap_s: int,
    prescribed: dict[str, Any],
    continue_last: bool,
    final_reboot: bool = False,
    final_wall_error_s: int = 0,
    final_wall_step_s: int = 0,
    requested_ul: int | None = None,
) -> int:
    """Write `history`, decide both ways, compare; returns how many runs were left out."""
    prescription = make_prescription(**prescribed)
    request = DoseRequest(
        subject_id=SUBJECT,
        storage=StorageStatus(ok=True),
        requested_ul=requested_ul,
        continue_last=continue_last,
    )
    clock = _Clock()
    # A ledger the controller wrote never needs the whole history (only a damaged or
    # foreign one does): reading it would hide a wrong count behind a right answer.
    never = mock.patch.object(_admission, "full_history", side_effect=AssertionError("fallback"))
    with tempfile.TemporaryDirectory() as directory, never:
        path = Path(directory) / LEDGER_FILE_NAME
        with Ledger.create(path, device_id=DEVICE_ID, subject_id=SUBJECT) as ledger:
            ledger._db.connection.execute("PRAGMA synchronous = OFF")  # speed
            for step in history:
                _write(ledger, clock, step)
                # As the service does: the ledger object keeps the course counts
                # between admissions and adds what was written since.
                ledger.admission_history(SUBJECT, clock.instant())
            clock.advance(final_gap_s)
            if final_reboot:
                clock.reboot(final_wall_error_s)
            clock.step_wall(final_wall_step_s)
            now = trusted(clock.instant())
            everything = ledger.history(SUBJECT)
            kept = ledger.admission_history(SUBJECT, now.instant)
        with Ledger.open(path, read_only=True) as reader:
            counted_afresh = reader.admission_history(SUBJECT, now.instant)
    whole = decide(prescription, everything, request, now)
    for windowed in (kept, counted_afresh):
        assert windowed.course == full_history(everything, SUBJECT).course
        assert set(windowed.runs) <= set(everything)
        assert decide(prescription, windowed, request, now) == whole
    return len(everything) - len(kept.runs)


def _step(outcome: str, *, gap_s: int = 60, **changes: Any) -> dict[str, Any]:
    return {
        "gap_s": gap_s,
        "reboot": False,
        "wall_error_s": 0,
        "wall_step_s": 0,
        "subject": SUBJECT,
        "continues": False,
        "outcome": outcome,
        "delivered_ul": 100,
        **changes,
    }


_CONTINUE = {"min_interval_s": 3_600, "continuation_window_s": 3_600, "session_ul": 400}
_OLD = 4 * 86_400


def test_the_interval_reaches_past_a_continued_administration_in_this_boot() -> None:
    # A is days old; B (in the window) is continued, so the interval is A's.
    history = [_step("done"), _step("done", gap_s=_OLD), _step("interrupted", gap_s=_OLD)]
    left_out = _assert_same_decision(
        history, final_gap_s=600, prescribed=_CONTINUE, continue_last=True
    )
    assert left_out == 1


def test_the_interval_reaches_past_a_continued_administration_of_an_earlier_boot() -> None:
    # The same, the continued run and the one before it on an earlier boot.
    history = [
        _step("done"),
        _step("done", gap_s=_OLD, reboot=True),
        _step("interrupted", gap_s=_OLD, reboot=True),
    ]
    left_out = _assert_same_decision(
        history, final_gap_s=600, final_reboot=True, prescribed=_CONTINUE, continue_last=True
    )
    assert left_out == 1


_DAY_LIMITS = {"rolling_24h_max_sessions": 4, "rolling_24h_max_ul": 1_000}


def _day_of_runs() -> list[dict[str, Any]]:
    """An old run, then three in the last few hours (more than the interval reads)."""
    return [_step("done"), *(_step("done", gap_s=g) for g in (_OLD, 3_600, 3_600))]


def test_a_wall_clock_step_within_a_boot_does_not_hide_a_recent_run() -> None:
    # The wall clock jumps 2 days ahead after the runs: by UTC they are old, by this
    # boot's monotonic clock they are hours old and count in the 24 h window.
    left_out = _assert_same_decision(
        _day_of_runs(),
        final_gap_s=3_600,
        final_wall_step_s=2 * 86_400,
        prescribed=_DAY_LIMITS,
        continue_last=False,
    )
    assert left_out == 1


def test_the_24h_window_reaches_across_a_reboot() -> None:
    left_out = _assert_same_decision(
        _day_of_runs(),
        final_gap_s=3_600,
        final_reboot=True,
        prescribed=_DAY_LIMITS,
        continue_last=False,
    )
    assert left_out == 1


def test_the_last_administration_is_the_last_by_id_whatever_the_clocks_said() -> None:
    # Boot 0's wall clock ran 10 days ahead: its interrupted run looks as if it ended
    # "now". Boot 1 (clock right) gave a complete dose since: that one is the last
    # administration and nothing may be continued.
    ahead = 10 * 86_400
    history = [
        _step("done", wall_step_s=ahead),
        _step("interrupted"),
        _step("done", gap_s=3 * 86_400, reboot=True, wall_error_s=-ahead),
    ]
    _assert_same_decision(
        history,
        final_gap_s=3 * 86_400,
        final_reboot=True,
        prescribed=_CONTINUE,
        continue_last=False,
    )


def test_a_ledger_not_written_as_the_controller_writes_is_read_whole(tmp_path: Path) -> None:
    # An end without a volume (no controller writes one): the course volume cannot be
    # summed from the indexes, so admission reads every session, and decides the same.
    clock = _Clock()
    with Ledger.create(
        tmp_path / LEDGER_FILE_NAME, device_id=DEVICE_ID, subject_id=SUBJECT
    ) as ledger:
        for gap_s in (0, _OLD, _OLD):
            _write(ledger, clock, _step("done", gap_s=gap_s))
        session_id = ledger.record_intent(
            subject_id=SUBJECT,
            planned_cap_ul=400,
            device_target_ul=400,
            device_max_duration_s=600,
            output_pct=80,
            decision_trace={},
            at=clock.instant(),
        )
        with ledger._db.writing() as connection:  # a damaged ledger
            ledger._db.insert_event(
                connection,
                kind="ended",
                at=clock.instant(),
                body={},
                session_id=session_id,
                subject_id=SUBJECT,
            )
        clock.advance(_OLD)
        now = trusted(clock.instant())
        everything = ledger.history(SUBJECT)
        windowed = ledger.admission_history(SUBJECT, now.instant)
    assert windowed.runs == tuple(everything)
    prescription = make_prescription(course_max_ul=1_000, min_interval_s=60)
    request = DoseRequest(subject_id=SUBJECT, storage=StorageStatus(ok=True))
    assert decide(prescription, windowed, request, now) == decide(
        prescription, everything, request, now
    )
