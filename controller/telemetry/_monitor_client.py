"""The ward monitor's MQTT side: subscribe to a ward, feed the `WardModel`, ask
for backfill of gaps, send alarm acknowledgements. Reconnects with back-off.

With a `signer` every acknowledgement is a signed `alarm.ack` command on
`<bed>/command` (the bed answers on `<bed>/command/reply`, which the ward
subscription already covers); without one, the provisional unsigned `cmd/ack`."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiomqtt

from controller.logging import get_logger
from controller.security._topics import command_topic
from controller.telemetry._backoff import ReconnectBackoff
from controller.telemetry._monitor import WardModel
from controller.telemetry._publisher import mqtt_client
from controller.telemetry._remote import publish_alarm_ack, publish_backfill_ask
from controller.telemetry._settings import MqttSettings, require_safe_level

__all__ = ["AckRequest", "AckSigner", "EventSink", "WardMonitor"]

_log = get_logger(__name__)

EventSink = Callable[[list[dict[str, Any]]], None]


@dataclass(frozen=True, kw_only=True)
class AckRequest:
    """An acknowledgement the operator asked for."""

    ward: str
    bed: str
    device_id: str
    alarm_code: str
    #: The signed-in person acknowledging (carried in the signed command).
    operator: str | None = None
    #: Echoed by the bed in its reply; set by the caller to match the reply.
    command_id: str | None = None


#: Builds the signed envelope for an acknowledgement (blocking: it stores the
#: sender's counter durably, so it runs in a worker thread).
AckSigner = Callable[[AckRequest], bytes]


class WardMonitor:
    """Runs until `request_stop()`; `model` is readable at any time."""

    def __init__(
        self,
        *,
        settings: MqttSettings,
        model: WardModel,
        sender: str,
        ward: str | None = None,
        on_events: EventSink | None = None,
        clock: Callable[[], float] = time.monotonic,
        backfill_interval_s: float = 0.5,
        signer: AckSigner | None = None,
    ) -> None:
        self._settings = settings
        self.model = model
        self._sender = require_safe_level("sender", sender)
        # One ward, several (comma-separated: one subscription each), or every ward.
        self._wards = (
            [require_safe_level("ward", w.strip()) for w in ward.split(",")]
            if ward is not None
            else []
        )
        self._on_events = on_events
        self._clock = clock
        self._backfill_interval_s = backfill_interval_s
        self._signer = signer
        self._acks: asyncio.Queue[AckRequest] = asyncio.Queue()
        self._stop = asyncio.Event()
        self.connected = asyncio.Event()
        self.acks_sent = 0

    @property
    def subscriptions(self) -> list[str]:
        """The topic filters: one per ward, or every ward under the root."""
        root = self._settings.root_topic
        return [f"{root}/{ward}/+/#" for ward in self._wards] or [f"{root}/+/+/#"]

    def acknowledge(self, request: AckRequest) -> None:
        """Queue an alarm acknowledgement (sent when connected)."""
        self._acks.put_nowait(request)

    def pending_acks(self) -> int:
        """Acknowledgements queued and not yet published."""
        return self._acks.qsize()

    def request_stop(self) -> None:
        """Make `run()` return."""
        self._stop.set()

    async def run(self) -> None:
        """Subscribe, feed the model, ask for backfill; reconnect on failure."""
        backoff = ReconnectBackoff(
            initial_s=self._settings.reconnect_initial_s, max_s=self._settings.reconnect_max_s
        )
        client_id = f"{self._settings.client_id}-mon-{uuid.uuid4().hex[:8]}"
        while not self._stop.is_set():
            try:
                async with mqtt_client(self._settings, client_id=client_id) as client:
                    backoff.reset()
                    for topic_filter in self.subscriptions:
                        await client.subscribe(topic_filter, qos=1)
                    self.connected.set()
                    await self._serve(client)
                    return
            except* aiomqtt.MqttError as group:
                _log.warning("monitor_disconnected", error=str(group.exceptions[0]))
            finally:
                self.connected.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=backoff.next_wait_s())

    async def _serve(self, client: aiomqtt.Client) -> None:
        async with asyncio.TaskGroup() as tasks:
            reader = tasks.create_task(self._read(client))
            sender = tasks.create_task(self._send(client))
            await self._stop.wait()
            reader.cancel()
            sender.cancel()

    async def _read(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            events = self.model.feed(
                str(message.topic), payload, now_s=self._clock(), retained=bool(message.retain)
            )
            if events and self._on_events is not None:
                self._on_events(events)

    async def _send(self, client: aiomqtt.Client) -> None:
        root = self._settings.root_topic
        while True:
            with contextlib.suppress(TimeoutError):
                request = await asyncio.wait_for(
                    self._acks.get(), timeout=self._backfill_interval_s
                )
                if self._signer is not None:
                    envelope = await asyncio.to_thread(self._signer, request)
                    topic = command_topic(ward=request.ward, bed=request.bed, root=root)
                    await client.publish(topic, envelope, qos=1, retain=False)
                else:
                    await publish_alarm_ack(
                        client,
                        root_topic=root,
                        ward=request.ward,
                        bed=request.bed,
                        device_id=request.device_id,
                        alarm_code=request.alarm_code,
                        sender=self._sender,
                    )
                self.acks_sent += 1
            for ask in self.model.backfill_asks(now_s=self._clock()):
                await publish_backfill_ask(client, root_topic=root, ask=ask, requester=self._sender)
