"""Session life cycle: status derived from events, restart/uncertain/reconcile, history, totals."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from controller.dosing import Decision, Instant, Override, SessionStatus
from controller.ledger import (
    AlarmAction,
    EndSource,
    EventKind,
    Ledger,
    ReconcileSource,
    check_storage_floor,
    decision_to_json,
)
from tests.ledger.conftest import SimClock, create_ledger, intent


def _progress(ledger: Ledger, session_id: int, delivered_ul: int, at: Instant) -> int | None:
    return ledger.record_progress(
        session_id, delivered_ul=delivered_ul, flow_ul_min=120, reservoir_ul=2000, at=at
    )


def test_history_derives_every_status_from_events(ledger: Ledger, clock: SimClock) -> None:
    completed = intent(ledger, clock, cap_ul=500)
    ledger.record_started(completed, at=clock.advance(1))
    ledger.record_ended(
        completed,
        delivered_ul=498,
        duration_ms=240_000,
        reason="TARGET_REACHED",
        source=EndSource.DEVICE,
        at=clock.advance(240),
    )
    refused = intent(ledger, clock, cap_ul=400)
    ledger.record_start_refused(refused, nak_reason="NO_MEDICATION", at=clock.advance(1))
    open_no_progress = intent(ledger, clock, cap_ul=300)
    open_with_progress = intent(ledger, clock, cap_ul=200, subject_id="subj-2")
    ledger.record_started(open_with_progress, at=clock.advance(1))
    _progress(ledger, open_with_progress, 50, clock.advance(5))

    history = {r.session_id: r for r in ledger.history("subj-1")}
    assert {sid: (r.status, r.delivered_ul, r.counted_ul) for sid, r in history.items()} == {
        completed: (SessionStatus.COMPLETED, 498, 498),
        refused: (SessionStatus.REFUSED_BY_DEVICE, 0, 0),
        open_no_progress: (SessionStatus.OPEN, None, 300),
    }
    (other,) = ledger.history("subj-2")
    assert (other.status, other.delivered_ul, other.counted_ul) == (SessionStatus.OPEN, 50, 200)
    assert history[completed].started.utc < history[refused].started.utc  # intent times


def test_restart_uncertain_then_reconcile(db_path: Path, clock: SimClock) -> None:
    with create_ledger(db_path) as ledger:
        session_id = intent(ledger, clock, cap_ul=600)
        ledger.record_started(session_id, at=clock.advance(1))
        _progress(ledger, session_id, 120, clock.advance(60))
    # The controller crashed. After restart: a new boot, open sessions are found...
    clock.boot_id = "boot-test-0002"
    clock.monotonic_ns = 5_000_000_000
    with Ledger.open(db_path) as ledger:
        (found,) = ledger.open_sessions()
        assert found.session_id == session_id
        # ...STOPped on the device (not the ledger's business), then marked uncertain.
        ledger.mark_uncertain(session_id, reason="controller_restart", at=clock.advance(1))
        assert ledger.open_sessions() == []
        (uncertain,) = ledger.uncertain_sessions()
        assert uncertain.counted_ul == 600  # the full planned cap, not the 120 seen
        assert ledger.totals("subj-1").counted_ul == 600

        ledger.reconcile(
            session_id,
            delivered_ul=180,
            source=ReconcileSource.DEVICE_SESSION_END,
            at=clock.advance(1),
        )
        (record,) = ledger.history("subj-1")
        assert (record.status, record.delivered_ul, record.counted_ul) == (
            SessionStatus.RECONCILED,
            180,
            180,
        )
        assert ledger.uncertain_sessions() == []
        (summary,) = ledger.summaries()
        assert summary.uncertain_reason == "controller_restart"
        assert summary.reconcile_source == "device_session_end"
        kinds = [e.kind for e in ledger.events(session_id=session_id)]
        assert kinds == [
            EventKind.INTENT,
            EventKind.STARTED,
            EventKind.PROGRESS,
            EventKind.UNCERTAIN,
            EventKind.RECONCILED,
        ]
        boots = {e.at.boot_id for e in ledger.events(session_id=session_id)}
        assert boots == {"boot-test-0001", "boot-test-0002"}


def test_progress_is_rate_bounded_per_session_by_monotonic_time(
    ledger: Ledger, clock: SimClock
) -> None:
    session_id = intent(ledger, clock)
    ledger.record_started(session_id, at=clock.now())
    # A STATUS every 100 ms for 1.8 s.
    written = [
        _progress(ledger, session_id, delivered, clock.advance(0.1)) is not None
        for delivered in range(0, 90, 5)
    ]
    assert written.count(True) == 2  # at 0.1 s and 1.1 s (1 s bound)
    clock.utc = clock.utc.replace(year=2020)  # a wall-clock step does not matter
    assert _progress(ledger, session_id, 100, clock.advance(0.1)) is None
    assert _progress(ledger, session_id, 101, clock.advance(1.0)) is not None


def test_summary_carries_dose_reasons_alarms_and_overrides(ledger: Ledger, clock: SimClock) -> None:
    session_id = intent(ledger, clock, cap_ul=500)  # 1 mg/mL
    ledger.record_override(
        Override(
            role="consultant", reason="bronchospasm", constraint_codes=frozenset({"interval"})
        ),
        subject_id="subj-1",
        session_id=session_id,
        at=clock.now(),
    )
    ledger.record_started(session_id, at=clock.advance(1))
    ledger.record_alarm(
        alarm_code="output_low",
        action=AlarmAction.RAISED,
        actor="controller",
        priority="medium",
        session_id=session_id,
        at=clock.advance(30),
    )
    ledger.record_alarm(
        alarm_code="output_low",
        action=AlarmAction.ACKNOWLEDGED,
        actor="nurse:jo",
        session_id=session_id,
        at=clock.advance(10),
    )
    ledger.record_ended(
        session_id,
        delivered_ul=250,
        duration_ms=120_000,
        reason="BUTTON_STOP",
        source=EndSource.DEVICE,
        at=clock.advance(80),
    )
    (summary,) = ledger.summaries(subject_id="subj-1")
    assert summary.dose == pytest.approx(0.25)
    assert (summary.end_reason, summary.end_source) == ("BUTTON_STOP", "device")
    assert [(a.action, a.actor) for a in summary.alarms] == [
        (AlarmAction.RAISED, "controller"),
        (AlarmAction.ACKNOWLEDGED, "nurse:jo"),
    ]
    assert summary.overrides[0]["role"] == "consultant"
    assert summary.overrides[0]["constraint_codes"] == ["interval"]
    assert ledger.summaries(since=clock.advance(1).utc) == []


def test_decision_trace_round_trips_as_json(ledger: Ledger, clock: SimClock) -> None:
    decision = Decision(
        allowed=False,
        session_cap_ul=0,
        max_duration_s=0,
        output_pct=0,
        constraints=(),
        evaluated_at=clock.now(),
    )
    event_id = ledger.record_decision(
        subject_id="subj-1", allowed=False, trace=decision_to_json(decision), at=clock.now()
    )
    (event,) = ledger.events(kinds=[EventKind.DECISION])
    assert event.event_id == event_id
    assert event.body["trace"]["evaluated_at"]["boot_id"] == clock.boot_id
    with pytest.raises(ValueError, match="not plain JSON"):
        ledger.record_decision(
            subject_id="subj-1", allowed=True, trace={"when": clock.now()}, at=clock.now()
        )


def test_storage_floor_reports_free_space_against_the_floor(tmp_path: Path) -> None:
    ok = check_storage_floor(tmp_path, floor_bytes=1)
    assert ok.ok
    assert ok.to_status().ok
    low = check_storage_floor(tmp_path, floor_bytes=ok.free_bytes + 10**15)
    assert not low.ok
    assert "below the floor" in low.to_status().reason
    missing = check_storage_floor(tmp_path / "nope", floor_bytes=1)
    assert missing.free_bytes == 0
    assert not missing.ok


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_a_new_ledger_and_its_wal_are_0640_whatever_the_umask(
    tmp_path: Path, clock: SimClock, umask: int
) -> None:
    """Dose records are not world-readable, and the service's group can read backups."""
    path = tmp_path / "ledger.sqlite3"
    previous = os.umask(umask)
    try:
        with create_ledger(path) as ledger:
            intent(ledger, clock)
            wal = path.with_name(path.name + "-wal")
            assert wal.exists(), "the write went to the WAL"
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (path, wal)}
    finally:
        os.umask(previous)
    assert modes == {path.name: 0o640, wal.name: 0o640}
