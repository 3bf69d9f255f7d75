"""The controller's configuration: one TOML file plus `NEBULISER_` environment variables.

Precedence (highest first): command-line flags (applied by the CLI as overrides),
environment variables (`NEBULISER_DEVICE__PORT=/dev/ttyACM0`: sections joined by
a double underscore), the TOML file, then the defaults below. Unknown keys and
unknown `NEBULISER_` variables are errors, never silently ignored: a typo in a
limit must not fall back to a default. Reading the layers is `controller.configfile`
(no pydantic); this module validates them. Relative paths written in the file are
resolved against the file's directory.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from controller.configfile import (
    ConfigError,
    ConfigIssue,
    Layers,
    lookup,
    missing,
    read_layers,
)
from controller.control import socket_mode_problem
from controller.dosing import Prescription
from controller.security import (
    PrescriptionSignatureError,
    SecuritySettings,
    SenderRegistry,
    canonical_json,
    load_verified_prescription_bytes,
    signature_path_for,
)
from controller.telemetry._settings import MqttSettings

__all__ = [
    "ClockSettings",
    "ConfigError",
    "ConfigIssue",
    "ControlSettings",
    "DeviceSettings",
    "LoadedPrescription",
    "NebuliserConfig",
    "PrescriptionSourceError",
    "SecuritySettings",
    "SessionSettings",
    "StorageSettings",
    "load_config",
    "load_config_layers",
    "load_service_prescription",
    "prescription_from_toml_bytes",
]

_SAFE_ID = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeviceSettings(_Section):
    """Which nebuliser head, and where it stands on the ward."""

    port: str = Field(
        default="/dev/nebuliser",
        description="pyserial URL of the head: a device path (/dev/ttyACM0, /dev/nebuliser, "
        "a pty) or socket://host:port for a simulator on TCP.",
    )
    device_id: str = Field(
        default="neb-0001",
        pattern=_SAFE_ID,
        description="Stable id of this bedside controller (letters, digits, _ and -).",
    )
    ward: str = Field(default="ward-a", pattern=_SAFE_ID, description="Ward id (MQTT topic).")
    bed: str = Field(default="bed-01", pattern=_SAFE_ID, description="Bed id (MQTT topic).")
    expected_serial: str | None = Field(
        default=None,
        max_length=12,
        description="If set, refuse any head whose IDENT serial differs (wrong device).",
    )


class StorageSettings(_Section):
    """Where the ledger lives and how much free space it needs."""

    data_dir: Path = Field(
        default=Path("data"),
        description="Directory for ledger, audit log and control socket; a relative path "
        "is relative to the configuration file's directory.",
    )
    free_space_floor_mb: int = Field(
        default=200,
        ge=1,
        description="Below this much free space new sessions are refused and an alarm raised.",
    )
    outbox_budget_mb: int = Field(
        default=64,
        ge=1,
        description="Disk budget of the MQTT outbox; above it the oldest telemetry is dropped "
        "(counted and alarmed). Session, alarm and decision messages are never dropped.",
    )
    ledger_reserve_mb: int = Field(
        default=8,
        ge=1,
        le=1024,
        description="Space held back in <data_dir>/ledger.reserve so that a session's end "
        "record can be written even on a full disk (docs/ledger.md).",
    )
    emergency_free_mb: int | None = Field(
        default=None,
        ge=0,
        description="Below this much free space a running session is stopped (reason "
        "storage_emergency); default: a tenth of free_space_floor_mb. Must not exceed it.",
    )

    @model_validator(mode="after")
    def _emergency_below_floor(self) -> StorageSettings:
        if self.effective_emergency_free_mb > self.free_space_floor_mb:
            raise ValueError(
                f"emergency_free_mb ({self.emergency_free_mb}) must not be above "
                f"free_space_floor_mb ({self.free_space_floor_mb}): the emergency level is "
                "the lower of the two"
            )
        return self

    @property
    def effective_emergency_free_mb(self) -> int:
        """The emergency level in MB (explicit, or a tenth of the floor)."""
        if self.emergency_free_mb is not None:
            return self.emergency_free_mb
        return self.free_space_floor_mb // 10


class SessionSettings(_Section):
    """Host-side session supervision."""

    stop_latency_ms: int = Field(
        default=150,
        ge=20,
        le=1000,
        description="Worst-case time from the host's decision to stop until aerosol is off: "
        "the predictive stop uses delivered + flow × this latency.",
    )
    output_low_pct: int = Field(
        default=60,
        ge=10,
        le=95,
        description="Output-low alarm when measured flow stays below this % of expected.",
    )
    output_low_s: int = Field(default=10, ge=1, le=600, description="…for this many seconds.")
    confirm_timeout_s: int = Field(
        default=60,
        ge=5,
        le=600,
        description="How long a start request waits for the bedside CONFIRM before expiring.",
    )
    progress_sample_s: float = Field(
        default=5.0,
        ge=0.5,
        le=60,
        description="How often a progress sample (delivered, flow, reservoir) enters the ledger.",
    )


class ControlSettings(_Section):
    """The local control interface (a Unix socket; no network port)."""

    socket_path: Path | None = Field(
        default=None,
        description="Unix socket of the local control interface; default <data_dir>/control.sock.",
    )
    socket_mode: int = Field(
        default=0o660,
        ge=0,
        le=0o777,
        description="File permissions of the socket (octal in TOML: 0o660). Any access "
        "for others (e.g. 0o666, 0o777) is refused.",
    )
    bedside_group: str | None = Field(
        default=None,
        description="Group (name or gid) whose members may start and confirm a dose over "
        "the socket: only the bedside terminal account. Unset: only the controller's own "
        "account may.",
    )

    @field_validator("socket_mode")
    @classmethod
    def _safe_socket_mode(cls, mode: int) -> int:
        problem = socket_mode_problem(mode)
        if problem is not None:
            raise ValueError(problem)
        return mode


class ClockSettings(_Section):
    """How the controller decides that its wall clock can be trusted (docs/dosing.md)."""

    mode: Literal["ntp", "system"] = Field(
        default="ntp",
        description="ntp: new starts wait until NTP is synchronised (a Pi has no RTC). "
        "system: trust the system clock (simulator demo and tests only).",
    )
    step_threshold_s: float = Field(
        default=2.0, gt=0, le=3600, description="A wall-clock jump larger than this is a step."
    )
    retrust_after_s: float = Field(
        default=60.0, ge=0, le=86400, description="After a step, trusted again after this long."
    )


class NebuliserConfig(BaseModel):
    """The whole configuration of one bedside controller (load it with `load_config`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: DeviceSettings = DeviceSettings()
    storage: StorageSettings = StorageSettings()
    session: SessionSettings = SessionSettings()
    control: ControlSettings = ControlSettings()
    clock: ClockSettings = ClockSettings()
    prescription: Prescription | None = Field(
        default=None,
        description="The prescription / trial protocol inline (docs/dosing.md); "
        "unsigned, so `nebuliser serve` refuses it unless "
        "[security].require_signed_prescriptions = false.",
    )
    prescription_file: Path | None = Field(
        default=None,
        description="A pharmacy-signed prescription file (its [prescription] table) with "
        "its detached signature FILE.sig next to it (docs/security.md); relative paths "
        "are resolved against the configuration file's directory.",
    )
    mqtt: MqttSettings | None = Field(
        default=None, description="Ward telemetry broker; omit to run without MQTT."
    )
    security: SecuritySettings | None = Field(
        default=None,
        description="Signed remote commands and prescription signing (docs/security.md); "
        "omitted = defaults: signed prescriptions required, no remote commands.",
    )

    @model_validator(mode="before")
    @classmethod
    def _client_id_defaults_to_device_id(cls, data: Any) -> Any:
        """One MQTT identity per bed: without an explicit `[mqtt] client_id` the bed's
        device id is used, so beds on one broker never knock each other off."""
        if not isinstance(data, dict):
            return data
        mqtt, device = data.get("mqtt"), data.get("device")
        if not isinstance(mqtt, dict) or "client_id" in mqtt:
            return data
        device_id = device.get("device_id") if isinstance(device, dict) else None
        if device_id is None:
            device_id = getattr(device, "device_id", DeviceSettings().device_id)
        return {**data, "mqtt": {**mqtt, "client_id": device_id}}

    @model_validator(mode="after")
    def _one_prescription_source(self) -> NebuliserConfig:
        if self.prescription is not None and self.prescription_file is not None:
            raise ValueError(
                "give the prescription either inline ([prescription]) or as a signed file "
                "(prescription_file = ...), not both"
            )
        return self

    @property
    def effective_security(self) -> SecuritySettings:
        """The [security] section, or its defaults when the section is omitted."""
        return self.security if self.security is not None else SecuritySettings()

    @property
    def control_socket(self) -> Path:
        """Path of the control socket."""
        return self.control.socket_path or self.storage.data_dir / "control.sock"


_DECIMAL_LOOKING_MODE = re.compile(r"^[0-7]{3}$")


def _friendlier(key: str, value: Any, error_type: str, message: str) -> str:
    """A message that says what to write, for the mistakes people actually make."""
    if error_type == "extra_forbidden":
        message = "unknown key; remove it or check its spelling against `nebuliser config example`"
        if "." in key and key.endswith("prescription_file"):
            message += "; prescription_file is a top-level key: put it above the first [section]"
        return message
    if error_type.startswith("date") and isinstance(value, str):
        try:
            date.fromisoformat(value)
        except ValueError:
            return message + " (a TOML date: YYYY-MM-DD, without quotes)"
        name = key.rsplit(".", 1)[-1]
        return f"a date is written without quotes in TOML: {name} = {value}"
    decimal_mode = isinstance(value, int) and _DECIMAL_LOOKING_MODE.match(str(value))
    if key.endswith("socket_mode") and decimal_mode and not isinstance(value, bool):
        return f"{value} is read as a decimal number; a file mode is octal: socket_mode = 0o{value}"
    return message


def _issues_from(error: ValidationError, layers: Layers) -> list[ConfigIssue]:
    data = layers.merged
    issues = []
    for item in error.errors(include_url=False):
        loc = tuple(item["loc"])
        key = ".".join(str(part) for part in loc) or "(root)"
        value = item.get("input", missing()) if item["type"] != "missing" else missing()
        if value is missing():
            value = lookup(data, loc)
        message = _friendlier(key, value, item["type"], item["msg"])
        source = layers.source_of(key)
        if source.startswith("env "):
            message += f" [set by {source.removeprefix('env ')}]"
        issues.append(ConfigIssue(key=key, value=value, message=message))
    return issues


def _resolve_paths(model: BaseModel, prefix: str, layers: Layers) -> BaseModel:
    """`model` with every relative Path from the file resolved against the file's directory."""
    updates: dict[str, Any] = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        key = f"{prefix}{name}"
        if isinstance(value, BaseModel):
            resolved = _resolve_paths(value, f"{key}.", layers)
            if resolved is not value:
                updates[name] = resolved
        elif isinstance(value, Path):
            resolved_path = layers.resolve(key, value)
            if resolved_path != value:
                updates[name] = resolved_path
    return model.model_copy(update=updates) if updates else model


def load_config_layers(
    path: Path | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[NebuliserConfig, Layers]:
    """Like `load_config`, and also the layers it was made from (for `config show`)."""
    layers = read_layers(path, overrides=overrides, environ=environ)
    source = str(path) if path is not None else "(defaults)"
    try:
        config = NebuliserConfig.model_validate(layers.merged)
    except ValidationError as exc:
        raise ConfigError(source, _issues_from(exc, layers)) from None
    resolved = _resolve_paths(config, "", layers)
    assert isinstance(resolved, NebuliserConfig)
    return resolved, layers


def load_config(
    path: Path | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> NebuliserConfig:
    """Load and validate a configuration.

    `overrides` are nested dicts from command-line flags and win over everything;
    `environ` defaults to the process environment. Raises ConfigError listing every
    problem (key, bad value, what is allowed, and the variable that set it).
    """
    return load_config_layers(path, overrides=overrides, environ=environ)[0]


class PrescriptionSourceError(Exception):
    """The controller may not use the configured prescription; the message says why and
    how to fix it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadedPrescription:
    """The prescription a controller runs with, and where it came from (for the audit log)."""

    prescription: Prescription
    source: str
    sha256: str
    signed_by: str | None


def prescription_from_toml_bytes(data: bytes, source: Path) -> Prescription:
    """Parse a prescription file's bytes (exactly one [prescription] table).

    Raises PrescriptionSourceError naming `source` and what is wrong.
    """
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PrescriptionSourceError(f"{source}: not valid UTF-8 TOML: {exc}") from None
    table = document.get("prescription")
    if not isinstance(table, dict) or set(document) != {"prescription"}:
        raise PrescriptionSourceError(
            f"{source}: a prescription file holds exactly one [prescription] table (with its "
            "[prescription.lot], [prescription.arm] and [prescription.limits] sub-tables) "
            f"and nothing else; found top-level keys {sorted(document)}"
        )
    try:
        return Prescription.model_validate(table)
    except ValidationError as exc:
        raise PrescriptionSourceError(f"{source}: invalid prescription: {exc}") from None


def load_service_prescription(config: NebuliserConfig) -> LoadedPrescription:
    """The prescription `nebuliser serve` may run with, checked against [security].

    With `require_signed_prescriptions` on (the default, also when [security] is
    omitted) only `prescription_file` with a valid pharmacy signature (`FILE.sig`) is
    accepted; an inline [prescription] is refused. A present but invalid signature is
    always refused. Raises PrescriptionSourceError naming what to fix.
    """
    security = config.effective_security
    require = security.require_signed_prescriptions
    if config.prescription_file is not None:
        path = config.prescription_file
        registry = SenderRegistry.from_settings(security)
        try:
            data = load_verified_prescription_bytes(
                path, pharmacy_keys=registry.pharmacy_keys(), require_signed=require
            )
        except PrescriptionSignatureError as exc:
            raise PrescriptionSourceError(str(exc)) from None
        signed_by = None
        sig_path = signature_path_for(path)
        if sig_path.exists():
            # Verified above; the key id is read again only to name the signer in the record.
            try:
                signed_by = str(json.loads(sig_path.read_bytes()).get("key_id"))
            except (OSError, ValueError, AttributeError):
                signed_by = "(signature file changed after verification)"
        return LoadedPrescription(
            prescription=prescription_from_toml_bytes(data, path),
            source=str(path),
            sha256=hashlib.sha256(data).hexdigest(),
            signed_by=signed_by,
        )
    if config.prescription is None:
        raise PrescriptionSourceError(
            'the configuration has no prescription: set prescription_file = "rx.toml" '
            "(pharmacy-signed, with rx.toml.sig) or, for bench tests only, an inline "
            "[prescription] table (see `nebuliser config example`)"
        )
    if require:
        raise PrescriptionSourceError(
            "the prescription is inline in the configuration and unsigned, but signed "
            "prescriptions are required ([security].require_signed_prescriptions, default "
            "on). Move the [prescription] tables to their own file, have the pharmacy sign "
            "it (`nebuliser prescription sign --key KEY --key-id ID rx.toml`), set "
            'prescription_file = "rx.toml" and list the pharmacy key in '
            '[[security.senders]] (role = "pharmacy"). On a bench with the simulator '
            "only: set [security] require_signed_prescriptions = false "
            "(or NEBULISER_SECURITY__REQUIRE_SIGNED_PRESCRIPTIONS=false)."
        )
    prescription = config.prescription
    return LoadedPrescription(
        prescription=prescription,
        source="inline [prescription] (unsigned)",
        sha256=hashlib.sha256(canonical_json(prescription.model_dump(mode="json"))).hexdigest(),
        signed_by=None,
    )
