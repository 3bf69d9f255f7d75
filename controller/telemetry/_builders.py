"""Pure message builders: the controller calls these to get an `OutboxEntry` whose
`build(seq)` returns the payload bytes once the ledger has assigned the seq."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from controller.telemetry._schemas import (
    DEVICE_SCHEMAS,
    AlarmAckCommand,
    BackfillRequest,
    PresenceMessage,
)
from controller.telemetry._topics import SCHEMA_ROUTES, BedTopics

__all__ = [
    "DeviceIdentity",
    "OutboxEntry",
    "encode_alarm_ack",
    "encode_backfill_request",
    "encode_presence",
    "mark_historical",
    "mark_republished",
    "outbox_entry",
]

_PLACEHOLDER_SEQ = 1


@dataclass(frozen=True, kw_only=True)
class DeviceIdentity:
    """Who is publishing: the device, where it stands, and this boot of the controller."""

    device_id: str
    ward: str
    bed: str
    boot_id: str

    def topics(self, root: str) -> BedTopics:
        """The topic tree of this bed under `root`."""
        return BedTopics(root=root, ward=self.ward, bed=self.bed)


@dataclass(frozen=True, kw_only=True)
class OutboxEntry:
    """Everything the ledger needs to insert one outbox row.

    `build(seq)` returns the final payload for the seq the ledger assigned; it is
    pure and cannot fail for a valid seq (the fields were validated when the entry
    was made, before any transaction started).
    """

    kind: str
    topic: str
    qos: int
    retain: bool
    build: Callable[[int], bytes]


def outbox_entry(
    identity: DeviceIdentity,
    *,
    root_topic: str,
    schema: str,
    utc: datetime,
    **fields: Any,
) -> OutboxEntry:
    """Validate a device message now and return its outbox entry.

    `schema` is a device schema name such as `"nebuliser.telemetry"`; `fields` are
    that message's own fields (everything except the envelope). Raises
    `pydantic.ValidationError` naming the bad field, or KeyError for an unknown schema.
    """
    try:
        model = DEVICE_SCHEMAS[schema]
    except KeyError:
        known = ", ".join(sorted(DEVICE_SCHEMAS))
        raise KeyError(f"unknown device schema {schema!r}; use one of: {known}") from None
    route = SCHEMA_ROUTES[schema]
    template = model.model_validate(
        {
            "device_id": identity.device_id,
            "ward": identity.ward,
            "bed": identity.bed,
            "boot_id": identity.boot_id,
            "seq": _PLACEHOLDER_SEQ,
            "utc": utc,
            **fields,
        }
    )

    def build(seq: int) -> bytes:
        if seq < 1:
            raise ValueError(f"outbox seq must be >= 1, got {seq}")
        message = template.model_copy(update={"seq": seq})
        return message.model_dump_json(by_alias=True).encode()

    return OutboxEntry(
        kind=route.kind,
        topic=identity.topics(root_topic).topic(route.suffix),
        qos=route.qos,
        retain=route.retain,
        build=build,
    )


def mark_historical(payload: bytes) -> bytes:
    """Return the payload with `historical` set to true (unchanged if it is not a
    JSON object, which a device message always is)."""
    # Fast path for the builders' own compact JSON, where the envelope's `historical`
    # is the first one (before any embedded message): a drain of an hour of backlog
    # rewrites thousands of payloads, and a JSON round trip each costs more than the
    # publish itself.
    if payload.startswith(b'{"schema":'):
        head, found, tail = payload.partition(b'"historical":false')
        if found and b'"historical"' not in head:
            return head + b'"historical":true' + tail
    try:
        body = json.loads(payload)
    except ValueError:
        return payload
    if not isinstance(body, dict) or body.get("historical") is True:
        return payload
    body["historical"] = True
    return json.dumps(body, separators=(",", ":")).encode()


def mark_republished(payload: bytes) -> bytes:
    """Return the payload flagged as a republished retained message (`historical`
    and `republished` both true; its seq unchanged)."""
    try:
        body = json.loads(payload)
    except ValueError:
        return payload
    if not isinstance(body, dict):
        return payload
    body["historical"] = True
    body["republished"] = True
    return json.dumps(body, separators=(",", ":")).encode()


def encode_presence(
    identity: DeviceIdentity,
    *,
    online: bool,
    reason: str,
    utc: datetime | None,
    telemetry_hz: int,
) -> bytes:
    """Payload of the retained presence message (and of the Last Will, with `utc`
    None: the broker publishes it at an unknown later time)."""
    return (
        PresenceMessage.model_validate(
            {
                "device_id": identity.device_id,
                "ward": identity.ward,
                "bed": identity.bed,
                "boot_id": identity.boot_id,
                "online": online,
                "reason": reason,
                "utc": utc,
                "telemetry_hz": telemetry_hz,
            }
        )
        .model_dump_json(by_alias=True)
        .encode()
    )


def encode_backfill_request(
    *,
    request_id: str,
    requester: str,
    device_id: str,
    from_seq: int,
    to_seq: int,
    utc: datetime,
) -> bytes:
    """Payload a monitor publishes on `<bed>/backfill/request`."""
    return (
        BackfillRequest(
            request_id=request_id,
            requester=requester,
            device_id=device_id,
            from_seq=from_seq,
            to_seq=to_seq,
            utc=utc,
        )
        .model_dump_json(by_alias=True)
        .encode()
    )


def encode_alarm_ack(
    *, command_id: str, sender: str, device_id: str, alarm_code: str, utc: datetime
) -> bytes:
    """Payload a monitor publishes on `<bed>/cmd/ack` (provisional, unsigned)."""
    return (
        AlarmAckCommand(
            command_id=command_id,
            sender=sender,
            device_id=device_id,
            alarm_code=alarm_code,
            utc=utc,
        )
        .model_dump_json(by_alias=True)
        .encode()
    )
