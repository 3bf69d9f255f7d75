"""`BedConnection` (docs/decisions/0013) as a unit: the rendezvous between the
publisher that owns the bed's one MQTT connection and the command intake that rides
on it. The routing through a real client is guarded by
`tests/security/test_intake_gate.py::test_aiomqtt_hands_every_incoming_message_to_queue_type_put_nowait`,
the whole path by `tests/controller/test_one_connection.py`."""

from __future__ import annotations

import asyncio
from typing import cast

import aiomqtt
import pytest

from controller.telemetry import BedConnection


def _client() -> aiomqtt.Client:
    return cast("aiomqtt.Client", object())  # only its identity matters here


def _message(topic: str) -> aiomqtt.Message:
    return aiomqtt.Message(topic=topic, payload=b"x", qos=1, retain=False, mid=1, properties=None)


async def test_a_guest_gets_each_new_connection_and_sees_each_one_end() -> None:
    connection = BedConnection()
    waiting = asyncio.create_task(connection.next_connection())
    await asyncio.sleep(0)
    assert not waiting.done()  # nothing connected yet
    first = _client()
    connection.opened(first)
    assert await asyncio.wait_for(waiting, 1) is first
    lost = asyncio.create_task(connection.wait_lost(first))
    await asyncio.sleep(0)
    assert not lost.done()
    connection.closed()
    await asyncio.wait_for(lost, 1)
    # The next connection is a new client, never the one that ended.
    following = asyncio.create_task(connection.next_connection(after=first))
    connection.opened(first)  # (not a real sequence; shows `after` is honoured)
    await asyncio.sleep(0)
    assert not following.done()
    second = _client()
    connection.opened(second)
    assert await asyncio.wait_for(following, 1) is second


async def test_routed_topics_go_to_their_sink_at_once_others_are_queued() -> None:
    connection = BedConnection()
    sunk: list[str] = []
    connection.route("bed/command", lambda message: sunk.append(str(message.topic)))
    queue = connection.queue_type()(maxsize=0)
    queue.put_nowait(_message("bed/command"))
    queue.put_nowait(_message("bed/backfill/request"))
    assert sunk == ["bed/command"]
    assert queue.qsize() == 1
    assert str((await queue.get()).topic) == "bed/backfill/request"


def test_a_route_must_be_an_exact_topic() -> None:
    with pytest.raises(ValueError, match="exact topic"):
        BedConnection().route("bed/+/command", lambda _message: None)


async def test_the_owner_waits_until_no_guest_holds_the_connection() -> None:
    connection = BedConnection()
    await asyncio.wait_for(connection.wait_released(), 1)  # nobody holds it
    with connection.hold():
        released = asyncio.create_task(connection.wait_released())
        await asyncio.sleep(0)
        assert not released.done()
    await asyncio.wait_for(released, 1)
