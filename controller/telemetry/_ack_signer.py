"""Signing alarm acknowledgements for a ward station or a terminal monitor: the
existing command envelope (`controller.security.sign_command`), with the person
acknowledging in `AlarmAckBody.acknowledged_by`."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from controller.cli.command import next_counter  # the one durable counter helper
from controller.security import AlarmAckBody, CommandName, load_private_key, sign_command
from controller.telemetry._monitor_client import AckRequest

__all__ = ["AckSigningKey"]


@dataclass(kw_only=True)
class AckSigningKey:
    """Signs `alarm.ack` commands with a ward station's Ed25519 key (the station
    page and the terminal monitor use the same sender key and counter file format).

    `counter_file` holds the last counter used (one file per sender key, stored
    durably before the command leaves, so a restart never reuses one).
    """

    key_file: Path
    sender_id: str
    counter_file: Path
    validity_s: int = 30

    def __post_init__(self) -> None:
        self._key = load_private_key(self.key_file)  # fails at start-up, not at the first ack

    def __call__(self, request: AckRequest) -> bytes:
        """The signed envelope for one acknowledgement (blocking: fsyncs the counter)."""
        if not request.operator:
            raise ValueError(
                "an alarm acknowledgement must name the person acknowledging "
                "(sign in at the station, or `monitor --operator NAME`)"
            )
        return sign_command(
            key=self._key,
            sender_id=self.sender_id,
            device_id=request.device_id,
            counter=next_counter(self.counter_file),
            command=CommandName.ALARM_ACK,
            body=AlarmAckBody(alarm_code=request.alarm_code, acknowledged_by=request.operator),
            issued_at_ms=int(time.time() * 1000),
            validity_s=self.validity_s,
            command_id=request.command_id,
        )
