"""The durable dose ledger: append-only session events, alarms, decisions and commands.

Synchronous on purpose (stdlib sqlite3): the asyncio controller calls it from one writer
task or through `asyncio.to_thread`; an internal lock serialises calls. The STOP path
never waits on it (safe state first, record third).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from controller.dosing import Instant, Override, SessionStatus
from controller.ledger._admission import SettledCounts
from controller.ledger._breaths import BreathRowsMixin
from controller.ledger._chain import stored_head
from controller.ledger._continuity_mixin import AnchorSink, ContinuityMixin
from controller.ledger._database import (
    Database,
    json_text,
    utc_text,
)
from controller.ledger._errors import (
    SessionStateError,
)
from controller.ledger._model import (
    AlarmAction,
    EndSource,
    EventKind,
    OutboxMessage,
    ReconcileSource,
    override_to_json,
)
from controller.ledger._outbox import Outbox
from controller.ledger._reading import ReadingMixin, session_filter
from controller.ledger._schema import SCHEMA_VERSION
from controller.ledger._storage import ReserveFile

__all__ = [
    "BREATH_SUMMARY_KEYS",
    "DEFAULT_OUTBOX_BUDGET_BYTES",
    "LEDGER_FILE_NAME",
    "AnchorSink",
    "Ledger",
]

#: What a breath summary must contain (see `Ledger.record_breath_summary`).
BREATH_SUMMARY_KEYS = frozenset(
    {
        "breaths",
        "rate_mean_bpm",
        "rate_min_bpm",
        "rate_max_bpm",
        "tidal_mean_ml",
        "aerosol_insp_ul",
        "aerosol_exp_ul",
        "aerosol_insp_dose",
        "aerosol_exp_dose",
        "dose_unit",
        "waiting_s",
        "lost_reports",
        "gated",
    }
)


LEDGER_FILE_NAME = "ledger.sqlite3"
"""File name of the ledger inside the data directory."""

DEFAULT_OUTBOX_BUDGET_BYTES = 64 * 1024 * 1024
_NS_PER_MS = 1_000_000
_U32_MAX = 0xFFFF_FFFF


def _check_arguments(outbox_budget_bytes: int, progress_interval_ms: int) -> None:
    if outbox_budget_bytes < 1:
        raise ValueError(f"outbox_budget_bytes must be >= 1, got {outbox_budget_bytes}")
    if progress_interval_ms < 0:
        raise ValueError(f"progress_interval_ms must be >= 0, got {progress_interval_ms}")


def _check_continues(connection: sqlite3.Connection, administration_id: int, subject: str) -> None:
    """A continuation names the first run of one of its subject's administrations that
    the head did not refuse (admission's course count relies on it)."""
    row = connection.execute(
        "SELECT 1 FROM events i WHERE i.session_id = ? AND i.kind = 'intent'"
        " AND i.subject_id = ? AND json_extract(i.body, '$.administration_id') IS NULL"
        " AND NOT EXISTS (SELECT 1 FROM events n WHERE n.session_id = i.session_id"
        " AND n.kind = 'start_refused')",
        (administration_id, subject),
    ).fetchone()
    if row is None:
        raise ValueError(
            f"administration_id {administration_id} is not the first run of an "
            f"administration of '{subject}' that the head accepted; a continuation names "
            "the administration that `decide()` offered (Decision.continues_administration)"
        )


def _non_negative(name: str, value: int) -> None:
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


class Ledger(ContinuityMixin, ReadingMixin, BreathRowsMixin):
    """One open ledger database. Use `Ledger.open(path)`; close it (or use `with`)."""

    def __init__(
        self,
        *,
        database: Database,
        progress_interval_ms: int,
        anchor_sink: AnchorSink | None = None,
        reserve: ReserveFile | None = None,
    ) -> None:
        self._db = database
        self._settled = SettledCounts()
        self._progress_interval_ns = progress_interval_ms * _NS_PER_MS
        self._last_progress: dict[int, Instant] = {}
        self.outbox = Outbox(database=database)
        """The MQTT outbox in the same database (see `Outbox`)."""
        self.anchor_sink = anchor_sink
        """Where anchors go after each session event (`None`: not anchored)."""
        self.anchor_failures = 0
        """Anchors that could not be written after a committed end/refusal (retried next)."""
        self.reserve = reserve
        """Disk space held back for end records (released when the disk is full)."""
        self._deferred_anchors = None
        with database.reading() as connection:
            database.head = stored_head(connection)

    # ----------------------------------------------------------------- life cycle

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        outbox_budget_bytes: int = DEFAULT_OUTBOX_BUDGET_BYTES,
        progress_interval_ms: int = 1000,
        read_only: bool = False,
        anchor_sink: AnchorSink | None = None,
        reserve: ReserveFile | None = None,
        check: bool = True,
    ) -> Ledger:
        """Open the existing ledger at `path` and migrate it if needed; never creates one.

        Runs `PRAGMA integrity_check` (read-only: `quick_check`) and compares the schema
        with what the migrations create; `check=False` skips the page check, only for
        a read-only second connection of a process that opened (and so checked) the
        ledger for writing first. Raises `LedgerMissingError` (no file: use
        `Ledger.create` through `nebuliser ledger init`), `LedgerCorruptError` or
        `LedgerSchemaUnexpectedError` (the file and its -wal/-shm are moved aside to
        `<name>.corrupt-<utc>` unless read-only), `LedgerSchemaTooNewError`, or
        `LedgerQuarantinedError` when a corrupt ledger was moved aside and nothing
        replaced it. The controller treats each as "stop delivery + alarm".
        """
        _check_arguments(outbox_budget_bytes, progress_interval_ms)
        if not check and not read_only:
            raise ValueError("only a read-only connection may skip the page check")
        database = Database.open(
            path, read_only=read_only, budget_bytes=outbox_budget_bytes, check=check
        )
        return cls(
            database=database,
            progress_interval_ms=progress_interval_ms,
            anchor_sink=anchor_sink,
            reserve=reserve,
        )

    @classmethod
    def create(
        cls,
        path: Path,
        *,
        device_id: str,
        subject_id: str,
        outbox_budget_bytes: int = DEFAULT_OUTBOX_BUDGET_BYTES,
        progress_interval_ms: int = 1000,
    ) -> Ledger:
        """Create a new, empty ledger for `device_id` (and the prescription's subject).

        Refuses (`LedgerExistsError`) when a ledger, or one moved aside, is already
        there. Only `nebuliser ledger init` and tests call this: nothing else ever
        creates a ledger (docs/ledger.md).
        """
        _check_arguments(outbox_budget_bytes, progress_interval_ms)
        if not device_id or not subject_id:
            raise ValueError("a ledger needs a device id and a subject id")
        database = Database.open(
            path,
            read_only=False,
            budget_bytes=outbox_budget_bytes,
            create_meta={
                "device_id": device_id,
                "subject_id": subject_id,
                "initialised_utc": utc_text(datetime.now(UTC)),
            },
        )
        return cls(database=database, progress_interval_ms=progress_interval_ms)

    def close(self) -> None:
        """Close the database (checkpoints the WAL into the main file) and the anchor sink."""
        self._db.close()
        closer = getattr(self.anchor_sink, "close", None)
        if callable(closer):
            closer()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Record several events in one transaction (one commit, one fsync): all of
        them or none. The anchors of its session events are written after the commit.

        The shell writes one batch of the runtime's effects this way: a stop decision
        and its alarm are durable together, never the alarm without the decision.
        """
        deferred: list[tuple[int, str, bool]] = []
        self._deferred_anchors = deferred
        progress_before = dict(self._last_progress)
        try:
            with self._db.batch():
                yield
        except BaseException:
            self._last_progress = progress_before  # rolled back: not written after all
            raise
        finally:
            self._deferred_anchors = None
        for session_id, reason, strict in deferred:
            self._anchor_after(session_id, reason, strict=strict)

    @property
    def path(self) -> Path:
        """The database file."""
        return self._db.path

    @property
    def schema_version(self) -> int:
        """The schema version of the open file (equals the code's after migration)."""
        return SCHEMA_VERSION

    @property
    def ledger_id(self) -> str:
        """Random id of this database file; changes if the file is ever replaced."""
        with self._db.reading() as connection:
            row = connection.execute(
                "SELECT value FROM ledger_meta WHERE key = 'ledger_id'"
            ).fetchone()
        return str(row[0])

    def backup(self, destination: Path) -> None:
        """Copy the live database to `destination` with SQLite's online backup API.

        Safe while the controller runs (a consistent snapshot). The copy is written to
        a temporary name, integrity-checked, then renamed into place.
        """
        partial = destination.with_name(destination.name + ".partial")
        partial.unlink(missing_ok=True)
        target = sqlite3.connect(partial)
        try:
            with self._db.lock:
                self._db.connection.backup(target)
            rows = target.execute("PRAGMA integrity_check").fetchall()
            if rows != [("ok",)]:
                raise OSError(f"backup copy {partial} failed its integrity check: {rows[:3]}")
        finally:
            target.close()
        partial.replace(destination)

    # ----------------------------------------------------------------- session events

    def record_intent(
        self,
        *,
        subject_id: str,
        planned_cap_ul: int,
        device_target_ul: int,
        device_max_duration_s: int,
        output_pct: int,
        decision_trace: Mapping[str, Any],
        at: Instant,
        drug: str | None = None,
        concentration_per_ml: float | None = None,
        dose_unit: str | None = None,
        administration_id: int | None = None,
        publish: Sequence[OutboxMessage] = (),
        delivery: Mapping[str, Any] | None = None,
    ) -> int:
        """Allocate a new session id and commit the intent; returns the session id.

        `administration_id` names the first run of the administration this run
        continues (None: a new administration).
        `delivery` (optional) records how the dose is delivered: `{"mode":
        "continuous"}`, or breath-gated with its gating parameters (ICD 1.1).

        Returns only after COMMIT (WAL fsynced): call it before the START bytes go out.
        The device target must not exceed the planned cap, because an uncertain session
        counts exactly its planned cap.
        """
        if not subject_id:
            raise ValueError("subject_id must not be empty")
        if planned_cap_ul < 1:
            raise ValueError(f"planned_cap_ul must be >= 1, got {planned_cap_ul}")
        if not 1 <= device_target_ul <= planned_cap_ul:
            raise ValueError(
                f"device_target_ul {device_target_ul} must be within 1..planned_cap_ul "
                f"({planned_cap_ul}): the device cap may never exceed what the ledger counts"
            )
        _non_negative("device_max_duration_s", device_max_duration_s)
        if concentration_per_ml is not None and not concentration_per_ml > 0:
            raise ValueError(f"concentration_per_ml must be > 0, got {concentration_per_ml}")
        body = {
            "planned_cap_ul": planned_cap_ul,
            "device_target_ul": device_target_ul,
            "device_max_duration_s": device_max_duration_s,
            "output_pct": output_pct,
            "drug": drug,
            "concentration_per_ml": concentration_per_ml,
            "dose_unit": dose_unit,
            "decision": dict(decision_trace),
        }
        if administration_id is not None:
            body["administration_id"] = administration_id
        if delivery is not None:
            body["delivery"] = dict(delivery)
        with self._db.writing() as connection:
            if administration_id is not None:
                _check_continues(connection, administration_id, subject_id)
            cursor = connection.execute(
                "INSERT INTO sessions (subject_id, allocated_utc) VALUES (?, ?)",
                (subject_id, utc_text(at.utc)),
            )
            session_id = cursor.lastrowid
            assert session_id is not None
            if session_id > _U32_MAX:
                raise ValueError("session ids are exhausted (u32); archive and start a new ledger")
            event_id = self._db.insert_event(
                connection,
                kind=EventKind.INTENT,
                at=at,
                session_id=session_id,
                subject_id=subject_id,
                body=body,
            )
            self._db.insert_outbox(
                connection, publish, at=at, event_id=event_id, session_id=session_id
            )
        self._anchor_after(session_id, "intent", strict=True)
        return session_id

    def record_started(
        self, session_id: int, *, at: Instant, publish: Sequence[OutboxMessage] = ()
    ) -> int:
        """The device ACKed START. Returns the event id."""
        return self._session_event(
            session_id,
            kind=EventKind.STARTED,
            at=at,
            body={},
            allowed=(SessionStatus.OPEN,),
            publish=publish,
            once=True,
        )

    def record_start_refused(
        self,
        session_id: int,
        *,
        nak_reason: str,
        at: Instant,
        publish: Sequence[OutboxMessage] = (),
    ) -> int:
        """The device NAKed START: nothing was delivered (status REFUSED_BY_DEVICE)."""
        return self._session_event(
            session_id,
            kind=EventKind.START_REFUSED,
            at=at,
            body={"nak_reason": nak_reason},
            allowed=(SessionStatus.OPEN,),
            publish=publish,
            forbid_started=True,
        )

    def record_progress(
        self,
        session_id: int,
        *,
        delivered_ul: int,
        flow_ul_min: int,
        reservoir_ul: int,
        at: Instant,
        publish: Sequence[OutboxMessage] = (),
    ) -> int | None:
        """A progress sample, kept at most once per `progress_interval_ms` per session.

        Returns the event id, or None when the sample was skipped by the rate bound
        (its `publish` messages are then skipped too).
        """
        _non_negative("delivered_ul", delivered_ul)
        last = self._last_progress.get(session_id)
        if (
            last is not None
            and last.boot_id == at.boot_id
            and 0 <= at.monotonic_ns - last.monotonic_ns < self._progress_interval_ns
        ):
            return None
        event_id = self._session_event(
            session_id,
            kind=EventKind.PROGRESS,
            at=at,
            body={
                "delivered_ul": delivered_ul,
                "flow_ul_min": flow_ul_min,
                "reservoir_ul": reservoir_ul,
            },
            delivered_ul=delivered_ul,
            allowed=(SessionStatus.OPEN,),
            publish=publish,
        )
        self._last_progress[session_id] = at
        return event_id

    def record_ended(
        self,
        session_id: int,
        *,
        delivered_ul: int,
        duration_ms: int,
        reason: str,
        source: EndSource,
        at: Instant,
        host_reason: str | None = None,
        device_reason: str | None = None,
        publish: Sequence[OutboxMessage] = (),
    ) -> int:
        """The session ended: delivered volume, duration, reason code and who reported it.

        `reason` is a machine code: the ICD stop reason name (`StopReason.X.name`) for
        device ends, or the host's own code for host ends. `host_reason` and
        `device_reason` keep both sides' reasons when both gave one (a host stop
        followed by the head running dry: `cap_predicted` and `RESERVOIR_EMPTY`).
        """
        _non_negative("delivered_ul", delivered_ul)
        _non_negative("duration_ms", duration_ms)
        if not reason:
            raise ValueError("reason must be a non-empty code")
        # The end record must be written even on a full disk: the reserve is for it.
        event_id = self._end_record(
            lambda: self._session_event(
                session_id,
                kind=EventKind.ENDED,
                at=at,
                body={
                    "delivered_ul": delivered_ul,
                    "duration_ms": duration_ms,
                    "reason": reason,
                    "source": str(EndSource(source)),
                    "host_reason": host_reason,
                    "device_reason": device_reason,
                },
                delivered_ul=delivered_ul,
                allowed=(SessionStatus.OPEN,),
                publish=publish,
            )
        )
        self._last_progress.pop(session_id, None)
        return event_id

    def mark_uncertain(
        self,
        session_id: int,
        *,
        reason: str,
        at: Instant,
        upper_bound_ul: int | None = None,
        publish: Sequence[OutboxMessage] = (),
    ) -> int:
        """The outcome of an open session is unknown (restart, lost link).

        From now on it counts its full planned cap until `reconcile` records the
        device's own figure — or, where the head's figures are gone for good (rebooted
        or replaced), `upper_bound_ul` (never above the planned cap).
        """
        if not reason:
            raise ValueError("reason must be a non-empty code")
        if upper_bound_ul is not None:
            _non_negative("upper_bound_ul", upper_bound_ul)
        body: dict[str, Any] = {"reason": reason}
        if upper_bound_ul is not None:
            body["upper_bound_ul"] = upper_bound_ul
        event_id = self._end_record(
            lambda: self._session_event(
                session_id,
                kind=EventKind.UNCERTAIN,
                at=at,
                body=body,
                allowed=(SessionStatus.OPEN,),
                publish=publish,
            )
        )
        self._last_progress.pop(session_id, None)
        return event_id

    def reconcile(
        self,
        session_id: int,
        *,
        delivered_ul: int,
        source: ReconcileSource,
        at: Instant,
        device_reason: str | None = None,
        duration_ms: int | None = None,
        publish: Sequence[OutboxMessage] = (),
    ) -> int:
        """Record the device's figure for an UNCERTAIN session (STATUS or SESSION_END).

        From a SESSION_END the head's stop reason and duration are kept too.
        """
        _non_negative("delivered_ul", delivered_ul)
        return self._session_event(
            session_id,
            kind=EventKind.RECONCILED,
            at=at,
            body={
                "delivered_ul": delivered_ul,
                "source": str(ReconcileSource(source)),
                "device_reason": device_reason,
                "duration_ms": duration_ms,
            },
            delivered_ul=delivered_ul,
            allowed=(SessionStatus.UNCERTAIN,),
            publish=publish,
        )

    # ----------------------------------------------------------------- other events

    def record_decision(
        self,
        *,
        subject_id: str,
        allowed: bool,
        trace: Mapping[str, Any],
        at: Instant,
        session_id: int | None = None,
        publish: Sequence[OutboxMessage] = (),
    ) -> int:
        """Every allow/refuse/stop decision with its full trace (see `decision_to_json`)."""
        return self._free_event(
            kind=EventKind.DECISION,
            at=at,
            session_id=session_id,
            subject_id=subject_id,
            body={"allowed": allowed, "trace": dict(trace)},
            publish=publish,
        )

    def record_override(
        self,
        override: Override,
        *,
        subject_id: str,
        at: Instant,
        session_id: int | None = None,
        publish: Sequence[OutboxMessage] = (),
    ) -> int:
        """A soft-limit override: role, reason and the constraint codes it lifts."""
        if not override.role or not override.reason:
            raise ValueError("an override needs a named role and a reason")
        return self._free_event(
            kind=EventKind.OVERRIDE,
            at=at,
            session_id=session_id,
            subject_id=subject_id,
            body=override_to_json(override),
            publish=publish,
        )

    def record_alarm(
        self,
        *,
        alarm_code: str,
        action: AlarmAction,
        actor: str,
        at: Instant,
        priority: str = "",
        message: str = "",
        session_id: int | None = None,
        publish: Sequence[OutboxMessage] = (),
    ) -> int:
        """An alarm raised, acknowledged or cleared, with who (`actor`) and when (`at`)."""
        if not alarm_code or not actor:
            raise ValueError("an alarm event needs an alarm_code and an actor")
        return self._free_event(
            kind=EventKind.ALARM,
            at=at,
            session_id=session_id,
            subject_id=None,
            body={
                "alarm_code": alarm_code,
                "action": str(AlarmAction(action)),
                "actor": actor,
                "priority": priority,
                "message": message,
            },
            publish=publish,
        )

    def record_breath_summary(
        self, session_id: int, *, figures: Mapping[str, Any], at: Instant
    ) -> None:
        """A run's breath accounting (ICD 1.1 heads), once per session, append-only.

        `figures` are `controller.breath.summary_record(...)`: breaths, rate, tidal
        volume, aerosol by phase (µL and, as an estimate, in the lot's dose unit),
        time WAITING, lost reports. An estimate beside `delivered_ul`, never a limit.
        Raises UnknownSessionError, or SessionStateError if one is already recorded.
        """
        missing = sorted(BREATH_SUMMARY_KEYS - set(figures))
        if missing:
            raise ValueError(f"breath summary of session {session_id} lacks {missing}")
        with self._db.writing() as connection:
            self._status(connection, session_id)  # must exist
            try:
                connection.execute(
                    "INSERT INTO breath_summaries (session_id, utc, boot_id, monotonic_ns, body)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (
                        session_id,
                        utc_text(at.utc),
                        at.boot_id,
                        at.monotonic_ns,
                        json_text(figures),
                    ),
                )
            except sqlite3.IntegrityError as exc:
                if "UNIQUE" not in str(exc):
                    raise
                raise SessionStateError(
                    f"session {session_id} already has a breath summary (one per session)"
                ) from exc

    def breath_summary(self, session_id: int) -> dict[str, Any] | None:
        """The breath summary recorded for a session, or None (continuous on a v1 head)."""
        with self._db.reading() as connection:
            row = connection.execute(
                "SELECT body FROM breath_summaries WHERE session_id = ?", (session_id,)
            ).fetchone()
        if row is None:
            return None
        figures: dict[str, Any] = json.loads(row[0])
        return figures

    def breath_summaries(
        self, *, since: datetime | None = None, subject_id: str | None = None
    ) -> dict[int, dict[str, Any]]:
        """Breath summaries by session id, for the sessions `summaries()` selects (one query).

        Sessions without one (continuous on a version-1 head) are absent.
        """
        where, params = session_filter(since=since, subject_id=subject_id, table="s.")
        with self._db.reading() as connection:
            rows = connection.execute(
                # Only fixed clause text is interpolated; every value is a ? parameter.
                "SELECT b.session_id, b.body FROM breath_summaries b"  # noqa: S608
                f" JOIN session_status s ON s.session_id = b.session_id{where}",
                params,
            ).fetchall()
        return {int(session_id): json.loads(body) for session_id, body in rows}

    def record_command(
        self,
        *,
        command: str,
        origin: str,
        body: Mapping[str, Any],
        at: Instant,
        session_id: int | None = None,
        publish: Sequence[OutboxMessage] = (),
    ) -> int:
        """A command received (which, from whom, its parameters and outcome)."""
        return self._free_event(
            kind=EventKind.COMMAND,
            at=at,
            session_id=session_id,
            subject_id=None,
            body={"command": command, "origin": origin, **dict(body)},
            publish=publish,
        )

    # ----------------------------------------------------------------- internals

    def _session_event(
        self,
        session_id: int,
        *,
        kind: EventKind,
        at: Instant,
        body: Mapping[str, Any],
        allowed: tuple[SessionStatus, ...],
        publish: Sequence[OutboxMessage],
        delivered_ul: int | None = None,
        once: bool = False,
        forbid_started: bool = False,
    ) -> int:
        with self._db.writing() as connection:
            status, started = self._status(connection, session_id)
            if status not in allowed:
                raise SessionStateError(
                    f"cannot record {kind} for session {session_id}: its status is {status}, "
                    f"expected {' or '.join(str(s) for s in allowed)}"
                )
            if (once or forbid_started) and started:
                raise SessionStateError(
                    f"cannot record {kind} for session {session_id}: it has already started"
                )
            event_id = self._insert_session_event(
                connection,
                session_id,
                kind=kind,
                at=at,
                body=body,
                delivered_ul=delivered_ul,
                publish=publish,
            )
        if kind is not EventKind.PROGRESS:
            self._anchor_after(session_id, str(kind), strict=False)
        return event_id

    def _insert_session_event(
        self,
        connection: sqlite3.Connection,
        session_id: int,
        *,
        kind: EventKind,
        at: Instant,
        body: Mapping[str, Any],
        delivered_ul: int | None,
        publish: Sequence[OutboxMessage],
    ) -> int:
        subject = connection.execute(
            "SELECT subject_id FROM sessions WHERE session_id = ?", (session_id,)
        ).fetchone()[0]
        event_id = self._db.insert_event(
            connection,
            kind=kind,
            at=at,
            session_id=session_id,
            subject_id=str(subject),
            delivered_ul=delivered_ul,
            body=body,
        )
        self._db.insert_outbox(connection, publish, at=at, event_id=event_id, session_id=session_id)
        return event_id

    def _free_event(
        self,
        *,
        kind: EventKind,
        at: Instant,
        session_id: int | None,
        subject_id: str | None,
        body: Mapping[str, Any],
        publish: Sequence[OutboxMessage],
    ) -> int:
        with self._db.writing() as connection:
            if session_id is not None:
                self._status(connection, session_id)  # must exist
            event_id = self._db.insert_event(
                connection,
                kind=kind,
                at=at,
                session_id=session_id,
                subject_id=subject_id,
                body=body,
            )
            self._db.insert_outbox(
                connection, publish, at=at, event_id=event_id, session_id=session_id
            )
        return event_id
