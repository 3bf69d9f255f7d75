"""Helpers shared by the telemetry tests."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # no stubs in the dev group

from controller.telemetry import DeviceIdentity, MqttSettings, OutboxEntry, outbox_entry
from tests.support.mosquitto import MosquittoBroker

ROOT = "nebuliser/v1"
IDENTITY = DeviceIdentity(device_id="MN1-0042", ward="W7", bed="B03", boot_id="boot-a")
SCHEMA_DIR = Path(__file__).resolve().parents[2] / "docs" / "schemas"


def settings_for(broker: MosquittoBroker, *, client_id: str = "ctl-B03") -> MqttSettings:
    """Fast-reconnecting settings pointing at the test broker."""
    return MqttSettings(
        host=broker.host,
        port=broker.port,
        client_id=client_id,
        keepalive_s=2,
        reconnect_initial_s=0.05,
        reconnect_max_s=0.5,
        publish_timeout_s=5.0,
    )


def telemetry(n: int, *, identity: DeviceIdentity = IDENTITY) -> OutboxEntry:
    """A telemetry entry whose delivered volume is `n` (to recognise it later)."""
    return outbox_entry(
        identity,
        root_topic=ROOT,
        schema="nebuliser.telemetry",
        utc=datetime.now(UTC),
        session_id=1,
        running=True,
        delivered_ul=n,
        cap_ul=1_000_000,
        flow_ul_min=300,
        reservoir_ul=5000,
        temperature_cC=3650,
        faults=[],
        link_quality_pct=98,
    )


@cache
def _validators() -> dict[str, jsonschema.Draft202012Validator]:
    validators = {}
    for path in SCHEMA_DIR.glob("nebuliser.*.json"):
        schema = json.loads(path.read_text())
        validators[path.name] = jsonschema.Draft202012Validator(schema)
    return validators


def validate_payload(payload: bytes) -> dict[str, Any]:
    """Validate a published payload against its exported JSON Schema; return it."""
    body = json.loads(payload)
    assert isinstance(body, dict), payload
    name = f"{body['schema']}.v{body['schema_version']}.json"
    validator = _validators().get(name)
    assert validator is not None, f"no exported schema {name} in {SCHEMA_DIR}"
    validator.validate(body)
    return body


@dataclass(frozen=True)
class Received:
    """One message a test subscriber saw."""

    topic: str
    payload: bytes
    retain: bool

    @property
    def body(self) -> dict[str, Any]:
        """The decoded JSON payload."""
        value = json.loads(self.payload)
        assert isinstance(value, dict)
        return value
