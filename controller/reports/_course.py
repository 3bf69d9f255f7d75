"""Reading one subject's course out of the ledger (read-only) into report records.

The ledger records volumes, times, reasons, alarms and overrides. It does not record
the drug unit or the lot: those come from the prescription in the configuration
(`ReportContext`), which is right as long as the course used one lot. Say so in any
report handed on (docs/reports.md).

Blinding (issue 20): for a blinded arm the context is blinded unless the caller holds
a verified unblinding credential. A blinded context names no drug, lot, arm, cohort
or concentration, and its "dose" is the volume in µL (equal on every arm); the
drug and concentration the ledger recorded at each intent are not read.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from controller.config import NebuliserConfig, PrescriptionSourceError, load_service_prescription
from controller.dosing import (
    BLINDED_DRUG_LABEL,
    COMPLETED_REASONS,
    Delivery,
    Prescription,
    load_prescription,
)
from controller.ledger import (
    AlarmAction,
    AlarmEntry,
    EventKind,
    Ledger,
    LedgerEvent,
    SessionSummary,
)

from ._breathing import RunBreathing

__all__ = [
    "ALARM_GRACE",
    "COMPLETED_REASONS",
    "CourseSession",
    "ProgressPoint",
    "ReportContext",
    "prescription_blinded",
    "read_progress",
    "read_sessions",
    "report_context",
    "report_prescription",
]

ALARM_GRACE = timedelta(seconds=10)
"""A fault that ends a session is alarmed (and recorded) just after the end is recorded,
without a session id: alarms that close after a session are reported with it."""


_TIMES = (
    EventKind.STARTED,
    EventKind.ENDED,
    EventKind.START_REFUSED,
    EventKind.UNCERTAIN,
    EventKind.RECONCILED,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportContext:
    """What the ledger does not hold: the dose unit, lot, device and limits."""

    dose_unit: str
    """Unit of the lot's amount ("vesicles", "mg", "ug"), or "units" when unknown."""
    lot_id: str | None
    drug: str | None
    device_id: str
    expected_serial: str | None
    timezone: str
    """The prescription's time zone: "day" in the course plot is a day there."""
    session_dose_limit: float | None
    daily_dose_limit: float | None
    """The rolling 24 h dose limit (or the 24 h volume limit converted), per day."""
    course_dose_limit: float | None
    amount_per_ml: float | None
    """Lot concentration (dose units per mL) from the prescription, when configured."""
    delivery: Delivery | None = None
    """The prescription's delivery (to dryness or not), when configured."""
    arm_id: str | None = None
    cohort: str | None = None
    blinded: bool = False
    """A blinded arm's report without unblinding: "dose" is volume (µL), no drug names."""
    breath_units_withheld: bool = True
    """The breath figures show no drug-unit figure: the report form is blinded, or the
    report cannot tell whether the arm is blinded (`prescription_blinded`)."""

    @property
    def arm_label(self) -> str:
        """`study medication (blinded)`, or the drug, lot, arm and cohort (unblinded)."""
        if self.blinded:
            return f"{self.drug} (blinded)"
        parts = [
            f"lot {self.lot_id}" if self.lot_id else "",
            f"arm {self.arm_id}" if self.arm_id else "",
        ]
        parts.append(f"cohort {self.cohort}" if self.cohort else "")
        detail = ", ".join(p for p in parts if p)
        return (self.drug or "drug not recorded") + (f" ({detail})" if detail else "")


def prescription_blinded(config: NebuliserConfig | None) -> bool:
    """Whether reports withhold drug-unit breath figures for this configuration.

    The prescription's `[prescription.arm] blinded`, inline or in `prescription_file`.
    Fails closed: with no configuration, no prescription, or a prescription file that
    cannot be read, the answer is True (a report cannot know the study is open).
    """
    if config is None:
        return True
    if config.prescription is not None:
        return config.prescription.arm.blinded
    if config.prescription_file is not None:
        try:
            return load_prescription(config.prescription_file).arm.blinded
        except (OSError, ValueError):
            return True
    return True


