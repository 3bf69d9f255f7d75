"""Monitor-side commands over MQTT: alarm acknowledgement and backfill requests."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import aiomqtt

from controller.telemetry._builders import encode_alarm_ack, encode_backfill_request
from controller.telemetry._monitor import BackfillAsk
from controller.telemetry._topics import BedTopics

__all__ = ["publish_alarm_ack", "publish_backfill_ask"]


async def publish_alarm_ack(
    client: aiomqtt.Client,
    *,
    root_topic: str,
    ward: str,
    bed: str,
    device_id: str,
    alarm_code: str,
    sender: str,
) -> str:
    """Publish a (provisional, unsigned) alarm acknowledgement; returns its command id.

    The controller applies it and publishes the alarm as acknowledged, which is how
    every monitor (this one included) learns that it took effect.
    """
    command_id = uuid.uuid4().hex
    topics = BedTopics(root=root_topic, ward=ward, bed=bed)
    await client.publish(
        topics.cmd_ack,
        encode_alarm_ack(
            command_id=command_id,
            sender=sender,
            device_id=device_id,
            alarm_code=alarm_code,
            utc=datetime.now(UTC),
        ),
        qos=1,
    )
    return command_id


async def publish_backfill_ask(
    client: aiomqtt.Client, *, root_topic: str, ask: BackfillAsk, requester: str
) -> None:
    """Ask a controller to re-send a missing seq range (answer on backfill/reply)."""
    topics = BedTopics(root=root_topic, ward=ask.ward, bed=ask.bed)
    await client.publish(
        topics.backfill_request,
        encode_backfill_request(
            request_id=uuid.uuid4().hex,
            requester=requester,
            device_id=ask.device_id,
            from_seq=ask.from_seq,
            to_seq=ask.to_seq,
            utc=datetime.now(UTC),
        ),
        qos=1,
    )
