"""The session runtime in simulated time: every safety rule it enforces, and the
defects found by independent testers, each reproduced here first.

No pty, no asyncio, no sleep: a device model, the sans-IO host link and the
runtime on one simulated clock (`_bed.Bed`). Each test runs in milliseconds.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.alarms import AlarmCode
from controller.dosing import Delivery, Prescription, SessionStatus
from controller.ledger import Ledger
from controller.session import (
    ASSUMED_STOP_LATENCY_MS,
    LogLine,
    SendStop,
    SessionState,
    WriteAlarm,
    WriteCommand,
    WriteDecision,
    WriteEnded,
    WriteReconciled,
    WriteStarted,
    WriteStartRefused,
    WriteUncertain,
)
from drivers.mn1 import DeviceState
from simulators.mn1 import ChannelFaults, DeviceModel, LinkFaults
from tests.session._bed import Bed, pilot_prescription

IDENTIFIED_MS = 300  # the handshake is done and STATUS flows by then


def ready_bed(**kwargs: object) -> Bed:
    bed = Bed(**kwargs)  # type: ignore[arg-type]
    bed.run_until(IDENTIFIED_MS)
    assert bed.link_ready()
    return bed


def fault_before_session_end(bed: Bed) -> None:
    """A fault whose SESSION_END is lost on the wire: the host learns of it from the
    fault bit in the next STATUS (the repeat of SESSION_END comes 200 ms later)."""
    bed.model.set_condition("head_disconnected", True, now_ms=bed.now_ms)
    bed.deaf_until_ms = bed.now_ms + 20


def session_of(bed: Bed) -> int:
    session = bed.runtime.session
    assert session is not None
    return session.session_id


# --- the whole flow ------------------------------------------------------------------


def test_a_pilot_session_runs_to_its_cap_and_is_recorded_in_order() -> None:
    bed = ready_bed(model=DeviceModel(nominal_ul_min=2000, fill_ul=5000))
    outcome = bed.start()
    assert outcome.started, outcome.reasons
    bed.run_until_true(lambda: bed.runtime.session is None, timeout_ms=10 * 60_000)
    ended = bed.of_type(WriteEnded)
    assert len(ended) == 1
    assert ended[0].delivered_ul <= 3000
    assert ended[0].delivered_ul >= 2990
    assert bed.model.truth().total_delivered_ul <= 3000
    kinds = [type(e) for e in bed.effects if isinstance(e, WriteStarted | WriteEnded)]
    assert kinds == [WriteStarted, WriteEnded]
    assert bed.runtime.state is SessionState.IDLE


def test_stop_goes_out_before_the_alarm_and_records_of_the_same_input() -> None:
    bed = ready_bed()
    assert bed.start().started
    bed.run_for(2000)
    bed.effects.clear()
    fault_before_session_end(bed)
    bed.run_until_true(lambda: bool(bed.of_type(SendStop)), timeout_ms=500)
    first = bed.effects.index(bed.of_type(SendStop)[0])
    alarms = [bed.effects.index(e) for e in bed.of_type(WriteAlarm)]
    records = [bed.effects.index(e) for e in bed.of_type(WriteDecision)]
    assert alarms, "the fault raised no alarm"
    assert first < min(alarms)
    assert max(alarms) < min(i for i in records if i > first)


def test_a_refused_override_is_recorded_with_who_and_why_and_starts_nothing() -> None:
    bed = ready_bed()
    bed.effects.clear()
    bed.runtime.override_refused(by="nurse Kim", reason="bad_signature", now=bed.now())
    bed.run_for(100)
    (record,) = bed.of_type(WriteCommand)
    assert (record.command, record.origin) == ("session.override_refused", "nurse Kim")
    assert record.body == {"subject_id": bed.runtime.prescription.subject_id,
                           "reason": "bad_signature"}  # fmt: skip
    assert bed.effects.index(record) < bed.effects.index(bed.of_type(LogLine)[0])
    assert bed.runtime.session is None


# --- rule 1: layered stops -----------------------------------------------------------


def test_the_tick_stops_predictively_while_status_frames_are_lost() -> None:
    """Between STATUS frames only the tick's estimate can stop in time. At 6000 µL/min
    STATUS steps by 10 µL; the rule fires on a STATUS at ≥ 2979.4 µL (cap − 1 − flow ×
    196 ms). The first STATUS at ≥ 2965 µL therefore did not fire, and the estimate
    crosses the threshold 54–144 ms later: inside a 290 ms loss of every frame from
    the head (short of the 300 ms link loss). Without the tick, no STOP goes out until
    STATUS returns, and a head that ignores its own cap passes the cap."""
    model = DeviceModel(nominal_ul_min=6000, fill_ul=6000)
    model.set_defect("ignore_target_cap", True, now_ms=0)
    bed = ready_bed(model=model)
    assert bed.start().started
    bed.run_until_true(lambda: bed.statuses[-1][1].delivered_ul >= 2965, timeout_ms=60_000)
    assert not bed.stops_sent_ms, "the host stopped before the gap; the test needs a later gap"
    bed.deaf_until_ms = bed.now_ms + 290
    bed.run_until_true(lambda: bed.runtime.session is None, timeout_ms=5000)
    assert bed.stops_sent_ms
    assert bed.stops_sent_ms[0] < bed.deaf_until_ms, "no STOP while STATUS was lost"
    assert model.truth().total_delivered_ul <= 3000


def test_a_fault_bit_stops_on_the_same_status_not_the_next_tick() -> None:
    bed = ready_bed()
    assert bed.start().started
    bed.run_for(1500)
    fault_before_session_end(bed)
    bed.run_until_true(lambda: any(s.faults for _, s in bed.statuses), timeout_ms=500)
    fault_seen_ms = next(at for at, s in bed.statuses if s.faults)
    assert bed.stops_sent_ms, "no STOP for a fault bit"
    assert bed.stops_sent_ms[0] == fault_seen_ms
    decision = bed.of_type(WriteDecision)[-1]
    assert decision.trace["reason"] == "device_fault"


def test_a_cap_the_host_cannot_stop_in_time_is_refused_before_any_intent() -> None:
    bed = ready_bed(model=DeviceModel(nominal_ul_min=6000), prescription=pilot_prescription())
    outcome = bed.start(bed.decide(requested_ul=15))
    assert not outcome.started
    assert "below what the host can stop in time" in " ".join(outcome.reasons)
    assert bed.runtime.session is None
    assert bed.link.outstanding_seqs == ()


def test_the_session_is_stopped_at_its_maximum_duration() -> None:
    model = DeviceModel(fill_ul=5000)
    model.set_defect("ignore_target_cap", True, now_ms=0)  # only the duration can end it
    bed = ready_bed(model=model, prescription=pilot_prescription(max_session_duration_s=5))
    outcome = bed.start()
    assert outcome.started
    assert outcome.decision is not None
    limit_ms = outcome.decision.max_duration_s * 1000
    bed.run_until_true(lambda: bed.runtime.session is None, timeout_ms=limit_ms + 2000)
    ended = bed.of_type(WriteEnded)[0]
    assert ended.duration_ms <= limit_ms
    assert ended.reason in {"max_duration", "MAX_DURATION"}


# --- defect: a session that ends before its `started` row --------------------------------


def test_a_session_that_ends_at_once_has_its_started_row_first(tmp_path: Path) -> None:
    """A cup that empties right after START: SESSION_END may come before any STATUS
    shows the session running. The started row must still go first, and nothing
    must latch `ledger_unavailable` (it did: SessionStateError on `started`)."""
    model = DeviceModel(nominal_ul_min=6000, fill_ul=103, residual_ul=100)
    with Ledger.create(
        tmp_path / "ledger.sqlite3", device_id="neb-test", subject_id="S-001"
    ) as ledger:
        bed = ready_bed(model=model, ledger=ledger)
        outcome = bed.start()
        bed.run_until_true(lambda: bed.runtime.session is None, timeout_ms=3000)
        assert outcome.started, outcome.reasons
        sid = outcome.session_id
        assert sid is not None
        assert ledger.session_status(sid) is SessionStatus.COMPLETED
        summary = ledger.summaries(subject_id=bed.prescription.subject_id)[-1]
        assert summary.started
        assert summary.device_reason == "RESERVOIR_EMPTY"
        assert bed.runtime.refusals(link_ready=True) == []
        assert AlarmCode.LEDGER_UNAVAILABLE not in bed.raised()


# --- rule 4: restarts, reboots, swaps -------------------------------------------------


def test_a_rebooted_head_leaves_the_session_uncertain_until_a_person_accepts_it() -> None:
    bed = ready_bed()
    assert bed.start().started
    sid = session_of(bed)
    bed.run_for(3000)
    bed.model.reboot(now_ms=bed.now_ms)
    bed.run_for(3000)
    assert [u.session_id for u in bed.of_type(WriteUncertain)] == [sid]
    assert bed.runtime.state is SessionState.IDLE  # the device has no such session any more
    refusals = bed.runtime.refusals(link_ready=bed.link_ready())
    assert any(f"session {sid}" in r and "acknowledge" in r for r in refusals)
    assert AlarmCode.DEVICE_REBOOTED in bed.raised()
    bed.run_for(60_000)  # it does not clear itself
    assert bed.runtime.alarms.get(AlarmCode.DEVICE_REBOOTED) is not None
    assert bed.runtime.refusals(link_ready=bed.link_ready())
    bed.ack(AlarmCode.DELIVERY_UNCERTAIN, by="nurse Ada")
    bed.ack(AlarmCode.DEVICE_REBOOTED, by="nurse Ada")
    assert bed.runtime.refusals(link_ready=bed.link_ready()) == []
    assert bed.runtime.alarms.get(AlarmCode.DEVICE_REBOOTED) is None
    assert bed.start().started


def test_a_swapped_head_blocks_starts_until_acknowledged() -> None:
    bed = ready_bed()
    assert bed.start().started
    bed.run_for(2000)
    bed.replace_head(DeviceModel(serial="SIM-OTHER", start_ms=bed.now_ms))
    bed.run_for(3000)
    assert bed.runtime.alarms.get(AlarmCode.DEVICE_SWAPPED) is not None
    refusals = bed.runtime.refusals(link_ready=bed.link_ready())
    assert any("SIM-OTHER" in r for r in refusals)
    bed.run_for(30_000)
    assert bed.runtime.alarms.get(AlarmCode.DEVICE_SWAPPED) is not None  # latched
    bed.ack(AlarmCode.DEVICE_SWAPPED)
    bed.ack(AlarmCode.DELIVERY_UNCERTAIN)
    assert bed.runtime.refusals(link_ready=bed.link_ready()) == []


def test_after_a_restart_the_open_session_is_stopped_and_reconciled_with_its_reasons(
    tmp_path: Path,
) -> None:
    with Ledger.create(
        tmp_path / "ledger.sqlite3", device_id="neb-test", subject_id="S-001"
    ) as ledger:
        bed = ready_bed(ledger=ledger)
        assert bed.start().started
        sid = session_of(bed)
        bed.run_for(2000)
        bed.host_paused = True  # the controller dies; the head's watchdog stops it
        bed.run_for(1500)
        bed.host_paused = False
        stops_before = len(bed.stops_sent_ms)
        bed.restart_controller()
        assert len(bed.stops_sent_ms) > stops_before, "no STOP at once after the restart"
        uncertain = bed.of_type(WriteUncertain)
        assert [(u.session_id, u.reason) for u in uncertain] == [(sid, "controller_restart")]
        bed.run_for(3000)  # the head's SESSION_END repeats arrive
        reconciled = bed.of_type(WriteReconciled)[0]
        assert reconciled.session_id == sid
        assert reconciled.device_reason == "WATCHDOG"
        summary = ledger.summaries(subject_id=bed.prescription.subject_id)[-1]
        assert summary.status is SessionStatus.RECONCILED
        assert summary.end_reason == "WATCHDOG"
        assert summary.duration_ms is not None
        assert bed.runtime.session is None
        assert bed.runtime.refusals(link_ready=True) == [
            r for r in bed.runtime.refusals(link_ready=True) if "fault" in r
        ]


# --- rule 5: an unanswered START is never sent twice ---------------------------------


def test_an_unanswered_start_is_resolved_from_status_not_resent() -> None:
    bed = ready_bed()
    bed.model.set_link_faults(LinkFaults(drop_answer_rate=1.0), now_ms=bed.now_ms)
    outcome = bed.start()
    assert outcome.started, outcome.reasons  # STATUS showed it running
    assert bed.runtime.state is SessionState.NEBULISING
    assert bed.model.truth().session_id == outcome.session_id


def test_an_unanswered_start_that_never_ran_is_refused_not_left_open() -> None:
    bed = ready_bed()
    bed.model.set_link_faults(LinkFaults(rx=ChannelFaults(drop_rate=1.0)), now_ms=bed.now_ms)
    outcome = bed.start()
    assert not outcome.started
    assert bed.runtime.session is None or bed.runtime.state is SessionState.UNCERTAIN


# --- end reasons ------------------------------------------------------------------------


def test_both_reasons_are_kept_when_the_host_stops_and_the_head_confirms() -> None:
    bed = ready_bed()
    assert bed.start().started
    bed.run_for(1000)
    bed.stop("operator_stop:nurse Ada")
    bed.run_until_true(lambda: bed.runtime.session is None, timeout_ms=1000)
    ended = bed.of_type(WriteEnded)[0]
    assert ended.host_reason == "operator_stop:nurse Ada"
    assert ended.device_reason == "HOST_STOP"
    assert ended.reason == "operator_stop:nurse Ada"


def test_status_is_marked_stale_between_session_end_and_the_next_status() -> None:
    bed = ready_bed()
    assert bed.start().started
    bed.run_for(1000)
    bed.stop()
    bed.run_until_true(lambda: bed.runtime.session is None, timeout_ms=1000)
    status = bed.runtime.last_status
    assert status is not None
    if status.state is DeviceState.NEBULISING:
        assert not bed.runtime.status_current
        assert not bed.runtime.device_nebulising()
    bed.run_for(150)
    assert bed.runtime.status_current


# --- honest shutdown ----------------------------------------------------------------


def test_shutdown_with_a_head_that_ignores_stop_is_uncertain_and_alarmed() -> None:
    bed = ready_bed()
    bed.model.set_defect("ignore_stop", True, now_ms=bed.now_ms)
    assert bed.start().started
    sid = session_of(bed)
    bed.run_for(1000)
    bed.stop("shutdown")
    bed.run_for(3000)
    assert bed.runtime.session is not None  # the head never confirmed
    bed.runtime.shutdown_unconfirmed(bed.now())
    bed._perform()
    uncertain = bed.of_type(WriteUncertain)
    assert [(u.session_id, u.reason) for u in uncertain] == [(sid, "shutdown_stop_unconfirmed")]
    assert AlarmCode.STOP_UNCONFIRMED_AT_SHUTDOWN in bed.raised()


# --- conditions raise their alarm at once -------------------------------------------


@pytest.mark.parametrize(
    ("reading", "code"),
    [
        ({"clock_trusted": False}, AlarmCode.CLOCK_UNTRUSTED),
        ({"ok": False, "free_mib": 10}, AlarmCode.STORAGE_LOW),
    ],
)
def test_a_condition_reading_raises_its_alarm_in_the_same_input(
    reading: dict[str, object], code: AlarmCode
) -> None:
    bed = ready_bed()
    bed.effects.clear()
    bed.conditions(**reading)  # type: ignore[arg-type]
    assert code in bed.raised()


def test_a_failed_ledger_write_alarms_and_refuses_starts_at_once() -> None:
    bed = ready_bed()
    bed.runtime.on_ledger_failure(1, bed.now())
    bed._perform()
    assert AlarmCode.LEDGER_UNAVAILABLE in bed.raised()
    assert any("ledger write" in r for r in bed.runtime.refusals(link_ready=True))


def test_a_start_refused_by_the_device_is_recorded_and_nothing_runs() -> None:
    bed = ready_bed(model=DeviceModel(fill_ul=0))
    outcome = bed.start()
    assert not outcome.started
    assert bed.of_type(WriteStartRefused)
    assert bed.runtime.state is SessionState.IDLE


def test_stop_is_repeated_until_the_head_shows_it_stopped() -> None:
    bed = ready_bed()
    bed.model.set_defect("ignore_stop", True, now_ms=bed.now_ms)
    assert bed.start().started
    bed.run_for(500)
    bed.stop()
    first = len(bed.stops_sent_ms)
    bed.run_for(1000)
    assert len(bed.stops_sent_ms) - first >= 8  # every 100 ms while it nebulises
    assert AlarmCode.DEVICE_IGNORED_STOP in bed.raised()


# --- brief silences do not end a dose (issue: a technical interruption) ----------------


@pytest.mark.parametrize("how", ["controller-stalled", "head-frames-lost"])
def test_a_silence_shorter_than_the_watchdog_does_not_end_the_session(how: str) -> None:
    bed = ready_bed(model=DeviceModel(nominal_ul_min=3000, fill_ul=5000))
    assert bed.start().started
    sid = session_of(bed)
    bed.run_for(3000)
    if how == "controller-stalled":  # SIGSTOP of the controller: nothing read, nothing sent
        bed.host_paused = True
        bed.run_for(500)
        bed.host_paused = False
    else:
        bed.deaf_until_ms = bed.now_ms + 700
    bed.run_for(1000)
    assert bed.runtime.state is SessionState.NEBULISING
    assert session_of(bed) == sid
    assert not bed.of_type(WriteEnded)
    assert AlarmCode.LINK_LOST_DURING_SESSION in bed.raised()
    assert bed.runtime.alarms.get(AlarmCode.LINK_LOST_DURING_SESSION) is None  # cleared
    bed.run_until_true(lambda: bed.runtime.session is None, timeout_ms=10 * 60_000)
    ended = bed.of_type(WriteEnded)
    assert [e.session_id for e in ended] == [sid]
    assert ended[0].host_reason in {"cap_predicted", "cap_reached", None}
    assert bed.model.truth().total_delivered_ul <= 3000


def test_a_silence_as_long_as_the_watchdog_stops_the_session() -> None:
    bed = ready_bed()
    assert bed.start().started
    bed.run_for(3000)
    bed.deaf_until_ms = bed.now_ms + 2000  # the head still hears us: its watchdog stays fed
    bed.run_until_true(lambda: bed.runtime.session is None, timeout_ms=5000)
    assert bed.of_type(WriteEnded)[0].host_reason == "status_silent"
    assert not bed.model.truth().nebulising


def test_while_status_is_overdue_the_prediction_assumes_the_heads_maximum_output() -> None:
    """A head whose flow drops to a trickle just before a silence, near the cap: the
    last figure would let it run; the head's maximum output stops it in the gap."""
    model = DeviceModel(nominal_ul_min=6000, fill_ul=6000)
    model.set_defect("ignore_target_cap", True, now_ms=0)
    bed = ready_bed(model=model)
    assert bed.start().started
    bed.run_until_true(lambda: bed.statuses[-1][1].delivered_ul >= 2940, timeout_ms=60_000)
    bed.deaf_until_ms = bed.now_ms + 900
    bed.run_until_true(lambda: bed.runtime.session is None, timeout_ms=5000)
    assert bed.stops_sent_ms[0] < bed.deaf_until_ms
    assert model.truth().total_delivered_ul <= 3000


