"""What the session runtime asks its shell to do: typed effects, in the safe order.

The runtime (`SessionRuntime`) never touches the port, the ledger, the network or
the log. Each input returns nothing; the shell then calls `take_effects()` and
performs them **in order**. The runtime queues them so that this order is the safe
one (design guide §2, rule 2): `SendStop` first, alarms next, records last.

Every record effect carries the wall-clock instant it describes (`at`), so the
shell stamps nothing itself and a test can compare effects exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from controller.alarms import AlarmEvent, AlarmState
from controller.dosing import Decision, Instant, Override
from controller.ledger import BreathRecord, EndSource, ReconcileSource

__all__ = [
    "CONTROL_REQUEST_COMMAND_PREFIX",
    "DEVICE_SESSION_END_COMMAND",
    "OVERRIDE_REFUSED_COMMAND",
    "Effect",
    "LedgerWrite",
    "LogLine",
    "Now",
    "SendStop",
    "SessionRecord",
    "StartOutcome",
    "StartSettled",
    "WriteAlarm",
    "WriteBreathSummary",
    "WriteBreaths",
    "WriteCommand",
    "WriteDecision",
    "WriteEnded",
    "WriteIntent",
    "WriteOverride",
    "WriteProgress",
    "WriteReconciled",
    "WriteStartRefused",
    "WriteStarted",
    "WriteUncertain",
]


@dataclass(frozen=True, slots=True)
class Now:
    """The moment of an input: a monotonic millisecond count and the wall-clock instant."""

    ms: int
    at: Instant


@dataclass(frozen=True, slots=True, kw_only=True)
class StartOutcome:
    """What happened to a start request (the control interface prints it)."""

    started: bool
    session_id: int | None
    reasons: tuple[str, ...]
    decision: Decision | None = None


# --- actions on the device --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendStop:
    """Write STOP for `session_id` (0: whatever runs) now, before anything else."""

    session_id: int


# --- records (ledger rows; session, alarm and decision rows also carry messages) ----


@dataclass(frozen=True, slots=True, kw_only=True)
class WriteIntent:
    """The durable intent row; the shell waits for its commit, then sends START."""

    subject_id: str
    planned_cap_ul: int
    max_duration_s: int
    output_pct: int
    decision_trace: Mapping[str, object]
    drug: str
    concentration_per_ml: float
    dose_unit: str
    at: Instant
    administration_id: int | None = None  # set when this run continues an administration
    #: How the dose is delivered ("continuous", or "breath_gated" with gate_pct,
    #: lead_breaths and apnoea_s); kept with the intent so the record says how it ran.
    delivery: Mapping[str, object] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class WriteStarted:
    """STATUS showed our session running (or it ended before a STATUS could)."""

    session_id: int
    subject_id: str
    cap_ul: int
    max_duration_s: int
    at: Instant
    administration_id: int | None = None  # set on a continuation run

    def body(self) -> dict[str, object]:
        """The session message body (MQTT `session` message, event `started`)."""
        return {
            "event": "started",
            "session_id": self.session_id,
            "subject_id": self.subject_id,
            "cap_ul": self.cap_ul,
            "max_duration_s": self.max_duration_s,
            "administration_id": self.administration_id,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class WriteEnded:
    """The device's final figures for our session, with every reason given for the end."""

    session_id: int
    subject_id: str
    delivered_ul: int
    cap_ul: int
    duration_ms: int
    device_reason: str  # the ICD stop reason name, "UNKNOWN" when the head gave none
    host_reason: str | None  # why the host stopped it, if it did
    dose: float
    dose_unit: str
    at: Instant

    @property
    def reason(self) -> str:
        """The one reason code that summarises the end (the host's, if it stopped it)."""
        return self.host_reason or self.device_reason

    @property
    def source(self) -> EndSource:
        """Who ended the session."""
        return EndSource.HOST if self.host_reason else EndSource.DEVICE

    def body(self, *, blinded: bool = False) -> dict[str, object]:
        """The session message body (event `ended`); `blinded` leaves out the dose and
        its unit (for what leaves the bed of a blinded arm: a log line, issue 20)."""
        body: dict[str, object] = {
            "event": "ended",
            "session_id": self.session_id,
            "subject_id": self.subject_id,
            "delivered_ul": self.delivered_ul,
            "cap_ul": self.cap_ul,
            "duration_ms": self.duration_ms,
            "device_reason": self.device_reason,
            "host_reason": self.host_reason,
        }
        if not blinded:
            body |= {"dose": self.dose, "dose_unit": self.dose_unit}
        return body


