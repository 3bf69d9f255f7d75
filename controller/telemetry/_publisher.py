"""Store-and-forward publisher: drains the outbox to the broker, QoS 1, deleting a
row only after its PUBACK; listens for backfill requests (and, for integrators that
pass `on_alarm_ack`, unsigned alarm acks).

One connection per bed: the publisher owns the bed's MQTT connection (client id,
Last Will, reconnect back-off). Given a `BedConnection`, it lends that connection to
guests — the controller's signed-command intake subscribes and publishes on it —
instead of each part opening its own (on the hardened broker a certificate is one
client id, so a second connection would take the first one over).

Historical policy (documented in docs/mqtt.md): on every (re)connect the highest
seq already waiting is the *backlog ceiling*; every row at or below it was queued
while no broker took it and is published with `historical: true`. A row above it
is live, unless it waited longer than `historical_age_s` (then historical too).
Each drain step publishes all waiting live rows first (up to `live_batch`), then at
most `backlog_batch` backlog rows, so a long backlog never starves live telemetry.
A retained topic is published with retain only when its seq is the newest seen on
that topic, so replaying an old `state` never overwrites the current one.

Republish (exact state after any outage): right after every (re)connect, before the
backlog, the newest known message of every retained topic (`state`, `session`,
`alarms/active`) is published again with retain, with its ORIGINAL seq and flagged
`"historical": true, "republished": true`. A broker restarted without persistence
therefore has the bed's full retained picture within one round trip of the
controller's reconnect; subscribers that saw that seq before drop it as a duplicate.

No polling: the drain loop sleeps on an event that `notify()` sets (the controller
calls it after every commit that carries a message).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiomqtt
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import ValidationError

from controller.logging import get_logger
from controller.telemetry._archive import ArchivePruner, SentArchive
from controller.telemetry._backfill import build_backfill_reply
from controller.telemetry._backoff import ReconnectBackoff
from controller.telemetry._builders import (
    DeviceIdentity,
    encode_presence,
    mark_historical,
    mark_republished,
)
from controller.telemetry._connection import BedConnection
from controller.telemetry._outbox import (
    OutboxReader,
    OutboxRowLike,
    ReplyAppender,
    Settler,
    utc_text,
)
from controller.telemetry._schemas import AlarmAckCommand, BackfillRequest
from controller.telemetry._settings import MqttSettings

__all__ = [
    "AlarmAckHandler",
    "OutboxPublisher",
    "PublishRefusedError",
    "PublisherStats",
    "mqtt_client",
]

_log = get_logger(__name__)

AlarmAckHandler = Callable[[AlarmAckCommand], Awaitable[None]]


def _utc_now() -> datetime:
    return datetime.now(UTC)


def mqtt_client(
    settings: MqttSettings,
    *,
    client_id: str,
    will: aiomqtt.Will | None = None,
    queue_type: type[asyncio.Queue[aiomqtt.Message]] | None = None,
) -> aiomqtt.Client:
    """An aiomqtt client (MQTT v5) configured from settings; not yet connected.

    `queue_type` replaces aiomqtt's incoming-message queue (the command intake
    passes one that screens each message as it arrives)."""
    tls_params = None
    if settings.tls is not None:
        tls_params = aiomqtt.TLSParameters(
            ca_certs=str(settings.tls.ca_file),
            certfile=str(settings.tls.cert_file) if settings.tls.cert_file else None,
            keyfile=str(settings.tls.key_file) if settings.tls.key_file else None,
            cert_reqs=ssl.CERT_REQUIRED,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    return aiomqtt.Client(
        settings.host,
        settings.port,
        username=settings.username,
        password=settings.password.get_secret_value() if settings.password else None,
        identifier=client_id,
        protocol=aiomqtt.ProtocolVersion.V5,
        will=will,
        keepalive=settings.keepalive_s,
        timeout=settings.publish_timeout_s,
        tls_params=tls_params,
        queue_type=queue_type,
    )


@dataclass(kw_only=True)
class PublisherStats:
    """Counters a health page or a test can read."""

    connected: bool = False
    connections: int = 0
    # Connection attempts or connections that ended in an error (back-off waits).
    connection_failures: int = 0
    published: int = 0
    published_historical: int = 0
    rejected_commands: int = 0
    backfill_replies: int = 0
    # PUBACKs with an MQTT v5 failure reason (e.g. "Not authorized" from an ACL).
    refused_publishes: int = 0
    last_refusal: str = ""
    # Retained messages published again after a (re)connect.
    republished: int = 0


class PublishRefusedError(aiomqtt.MqttError):
    """The broker answered a PUBACK with a failure reason code."""


class OutboxPublisher:
    """Publishes outbox rows in seq order; see the module docstring for the policy.

    Run it with `await publisher.run()` inside the runtime's TaskGroup; call
    `notify()` after committing outbox rows (there is no idle poll unless
    `poll_interval_s` is given) and `request_stop()` for a graceful shutdown
    (presence goes offline first).

    `settle` takes acknowledged rows over (archive, then delete from the outbox). The
    controller passes one that runs on the ledger's writer thread; without it the
    publisher does it itself: `archive.record`, a bounded `archive.prune` at most
    once a minute, then `outbox.delete`.
    """

    def __init__(
        self,
        *,
        settings: MqttSettings,
        identity: DeviceIdentity,
        outbox: OutboxReader,
        archive: SentArchive | None = None,
        append_reply: ReplyAppender | None = None,
        on_alarm_ack: AlarmAckHandler | None = None,
        settle: Settler | None = None,
        clock: Callable[[], datetime] = _utc_now,
        historical_age_s: float = 10.0,
        live_batch: int = 100,
        backlog_batch: int = 200,
        poll_interval_s: float | None = None,
        archive_retention_s: float = 24 * 3600.0,
        connection: BedConnection | None = None,
    ) -> None:
        if live_batch < 1 or backlog_batch < 1:
            raise ValueError("live_batch and backlog_batch must be >= 1")
        self._settings = settings
        self._identity = identity
        self._topics = identity.topics(settings.root_topic)
        self._outbox = outbox
        self._archive = archive
        self._append_reply = append_reply
        self._on_alarm_ack = on_alarm_ack
        self._settle_rows: Settler = settle if settle is not None else self._settle_here
        self._connection = connection
        self._clock = clock
        self._historical_age_s = historical_age_s
        self._live_batch = live_batch
        self._backlog_batch = backlog_batch
        self._poll_interval_s = poll_interval_s
        self._pruner = ArchivePruner(retention_s=archive_retention_s)
        self._backoff = ReconnectBackoff(
            initial_s=settings.reconnect_initial_s, max_s=settings.reconnect_max_s
        )
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._retained_high_seq: dict[str, int] = {}
        self._connected = asyncio.Event()
        self.stats = PublisherStats()

    async def wait_connected(self) -> None:
        """Return once the publisher is connected to the broker."""
        await self._connected.wait()

    def notify(self) -> None:
        """Wake the drain loop now (new outbox rows were committed)."""
        self._wake.set()

    def request_stop(self) -> None:
        """Ask `run()` to publish presence offline, disconnect and return."""
        self._stop.set()
        self._wake.set()

    async def run(self) -> None:
        """Connect, drain, reconnect with jittered exponential back-off
        (`ReconnectBackoff`); returns after `request_stop()`. Never gives up while the
        broker is unreachable."""
        while not self._stop.is_set():
            try:
                await self._one_connection()
            except aiomqtt.MqttError as exc:
                self.stats.connection_failures += 1
                retry_in_s = self._backoff.next_wait_s()
                _log.warning("mqtt_disconnected", error=str(exc), retry_in_s=round(retry_in_s, 2))
            else:
                retry_in_s = self._backoff.initial_s
            finally:
                self.stats.connected = False
                self._connected.clear()
            if self._stop.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=retry_in_s)

    def _presence(self, *, online: bool, reason: str) -> bytes:
        return encode_presence(
            self._identity,
            online=online,
            reason=reason,
            # The Will's time would be the connect time, not when the broker sends it.
            utc=None if reason == "last_will" else self._clock(),
            telemetry_hz=self._settings.telemetry_hz,
        )

    async def _one_connection(self) -> None:
        will = aiomqtt.Will(
            topic=self._topics.presence,
            payload=self._presence(online=False, reason="last_will"),
            qos=1,
            retain=True,
        )
        shared = self._connection
        client = mqtt_client(
            self._settings,
            client_id=self._settings.client_id,
            will=will,
            queue_type=None if shared is None else shared.queue_type(),
        )
        # A whole drain step is in flight at once; that is expected, not a warning.
        client.pending_calls_threshold = self._live_batch + self._backlog_batch + 10
        self._watch_refusals(client)
        async with client:
            self.stats.connected = True
            self._connected.set()
            self.stats.connections += 1
            # A connection that came up resets the back-off, whatever breaks it later.
            self._backoff.reset()
            ceiling, pending_retained = self._backlog_ceiling()
            _log.info("mqtt_connected", backlog_ceiling_seq=ceiling)
            await client.publish(
                self._topics.presence,
                self._presence(online=True, reason="connected"),
                qos=1,
                retain=True,
            )
            await self._republish_retained(client, pending_retained)
            await client.subscribe(self._topics.backfill_request, qos=1)
            if self._on_alarm_ack is not None:
                await client.subscribe(self._topics.cmd_ack, qos=1)
            if shared is not None:
                shared.opened(client)  # guests subscribe and publish on it from now on
            try:
                async with asyncio.TaskGroup() as tasks:
                    intake = tasks.create_task(self._intake(client))
                    await self._drain(client, ceiling)
                    # Graceful stop: say so before the Last Will could.
                    await client.publish(
                        self._topics.presence,
                        self._presence(online=False, reason="shutdown"),
                        qos=1,
                        retain=True,
                    )
                    intake.cancel()
            except* aiomqtt.MqttError as group:
                # One broken connection shows up in both tasks; report it once.
                raise group.exceptions[0] from None
            finally:
                if shared is not None:
                    shared.closed()

    def _watch_refusals(self, client: aiomqtt.Client) -> None:
        # aiomqtt 2.x resolves publish() on any PUBACK, even one whose MQTT v5 reason
        # code says the broker refused the message (an ACL denial). Deleting such a row
        # would lose it silently, so count refusals here (aiomqtt offers no public
        # hook) and let _publish_batch keep the whole batch when one occurred.
        paho = client._client
        forward = paho.on_publish

        def on_publish(*args: Any) -> None:
            reason = args[3] if len(args) > 3 else None
            if isinstance(reason, ReasonCode) and reason.is_failure:
                self.stats.refused_publishes += 1
                self.stats.last_refusal = str(reason)
            if forward is not None:
                forward(*args)

        paho.on_publish = on_publish

    def _backlog_ceiling(self) -> tuple[int, dict[str, OutboxRowLike]]:
        """The highest seq waiting now, and the newest waiting row of each retained
        topic: two index reads, whatever the length of the backlog (an outage of hours
        must not stall the event loop at reconnect)."""
        retained = {row.topic: row for row in self._outbox.newest_retained()}
        return self._outbox.high_seq(), retained

    async def _republish_retained(
        self, client: aiomqtt.Client, pending: dict[str, OutboxRowLike]
    ) -> None:
        """Publish the newest message of every retained topic again (see module doc).

        Candidates are the archive's last acknowledged copy of each topic and any newer
        row still waiting in the outbox. A waiting row published here is settled like
        any other (archived, deleted), so it does not go out a second time.
        """
        newest: dict[str, tuple[int, bytes, OutboxRowLike | None]] = {}
        if self._archive is not None:
            for archived in self._archive.retained_latest():
                newest[archived.topic] = (archived.seq, archived.payload, None)
        for topic, waiting in pending.items():
            if waiting.seq > newest.get(topic, (0, b"", None))[0]:
                newest[topic] = (waiting.seq, waiting.payload, waiting)
        for topic, (seq, payload, row) in sorted(newest.items(), key=lambda item: item[1][0]):
            if seq < self._retained_high_seq.get(topic, 0):
                continue
            self._retained_high_seq[topic] = seq
            refusals_before = self.stats.refused_publishes
            await client.publish(topic, mark_republished(payload), qos=1, retain=True)
            if self.stats.refused_publishes != refusals_before:
                raise PublishRefusedError(
                    f"broker refused the republish of {topic} ({self.stats.last_refusal}); "
                    f"check the broker ACL lets this controller publish under "
                    f"{self._topics.base}/#"
                )
            self.stats.republished += 1
            if row is not None:
                self._settle([row])

    async def _drain(self, client: aiomqtt.Client, ceiling: int) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            live = list(self._outbox.pending(limit=self._live_batch, after_seq=ceiling))
            backlog = [
                r
                for r in self._outbox.pending(limit=self._backlog_batch, after_seq=0)
                if r.seq <= ceiling
            ]
            if not live and not backlog:
                if self._poll_interval_s is None:
                    await self._wake.wait()
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), timeout=self._poll_interval_s)
                continue
            now = self._clock()
            batch = [(row, self._is_old(row, now)) for row in live]
            batch += [(row, True) for row in backlog]
            await self._publish_batch(client, batch)

    def _is_old(self, row: OutboxRowLike, now: datetime) -> bool:
        return (now - row.created_utc).total_seconds() > self._historical_age_s

    async def _publish_batch(
        self, client: aiomqtt.Client, batch: Sequence[tuple[OutboxRowLike, bool]]
    ) -> None:
        acked: list[OutboxRowLike] = []

        async def publish_one(row: OutboxRowLike, historical: bool) -> None:
            payload = mark_historical(row.payload) if historical else row.payload
            retain = row.retain and row.seq >= self._retained_high_seq.get(row.topic, 0)
            if retain:
                self._retained_high_seq[row.topic] = row.seq
            # QoS 1 always: aiomqtt returns only after the PUBACK.
            await client.publish(row.topic, payload, qos=1, retain=retain)
            acked.append(row)
            self.stats.published += 1
            if historical:
                self.stats.published_historical += 1

        refusals_before = self.stats.refused_publishes
        try:
            async with asyncio.TaskGroup() as tasks:
                for row, historical in batch:
                    tasks.create_task(publish_one(row, historical))
        except* aiomqtt.MqttError as group:
            raise group.exceptions[0] from None
        finally:
            if self.stats.refused_publishes == refusals_before:
                self._settle(acked)
        if self.stats.refused_publishes != refusals_before:
            # Keep every row of the batch (we cannot tell which one was refused);
            # re-sent ones are de-duplicated by seq. Back off and try again.
            _log.error(
                "mqtt_publish_refused",
                reason=self.stats.last_refusal,
                fix="check the broker ACL lets this controller publish under "
                f"{self._topics.base}/#",
            )
            raise PublishRefusedError(
                f"broker refused a publish ({self.stats.last_refusal}); rows kept in the outbox"
            )

    def _settle(self, acked: Sequence[OutboxRowLike]) -> None:
        if acked:
            self._settle_rows(acked, self._clock())

    def _settle_here(self, acked: Sequence[OutboxRowLike], sent: datetime) -> None:
        """Settle on the calling thread (integrators and tests without a writer thread):
        archive, a bounded prune at most once a minute, then delete."""
        if self._archive is not None:
            self._archive.record(acked, sent_utc=utc_text(sent))
            self._pruner.prune_if_due(self._archive, now_s=time.monotonic(), now_utc=sent)
        self._outbox.delete([row.seq for row in acked])

    async def _intake(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            topic = str(message.topic)
            payload = message.payload if isinstance(message.payload, bytes) else b""
            try:
                if topic == self._topics.backfill_request:
                    await self._answer_backfill(BackfillRequest.model_validate_json(payload))
                elif topic == self._topics.cmd_ack:
                    command = self._parse_ack(payload)
                    if self._on_alarm_ack is not None:
                        await self._on_alarm_ack(command)
            except (ValidationError, ValueError) as exc:
                self.stats.rejected_commands += 1
                _log.warning("mqtt_command_rejected", topic=topic, error=str(exc))

    def _parse_ack(self, payload: bytes) -> AlarmAckCommand:
        command = AlarmAckCommand.model_validate_json(payload)
        if command.device_id != self._identity.device_id:
            raise ValueError(
                f"alarm ack names device {command.device_id!r} but this bed's device is "
                f"{self._identity.device_id!r}; publish it on that device's bed topic"
            )
        return command

    async def _answer_backfill(self, request: BackfillRequest) -> None:
        if self._archive is None or self._append_reply is None:
            _log.info("backfill_unavailable", request_id=request.request_id)
            return
        entry = build_backfill_reply(
            request,
            identity=self._identity,
            root_topic=self._settings.root_topic,
            archive=self._archive,
            utc=self._clock(),
        )
        if entry is not None:
            self._append_reply(entry)
            self.stats.backfill_replies += 1
            self.notify()