# --- one administration in several runs ---------------------------------------------


def test_an_interrupted_dose_is_continued_to_its_cap_as_one_administration(
    tmp_path: Path,
) -> None:
    prescription = pilot_prescription(min_interval_s=24 * 3600, rolling_24h_max_sessions=1)
    model = DeviceModel(nominal_ul_min=3000, fill_ul=6000)
    with Ledger.create(
        tmp_path / "ledger.sqlite3", device_id="neb-test", subject_id="S-001"
    ) as ledger:
        bed = ready_bed(model=model, ledger=ledger, prescription=prescription)
        first = bed.start()
        assert first.started
        bed.run_until_true(lambda: bed.statuses[-1][1].delivered_ul >= 700, timeout_ms=60_000)
        bed.deaf_until_ms = bed.now_ms + 1500  # the head goes quiet: stopped at 1 s
        bed.run_until_true(lambda: bed.runtime.session is None, timeout_ms=5000)
        bed.run_for(2000)
        interrupted = bed.of_type(WriteEnded)[-1]
        assert interrupted.host_reason == "status_silent"

        plain = bed.start()
        assert not plain.started
        assert any("--continue" in r for r in plain.reasons), plain.reasons

        second = bed.start(bed.decide(continue_last=True))
        assert second.started, second.reasons
        assert second.decision is not None
        assert second.decision.session_cap_ul == 3000 - interrupted.delivered_ul
        bed.run_until_true(lambda: bed.runtime.session is None, timeout_ms=120_000)

        runs = [r for r in ledger.history("S-001") if r.counts_as_session]
        assert [r.administration_id for r in runs] == [None, first.session_id]
        total = sum(r.delivered_ul or 0 for r in runs)
        # The predictive stop's price (docs/dosing.md): at most 1 µL + flow × 196 ms short.
        price_ul = 1 + -(-3000 * ASSUMED_STOP_LATENCY_MS // 60_000) + 1
        assert 3000 - price_ul <= total <= 3000
        assert model.truth().total_delivered_ul <= 3000 + 1
        again = bed.start(bed.decide(continue_last=True))
        assert not again.started  # nothing left to continue: the dose is complete


def test_below_the_floor_a_running_session_finishes_below_the_emergency_level_it_stops() -> None:
    bed = ready_bed(model=DeviceModel(nominal_ul_min=3000, fill_ul=5000))
    assert bed.start().started
    bed.run_for(2000)
    bed.conditions(ok=False, free_mib=40)  # below the floor: finishes normally
    bed.run_for(500)
    assert bed.runtime.state is SessionState.NEBULISING
    assert AlarmCode.STORAGE_LOW in bed.raised()
    bed.conditions(emergency=True)  # below the emergency level: stopped with its reason
    bed.run_until_true(lambda: bed.runtime.session is None, timeout_ms=2000)
    assert bed.of_type(WriteEnded)[-1].host_reason == "storage_emergency"
    assert AlarmCode.STORAGE_EMERGENCY in bed.raised()
    assert any("emergency" in r for r in bed.runtime.refusals(link_ready=True))


# --- nebulising to dryness (issue 15, item 3) ---------------------------------------


def _to_dryness() -> Prescription:
    return pilot_prescription().model_copy(
        update={"delivery": Delivery(fill_ul=3000, residual_ul=100)}
    )


def test_a_dose_run_to_dryness_at_its_expected_volume_raises_no_alarm() -> None:
    bed = ready_bed(
        prescription=_to_dryness(), model=DeviceModel(nominal_ul_min=3000, fill_ul=3000)
    )
    assert bed.start().started
    bed.run_until_true(lambda: bed.runtime.session is None, timeout_ms=120_000)
    bed.run_for(500)
    ended = bed.of_type(WriteEnded)[-1]
    assert 2800 <= ended.delivered_ul <= 2900
    assert "reservoir_empty" in {ended.device_reason.lower(), ended.host_reason}
    assert AlarmCode.DEVICE_RESERVOIR_EMPTY not in bed.raised()


def test_a_cup_that_runs_dry_early_raises_the_alarm_and_may_be_continued(tmp_path: Path) -> None:
    model = DeviceModel(nominal_ul_min=3000, fill_ul=1500)
    with Ledger.create(
        tmp_path / "ledger.sqlite3", device_id="neb-test", subject_id="S-001"
    ) as ledger:
        bed = ready_bed(prescription=_to_dryness(), model=model, ledger=ledger)
        assert bed.start().started
        bed.run_until_true(lambda: bed.runtime.session is None, timeout_ms=120_000)
        bed.run_for(500)
        assert AlarmCode.DEVICE_RESERVOIR_EMPTY in bed.raised()
        decision = bed.decide(continue_last=True)
        assert decision.continues_administration is not None, decision.refusal_reasons
