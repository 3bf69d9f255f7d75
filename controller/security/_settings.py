"""Security settings (a section of the controller configuration) and the role table.

The role → command table is code, not configuration: configuration names which
senders exist and which role each has, but cannot give a role more power
(design guide rule 7). Time limits have hard ceilings here; settings can lower them.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Final

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from controller.security._keys import KeyFileError, public_key_from_text

__all__ = [
    "HARD_MAX_CLOCK_SKEW_S",
    "HARD_MAX_COMMAND_BYTES",
    "HARD_MAX_CONFIRM_WINDOW_S",
    "HARD_MAX_VALIDITY_S",
    "ROLE_COMMANDS",
    "CommandName",
    "Role",
    "SecuritySettings",
    "SenderConfig",
    "security_warnings",
]

HARD_MAX_VALIDITY_S: Final = 60
HARD_MAX_CLOCK_SKEW_S: Final = 30
HARD_MAX_COMMAND_BYTES: Final = 65536
HARD_MAX_CONFIRM_WINDOW_S: Final = 300

_SENDER_ID = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"


class Role(StrEnum):
    """Who a sender is; decides which commands it may issue."""

    WARD_STATION = "ward_station"
    CLINICIAN = "clinician"
    PHARMACY = "pharmacy"
    INVESTIGATOR = "investigator"
    """Signs soft-limit overrides (issue 15); its sender entry names the person."""
    UNBLINDING = "unblinding"
    """Signs unblinded reports of a blinded arm (issue 20). Its keys are listed in the
    signed prescription (`unblinding_keys`), never in `[security]` senders."""


class CommandName(StrEnum):
    """Every remote command the controller understands."""

    STOP = "stop"
    ALARM_ACK = "alarm.ack"
    SESSION_REQUEST_START = "session.request_start"
    PRESCRIPTION_UPDATE = "prescription.update"
    SESSION_OVERRIDE = "session.override"
    """A signed soft-limit override, handed to `nebuliser session start` (issue 15)."""
    REPORT_UNBLIND = "report.unblind"
    """A signed unblinding credential, handed to `nebuliser report` (issue 20)."""


ROLE_COMMANDS: Final[dict[Role, frozenset[CommandName]]] = {
    Role.WARD_STATION: frozenset(
        {CommandName.STOP, CommandName.ALARM_ACK, CommandName.SESSION_REQUEST_START}
    ),
    Role.CLINICIAN: frozenset(
        {CommandName.STOP, CommandName.ALARM_ACK, CommandName.SESSION_REQUEST_START}
    ),
    Role.PHARMACY: frozenset({CommandName.PRESCRIPTION_UPDATE}),
    Role.INVESTIGATOR: frozenset({CommandName.SESSION_OVERRIDE}),
    Role.UNBLINDING: frozenset({CommandName.REPORT_UNBLIND}),
}


class SenderConfig(BaseModel):
    """One party allowed to send signed commands: its id, public key and role."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=_SENDER_ID, description="Sender id as it appears in envelopes.")
    public_key: str = Field(description="`ed25519:<base64>` from the sender's .pub file.")
    role: Role = Field(description="ward_station, clinician, pharmacy or investigator.")
    name: str | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description="The person who holds the key (required for investigators: recorded "
        "in the ledger with every override they sign).",
    )

    @model_validator(mode="after")
    def _investigator_is_a_person(self) -> SenderConfig:
        if self.role is Role.UNBLINDING:
            raise ValueError(
                f"sender {self.id!r} has role unblinding: unblinding keys are listed in the "
                "signed prescription ([[prescription.unblinding_keys]]), where the pharmacy "
                "vouches for them; remove this sender (docs/trials.md, Blinding)"
            )
        if self.role is Role.INVESTIGATOR and not (self.name or "").strip():
            raise ValueError(
                f"sender {self.id!r} has role investigator but no name: an override must "
                'name a real person; add name = "Dr A. Example"'
            )
        return self

    @field_validator("public_key")
    @classmethod
    def _public_key_parses(cls, value: str) -> str:
        try:
            public_key_from_text(value)
        except KeyFileError as exc:
            raise ValueError(str(exc)) from exc
        return value.strip()


class SecuritySettings(BaseModel):
    """`[security]` section: senders, command time limits, prescription signing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    senders: tuple[SenderConfig, ...] = Field(
        default=(), description="Every sender whose signed commands are considered."
    )
    max_validity_s: int = Field(
        default=HARD_MAX_VALIDITY_S,
        ge=1,
        le=HARD_MAX_VALIDITY_S,
        description="Longest allowed expires_at - issued_at of a command envelope.",
    )
    clock_skew_s: int = Field(
        default=5,
        ge=0,
        le=HARD_MAX_CLOCK_SKEW_S,
        description="Tolerance for the sender's and controller's clocks disagreeing.",
    )
    max_command_bytes: int = Field(
        default=16384,
        ge=512,
        le=HARD_MAX_COMMAND_BYTES,
        description="Command payloads larger than this are refused before parsing.",
    )
    confirm_window_s: int = Field(
        default=60,
        ge=5,
        le=HARD_MAX_CONFIRM_WINDOW_S,
        description="How long a remote start request waits for the bedside CONFIRM.",
    )
    allow_unsigned_alarm_ack: bool = Field(
        default=False,
        description="BENCH ONLY: also apply unsigned alarm acknowledgements published on "
        "<bed>/cmd/ack (anyone on the broker could silence an alarm). Off: only signed "
        "alarm.ack commands count and every unsigned ack is audited as ignored.",
    )
    audit_hmac_key_file: Path | None = Field(
        default=None,
        description="File with the audit log's HMAC key (>= 32 bytes, mode 0600, kept "
        "outside the data directory). Unset: the systemd credential `audit-hmac-key` "
        "if present, else no HMAC (docs/security.md §5).",
    )
    require_signed_prescriptions: bool = Field(
        default=True,
        description="Refuse prescription files without a valid pharmacy signature. "
        "Only the simulator demo turns this off.",
    )

    @field_validator("senders")
    @classmethod
    def _unique_sender_ids(cls, value: tuple[SenderConfig, ...]) -> tuple[SenderConfig, ...]:
        seen: set[str] = set()
        for sender in value:
            if sender.id in seen:
                raise ValueError(f"sender id {sender.id!r} is listed twice; ids must be unique")
            seen.add(sender.id)
        return value


def security_warnings(settings: SecuritySettings, *, remote_commands: bool) -> list[str]:
    """Bench-only settings that weaken a ward installation, one sentence each (for
    `nebuliser config check`; the configuration is still valid)."""
    warnings: list[str] = []
    if settings.allow_unsigned_alarm_ack and remote_commands:
        warnings.append(
            "[security] allow_unsigned_alarm_ack = true: anyone who can publish on the "
            "broker can silence this bed's alarms. BENCH ONLY; on a ward remove it and "
            "acknowledge with signed alarm.ack commands (docs/security.md §3)."
        )
    if not settings.require_signed_prescriptions:
        warnings.append(
            "[security] require_signed_prescriptions = false: an unsigned prescription "
            "is accepted. BENCH ONLY (docs/security.md §4)."
        )
    return warnings
