"""Connection settings for the ward MQTT broker (a pydantic model, loaded by the
controller's configuration with the rest of its settings)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from controller.telemetry._backoff import DEFAULT_RECONNECT_INITIAL_S, DEFAULT_RECONNECT_MAX_S

__all__ = ["MqttSettings", "TlsSettings", "require_safe_level"]

# Characters that are safe in an MQTT client id, a topic level and a file name.
_SAFE_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# A topic root: safe levels separated by '/', no wildcards, no leading/trailing '/'.
_SAFE_ROOT = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")


class TlsSettings(BaseModel):
    """TLS to the broker: the CA that signed the broker's certificate and, for
    mutual TLS, this controller's own certificate and key (PEM files)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> TlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError(
                "tls: give both cert_file and key_file (mutual TLS) or neither (server-only TLS)"
            )
        return self


class MqttSettings(BaseModel):
    """Where and how the controller (or a monitor) talks to the ward broker."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    tls: TlsSettings | None = None
    username: str | None = None
    password: SecretStr | None = None
    client_id: str = "nebuliser"
    keepalive_s: Annotated[int, Field(ge=1, le=3600)] = 10
    root_topic: str = "nebuliser/v1"
    telemetry_hz: Annotated[int, Field(ge=1, le=10)] = 1
    # Reconnect back-off (controller.telemetry.ReconnectBackoff): first wait and the
    # cap in seconds; every wait is jittered down to half its step.
    reconnect_initial_s: Annotated[float, Field(gt=0, le=60)] = DEFAULT_RECONNECT_INITIAL_S
    reconnect_max_s: Annotated[float, Field(gt=0, le=300)] = DEFAULT_RECONNECT_MAX_S
    # How long to wait for a PUBACK before treating the connection as broken.
    publish_timeout_s: Annotated[float, Field(gt=0, le=120)] = 10.0
    # At `serve` start-up: how long to wait for the bed's retained ledger anchor
    # (docs/ledger.md, "Continuity"); past it the start-up goes on with the local anchors.
    ward_anchor_timeout_s: Annotated[float, Field(gt=0, le=30)] = 3.0

    @field_validator("client_id")
    @classmethod
    def _safe_client_id(cls, client_id: str) -> str:
        if not _SAFE_ID.match(client_id):
            raise ValueError(
                f"client_id {client_id!r} is not allowed: use 1-64 characters from "
                "A-Z a-z 0-9 _ . - (no spaces, '/', '+' or '#')"
            )
        return client_id

    @field_validator("root_topic")
    @classmethod
    def _safe_root(cls, root_topic: str) -> str:
        if not _SAFE_ROOT.match(root_topic):
            raise ValueError(
                f"root_topic {root_topic!r} is not allowed: use levels of A-Z a-z 0-9 _ . - "
                "separated by '/', without wildcards or a leading/trailing '/', "
                "e.g. 'nebuliser/v1'"
            )
        return root_topic


def require_safe_level(name: str, value: str) -> str:
    """Return `value` if it is safe as one MQTT topic level, else raise ValueError."""
    if not _SAFE_ID.match(value):
        raise ValueError(
            f"{name} {value!r} cannot be used in a topic: use 1-64 characters from "
            "A-Z a-z 0-9 _ . - (no spaces, '/', '+' or '#')"
        )
    return value