def report_prescription(config: NebuliserConfig) -> Prescription | None:
    """The prescription whose lot, arm and blinding the reports use: the inline table,
    or the `prescription_file` checked as `serve` checks it (its pharmacy signature
    when signatures are required).

    None when the configuration names none (a report from `--data-dir` alone). Raises
    `PrescriptionSourceError` when the file cannot be read or verified.
    """
    if config.prescription is not None:
        return config.prescription
    if config.prescription_file is None:
        return None
    return load_service_prescription(config).prescription


def report_context(config: NebuliserConfig, *, unblinded: bool = False) -> ReportContext:
    """The report context from a loaded configuration (its prescription, if any).

    For a blinded arm the context is blinded unless `unblinded` (the caller verified
    an unblinding credential and audited it: `controller.cli.report`). A prescription
    file that cannot be read or verified gives a blinded context (it might be blinded).
    """
    try:
        rx = report_prescription(config)
    except PrescriptionSourceError:
        return _blinded_context(config, None)
    if rx is None:
        return ReportContext(
            dose_unit="units",
            lot_id=None,
            drug=None,
            device_id=config.device.device_id,
            expected_serial=config.device.expected_serial,
            timezone="UTC",
            session_dose_limit=None,
            daily_dose_limit=None,
            course_dose_limit=None,
            amount_per_ml=None,
            breath_units_withheld=prescription_blinded(config),
        )
    limits = rx.limits
    if rx.arm.blinded and not unblinded:
        return _blinded_context(config, rx)
    per_ml = float(rx.lot.concentration_per_ml())
    daily = limits.rolling_24h_max_dose
    if daily is None and limits.rolling_24h_max_ul is not None:
        daily = limits.rolling_24h_max_ul / 1000.0 * per_ml
    return ReportContext(
        dose_unit=str(rx.lot.unit),
        lot_id=rx.lot.lot_id,
        drug=rx.drug,
        device_id=config.device.device_id,
        expected_serial=config.device.expected_serial,
        timezone=rx.timezone,
        session_dose_limit=limits.session_dose,
        daily_dose_limit=daily,
        course_dose_limit=limits.course_max_dose,
        amount_per_ml=per_ml,
        delivery=rx.delivery,
        breath_units_withheld=False,  # an open arm, or unblinded with a credential
        arm_id=rx.arm.arm_id,
        cohort=rx.arm.cohort,
    )