@dataclass(frozen=True, slots=True, kw_only=True)
class WriteUncertain:
    """Delivery of an open session is unknown: its full planned cap counts from now."""

    session_id: int
    reason: str
    planned_cap_ul: int
    at: Instant
    upper_bound_ul: int | None = None  # where the head's figures are gone for good

    def body(self) -> dict[str, object]:
        """The session message body (event `uncertain`)."""
        return {
            "event": "uncertain",
            "session_id": self.session_id,
            "reason": self.reason,
            "planned_cap_ul": self.planned_cap_ul,
            "upper_bound_ul": self.upper_bound_ul,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class WriteReconciled:
    """The device's own figure settles an UNCERTAIN session."""

    session_id: int
    delivered_ul: int
    source: ReconcileSource
    planned_cap_ul: int
    device_reason: str | None
    duration_ms: int | None
    at: Instant

    def body(self) -> dict[str, object]:
        """The session message body (event `reconciled`)."""
        return {
            "event": "reconciled",
            "session_id": self.session_id,
            "delivered_ul": self.delivered_ul,
            "source": str(self.source),
            "planned_cap_ul": self.planned_cap_ul,
            "device_reason": self.device_reason,
            "duration_ms": self.duration_ms,
        }


#: Session rows: each is published as a `session` message in the same transaction.
SessionRecord = WriteStarted | WriteEnded | WriteUncertain | WriteReconciled


@dataclass(frozen=True, slots=True, kw_only=True)
class WriteStartRefused:
    """The device NAKed START (or never ran it): nothing was delivered."""

    session_id: int
    nak_reason: str
    at: Instant


@dataclass(frozen=True, slots=True, kw_only=True)
class WriteProgress:
    """A progress sample of a running session."""

    session_id: int
    delivered_ul: int
    flow_ul_min: int
    reservoir_ul: int
    at: Instant


@dataclass(frozen=True, slots=True, kw_only=True)
class WriteDecision:
    """An allow/refuse/stop decision with its trace (published when `decision` is set)."""

    subject_id: str
    allowed: bool
    trace: Mapping[str, object]
    at: Instant
    session_id: int | None = None
    decision: Decision | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class WriteOverride:
    """A soft-limit override that was used for an allowed decision."""

    override: Override
    subject_id: str
    at: Instant


@dataclass(frozen=True, slots=True, kw_only=True)
class WriteAlarm:
    """An alarm event (raised, cleared, acknowledged) and the active set after it."""

    event: AlarmEvent
    active: AlarmState
    session_id: int | None
    at: Instant


#: The command row that keeps a head's SESSION_END figures (reason, duration) for a
#: session that was already reconciled from STATUS.
DEVICE_SESSION_END_COMMAND = "device.session_end"
#: The command row of an override credential that was refused (who tried, why).
OVERRIDE_REFUSED_COMMAND = "session.override_refused"
#: Prefix of the command row kept for every start, confirm, stop and alarm-ack request
#: made through the local control socket (`control.session.start`, …): who typed
#: what (`origin`), the kernel's word on the asking process (`peer`) and the outcome.
CONTROL_REQUEST_COMMAND_PREFIX = "control."


@dataclass(frozen=True, slots=True, kw_only=True)
class WriteCommand:
    """A command carried out on a person's word (who, what, outcome), or a device report."""

    command: str
    origin: str
    body: Mapping[str, object]
    at: Instant
    session_id: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class WriteBreathSummary:
    """A run's breath accounting on an ICD 1.1 head, once it is final (an estimate
    beside `delivered_ul`: breaths, rate, tidal volume, aerosol by phase, WAITING)."""

    session_id: int
    figures: Mapping[str, object]
    at: Instant


@dataclass(frozen=True, slots=True, kw_only=True)
class WriteBreaths:
    """A batch of one run's BREATH reports (ICD 1.1), for the per-breath strip.

    Each row carries the instant it was received (`BreathRecord.at`); the batch is one
    transaction on the writer thread (an estimate beside `delivered_ul`, never a limit).
    """

    session_id: int
    rows: tuple[BreathRecord, ...]


LedgerWrite = (
    WriteStarted
    | WriteEnded
    | WriteUncertain
    | WriteReconciled
    | WriteStartRefused
    | WriteProgress
    | WriteDecision
    | WriteOverride
    | WriteAlarm
    | WriteCommand
    | WriteBreathSummary
    | WriteBreaths
)


# --- the rest -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogLine:
    """A structured log line (performed after the actions and records before it)."""

    level: Literal["info", "warning", "error"]
    message: str
    fields: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StartSettled:
    """The pending start request has its answer."""

    outcome: StartOutcome


Effect = SendStop | LedgerWrite | LogLine | StartSettled
