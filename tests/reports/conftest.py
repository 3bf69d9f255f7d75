"""A finished pilot course in a real ledger file, written through the ledger's own API.

Five sessions of PILOT-001 over three days (completed; stopped by the nurse with an
alarm; refused by the device; uncertain then reconciled, after an override;
uncertain and never reconciled) and one session of another subject.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from controller.dosing import Instant, Override
from controller.ledger import (
    LEDGER_FILE_NAME,
    AlarmAction,
    EndSource,
    Ledger,
    ReconcileSource,
)

SUBJECT = "PILOT-001"
OTHER = "OTHER-002"
PER_ML = 2.0e8 / 3.0  # vesicles per mL: 2.0×10⁸ in 3 mL
COURSE_START = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)


@dataclass
class Course:
    config_path: Path
    data_dir: Path
    ledger_path: Path


class _Clock:
    def __init__(self) -> None:
        self.utc = COURSE_START
        self.mono_ns = 10**9

    def at(self, *, day: int, hour: float) -> Instant:
        moment = COURSE_START.replace(hour=0) + timedelta(days=day, hours=hour)
        self.mono_ns += max(1, int((moment - self.utc).total_seconds() * 1e9))
        self.utc = moment
        return Instant(utc=moment, boot_id="boot-report", monotonic_ns=self.mono_ns)

    def later(self, seconds: float) -> Instant:
        self.utc += timedelta(seconds=seconds)
        self.mono_ns += int(seconds * 1e9)
        return Instant(utc=self.utc, boot_id="boot-report", monotonic_ns=self.mono_ns)


def _intent(ledger: Ledger, clock: _Clock, *, subject: str, day: int, hour: float) -> int:
    return ledger.record_intent(
        subject_id=subject,
        planned_cap_ul=3000,
        device_target_ul=3000,
        device_max_duration_s=1200,
        output_pct=100,
        decision_trace={"allowed": True},
        at=clock.at(day=day, hour=hour),
        drug="exosome vesicles (inhaled)",
        concentration_per_ml=PER_ML,
    )


def _run(ledger: Ledger, clock: _Clock, sid: int, *, up_to_ul: int, flow_ul_min: int) -> None:
    ledger.record_started(sid, at=clock.later(0.5))
    delivered = 0
    while delivered < up_to_ul:
        delivered = min(up_to_ul, delivered + flow_ul_min // 6)  # a sample every 10 s
        ledger.record_progress(
            sid,
            delivered_ul=delivered,
            flow_ul_min=flow_ul_min,
            reservoir_ul=3200 - delivered,
            at=clock.later(10),
        )


def write_course(ledger: Ledger) -> None:
    """The course described in the module docstring."""
    clock = _Clock()
    # Day 0: a complete session, stopped by the host's predictive cap stop.
    sid = _intent(ledger, clock, subject=SUBJECT, day=0, hour=9)
    _run(ledger, clock, sid, up_to_ul=2950, flow_ul_min=400)
    ledger.record_ended(
        sid,
        delivered_ul=2990,
        duration_ms=450_000,
        reason="cap_predicted",
        source=EndSource.HOST,
        at=clock.later(5),
    )
    # Day 1: output low alarm, then the nurse stops it.
    sid = _intent(ledger, clock, subject=SUBJECT, day=1, hour=9)
    _run(ledger, clock, sid, up_to_ul=1200, flow_ul_min=300)
    ledger.record_alarm(
        alarm_code="OUTPUT_LOW",
        action=AlarmAction.RAISED,
        actor="controller",
        at=clock.later(1),
        priority="medium",
        message="output below 50 % of expected",
        session_id=sid,
    )
    ledger.record_ended(
        sid,
        delivered_ul=1500,
        duration_ms=300_000,
        reason="operator_stop:nurse",
        source=EndSource.HOST,
        at=clock.later(60),
    )
    ledger.record_alarm(
        alarm_code="OUTPUT_LOW",
        action=AlarmAction.CLEARED,
        actor="controller",
        at=clock.later(1),
        session_id=sid,
    )
    # Day 1 afternoon: the device refuses START.
    sid = _intent(ledger, clock, subject=SUBJECT, day=1, hour=15)
    ledger.record_start_refused(sid, nak_reason="HEAD_DISCONNECTED", at=clock.later(0.2))
    # As the controller does: the fault alarm follows the record, without a session id.
    ledger.record_alarm(
        alarm_code="device_head_disconnected",
        action=AlarmAction.RAISED,
        actor="controller",
        at=clock.later(0.1),
        priority="medium",
    )
    # An alarm long after any session belongs to none.
    ledger.record_alarm(
        alarm_code="storage_low",
        action=AlarmAction.RAISED,
        actor="controller",
        at=clock.later(3600),
    )
    # Day 2: an override admits a session; the controller restarts mid-session; the
    # device's SESSION_END reconciles it.
    ledger.record_override(
        Override(
            role="investigator",
            reason="protocol deviation approved",
            constraint_codes=frozenset({"interval"}),
        ),
        subject_id=SUBJECT,
        at=clock.at(day=2, hour=8.9),
    )
    sid = _intent(ledger, clock, subject=SUBJECT, day=2, hour=9)
    _run(ledger, clock, sid, up_to_ul=800, flow_ul_min=400)
    ledger.mark_uncertain(sid, reason="controller_restart", at=clock.later(30))
    ledger.reconcile(
        sid, delivered_ul=1000, source=ReconcileSource.DEVICE_SESSION_END, at=clock.later(5)
    )
    # Day 2 evening: uncertain and never reconciled (counts its full cap).
    sid = _intent(ledger, clock, subject=SUBJECT, day=2, hour=20)
    _run(ledger, clock, sid, up_to_ul=400, flow_ul_min=400)
    ledger.mark_uncertain(sid, reason="controller_restart", at=clock.later(30))
    # Another subject on the same controller (filtered out by --subject).
    sid = _intent(ledger, clock, subject=OTHER, day=2, hour=21)
    _run(ledger, clock, sid, up_to_ul=3000, flow_ul_min=600)
    ledger.record_ended(
        sid,
        delivered_ul=3000,
        duration_ms=300_000,
        reason="TARGET_REACHED",
        source=EndSource.DEVICE,
        at=clock.later(1),
    )


def write_config(directory: Path, data_dir: Path) -> Path:
    """The pilot prescription for PILOT-001 with this data directory."""
    path = directory / "controller.toml"
    path.write_text(
        f"""
[device]
port = "/dev/nebuliser"
device_id = "neb-ward3-bed07"
expected_serial = "MN1-000042"
[storage]
data_dir = "{data_dir}"
[prescription]
subject_id = "{SUBJECT}"
protocol_id = "EXO-PILOT-01"
drug = "exosome vesicles (inhaled)"
timezone = "Europe/London"
[prescription.lot]
lot_id = "LOT-2026-0042"
amount = 2.0e8
unit = "vesicles"
per_volume_ml = 3.0
[prescription.arm]
arm_id = "active"
blinded = false
[prescription.limits]
session_ul = 3000
session_dose = 2.0e8
rolling_24h_max_ul = 3000
course_max_dose = 1.0e9
course_start = 2026-11-20
course_end = 2026-11-30
""",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def course(tmp_path: Path) -> Course:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    ledger_path = data_dir / LEDGER_FILE_NAME
    with Ledger.create(
        ledger_path, device_id="neb-ward3-bed07", subject_id=SUBJECT, progress_interval_ms=0
    ) as ledger:
        write_course(ledger)
    return Course(
        config_path=write_config(tmp_path, data_dir), data_dir=data_dir, ledger_path=ledger_path
    )
