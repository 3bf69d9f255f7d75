"""Reading the ledger: session records, totals, events and summaries.

A mixin of `Ledger`. Every read is one consistent snapshot (`Database.reading`).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from controller.dosing import AdmissionHistory, Instant, SessionRecord, SessionStatus
from controller.ledger._admission import SettledCounts, read_admission_history
from controller.ledger._database import Database, instant_from_row, utc_text
from controller.ledger._errors import UnknownSessionError
from controller.ledger._history import read_history, record_from_row, select_status
from controller.ledger._model import (
    AlarmAction,
    AlarmEntry,
    EventKind,
    LedgerEvent,
    SessionSummary,
    SubjectTotals,
)

__all__ = ["ReadingMixin"]

_SELECT_EVENTS = (
    "SELECT event_id, kind, session_id, subject_id, utc, boot_id, monotonic_ns,"
    " delivered_ul, json(body) FROM events"
)


class ReadingMixin:
    """The read side of `Ledger`."""

    _db: Database
    _settled: SettledCounts

    # ----------------------------------------------------------------- reading

    def open_sessions(self) -> list[SessionRecord]:
        """Sessions with an intent but no end, refusal or uncertain record (restart check)."""
        with self._db.reading() as connection:
            rows = select_status(connection, "WHERE status = 'open'", ())
        return [record_from_row(row) for row in rows]

    def uncertain_sessions(self) -> list[SessionRecord]:
        """Sessions waiting for reconciliation (they count their full planned cap)."""
        with self._db.reading() as connection:
            rows = select_status(connection, "WHERE status = 'uncertain'", ())
        return [record_from_row(row) for row in rows]

    def history(self, subject_id: str) -> list[SessionRecord]:
        """Every session of `subject_id`, oldest first, status derived from its events,
        with what the dose rules need of each run's end (administration, end time and
        reason, the upper bound of an uncertain run)."""
        with self._db.reading() as connection:
            return read_history(connection, subject_id)

    def admission_history(self, subject_id: str, now: Instant) -> AdmissionHistory:
        """What `decide()` reads of `subject_id`'s history at `now`: the runs inside its
        windows and the course totals, read in a fixed number of statements that do
        not grow with the number of past sessions (see `read_admission_history`)."""
        with self._db.reading() as connection:
            return read_admission_history(connection, subject_id, now, self._settled)

    def totals(self, subject_id: str) -> SubjectTotals:
        """Totals of one subject: sessions, known delivered volume, volume that counts."""
        records = self.history(subject_id)
        counted = [r for r in records if r.counts_as_session]
        return SubjectTotals(
            subject_id=subject_id,
            sessions=len(counted),
            delivered_ul=sum(r.delivered_ul or 0 for r in records),
            counted_ul=sum(r.counted_ul for r in records),
            uncertain_sessions=sum(r.status is SessionStatus.UNCERTAIN for r in records),
            open_sessions=sum(r.status is SessionStatus.OPEN for r in records),
        )

    def session_status(self, session_id: int) -> SessionStatus:
        """The derived status of one session."""
        with self._db.reading() as connection:
            return self._status(connection, session_id)[0]

    def events(
        self,
        *,
        session_id: int | None = None,
        kinds: Iterable[EventKind] | None = None,
        since: datetime | None = None,
        after_event_id: int | None = None,
    ) -> list[LedgerEvent]:
        """Stored events in order, optionally for one session, some kinds, since a time,
        or after an event id (an incremental reader's watermark: events are committed
        in id order by the one writer, so nothing can appear below it later)."""
        clauses: list[str] = []
        params: list[Any] = []
        if after_event_id is not None:
            clauses.append("event_id > ?")
            params.append(after_event_id)
        if session_id is not None:
            clauses.append("session_id = ?")
            params.append(session_id)
        if kinds is not None:
            wanted = [str(EventKind(k)) for k in kinds]
            # With a watermark, `+kind` keeps the planner on the primary-key range
            # (an index on kind would read every event of those kinds).
            column = "+kind" if after_event_id is not None else "kind"
            clauses.append(f"{column} IN ({', '.join('?' for _ in wanted)})")
            params.extend(wanted)
        if since is not None:
            clauses.append("utc >= ?")
            params.append(utc_text(since))
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._db.reading() as connection:
            rows = connection.execute(
                # Only fixed clause text is interpolated; every value is a ? parameter.
                f"{_SELECT_EVENTS}{where} ORDER BY event_id",
                params,
            ).fetchall()
        return [_event_from_row(row) for row in rows]

    def summaries(
        self, *, since: datetime | None = None, subject_id: str | None = None
    ) -> list[SessionSummary]:
        """Sessions (intent at or after `since`, of `subject_id`) with ends, reasons, alarms."""
        where, params = session_filter(since=since, subject_id=subject_id)
        with self._db.reading() as connection:
            rows = select_status(connection, where, params)
            if not rows:
                return []
            # One range read for every selected session (not one query per session):
            # the ids are sorted, and events_by_session serves the range.
            wanted = {int(row[0]) for row in rows}
            event_rows = connection.execute(
                f"{_SELECT_EVENTS} WHERE session_id BETWEEN ? AND ? AND kind <> ?"
                " ORDER BY event_id",
                (min(wanted), max(wanted), str(EventKind.PROGRESS)),
            ).fetchall()
        by_session: dict[int, list[LedgerEvent]] = {sid: [] for sid in wanted}
        for event_row in event_rows:
            events = by_session.get(int(event_row[2]))
            if events is not None:
                events.append(_event_from_row(event_row))
        return [
            _summary(record_from_row(row), bool(row[8]), by_session[int(row[0])]) for row in rows
        ]

    @staticmethod
    def _status(connection: sqlite3.Connection, session_id: int) -> tuple[SessionStatus, bool]:
        row = connection.execute(
            "SELECT status, started FROM session_status WHERE session_id = ?", (session_id,)
        ).fetchone()
        if row is None:
            raise UnknownSessionError(
                f"no intent is recorded for session {session_id}; record_intent allocates ids"
            )
        return SessionStatus(row[0]), bool(row[1])


def session_filter(
    *, since: datetime | None, subject_id: str | None, table: str = ""
) -> tuple[str, list[Any]]:
    """` WHERE …` over the `session_status` view (intent at or after `since`, of
    `subject_id`; `table` is its alias, e.g. `"s."`) and its parameters; `""` for all.
    Only fixed clause text goes into the SQL; every value is a `?` parameter."""
    clauses: list[str] = []
    params: list[Any] = []
    if since is not None:
        clauses.append(f"{table}intent_utc >= ?")
        params.append(utc_text(since))
    if subject_id is not None:
        clauses.append(f"{table}subject_id = ?")
        params.append(subject_id)
    return (f" WHERE {' AND '.join(clauses)}" if clauses else ""), params


def _event_from_row(row: tuple[Any, ...]) -> LedgerEvent:
    event_id, kind, session_id, subject_id, utc, boot_id, mono, delivered, body = row
    return LedgerEvent(
        event_id=int(event_id),
        kind=EventKind(kind),
        session_id=None if session_id is None else int(session_id),
        subject_id=None if subject_id is None else str(subject_id),
        at=instant_from_row(utc, boot_id, int(mono)),
        delivered_ul=None if delivered is None else int(delivered),
        body=json.loads(body),
    )


def _summary(record: SessionRecord, started: bool, events: list[LedgerEvent]) -> SessionSummary:
    by_kind: dict[EventKind, LedgerEvent] = {}
    overrides: list[Mapping[str, Any]] = []
    alarms: list[AlarmEntry] = []
    for event in events:
        if event.kind is EventKind.OVERRIDE:
            overrides.append(event.body)
        elif event.kind is EventKind.ALARM:
            alarms.append(
                AlarmEntry(
                    alarm_code=str(event.body["alarm_code"]),
                    action=AlarmAction(event.body["action"]),
                    actor=str(event.body["actor"]),
                    utc=event.at.utc,
                    priority=str(event.body.get("priority", "")),
                    message=str(event.body.get("message", "")),
                )
            )
        else:
            by_kind.setdefault(event.kind, event)
    intent = by_kind[EventKind.INTENT].body
    ended = by_kind.get(EventKind.ENDED)
    uncertain = by_kind.get(EventKind.UNCERTAIN)
    reconciled = by_kind.get(EventKind.RECONCILED)
    refused = by_kind.get(EventKind.START_REFUSED)
    end_reason: str | None = None
    end_source: str | None = None
    duration = None if ended is None else ended.body.get("duration_ms")
    host_reason = None if ended is None else ended.body.get("host_reason")
    device_reason = None if ended is None else ended.body.get("device_reason")
    if ended is not None:
        end_reason, end_source = str(ended.body["reason"]), str(ended.body["source"])
    elif refused is not None:
        end_reason, end_source = f"START_NAK:{refused.body['nak_reason']}", "device"
    elif reconciled is not None:
        device_reason = reconciled.body.get("device_reason")
        duration = reconciled.body.get("duration_ms")
        late_end = next(
            (
                e.body
                for e in events
                if e.kind is EventKind.COMMAND and e.body.get("command") == "device.session_end"
            ),
            None,
        )
        if late_end is not None:  # the head's SESSION_END, after a STATUS reconciled it
            device_reason = late_end.get("device_reason") or device_reason
            duration = late_end.get("duration_ms") if duration is None else duration
        if device_reason is not None:
            end_reason, end_source = str(device_reason), "device"
    concentration = intent.get("concentration_per_ml")
    return SessionSummary(
        session_id=record.session_id,
        subject_id=record.subject_id,
        status=record.status,
        intent_at=record.started,
        planned_cap_ul=record.planned_cap_ul,
        device_target_ul=int(intent["device_target_ul"]),
        device_max_duration_s=int(intent["device_max_duration_s"]),
        output_pct=int(intent["output_pct"]),
        drug=intent.get("drug"),
        concentration_per_ml=None if concentration is None else float(concentration),
        dose_unit=intent.get("dose_unit"),
        started=started,
        delivered_ul=record.delivered_ul,
        duration_ms=None if duration is None else int(duration),
        end_reason=end_reason,
        end_source=end_source,
        uncertain_reason=None if uncertain is None else str(uncertain.body["reason"]),
        reconcile_source=None if reconciled is None else str(reconciled.body["source"]),
        overrides=tuple(overrides),
        alarms=tuple(alarms),
        host_reason=None if host_reason is None else str(host_reason),
        device_reason=None if device_reason is None else str(device_reason),
        administration_id=(
            None if intent.get("administration_id") is None else int(intent["administration_id"])
        ),
    )
