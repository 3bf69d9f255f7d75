"""Value types of the ledger API: event kinds, outbox messages, session summaries."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from controller.dosing import Decision, Instant, Override, SessionStatus

__all__ = [
    "AlarmAction",
    "AlarmEntry",
    "EndSource",
    "EventKind",
    "LedgerEvent",
    "OutboxKind",
    "OutboxMessage",
    "OutboxRow",
    "OutboxStamp",
    "PayloadBuilder",
    "ReconcileSource",
    "SessionSummary",
    "SubjectTotals",
    "decision_to_json",
    "override_to_json",
    "summary_to_json",
]


class EventKind(enum.StrEnum):
    """Every kind of ledger event (one row each in the append-only `events` table)."""

    INTENT = "intent"
    STARTED = "started"
    START_REFUSED = "start_refused"
    PROGRESS = "progress"
    ENDED = "ended"
    UNCERTAIN = "uncertain"
    RECONCILED = "reconciled"
    OVERRIDE = "override"
    ALARM = "alarm"
    DECISION = "decision"
    COMMAND = "command"
    OUTBOX_DROP = "outbox_drop"


class EndSource(enum.StrEnum):
    """Who reported a session's end: the device (SESSION_END) or the host."""

    DEVICE = "device"
    HOST = "host"


class ReconcileSource(enum.StrEnum):
    """Which device figure reconciled an uncertain session."""

    DEVICE_STATUS = "device_status"
    DEVICE_SESSION_END = "device_session_end"


class AlarmAction(enum.StrEnum):
    """What happened to an alarm."""

    RAISED = "raised"
    ACKNOWLEDGED = "acknowledged"
    CLEARED = "cleared"


class OutboxKind(enum.StrEnum):
    """Kinds of outbox message; only TELEMETRY may be dropped by the disk budget."""

    TELEMETRY = "telemetry"
    STATE = "state"
    SESSION = "session"
    ALARM = "alarm"
    DECISION = "decision"
    REPLY = "reply"


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxStamp:
    """What a payload builder learns inside the write transaction.

    `seq` is the message's own outbox sequence number (never reused); `event_id` and
    `session_id` are those of the ledger row written in the same transaction (None for
    a standalone outbox append, or an event without a session).
    """

    seq: int
    event_id: int | None
    session_id: int | None


PayloadBuilder = Callable[[OutboxStamp], bytes]
"""Builds a payload once its seq (and the event/session ids) are known."""


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxMessage:
    """A message to publish, committed in the same transaction as its ledger row.

    `payload` is either final bytes or a builder called inside the transaction with
    the allocated `OutboxStamp`; an exception in the builder rolls everything back.
    """

    kind: OutboxKind
    topic: str
    payload: bytes | PayloadBuilder
    qos: int = 1
    retain: bool = False

    def __post_init__(self) -> None:
        if self.qos not in (0, 1, 2):
            raise ValueError(f"OutboxMessage.qos must be 0, 1 or 2, got {self.qos!r}")
        if not self.topic:
            raise ValueError("OutboxMessage.topic must not be empty")


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxRow:
    """One pending outbox row, as the publisher reads it."""

    seq: int
    kind: OutboxKind
    topic: str
    payload: bytes
    qos: int
    retain: bool
    created_utc: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class LedgerEvent:
    """One stored event, read back (for forensics, the CLI and tests)."""

    event_id: int
    kind: EventKind
    session_id: int | None
    subject_id: str | None
    at: Instant
    delivered_ul: int | None
    body: Mapping[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class AlarmEntry:
    """One alarm event: which alarm, what happened to it, who, when."""

    alarm_code: str
    action: AlarmAction
    actor: str
    utc: datetime
    priority: str
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionSummary:
    """Everything the ledger knows about one session, for people (`nebuliser ledger show`)."""

    session_id: int
    subject_id: str
    status: SessionStatus
    intent_at: Instant
    planned_cap_ul: int
    device_target_ul: int
    device_max_duration_s: int
    output_pct: int
    drug: str | None
    concentration_per_ml: float | None
    """Drug units per mL of the lot (`dose_unit`: vesicles, mg, µg, …)."""
    dose_unit: str | None
    started: bool
    delivered_ul: int | None
    duration_ms: int | None
    end_reason: str | None
    end_source: str | None
    uncertain_reason: str | None
    reconcile_source: str | None
    overrides: tuple[Mapping[str, Any], ...]
    alarms: tuple[AlarmEntry, ...]
    host_reason: str | None = None
    """Why the host stopped the session, when it did (kept beside the head's reason)."""
    device_reason: str | None = None
    """The head's own stop reason (ICD name), from SESSION_END or STATUS."""
    administration_id: int | None = None
    """The first run's session id when this run continues an administration."""

    @property
    def dose(self) -> float | None:
        """Delivered drug in `dose_unit` when a concentration was recorded with the intent."""
        if self.concentration_per_ml is None or self.delivered_ul is None:
            return None
        return self.delivered_ul / 1000.0 * self.concentration_per_ml


@dataclass(frozen=True, slots=True, kw_only=True)
class SubjectTotals:
    """Totals of one subject over all recorded sessions."""

    subject_id: str
    sessions: int
    delivered_ul: int
    """Sum of known delivered volumes (completed, reconciled, last progress of open ones)."""
    counted_ul: int
    """Sum of what counts against limits (open and uncertain sessions count their cap)."""
    uncertain_sessions: int
    open_sessions: int


def _jsonable(value: Any) -> Any:  # noqa: PLR0911 - one return per JSON-able type
    if isinstance(value, Instant):
        return {
            "utc": value.utc.isoformat(),
            "boot_id": value.boot_id,
            "monotonic_ns": value.monotonic_ns,
        }
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, frozenset | set):
        return sorted(_jsonable(v) for v in value)
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


def decision_to_json(decision: Decision) -> dict[str, Any]:
    """The full trace of a dose decision as JSON-ready data (every constraint, values, reasons)."""
    trace: dict[str, Any] = _jsonable(decision)
    trace["refusal_codes"] = list(decision.refusal_codes)
    return trace


def override_to_json(override: Override) -> dict[str, Any]:
    """An override request as JSON-ready data."""
    result: dict[str, Any] = _jsonable(override)
    return result


def summary_to_json(summary: SessionSummary) -> dict[str, Any]:
    """A session summary as JSON-ready data (times as ISO 8601 UTC), dose included."""
    result: dict[str, Any] = _jsonable(summary)
    result["dose"] = summary.dose
    result["dose_unit"] = summary.dose_unit
    return result
