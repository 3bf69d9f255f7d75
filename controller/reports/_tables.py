"""`nebuliser report sessions`: one row per session as a table, CSV or JSON (pure)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from ._breathing import RunBreathing
from ._course import CourseSession, ReportContext
from ._outcome import format_dose, local_time, round_dose, session_outcome

__all__ = ["SessionRow", "render_csv", "render_json", "render_table", "session_rows"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionRow:
    """One session, flattened for a spreadsheet.

    `status` is the report vocabulary (`completed`, `partial (FAULT)`, ...; see
    `AdministrationStatus`); `ledger_status` is the ledger's own. `*_utc` times are ISO
    8601 UTC; `start_local`/`end_local` are in the prescription's zone with its offset.
    `dose` is rounded to 3 significant figures. In a blinded report (a blinded arm,
    no unblinding credential) `drug` is "study medication", `lot_id`, `arm` and
    `cohort` are empty and `dose` is the delivered volume in µL (docs/trials.md).
    """

    session_id: int
    subject_id: str
    status: str
    ledger_status: str
    intent_utc: str
    start_utc: str
    end_utc: str
    start_local: str
    end_local: str
    planned_cap_ul: int
    delivered_ul: int | None
    dose: float | None
    dose_unit: str
    drug: str
    lot_id: str
    arm: str
    cohort: str
    end_reason: str
    end_source: str
    alarms: str
    """Raised alarm codes in order, separated by ";"."""
    overrides: str
    """"role: reason (codes)" for each recorded override, separated by ";"."""
    uncertain: bool
    reconciled: bool
    counted_ul: int
    """What counts against limits: delivered, or the planned cap while unknown."""
    # Breath summary of the run (ICD 1.1 heads; empty for a version-1 head). Appended
    # after the columns above, which keep their order (docs/reports.md).
    breath_mode: str = ""
    """`breath-gated`, `continuous` (a breath-aware head reported the split), or ""."""
    breaths: int | None = None
    breath_rate_mean_bpm: float | None = None
    breath_rate_min_bpm: float | None = None
    breath_rate_max_bpm: float | None = None
    tidal_mean_ml: float | None = None
    aerosol_insp_ul: float | None = None
    """Inspiratory-phase aerosol (µL): an estimate beside the emitted `delivered_ul`."""
    aerosol_exp_ul: float | None = None
    """Expiratory-phase aerosol (µL): released into the room."""
    aerosol_insp_share_pct: float | None = None
    aerosol_insp_dose: float | None = None
    """The inspiratory-phase estimate in `dose_unit` (beside the emitted `dose`);
    empty when the prescription is blinded."""
    aerosol_exp_dose: float | None = None
    waiting_s: float | None = None
    """Time the head waited for a breath (WAITING)."""
    lost_breath_reports: int | None = None


def _iso(moment: datetime | None) -> str:
    return "" if moment is None else moment.isoformat()


def _distinct(overrides: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """One entry per override (a signed one is recorded at each admission of its start)."""
    seen: set[str] = set()
    kept = []
    for override in overrides:
        key = str(override.get("credential_id") or id(override))
        if key not in seen:
            seen.add(key)
            kept.append(override)
    return kept


def _rounded(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def _breath_columns(breathing: RunBreathing | None) -> dict[str, Any]:
    """The appended breath columns of one row (empty without a breath summary)."""
    if breathing is None:
        return {}
    share = breathing.insp_share_pct
    insp_dose, exp_dose = breathing.aerosol_insp_dose, breathing.aerosol_exp_dose
    return {
        "breath_mode": breathing.mode,
        "breaths": breathing.breaths,
        "breath_rate_mean_bpm": _rounded(breathing.rate_mean_bpm),
        "breath_rate_min_bpm": _rounded(breathing.rate_min_bpm),
        "breath_rate_max_bpm": _rounded(breathing.rate_max_bpm),
        "tidal_mean_ml": _rounded(breathing.tidal_mean_ml, 0),
        "aerosol_insp_ul": breathing.aerosol_insp_ul,
        "aerosol_exp_ul": breathing.aerosol_exp_ul,
        "aerosol_insp_share_pct": _rounded(share),
        "aerosol_insp_dose": None if insp_dose is None else round_dose(insp_dose),
        "aerosol_exp_dose": None if exp_dose is None else round_dose(exp_dose),
        "waiting_s": _rounded(breathing.waiting_s),
        "lost_breath_reports": breathing.lost_reports,
    }


def session_rows(sessions: Sequence[CourseSession], context: ReportContext) -> list[SessionRow]:
    """Report rows for `sessions`, in order."""
    rows = []
    for cs in sessions:
        s = cs.summary
        unknown = s.status.value in ("open", "uncertain")
        counted = s.planned_cap_ul if unknown else (s.delivered_ul or 0)
        if s.status.value == "open" and s.delivered_ul is not None:
            counted = max(counted, s.delivered_ul)
        dose = cs.dose(context)
        rows.append(
            SessionRow(
                session_id=s.session_id,
                subject_id=s.subject_id,
                status=session_outcome(cs, delivery=context.delivery).label,
                ledger_status=s.status.value,
                intent_utc=_iso(s.intent_at.utc),
                start_utc=_iso(cs.started_utc),
                end_utc=_iso(cs.ended_utc),
                start_local=local_time(cs.started_utc, context.timezone),
                end_local=local_time(cs.ended_utc, context.timezone),
                planned_cap_ul=s.planned_cap_ul,
                delivered_ul=s.delivered_ul,
                dose=None if dose is None else round_dose(dose),
                dose_unit=context.dose_unit,
                # Blinded: the neutral label, never the drug the ledger recorded.
                drug=(context.drug if context.blinded else s.drug or context.drug) or "",
                lot_id=context.lot_id or "",
                arm=context.arm_id or "",
                cohort=context.cohort or "",
                end_reason=s.end_reason or "",
                end_source=s.end_source or "",
                alarms=";".join(a.alarm_code for a in cs.alarms if a.action.value == "raised"),
                overrides=";".join(
                    f"{o.get('role')}: {o.get('reason')} "
                    f"({','.join(str(c) for c in o.get('constraint_codes', []))})"
                    + (f" signed by {o['signed_by']}" if o.get("signed_by") else "")
                    for o in _distinct(cs.overrides)
                ),
                uncertain=cs.uncertain,
                reconciled=cs.reconciled,
                counted_ul=counted,
                **_breath_columns(cs.breathing_shown(context)),
            )
        )
    return rows


_FIELDS = tuple(SessionRow.__dataclass_fields__)


def render_csv(rows: Sequence[SessionRow]) -> str:
    """RFC 4180 CSV with a header row (empty cells for unknown values)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=_FIELDS, lineterminator="\r\n")
    writer.writeheader()
    for row in rows:
        values: dict[str, Any] = asdict(row)
        writer.writerow({k: "" if v is None else v for k, v in values.items()})
    return out.getvalue()


