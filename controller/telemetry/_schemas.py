"""Payload schemas of every MQTT message (pydantic v2).

Device messages (published by a controller, one per outbox row) share an envelope:
schema name and version, device id, ward, bed, boot id, the per-device `seq` taken
from the outbox, a UTC timestamp and `historical`. Presence and the messages that
monitors send (backfill requests, alarm acknowledgements) carry no device `seq`:
see docs/mqtt.md for why.

The JSON Schemas in docs/schemas/ are generated from these models by
`scripts/export-schemas`; a test fails when they are out of date.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

__all__ = [
    "ALL_SCHEMAS",
    "DEVICE_SCHEMAS",
    "ActiveAlarm",
    "ActiveAlarmsMessage",
    "AlarmAckCommand",
    "AlarmMessage",
    "AuditHeadMessage",
    "BackfillReplyMessage",
    "BackfillRequest",
    "BreathingMessage",
    "ConstraintResult",
    "CourseDay",
    "CourseMessage",
    "DecisionMessage",
    "DeviceMessage",
    "LedgerAnchorMessage",
    "LedgerAnchorSession",
    "PrescriptionSummary",
    "PresenceMessage",
    "Reason",
    "SessionMessage",
    "StateMessage",
    "TelemetryMessage",
    "UtcTime",
]

_Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
_Code = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
_Text = Annotated[str, Field(max_length=500)]
Priority = Literal["high", "medium", "low"]


def _to_utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)


def _utc_text(moment: datetime) -> str:
    # One spelling for every consumer: UTC, milliseconds, "Z".
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


UtcTime = Annotated[
    AwareDatetime, AfterValidator(_to_utc), PlainSerializer(_utc_text, return_type=str)
]


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    SCHEMA: ClassVar[str]
    VERSION: ClassVar[int] = 1

    schema_name: str = Field(alias="schema")
    schema_version: int = 1
    utc: UtcTime


class _DeviceFields(_Message):
    device_id: _Name
    ward: _Name
    bed: _Name
    boot_id: _Name
    seq: Annotated[int, Field(ge=1)]
    historical: bool = False
    # A retained message published again after a (re)connect, same seq (docs/mqtt.md).
    republished: bool = False


class Reason(BaseModel):
    """A machine-readable reason: a stable code and a sentence for people."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    code: _Code
    text: _Text = ""


