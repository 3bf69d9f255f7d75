"""A ward station for simulator benches (`nebuliser demo`): one throw-away Ed25519
key, the `[security]` section that makes the bench controllers trust it, and a
signed `alarm.ack` sent over MQTT (alarm acknowledgements are signed commands;
docs/security.md §3). Never for a ward: the key lives only in this process."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controller.benchconfig import BENCH_SECURITY
from controller.security import (
    AlarmAckBody,
    CommandName,
    command_topic,
    public_key_to_text,
    reply_topic,
    sign_command,
)
from controller.telemetry import MqttSettings, mqtt_client

__all__ = ["BenchStation"]


@dataclass(kw_only=True)
class BenchStation:
    """The bench's ward station: signs commands with a key made for this run."""

    sender_id: str = "ward-station"
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    counter: int = 0

    def security_toml(self) -> str:
        """`[security]` for a bench controller: the bench defaults plus this station."""
        return (
            f'{BENCH_SECURITY}[[security.senders]]\nid = "{self.sender_id}"\n'
            f'public_key = "{public_key_to_text(self.key.public_key())}"\n'
            'role = "ward_station"\n'
        )

    async def acknowledge(
        self,
        settings: MqttSettings,
        *,
        ward: str,
        bed: str,
        device_id: str,
        alarm_code: str,
        person: str,
        timeout_s: float = 5.0,
    ) -> dict[str, Any]:
        """Send a signed `alarm.ack` in `person`'s name; return the bed's reply."""
        self.counter += 1
        payload = sign_command(
            key=self.key,
            sender_id=self.sender_id,
            device_id=device_id,
            counter=self.counter,
            command=CommandName.ALARM_ACK,
            body=AlarmAckBody(alarm_code=alarm_code, acknowledged_by=person),
            issued_at_ms=int(time.time() * 1000),
            validity_s=30,
        )
        command_id = json.loads(payload)["command_id"]
        root = settings.root_topic
        async with mqtt_client(settings, client_id=f"{self.sender_id}-{bed}") as client:
            await client.subscribe(reply_topic(ward=ward, bed=bed, root=root), qos=1)
            await client.publish(command_topic(ward=ward, bed=bed, root=root), payload, qos=1)
            async with asyncio.timeout(timeout_s):
                while True:
                    message = await anext(aiter(client.messages))
                    reply: dict[str, Any] = json.loads(message.payload)
                    if reply.get("command_id") == command_id:
                        return reply