def render_json(rows: Sequence[SessionRow]) -> str:
    """A JSON array of row objects (null for unknown values)."""
    return json.dumps([asdict(r) for r in rows], indent=2, ensure_ascii=False) + "\n"


def _short_time(iso: str) -> str:
    """`2026-11-20 09:00+00:00` from a local ISO time (the offset kept, seconds dropped)."""
    return f"{iso[:16].replace('T', ' ')}{iso[19:]}" if iso else "-"


def _breath_lines(row: SessionRow) -> list[str]:
    """The run's breath summary under its table row (nothing for a version-1 head)."""
    if not row.breath_mode or row.breaths is None:
        return []
    breathing = RunBreathing(
        gated=row.breath_mode == "breath-gated",
        breaths=row.breaths,
        rate_mean_bpm=row.breath_rate_mean_bpm,
        rate_min_bpm=row.breath_rate_min_bpm,
        rate_max_bpm=row.breath_rate_max_bpm,
        tidal_mean_ml=row.tidal_mean_ml,
        aerosol_insp_ul=row.aerosol_insp_ul or 0.0,
        aerosol_exp_ul=row.aerosol_exp_ul or 0.0,
        aerosol_insp_dose=row.aerosol_insp_dose,
        aerosol_exp_dose=row.aerosol_exp_dose,
        dose_unit=row.dose_unit if row.aerosol_insp_dose is not None else None,
        waiting_s=row.waiting_s or 0.0,
        lost_reports=row.lost_breath_reports or 0,
    )
    return [
        f"{'':>5} breathing {breathing.breathing_text()}",
        f"{'':>5} aerosol   "
        + breathing.aerosol_text(delivered_ul=row.delivered_ul, emitted_dose=row.dose),
    ]


def render_table(
    rows: Sequence[SessionRow], *, timezone: str = "UTC", medication: str | None = None
) -> str:
    """A fixed-width table for a terminal, with totals per subject underneath.

    Times are in `timezone` (the prescription's) with their UTC offset; `medication`
    (`ReportContext.arm_label`) heads the table when given.
    """
    if not rows:
        return "no sessions recorded for this selection\n"
    title = [f"medication: {medication}"] if medication else []
    header = (
        f"{'#':>5} {'subject':<12} {'status':<24} {'start':<22} {'end':<22} "
        f"{'uL':>6} {'dose':>9} {'end reason':<18} flags"
    )
    lines = [*title, header, "-" * len(header)]
    for r in rows:
        flags = []
        if r.uncertain:
            flags.append("UNCERTAIN" + (" reconciled" if r.reconciled else " unreconciled"))
        if r.alarms:
            flags.append(f"alarms {r.alarms}")
        if r.overrides:
            flags.append(f"override {r.overrides}")
        delivered = "?" if r.delivered_ul is None else str(r.delivered_ul)
        start = r.start_local or local_time(datetime.fromisoformat(r.intent_utc), timezone)
        lines.append(
            f"{r.session_id:>5} {r.subject_id:<12} {r.status:<24} "
            f"{_short_time(start):<22} {_short_time(r.end_local):<22} "
            f"{delivered:>6} {format_dose(r.dose):>9} {r.end_reason or '-':<18} "
            f"{'; '.join(flags)}"
        )
        lines.extend(_breath_lines(r))
    lines.append(f"times in {timezone} with their UTC offset")
    lines.append("")
    subjects = sorted({r.subject_id for r in rows})
    for subject in subjects:
        mine = [r for r in rows if r.subject_id == subject]
        delivered_ul = sum(r.delivered_ul or 0 for r in mine)
        doses = [r.dose for r in mine if r.dose is not None]
        unit = mine[0].dose_unit
        line = f"{subject}: {len(mine)} session(s), {delivered_ul} uL delivered"
        if doses:
            line += f" = {format_dose(sum(doses))} {unit}"
        line += f"; {sum(r.counted_ul for r in mine)} uL count against limits"
        lines.append(line)
    return "\n".join(lines) + "\n"
