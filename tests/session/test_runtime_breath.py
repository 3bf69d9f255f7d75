"""Breath-gated delivery in the session runtime (MN-1 ICD addendum 1.1), simulated time.

A 1.1 head model (`DeviceModel(breathing=BreathingModel(...))`), the sans-IO host link
and the runtime on one clock (`_bed.Bed`): admission by the head's capabilities,
START_GATED from the prescription, WAITING as "still in session", the breath alarms,
and the run's summary row in a real ledger.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.alarms import AlarmCode, AlarmEventKind
from controller.dosing import Delivery, Prescription
from controller.ledger import Ledger
from controller.session import (
    SendStop,
    SessionRuntime,
    SessionState,
    StartOutcome,
    WriteAlarm,
    WriteBreathSummary,
    WriteEnded,
)
from drivers.mn1 import CapsDiscovery, DeviceState
from simulators.mn1 import BreathingModel, DeviceModel
from tests.dosing._factories import make_prescription
from tests.session._bed import Bed

IDENTIFIED_MS = 300
FAST_UL_MIN = 2000  # a fast head keeps the pilot dose to minutes of simulated time
CAP_UL = 600


def gated(**delivery: int) -> Prescription:
    """The pilot prescription, breath-gated, with a shortened session cap."""
    base = make_prescription(session_ul=CAP_UL)
    settings = {"gate_pct": 80, "lead_breaths": 1, "apnoea_s": 5} | delivery
    return base.model_copy(update={"delivery": Delivery(mode="breath_gated", **settings)})


def head_11(pattern: str = "iso27427") -> DeviceModel:
    """A breath-aware (ICD 1.1) head with a breathing patient."""
    return DeviceModel(
        nominal_ul_min=FAST_UL_MIN, fill_ul=5000, breathing=BreathingModel(pattern=pattern)
    )


def ready(bed: Bed) -> Bed:
    bed.run_until_true(
        lambda: bed.link_ready() and bed.runtime.caps_discovery is not CapsDiscovery.PENDING,
        timeout_ms=2000,
    )
    return bed


def gated_now(bed: Bed) -> bool:
    breathing = bed.model.truth().breathing
    assert breathing is not None
    return bool(breathing["gated"])


def active(bed: Bed) -> set[AlarmCode]:
    return {alarm.code for alarm in bed.runtime.alarms.active}


def raised(bed: Bed, kind: AlarmEventKind = AlarmEventKind.RAISED) -> list[AlarmCode]:
    return [e.event.code for e in bed.of_type(WriteAlarm) if e.event.kind is kind]


def run_to_end(bed: Bed, timeout_ms: int = 20 * 60_000) -> WriteEnded:
    bed.run_until_true(lambda: bed.runtime.session is None, timeout_ms=timeout_ms)
    ended = bed.of_type(WriteEnded)
    assert len(ended) == 1
    return ended[0]


@pytest.mark.parametrize("pattern", ["iso27427", "adult", "severe"])
def test_a_gated_session_runs_to_its_cap_with_no_alarm_and_its_summary_is_recorded(
    tmp_path: Path, pattern: str
) -> None:
    ledger = Ledger.create(tmp_path / "ledger.db", device_id="neb-test", subject_id="S-001")
    bed = ready(Bed(prescription=gated(), model=head_11(pattern), ledger=ledger))
    outcome = bed.start()
    assert outcome.started, outcome.reasons
    assert gated_now(bed)
    intent = bed.intents[0]
    assert intent.delivery == {
        "mode": "breath_gated",
        "gate_pct": 80,
        "lead_breaths": 1,
        "apnoea_s": 5,
    }
    ended = run_to_end(bed)
    assert ended.reason in ("TARGET_REACHED", "cap_predicted", "cap_reached")
    assert CAP_UL - 10 <= ended.delivered_ul <= CAP_UL
    assert raised(bed) == []
    # The last breath is reported at the next inspiration: then the summary, once.
    bed.run_until_true(lambda: bool(bed.of_type(WriteBreathSummary)), timeout_ms=10_000)
    bed.run_for(10_000)
    summaries = bed.of_type(WriteBreathSummary)
    assert len(summaries) == 1
    figures = summaries[0].figures
    assert figures["gated"] is True
    insp, exp = figures["aerosol_insp_ul"], figures["aerosol_exp_ul"]
    assert isinstance(insp, float)
    assert isinstance(exp, float)
    assert abs(insp + exp - ended.delivered_ul) <= 2
    assert exp <= 0.05 * (insp + exp)
    assert raised(bed) == []
    stored = ledger.breath_summary(ended.session_id)
    assert stored is not None
    assert stored["breaths"] == figures["breaths"]
    assert stored["gated"] is True


def test_apnoea_waits_raises_no_breathing_then_resumes_and_clears() -> None:
    bed = ready(Bed(prescription=gated(apnoea_s=5), model=head_11("adult")))
    assert bed.start().started
    sid = bed.runtime.session.session_id if bed.runtime.session else 0
    bed.run_for(15_000)
    assert bed.runtime.session is not None
    bed.model.breathing_apnoea(9, now_ms=bed.now_ms)  # < NO_BREATHING, > apnoea_s
    bed.run_until_true(lambda: AlarmCode.NO_BREATHING_DETECTED in active(bed), timeout_ms=15_000)
    # Still our session, paused: the host neither stops nor alarms on flow.
    assert bed.statuses[-1][1].state is DeviceState.WAITING
    assert bed.runtime.state is SessionState.NEBULISING
    assert bed.runtime.session is not None
    assert bed.runtime.session.session_id == sid
    assert not bed.of_type(SendStop)
    bed.run_until_true(
        lambda: AlarmCode.NO_BREATHING_DETECTED not in active(bed),
        timeout_ms=15_000,
    )
    assert AlarmCode.NO_BREATHING_DETECTED in raised(bed, AlarmEventKind.CLEARED)
    ended = run_to_end(bed)
    assert CAP_UL - 10 <= ended.delivered_ul <= CAP_UL
    assert set(raised(bed)) == {AlarmCode.NO_BREATHING_DETECTED}


def test_mask_off_ends_no_breathing_with_its_alarm() -> None:
    bed = ready(Bed(prescription=gated(apnoea_s=5), model=head_11("adult")))
    assert bed.start().started
    bed.run_for(10_000)
    bed.model.set_mask_off(True, now_ms=bed.now_ms)
    ended = run_to_end(bed, timeout_ms=60_000)
    assert ended.device_reason == "NO_BREATHING"
    assert ended.host_reason is None
    assert ended.delivered_ul < CAP_UL
    assert AlarmCode.NO_BREATHING_DETECTED in raised(bed)
    assert AlarmCode.SESSION_ENDED_NO_BREATHING in raised(bed)
    assert bed.runtime.state is SessionState.IDLE
    # Latched until a person acknowledges it, and then gone.
    bed.run_for(30_000)
    assert AlarmCode.SESSION_ENDED_NO_BREATHING in active(bed)
    bed.ack(AlarmCode.SESSION_ENDED_NO_BREATHING)
    assert AlarmCode.SESSION_ENDED_NO_BREATHING not in active(bed)
    assert len(bed.of_type(WriteBreathSummary)) == 1


def test_a_gated_prescription_is_refused_on_a_version_1_head_with_the_reason() -> None:
    bed = ready(Bed(prescription=gated(), model=DeviceModel(nominal_ul_min=FAST_UL_MIN)))
    assert bed.runtime.caps_discovery is CapsDiscovery.VERSION_1
    assert any(
        r.startswith("head_not_breath_aware:") for r in bed.runtime.refusals(link_ready=True)
    )
    outcome = bed.start()
    assert not outcome.started
    assert outcome.session_id is None
    assert any(r.startswith("head_not_breath_aware:") for r in outcome.reasons), outcome.reasons
    assert any("ICD version 1" in r for r in outcome.reasons)
    assert not bed.intents  # nothing written, nothing sent
    assert bed.model.truth().session_id == 0  # the head never saw a START
    assert bed.model.truth().sessions == []


def test_a_continuous_session_on_a_breath_aware_head_records_the_phase_split() -> None:
    bed = ready(Bed(prescription=make_prescription(session_ul=CAP_UL), model=head_11()))
    assert bed.start().started
    assert not gated_now(bed)
    ended = run_to_end(bed)
    assert CAP_UL - 10 <= ended.delivered_ul <= CAP_UL
    bed.run_until_true(lambda: bool(bed.of_type(WriteBreathSummary)), timeout_ms=20_000)
    figures = bed.of_type(WriteBreathSummary)[0].figures
    assert figures["gated"] is False
    insp, exp = figures["aerosol_insp_ul"], figures["aerosol_exp_ul"]
    assert isinstance(insp, float)
    assert isinstance(exp, float)
    # ISO 27427 pattern, I:E 1:1: about half of a continuous run goes into the room.
    assert 0.3 * ended.delivered_ul <= exp <= 0.7 * ended.delivered_ul
    assert raised(bed) == []


def test_a_stop_while_waiting_is_sent_and_repeated_until_the_head_is_idle() -> None:
    bed = ready(Bed(prescription=gated(lead_breaths=3), model=head_11("slow-deep")))
    assert bed.start().started
    assert bed.statuses[-1][1].state is DeviceState.WAITING  # sensing its lead breaths
    bed.deaf_until_ms = bed.now_ms + 250  # answers lost, yet no link loss (300 ms)
    bed.stop()
    bed.run_until_true(lambda: bed.runtime.session is None, timeout_ms=3000)
    assert len(bed.of_type(SendStop)) >= 2  # repeated while the head still showed WAITING
    assert bed.of_type(WriteEnded)[0].host_reason == "operator_stop:test"


def test_a_head_reboot_mid_run_records_the_cut_run_and_asks_the_head_again() -> None:
    bed = ready(Bed(prescription=gated(), model=head_11("severe")))
    assert bed.start().started
    bed.run_for(8000)
    bed.model.reboot(now_ms=bed.now_ms)
    bed.run_until_true(lambda: bed.runtime.session is None, timeout_ms=3000)
    bed.run_for(2000)
    assert bed.runtime.caps_discovery is CapsDiscovery.DISCOVERED  # asked again
    # The run was cut short: its figures are recorded, its accounting is not judged.
    summaries = bed.of_type(WriteBreathSummary)
    assert len(summaries) == 1
    assert summaries[0].figures["gated"] is True
    assert AlarmCode.BREATH_ACCOUNTING_MISMATCH not in raised(bed)
    assert bed.runtime.session is None  # uncertain (rule 4), not resumed


def test_a_gated_start_before_discovery_is_refused_as_unknown_not_run() -> None:
    bed = ready(Bed(prescription=gated(), model=head_11()))
    decision = bed.decide()
    assert decision.allowed
    fresh = SessionRuntime(prescription=gated())  # no link event yet: discovery pending
    assert fresh.caps_discovery is CapsDiscovery.PENDING
    step = fresh.request_start(decision, link_ready=True, now=bed.now())
    assert isinstance(step, StartOutcome)
    assert not step.started
    assert [r.split(":")[0] for r in step.reasons] == ["head_capabilities_unknown"]
    # Not a lasting refusal: `session status` does not list it, the start re-checks it.
    assert fresh.refusals(link_ready=True) == []


@pytest.mark.parametrize("pattern", ["adult", "slow-deep", "irregular"])
def test_a_gated_head_ignoring_its_cap_is_stopped_by_the_host_at_or_below_it(
    pattern: str,
) -> None:
    """Between pulses STATUS shows no flow; the host's prediction must still stop a
    head that ignores its own cap before the cap, whatever the breathing."""
    for seed in range(3):
        model = DeviceModel(
            nominal_ul_min=6000,
            fill_ul=6000,
            breathing=BreathingModel(pattern=pattern, seed=seed),
        )
        model.set_defect("ignore_target_cap", True, now_ms=0)
        bed = ready(Bed(prescription=gated(), model=model))
        assert bed.start().started
        ended = run_to_end(bed, timeout_ms=10 * 60_000)
        assert ended.host_reason in ("cap_predicted", "cap_reached")
        assert model.truth().total_delivered_ul <= CAP_UL, (pattern, seed)


@pytest.mark.parametrize("pattern", ["slow-deep", "irregular"])
def test_slow_or_irregular_breathing_at_the_pilot_flow_raises_no_alarm(pattern: str) -> None:
    """400 µL/min, 15 s apnoea: long expirations (WAITING, no flow) are neither
    `output_low` nor `no_breathing_detected`, and the long gated run is not `dose_late`."""
    model = DeviceModel(nominal_ul_min=400, fill_ul=5000, breathing=BreathingModel(pattern=pattern))
    bed = ready(Bed(prescription=gated(apnoea_s=15), model=model))
    assert bed.start().started
    ended = run_to_end(bed, timeout_ms=30 * 60_000)
    assert CAP_UL - 10 <= ended.delivered_ul <= CAP_UL
    assert ended.duration_ms > 2 * CAP_UL * 60_000 // 400  # over twice the continuous time
    assert raised(bed) == []
