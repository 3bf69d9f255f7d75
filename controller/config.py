"""The controller's configuration: one TOML file plus `NEBULISER_` environment variables.

Precedence (highest first): command-line flags (applied by the CLI as overrides),
environment variables (`NEBULISER_DEVICE__PORT=/dev/ttyACM0`: sections joined by
a double underscore), the TOML file, then the defaults below. Unknown keys are
errors, never silently ignored: a typo in a limit must not fall back to a default.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

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
        default=Path("data"), description="Directory for ledger, audit log and control socket."
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


class NebuliserConfig(BaseSettings):
    """The whole configuration of one bedside controller."""

    model_config = SettingsConfigDict(
        env_prefix="NEBULISER_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

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

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Highest first: command-line overrides (init kwargs), environment, the TOML file.
        return (init_settings, env_settings, _FileSource(settings_cls))


_FILE_DATA: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar(
    "nebuliser_config_file_data", default=None
)


class _FileSource(PydanticBaseSettingsSource):
    """The parsed TOML file handed over by `load_config` (already read and decoded)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return (_FILE_DATA.get() or {}).get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_FILE_DATA.get() or {})


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in a configuration: the dotted key, the bad value, and what is allowed."""

    key: str
    value: Any
    message: str

    def __str__(self) -> str:
        shown = "(missing)" if self.value is _MISSING else repr(self.value)
        return f"{self.key}: {self.message} (got {shown})"


_MISSING: Any = object()


class ConfigError(Exception):
    """The configuration cannot be used; `issues` lists every problem."""

    def __init__(self, source: str, issues: list[ConfigIssue]) -> None:
        self.source = source
        self.issues = issues
        lines = "\n".join(f"  - {issue}" for issue in issues)
        super().__init__(f"{source}: {len(issues)} problem(s) in the configuration:\n{lines}")


def _deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _lookup(data: Mapping[str, Any], loc: tuple[int | str, ...]) -> Any:
    node: Any = data
    for part in loc:
        in_mapping = isinstance(node, Mapping) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and part < len(node)
        if in_mapping or in_list:
            node = node[part]
        else:
            return _MISSING
    return node


def _issues_from(error: ValidationError, data: Mapping[str, Any]) -> list[ConfigIssue]:
    issues = []
    for item in error.errors(include_url=False):
        loc = tuple(item["loc"])
        key = ".".join(str(part) for part in loc) or "(root)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = (
                "unknown key; remove it or check its spelling against `nebuliser config example`"
            )
            if len(loc) > 1 and loc[-1] == "prescription_file":
                message += (
                    "; prescription_file is a top-level key: put it above the first [section]"
                )
        value = item.get("input", _MISSING) if item["type"] != "missing" else _MISSING
        if value is _MISSING:
            value = _lookup(data, loc)
        issues.append(ConfigIssue(key=key, value=value, message=message))
    return issues


def load_config(
    path: Path | None = None, *, overrides: Mapping[str, Any] | None = None
) -> NebuliserConfig:
    """Load and validate a configuration.

    `overrides` are nested dicts from command-line flags and win over everything.
    Raises ConfigError listing every problem (key, bad value, what is allowed).
    """
    source = str(path) if path is not None else "(defaults)"
    file_data: dict[str, Any] = {}
    if path is not None:
        try:
            file_data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(
                source, [ConfigIssue("(file)", str(path), "file not found; pass --config FILE")]
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(
                source, [ConfigIssue("(file)", str(path), f"not valid TOML: {exc}")]
            ) from None
        except UnicodeDecodeError as exc:
            raise ConfigError(
                source,
                [
                    ConfigIssue(
                        "(file)",
                        str(path),
                        f"not UTF-8 text ({exc.reason} at byte "
                        f"{exc.start}); save the file as UTF-8",
                    )
                ],
            ) from None
    token = _FILE_DATA.set(file_data)
    try:
        config = NebuliserConfig(**(overrides or {}))
    except ValidationError as exc:
        raise ConfigError(
            source, _issues_from(exc, _deep_merge(file_data, overrides or {}))
        ) from None
    finally:
        _FILE_DATA.reset(token)
    rx_file = config.prescription_file
    if path is not None and rx_file is not None and not rx_file.is_absolute():
        config = config.model_copy(update={"prescription_file": path.parent / rx_file})
    return config


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