class PrescriptionSummary(BaseModel):
    """What a ward monitor may show about the prescription (never blinded details).

    `dose_unit` and `concentration_per_ml` (the lot's, so a station can show volumes
    in the lot's units) are present only for an unblinded prescription: a blinded
    summary carrying either is invalid, so it can never be published (issue 20)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    prescription_id: _Name
    label: _Text
    blinded: bool = False
    dose_cap_ul: Annotated[int, Field(ge=0)]
    daily_cap_ul: Annotated[int, Field(ge=0)] | None = None
    dose_unit: Literal["vesicles", "mg", "ug"] | None = None
    concentration_per_ml: Annotated[float, Field(gt=0)] | None = None

    @model_validator(mode="after")
    def _no_drug_units_when_blinded(self) -> Self:
        if (self.dose_unit is None) != (self.concentration_per_ml is None):
            raise ValueError("dose_unit and concentration_per_ml go together (both or neither)")
        if self.blinded and self.dose_unit is not None:
            raise ValueError(
                "a blinded prescription's summary must not carry dose_unit or "
                "concentration_per_ml (a figure in drug units would unblind the arm)"
            )
        return self

    @model_serializer(mode="wrap")
    def _omit_absent_dose_unit(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Absent, not null: a blinded (or pre-issue-19) summary keeps its exact bytes.
        data: dict[str, Any] = handler(self)
        for key in ("dose_unit", "concentration_per_ml"):
            if data.get(key) is None:
                data.pop(key, None)
        return data


class StateMessage(_DeviceFields):
    """Retained bed state: identity, prescription summary, current session state."""

    SCHEMA: ClassVar[str] = "nebuliser.state"
    schema_name: Literal["nebuliser.state"] = Field(default="nebuliser.state", alias="schema")
    firmware: _Text = ""
    prescription: PrescriptionSummary | None = None
    session_state: _Code
    session_id: Annotated[int, Field(ge=0)] | None = None
    telemetry_hz: Annotated[int, Field(ge=1, le=10)] = 1


class TelemetryMessage(_DeviceFields):
    """One sample of the running device."""

    SCHEMA: ClassVar[str] = "nebuliser.telemetry"
    schema_name: Literal["nebuliser.telemetry"] = Field(
        default="nebuliser.telemetry", alias="schema"
    )
    session_id: Annotated[int, Field(ge=0)] | None = None
    running: bool
    delivered_ul: Annotated[int, Field(ge=0)]
    cap_ul: Annotated[int, Field(ge=0)]
    flow_ul_min: Annotated[int, Field(ge=0)]
    reservoir_ul: Annotated[int, Field(ge=0)] | None = None
    temperature_cC: int | None = None  # noqa: N815 (centi-degrees Celsius; unit in name)
    faults: list[_Code] = Field(default_factory=list)
    link_quality_pct: Annotated[int, Field(ge=0, le=100)] | None = None


class SessionMessage(_DeviceFields):
    """A dose session started or ended."""

    SCHEMA: ClassVar[str] = "nebuliser.session"
    schema_name: Literal["nebuliser.session"] = Field(default="nebuliser.session", alias="schema")
    event: Literal["started", "ended"]
    session_id: Annotated[int, Field(ge=0)]
    dose_cap_ul: Annotated[int, Field(ge=0)]
    delivered_ul: Annotated[int, Field(ge=0)] | None = None
    outcome: _Code | None = None
    reasons: list[Reason] = Field(default_factory=list)
    #: Set on a continuation run: the first run's session id (one dose, several runs).
    administration_id: Annotated[int, Field(ge=1)] | None = None


class AlarmMessage(_DeviceFields):
    """An alarm was raised, acknowledged or cleared."""

    SCHEMA: ClassVar[str] = "nebuliser.alarm"
    schema_name: Literal["nebuliser.alarm"] = Field(default="nebuliser.alarm", alias="schema")
    event: Literal["raised", "acknowledged", "cleared"]
    alarm_code: _Code
    priority: Priority
    text: _Text = ""
    acknowledged_by: _Name | None = None
    session_id: Annotated[int, Field(ge=0)] | None = None


class ActiveAlarm(BaseModel):
    """One entry of the active alarm set."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    alarm_code: _Code
    priority: Priority
    text: _Text = ""
    raised_utc: UtcTime
    acknowledged: bool = False
    acknowledged_by: _Name | None = None


class ActiveAlarmsMessage(_DeviceFields):
    """The whole set of active alarms (retained), highest priority first."""

    SCHEMA: ClassVar[str] = "nebuliser.alarms_active"
    schema_name: Literal["nebuliser.alarms_active"] = Field(
        default="nebuliser.alarms_active", alias="schema"
    )
    alarms: list[ActiveAlarm] = Field(default_factory=list)


