"""The bed's ONE MQTT connection, shared by the outbox publisher and the command intake.

Why one: on the hardened broker the client id IS the certificate's identity
(`use_username_as_clientid true`), so a bed has exactly one connection; a second one
with the same certificate would take the first one's session over (MQTT session
takeover) and the two would knock each other off for ever. See
docs/decisions/0013-one-mqtt-connection-per-bed.md.

Who does what:

* the `OutboxPublisher` OWNS the connection: it connects (Last Will, client id),
  reconnects with its `ReconnectBackoff`, publishes, and tells this object when a
  connection comes up (`opened`) and when it is gone (`closed`);
* a GUEST (the command intake) registers a *sink* per exact topic (`route`) before
  subscribing; every message on such a topic is handed to the sink the moment the
  client reads it (on the event loop, never queued, never dropped: aiomqtt's
  incoming queue is replaced by `queue_type()`); other messages (backfill requests)
  go to the publisher's queue as before. A guest waits for each new connection with
  `next_connection`, subscribes and publishes on it, and waits for its end with
  `wait_lost`;
* at a graceful stop the owner waits (bounded) until no guest `hold`s the connection,
  so a guest's last publication (the shutdown audit anchor) goes out before the
  owner says "offline" and disconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import cast

import aiomqtt

__all__ = ["BedConnection", "MessageSink"]

#: Takes one message at once; must not raise and must not block.
MessageSink = Callable[[aiomqtt.Message], None]


class BedConnection:
    """Rendezvous between the connection's owner (publisher) and its guests."""

    def __init__(self) -> None:
        self._client: aiomqtt.Client | None = None
        # Set (and replaced by a fresh one) at every change of `_client`: synchronous
        # for the owner, so a cancelled owner still reports the end of its connection.
        self._changed = asyncio.Event()
        self._sinks: dict[str, MessageSink] = {}
        self._holds = 0
        self._released = asyncio.Event()
        self._released.set()

    # ------------------------------------------------------------------ guests

    def route(self, topic: str, sink: MessageSink) -> None:
        """Hand every message on `topic` (an exact topic, no wildcards) to `sink`."""
        if "+" in topic or "#" in topic:
            raise ValueError(f"route {topic!r}: an exact topic is needed, not a filter")
        self._sinks[topic] = sink

    async def next_connection(self, after: aiomqtt.Client | None = None) -> aiomqtt.Client:
        """The connected client, once there is one other than `after`."""
        while self._client is None or self._client is after:
            await self._changed.wait()
        return self._client

    async def wait_lost(self, client: aiomqtt.Client) -> None:
        """Return once `client`'s connection has ended."""
        while self._client is client:
            await self._changed.wait()

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Keep the connection up at a graceful stop until this block ends (bounded by
        the owner)."""
        self._holds += 1
        self._released.clear()
        try:
            yield
        finally:
            self._holds -= 1
            if self._holds == 0:
                self._released.set()

    # ------------------------------------------------------------------ owner

    def queue_type(self) -> type[asyncio.Queue[aiomqtt.Message]]:
        """aiomqtt's incoming-queue class for the owner's client: routed topics go to
        their sink at once, everything else is queued for `client.messages`."""
        sinks = self._sinks

        class _RoutingQueue(asyncio.Queue[aiomqtt.Message]):
            def put_nowait(self, item: aiomqtt.Message) -> None:
                sink = sinks.get(str(item.topic))
                if sink is None:
                    super().put_nowait(item)
                else:
                    sink(item)

        return cast("type[asyncio.Queue[aiomqtt.Message]]", _RoutingQueue)

    def opened(self, client: aiomqtt.Client) -> None:
        """The owner's client is connected (and has its own subscriptions)."""
        self._set_client(client)

    def closed(self) -> None:
        """The owner's connection has ended."""
        self._set_client(None)

    def _set_client(self, client: aiomqtt.Client | None) -> None:
        self._client = client
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_released(self) -> None:
        """Return once no guest holds the connection."""
        await self._released.wait()
