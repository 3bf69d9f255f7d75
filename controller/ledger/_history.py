"""Session records from the ledger's rows: status (derived), and what the dose rules
need of each run's end (its administration, end time and reason, an uncertain run's
upper bound)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from controller.dosing import SessionRecord, SessionStatus
from controller.ledger._database import instant_from_row
from controller.ledger._model import EventKind

__all__ = ["read_history", "record_from_row", "select_status"]

_STATUS_COLUMNS = (
    "session_id, subject_id, intent_utc, intent_boot_id, intent_monotonic_ns,"
    " planned_cap_ul, status, delivered_ul, started"
)


def select_status(
    connection: sqlite3.Connection, where: str, params: Sequence[Any]
) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = connection.execute(
        # Only fixed clause text is interpolated; every value is a ? parameter.
        f"SELECT {_STATUS_COLUMNS} FROM session_status {where} ORDER BY session_id",  # noqa: S608
        params,
    ).fetchall()
    return rows


def record_from_row(
    row: sqlite3.Row | tuple[Any, ...], facts: Mapping[str, Any] | None = None
) -> SessionRecord:
    session_id, subject_id, utc, boot_id, mono, cap, status, delivered, _started = row
    facts = facts or {}
    administration_id = facts.get("administration_id")
    bound = facts.get("upper_bound_ul")
    return SessionRecord(
        session_id=int(session_id),
        subject_id=str(subject_id),
        started=instant_from_row(utc, boot_id, int(mono)),
        planned_cap_ul=int(cap),
        delivered_ul=None if delivered is None else int(delivered),
        status=SessionStatus(status),
        administration_id=None if administration_id is None else int(administration_id),
        ended=facts.get("ended"),
        end_reason=facts.get("end_reason"),
        upper_bound_ul=None if bound is None else int(bound),
    )


def _end_facts(rows: list[tuple[Any, ...]]) -> dict[int, dict[str, Any]]:
    """Per session: its administration, when and why it ended, an uncertain run's bound."""
    facts: dict[int, dict[str, Any]] = {}
    for session_id, kind, utc, boot_id, mono, body_text in rows:
        body = json.loads(body_text)
        fact = facts.setdefault(int(session_id), {})
        if kind == EventKind.INTENT:
            fact["administration_id"] = body.get("administration_id")
            continue
        fact["ended"] = instant_from_row(utc, boot_id, int(mono))
        if kind == EventKind.ENDED:
            fact["end_reason"] = (
                body.get("host_reason") or body.get("device_reason") or body.get("reason")
            )
        elif kind == EventKind.UNCERTAIN:
            fact["end_reason"] = body.get("reason")
            fact["upper_bound_ul"] = body.get("upper_bound_ul")
        else:
            fact["end_reason"] = "START_NAK"
    return facts


_ENDS = "SELECT session_id, kind, utc, boot_id, monotonic_ns, json(body) FROM events WHERE "
# The whole history: the subject's index, by kind (never the progress rows).
_ENDS_WHOLE = (
    _ENDS + "subject_id = ? AND session_id >= ? AND kind IN"
    " ('intent', 'ended', 'uncertain', 'start_refused') ORDER BY session_id"
)
# A tail: `+subject_id` and `+kind` keep the planner on the session-id range
# (events_by_session); the subject or kind index would read the whole history. A
# session has one intent and at most one of these end kinds, so the order within a
# session does not matter.
_ENDS_TAIL = (
    _ENDS + "+subject_id = ? AND session_id >= ? AND +kind IN"
    " ('intent', 'ended', 'uncertain', 'start_refused') ORDER BY session_id"
)


def read_history(
    connection: sqlite3.Connection, subject_id: str, from_session_id: int = 0
) -> list[SessionRecord]:
    """The sessions of `subject_id` with ids >= `from_session_id`, oldest first (see
    `ReadingMixin.history`)."""
    rows = select_status(
        connection, "WHERE subject_id = ? AND session_id >= ?", (subject_id, from_session_id)
    )
    ends = connection.execute(
        _ENDS_WHOLE if from_session_id <= 0 else _ENDS_TAIL, (subject_id, from_session_id)
    ).fetchall()
    facts = _end_facts(ends)
    return [record_from_row(row, facts.get(int(row[0]), {})) for row in rows]