class ConstraintResult(BaseModel):
    """One constraint the dose rules checked, with its limit and the value seen."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    code: _Code
    ok: bool
    limit: float | int | None = None
    value: float | int | None = None
    text: _Text = ""


class DecisionMessage(_DeviceFields):
    """Every allow / refuse / stop decision with its full constraint trace."""

    SCHEMA: ClassVar[str] = "nebuliser.decision"
    schema_name: Literal["nebuliser.decision"] = Field(default="nebuliser.decision", alias="schema")
    decision: Literal["allow", "refuse", "stop"]
    request: _Code
    granted_cap_ul: Annotated[int, Field(ge=0)] | None = None
    constraints: list[ConstraintResult] = Field(default_factory=list)
    reasons: list[Reason] = Field(default_factory=list)


class BreathingMessage(_DeviceFields):
    """Breathing at the bedside, from a breath-aware head (MN-1 ICD 1.1): every 10 s
    and at each change of state (WAITING, a session starting or ending).

    Rate, tidal volume and I:E are over the last few reported breaths (None before
    any). `insp_share_pct` is the inspiratory-phase share of the session's aerosol:
    an estimate beside the dose, never the dose (which stays `delivered_ul`).
    """

    SCHEMA: ClassVar[str] = "nebuliser.breathing"
    schema_name: Literal["nebuliser.breathing"] = Field(
        default="nebuliser.breathing", alias="schema"
    )
    reason: Literal["periodic", "state_change"]
    session_id: Annotated[int, Field(ge=0)] | None = None
    gated: bool
    waiting: bool
    rate_bpm: Annotated[float, Field(ge=0, le=200)] | None = None
    tidal_ml: Annotated[int, Field(ge=0, le=65535)] | None = None
    #: Expiratory over inspiratory time (I:E 1:2 → 2.0).
    ie_ratio: Annotated[float, Field(ge=0, le=100)] | None = None
    insp_share_pct: Annotated[float, Field(ge=0, le=100)] | None = None
    seconds_since_breath: Annotated[int, Field(ge=0)] | None = None
    breaths: Annotated[int, Field(ge=0)] = 0
    lost_reports: Annotated[int, Field(ge=0)] = 0


class CourseDay(BaseModel):
    """One local calendar day of the course (the prescription's time zone)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    day: date
    counted_ul: Annotated[int, Field(ge=0)]
    runs: Annotated[int, Field(ge=0)]


class CourseMessage(_DeviceFields):
    """Retained: what the subject has used, as the dose rules count it (µL that count
    against the limits: a run whose delivery is not known counts its full planned cap).

    Published at start-up, after every session end (and uncertain / reconciled run)
    and hourly (the 24 h window moves). Volumes and counts only, never a figure in
    drug units: the same message for blinded and open prescriptions."""

    SCHEMA: ClassVar[str] = "nebuliser.course"
    schema_name: Literal["nebuliser.course"] = Field(default="nebuliser.course", alias="schema")
    reason: Literal["startup", "session_end", "periodic"]
    rolling_24h_ul: Annotated[int, Field(ge=0)]
    rolling_24h_max_ul: Annotated[int, Field(ge=0)] | None = None
    rolling_24h_sessions: Annotated[int, Field(ge=0)]
    rolling_24h_max_sessions: Annotated[int, Field(ge=0)] | None = None
    course_ul: Annotated[int, Field(ge=0)]
    course_max_ul: Annotated[int, Field(ge=0)] | None = None
    course_sessions: Annotated[int, Field(ge=0)]
    course_max_sessions: Annotated[int, Field(ge=0)] | None = None
    uncertain_runs: Annotated[int, Field(ge=0)] = 0
    #: The prescription's time zone (IANA name) the `days` are in.
    timezone: Annotated[str, Field(max_length=64)]
    days: list[CourseDay] = Field(default_factory=list, max_length=31)


_Hash = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class LedgerAnchorSession(BaseModel):
    """The session the anchored event was about, as the ledger had it then (its
    subject is left out: nothing published names the patient)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    session_id: Annotated[int, Field(ge=1)]
    planned_cap_ul: Annotated[int, Field(ge=0)]
    status: _Code
    delivered_ul: Annotated[int, Field(ge=0)] | None = None
    intent_utc: _Text


class LedgerAnchorMessage(_DeviceFields):
    """The dose ledger's high-water mark (retained, QoS 1, on ``<bed>/ledger/anchor``),
    after every session event and at start-up (docs/ledger.md, "Continuity").

    The ward station keeps the newest one per bed: if the bed's ledger file is later
    lost or rolled back, this shows how far it had reached (`last_event_seq`, its
    chain hash) and which session that was, for `nebuliser ledger restore`.
    """

    SCHEMA: ClassVar[str] = "nebuliser.ledger_anchor"
    schema_name: Literal["nebuliser.ledger_anchor"] = Field(
        default="nebuliser.ledger_anchor", alias="schema"
    )
    ledger_id: _Name
    last_event_seq: Annotated[int, Field(ge=0)]
    last_event_hash: _Hash
    last_session_id: Annotated[int, Field(ge=0)]
    #: Why it was written: `startup`, `init`, `restore`, or the session event (`intent`, …).
    reason: _Code
    session: LedgerAnchorSession | None = None


class BackfillReplyMessage(_DeviceFields):
    """The controller's answer to a backfill request: the archived messages of the
    asked range (each flagged historical) and the seqs it can no longer provide."""

    SCHEMA: ClassVar[str] = "nebuliser.backfill_reply"
    schema_name: Literal["nebuliser.backfill_reply"] = Field(
        default="nebuliser.backfill_reply", alias="schema"
    )
    request_id: _Name
    from_seq: Annotated[int, Field(ge=1)]
    to_seq: Annotated[int, Field(ge=1)]
    messages: list[dict[str, Any]] = Field(default_factory=list)
    unavailable: list[Annotated[int, Field(ge=1)]] = Field(default_factory=list)
    truncated: bool = False


class PresenceMessage(_Message):
    """Connection presence (retained; the offline one is the MQTT Last Will)."""

    SCHEMA: ClassVar[str] = "nebuliser.presence"
    schema_name: Literal["nebuliser.presence"] = Field(default="nebuliser.presence", alias="schema")
    device_id: _Name
    ward: _Name
    bed: _Name
    boot_id: _Name
    online: bool
    reason: Literal["connected", "shutdown", "last_will"]
    telemetry_hz: Annotated[int, Field(ge=1, le=10)] = 1
    # The Last Will is handed to the broker at connect time and published by the
    # broker much later, so it carries no time (null): a subscriber stamps its arrival.
    # Widening the base's required field is what pydantic supports for a subclass;
    # mypy flags any change of a base attribute's type.
    utc: UtcTime | None = None  # type: ignore[assignment]


class BackfillRequest(_Message):
    """Monitor -> controller: please re-send seqs `from_seq`..`to_seq` (inclusive)."""

    SCHEMA: ClassVar[str] = "nebuliser.backfill_request"
    schema_name: Literal["nebuliser.backfill_request"] = Field(
        default="nebuliser.backfill_request", alias="schema"
    )
    request_id: _Name
    requester: _Name
    device_id: _Name
    from_seq: Annotated[int, Field(ge=1)]
    to_seq: Annotated[int, Field(ge=1)]


class AlarmAckCommand(_Message):
    """Monitor -> controller: acknowledge an alarm (PROVISIONAL: unsigned; the
    security layer will wrap commands in signed envelopes)."""

    SCHEMA: ClassVar[str] = "nebuliser.cmd_ack"
    schema_name: Literal["nebuliser.cmd_ack"] = Field(default="nebuliser.cmd_ack", alias="schema")
    command_id: _Name
    sender: _Name
    device_id: _Name
    alarm_code: _Code


class AuditHeadMessage(_Message):
    """Controller -> ward (retained, QoS 1, on ``<bed>/audit/head``): the newest audit
    anchor, INDEX:HASH of the bed's hash-chained audit log (docs/security.md §5).
    Monitors keep every one they see; ``nebuliser audit verify --anchors`` checks
    the bed's log against them."""

    SCHEMA: ClassVar[str] = "nebuliser.audit_head"
    schema_name: Literal["nebuliser.audit_head"] = Field(
        default="nebuliser.audit_head", alias="schema"
    )
    device_id: _Name
    ward: _Name
    bed: _Name
    reason: _Name
    head: Annotated[str, Field(pattern=r"^[0-9]{1,18}:[0-9a-f]{64}$")]


DeviceMessage = (
    StateMessage
    | TelemetryMessage
    | SessionMessage
    | AlarmMessage
    | ActiveAlarmsMessage
    | DecisionMessage
    | BackfillReplyMessage
    | BreathingMessage
    | CourseMessage
    | LedgerAnchorMessage
)

DEVICE_SCHEMAS: dict[str, type[_DeviceFields]] = {
    model.SCHEMA: model
    for model in (
        StateMessage,
        TelemetryMessage,
        SessionMessage,
        AlarmMessage,
        ActiveAlarmsMessage,
        DecisionMessage,
        BackfillReplyMessage,
        BreathingMessage,
        CourseMessage,
        LedgerAnchorMessage,
    )
}

ALL_SCHEMAS: dict[str, type[_Message]] = {
    **DEVICE_SCHEMAS,
    PresenceMessage.SCHEMA: PresenceMessage,
    BackfillRequest.SCHEMA: BackfillRequest,
    AlarmAckCommand.SCHEMA: AlarmAckCommand,
    AuditHeadMessage.SCHEMA: AuditHeadMessage,
}
