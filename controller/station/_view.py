"""What the ward-station page shows, as JSON: pure functions of the shared model.

A tile is built from one `BedRow` (the same row the terminal monitor draws); the
alarm's message comes from the bed (it is formatted there with the figures), the
nurse action from the alarm table (`controller.alarms.ALARM_RULES`), the one home
of both (docs/alarms.md is generated from the same table).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from controller.alarms import ALARM_RULES, AlarmCode
from controller.telemetry import (
    BedHistory,
    BedRow,
    Breathing,
    CourseMessage,
    breathing_text,
    urgency_key,
)

__all__ = [
    "AckStatus",
    "acknowledged_by_label",
    "alarm_action",
    "bed_detail",
    "bed_key",
    "tile",
]


@dataclass(kw_only=True)
class AckStatus:
    """An acknowledgement this station sent and the bed's answer so far."""

    command_id: str
    alarm_code: str
    nurse: str
    sent_utc: datetime
    status: str = "sent"  # sent | accepted | refused
    reason: str = ""


def bed_key(ward: str, bed: str) -> str:
    """The page's id of a bed (ward and bed are MQTT levels: no `/` in them)."""
    return f"{ward}/{bed}"


def alarm_action(code: str) -> str:
    """What the nurse should do for an alarm code (empty for a code this build lacks)."""
    try:
        return ALARM_RULES[AlarmCode(code)].action
    except ValueError:
        return ""


def acknowledged_by_label(published: str | None, *, station_sender: str | None) -> str | None:
    """A person's name from the bed's `acknowledged_by`.

    The bed publishes the person named in the signed acknowledgement
    (`AlarmAckBody.acknowledged_by`); an older `name_sender` form is shown as
    `name (sender)`.
    """
    if published is None:
        return None
    name, sep, sender = published.partition("_")
    if sep and sender and name != "remote":
        return f"{name} ({sender})" if sender != station_sender else name
    return published


def _ms(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp() * 1000)


def _dose(row: BedRow) -> str | None:
    """The delivered dose in the lot's units; "blinded" when no unit may be shown."""
    return "blinded" if row.blinded else row.in_units(row.delivered_ul)


def _breathing(breathing: Breathing | None) -> dict[str, Any] | None:
    if breathing is None:
        return None  # a version-1.0 head, or nothing measured yet: nothing to show
    return {
        "waiting": breathing.waiting,
        "gated": breathing.gated,
        "rate_bpm": breathing.rate_bpm,
        "insp_share_pct": breathing.insp_share_pct,
        "text": breathing_text(breathing),
    }


def _course(row: BedRow, course: CourseMessage | None) -> dict[str, Any] | None:
    """The last 24 h and the course so far, in µL (and in the lot's units when the
    prescription is open; never for a blinded one)."""
    if course is None:
        return None

    return {
        "as_of_ms": _ms(course.utc),
        "rolling_24h_ul": course.rolling_24h_ul,
        "rolling_24h_max_ul": course.rolling_24h_max_ul,
        "rolling_24h_sessions": course.rolling_24h_sessions,
        "rolling_24h_max_sessions": course.rolling_24h_max_sessions,
        "rolling_24h_dose": row.in_units(course.rolling_24h_ul),
        "course_ul": course.course_ul,
        "course_max_ul": course.course_max_ul,
        "course_sessions": course.course_sessions,
        "course_max_sessions": course.course_max_sessions,
        "course_dose": row.in_units(course.course_ul),
        "uncertain_runs": course.uncertain_runs,
        "timezone": course.timezone,
        "days": [
            {"day": day.day.isoformat(), "counted_ul": day.counted_ul, "runs": day.runs}
            for day in course.days
        ],
    }


def tile(
    row: BedRow,
    *,
    now_s: float,
    wall_now: datetime,
    acks: list[AckStatus],
    station_sender: str | None,
) -> dict[str, Any]:
    """One bed's tile. `now_s` is the model's monotonic clock, `wall_now` the UTC
    time at that instant (to say since when a bed has been silent)."""

    def wall(monotonic_s: float | None) -> int | None:
        if monotonic_s is None:
            return None
        return int((wall_now.timestamp() - (now_s - monotonic_s)) * 1000)

    rank, _, _ = urgency_key(row)
    status = "offline" if row.online is False else "nodata" if row.stale else "ok"
    figures: dict[str, Any] = {}
    if status == "ok":  # stale figures are hidden, never shown as if current
        figures = {
            "running": row.running,
            "delivered_ul": row.delivered_ul,
            "cap_ul": row.cap_ul,
            "flow_ul_min": row.flow_ul_min,
            "reservoir_ul": row.reservoir_ul,
            "link_quality_pct": row.link_quality_pct,
            "time_left_s": row.time_left_s,
            "dose": _dose(row),
            "breathing": _breathing(row.breathing_now(now_s=now_s)),
        }
    return {
        "key": bed_key(row.ward, row.bed),
        "ward": row.ward,
        "bed": row.bed,
        "device_id": row.device_id,
        "rank": rank,
        "status": status,
        "since_ms": wall(row.offline_since_s if status == "offline" else row.last_seen_s),
        "last_seen_ms": wall(row.last_seen_s),
        "data_ms": _ms(row.data_utc),
        "state": row.session_state,
        "prescription": row.prescription_label,
        "blinded": bool(row.blinded),
        "gaps": row.gaps,
        "lost": row.unrecoverable,
        **figures,
        "alarms": [
            {
                "code": alarm.alarm_code,
                "priority": alarm.priority,
                "message": alarm.text or alarm.alarm_code.replace("_", " "),
                "action": alarm_action(alarm.alarm_code),
                "raised_ms": _ms(alarm.raised_utc),
                "acknowledged": alarm.acknowledged,
                "acknowledged_by": acknowledged_by_label(
                    alarm.acknowledged_by, station_sender=station_sender
                ),
            }
            for alarm in row.alarms
        ],
        "acks": [
            {
                "code": ack.alarm_code,
                "nurse": ack.nurse,
                "sent_ms": _ms(ack.sent_utc),
                "status": ack.status,
                "reason": ack.reason,
            }
            for ack in acks
        ],
    }


def bed_detail(row: BedRow, history: BedHistory, *, station_sender: str | None) -> dict[str, Any]:
    """The detail view: delivery curves of the recent runs, the last 24 h and the
    course so far, the alarm history, and the newest dose-ledger anchor the bed
    published (for a clinical engineer comparing a restored ledger against the ward's
    evidence: docs/ledger.md)."""
    return {
        "key": bed_key(row.ward, row.bed),
        "course": _course(row, history.course),
        "runs": [
            {
                "session_id": run.session_id,
                "cap_ul": run.cap_ul,
                "utc_ms": list(run.utc_ms),
                "delivered_ul": list(run.delivered_ul),
            }
            for run in history.runs
        ],
        "alarm_history": [
            {
                "utc_ms": _ms(event.utc),
                "event": event.event,
                "code": event.alarm_code,
                "priority": event.priority,
                "message": event.text or event.alarm_code.replace("_", " "),
                "by": acknowledged_by_label(event.acknowledged_by, station_sender=station_sender),
            }
            for event in reversed(history.alarms)
        ],
        "ledger_anchor": None
        if row.ledger_anchor is None
        else row.ledger_anchor.model_dump(mode="json", by_alias=True),
        "generated_ms": _ms(datetime.now(UTC)),
    }