def _blinded_context(config: NebuliserConfig, rx: Prescription | None) -> ReportContext:
    """No drug, lot, arm or concentration; "dose" is the volume (1000 µL per mL) against
    the volume limits, which are equal on every arm."""
    limits = None if rx is None else rx.limits

    def volume(value: int | None) -> float | None:
        return None if value is None else float(value)

    return ReportContext(
        dose_unit="µL",
        lot_id=None,
        drug=BLINDED_DRUG_LABEL,
        device_id=config.device.device_id,
        expected_serial=config.device.expected_serial,
        timezone="UTC" if rx is None else rx.timezone,
        session_dose_limit=None if limits is None else volume(limits.session_ul),
        daily_dose_limit=None if limits is None else volume(limits.rolling_24h_max_ul),
        course_dose_limit=None if limits is None else volume(limits.course_max_ul),
        amount_per_ml=1000.0,
        delivery=None if rx is None else rx.delivery,
        blinded=True,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class CourseSession:
    """One session as reports show it: the ledger summary plus when it started and ended."""

    summary: SessionSummary
    started_utc: datetime | None
    """When the device ACKed START (None: it never started)."""
    ended_utc: datetime | None
    """When the end (or refusal, or the uncertain mark) was recorded."""
    reconciled_utc: datetime | None
    subject_overrides: tuple[Mapping[str, Any], ...] = ()
    """Overrides recorded for the subject (no session id) just before this session."""
    nearby_alarms: tuple[AlarmEntry, ...] = ()
    """Alarms recorded without a session id while it ran or within ALARM_GRACE_S after."""
    continued_by: int | None = None
    """The session id of the continuation run of this administration, if any (the
    ledger's continuation records fill it; issue 15 item 1)."""
    breathing: RunBreathing | None = None
    """The run's breath summary (ICD 1.1 heads; None for a version-1 head)."""

    def breathing_shown(self, context: ReportContext) -> RunBreathing | None:
        """The breath summary as a report may show it (no drug-unit figure if blinded)."""
        if self.breathing is None:
            return None
        withheld = context.blinded or context.breath_units_withheld
        return self.breathing.blinded() if withheld else self.breathing

    @property
    def alarms(self) -> tuple[AlarmEntry, ...]:
        """Every alarm event of this session, oldest first."""
        return tuple(sorted((*self.summary.alarms, *self.nearby_alarms), key=lambda a: a.utc))

    @property
    def overrides(self) -> tuple[Mapping[str, Any], ...]:
        """Every override that admitted this session (role, reason, constraint codes)."""
        return tuple(self.summary.overrides) + self.subject_overrides

    @property
    def session_id(self) -> int:
        """The ledger's session id."""
        return self.summary.session_id

    @property
    def uncertain(self) -> bool:
        """The controller restarted mid-session; the device figures may have reconciled it."""
        return self.summary.uncertain_reason is not None

    @property
    def reconciled(self) -> bool:
        """An uncertain session whose delivered volume came from the device's own figures."""
        return self.summary.reconcile_source is not None

    @property
    def completed(self) -> bool:
        """Ended because the planned volume was reached."""
        return self.summary.end_reason in COMPLETED_REASONS

    def dose(self, context: ReportContext) -> float | None:
        """Delivered drug in the lot's unit (from the concentration recorded at intent);
        in µL for a blinded context."""
        s = self.summary
        if s.delivered_ul is None:
            return None
        # Blinded: never the concentration the ledger recorded (it tells the arms apart).
        per_ml = None if context.blinded else s.concentration_per_ml
        if per_ml is None:
            per_ml = context.amount_per_ml
        return None if per_ml is None else s.delivered_ul / 1000.0 * per_ml

    def local_day(self, timezone: str) -> date:
        """The day (in the prescription's zone) the session belongs to: its intent."""
        return self.summary.intent_at.utc.astimezone(ZoneInfo(timezone)).date()


@dataclass(frozen=True, slots=True, kw_only=True)
class ProgressPoint:
    """One progress sample of a running session."""

    utc: datetime
    delivered_ul: int
    flow_ul_min: int


def _first_times(events: Iterable[LedgerEvent]) -> dict[int, dict[EventKind, datetime]]:
    times: dict[int, dict[EventKind, datetime]] = {}
    for event in events:
        if event.session_id is not None:
            times.setdefault(event.session_id, {}).setdefault(event.kind, event.at.utc)
    return times


def _alarm_entry(event: LedgerEvent) -> AlarmEntry:
    body = event.body
    return AlarmEntry(
        alarm_code=str(body["alarm_code"]),
        action=AlarmAction(body["action"]),
        actor=str(body["actor"]),
        utc=event.at.utc,
        priority=str(body.get("priority", "")),
        message=str(body.get("message", "")),
    )


def _attach_overrides(
    summaries: Sequence[SessionSummary], overrides: Iterable[LedgerEvent]
) -> dict[int, list[Mapping[str, Any]]]:
    """Subject-level overrides (no session id) go to that subject's next session.

    "Next" is the first session (in ledger order) whose intent is at or after the
    override. A running maximum of the intent times finds it by bisection, so the
    cost is O(log n) per override, not a scan of every session."""
    by_subject: dict[str, tuple[list[datetime], list[int]]] = {}
    for s in summaries:
        running_max, ids = by_subject.setdefault(s.subject_id, ([], []))
        intent = s.intent_at.utc
        running_max.append(max(running_max[-1], intent) if running_max else intent)
        ids.append(s.session_id)
    attached: dict[int, list[Mapping[str, Any]]] = {}
    for event in overrides:
        if event.session_id is None and event.subject_id in by_subject:
            running_max, ids = by_subject[event.subject_id]
            index = bisect_left(running_max, event.at.utc)
            if index < len(ids):
                attached.setdefault(ids[index], []).append(event.body)
    return attached


def _alarms_between(
    alarms: Sequence[LedgerEvent], times: Sequence[datetime], start: datetime, end: datetime
) -> tuple[AlarmEntry, ...]:
    """The alarms (sorted by time in `times`) stamped in [start, end], in ledger order."""
    found = alarms[bisect_left(times, start) : bisect_right(times, end)]
    return tuple(_alarm_entry(e) for e in sorted(found, key=lambda e: e.event_id))


def read_sessions(
    ledger: Ledger, *, subject_id: str | None = None, since: datetime | None = None
) -> list[CourseSession]:
    """Every session (of `subject_id`, intent at or after `since`), oldest first."""
    summaries = ledger.summaries(since=since, subject_id=subject_id)
    times = _first_times(ledger.events(kinds=_TIMES, since=since))
    attached = _attach_overrides(summaries, ledger.events(kinds=[EventKind.OVERRIDE], since=since))
    alarms = sorted(
        (e for e in ledger.events(kinds=[EventKind.ALARM], since=since) if e.session_id is None),
        key=lambda e: e.at.utc,
    )
    alarm_times = [e.at.utc for e in alarms]
    breathing = ledger.breath_summaries(since=since, subject_id=subject_id)
    # A run is continued by the next run of the same administration (issue 15).
    continued_by: dict[int, int] = {}
    previous_run: dict[int, int] = {}
    for s in summaries:
        administration = s.administration_id or s.session_id
        if administration in previous_run:
            continued_by[previous_run[administration]] = s.session_id
        previous_run[administration] = s.session_id
    sessions = []
    for s in summaries:
        t: Mapping[EventKind, datetime] = times.get(s.session_id, {})
        ended = t.get(EventKind.ENDED) or t.get(EventKind.START_REFUSED)
        if ended is None:
            # Uncertain (reconciled or not): the restarted controller's STOP at this time.
            ended = t.get(EventKind.UNCERTAIN)
        window_start = t.get(EventKind.STARTED) or s.intent_at.utc
        window_end = (ended or datetime.max.replace(tzinfo=UTC)) + ALARM_GRACE
        nearby = _alarms_between(alarms, alarm_times, window_start, window_end)
        sessions.append(
            CourseSession(
                summary=s,
                started_utc=t.get(EventKind.STARTED),
                ended_utc=ended,
                reconciled_utc=t.get(EventKind.RECONCILED),
                subject_overrides=tuple(attached.get(s.session_id, ())),
                nearby_alarms=nearby,
                continued_by=continued_by.get(s.session_id),
                breathing=(
                    RunBreathing.from_record(breathing[s.session_id])
                    if s.session_id in breathing
                    else None
                ),
            )
        )
    return sessions


def read_progress(ledger: Ledger, session_id: int) -> list[ProgressPoint]:
    """The session's progress samples (rate-bounded by the ledger), oldest first."""
    points = []
    for event in ledger.events(session_id=session_id, kinds=[EventKind.PROGRESS]):
        body: Mapping[str, Any] = event.body
        points.append(
            ProgressPoint(
                utc=event.at.utc,
                delivered_ul=int(body["delivered_ul"]),
                flow_ul_min=int(body["flow_ul_min"]),
            )
        )
    return points
