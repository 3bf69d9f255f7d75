"""The store-and-forward publisher against a real Mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import aiomqtt

from controller.ledger import OutboxRow
from controller.telemetry import (
    AckRequest,
    AlarmAckCommand,
    OutboxEntry,
    OutboxPublisher,
    SentArchive,
    WardModel,
    WardMonitor,
    outbox_entry,
)
from tests.support.mosquitto import MosquittoBroker
from tests.support.outbox import LedgerBackedOutbox
from tests.telemetry.helpers import (
    IDENTITY,
    ROOT,
    Received,
    settings_for,
    telemetry,
    validate_payload,
)


async def wait_until(condition: Callable[[], bool], *, timeout_s: float, what: str) -> None:
    """Poll `condition` every 10 ms; fail naming `what` after `timeout_s`."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def collecting(
    broker: MosquittoBroker, topic_filter: str = f"{ROOT}/#"
) -> AsyncIterator[list[Received]]:
    """Subscribe (QoS 1) and collect every message until the block ends."""
    seen: list[Received] = []
    async with aiomqtt.Client(
        broker.host,
        broker.port,
        identifier=f"collector-{uuid.uuid4().hex[:6]}",
        protocol=aiomqtt.ProtocolVersion.V5,
    ) as client:
        await client.subscribe(topic_filter, qos=1)

        async def read() -> None:
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                seen.append(Received(str(message.topic), message.payload, bool(message.retain)))

        async with asyncio.TaskGroup() as tasks:
            reader = tasks.create_task(read())
            try:
                yield seen
            finally:
                reader.cancel()


def make_publisher(
    broker: MosquittoBroker, tmp_path: Path, **kwargs: object
) -> tuple[OutboxPublisher, LedgerBackedOutbox, SentArchive]:
    outbox = LedgerBackedOutbox(path=tmp_path / "ledger.sqlite3")
    archive = SentArchive(path=tmp_path / "telemetry-sent.sqlite3")
    publisher = OutboxPublisher(
        settings=settings_for(broker),
        identity=IDENTITY,
        outbox=outbox,
        archive=archive,
        append_reply=outbox.append,
        **kwargs,  # type: ignore[arg-type]
    )
    return publisher, outbox, archive


async def test_publishes_every_kind_valid_and_retains_state(
    mosquitto_broker: MosquittoBroker, tmp_path: Path
) -> None:
    publisher, outbox, _archive = make_publisher(mosquitto_broker, tmp_path)
    now = datetime.now(UTC)
    outbox.append(
        outbox_entry(
            IDENTITY, root_topic=ROOT, schema="nebuliser.state", utc=now, session_state="idle"
        )
    )
    async with collecting(mosquitto_broker) as seen, asyncio.TaskGroup() as tasks:
        tasks.create_task(publisher.run())
        await wait_until(lambda: outbox.count() == 0, timeout_s=10, what="backlog of one sent")
        for n in range(5):
            outbox.append(telemetry(n))
        outbox.append(
            outbox_entry(
                IDENTITY,
                root_topic=ROOT,
                schema="nebuliser.alarm",
                utc=now,
                event="raised",
                alarm_code="DRY_CUP",
                priority="high",
            )
        )
        publisher.notify()
        await wait_until(
            lambda: outbox.count() == 0 and len(seen) >= 8, timeout_s=10, what="the outbox to drain"
        )
        publisher.request_stop()
    bodies = [validate_payload(r.payload) for r in seen]
    device = [b for b in bodies if "seq" in b]
    assert [b["seq"] for b in device] == [1, 2, 3, 4, 5, 6, 7]
    presence = [b for b in bodies if b["schema"] == "nebuliser.presence"]
    assert [p["online"] for p in presence][:1] == [True]
    assert presence[-1]["reason"] == "shutdown"
    # The state row was queued before the first connection: it is backlog.
    assert device[0]["schema"] == "nebuliser.state"
    assert device[0]["historical"] is True
    assert all(b["historical"] is False for b in device[1:])
    # A monitor arriving later still gets the retained state and presence.
    async with collecting(mosquitto_broker) as late:
        await wait_until(lambda: len(late) >= 2, timeout_s=5, what="retained messages")
    retained = {r.topic: r.body for r in late if r.retain}
    assert retained[f"{ROOT}/W7/B03/state"]["seq"] == 1
    assert retained[f"{ROOT}/W7/B03/presence"]["online"] is False


async def test_hour_of_backlog_drains_in_order_without_starving_live(
    mosquitto_broker: MosquittoBroker, tmp_path: Path
) -> None:
    mosquitto_broker.stop()
    outbox = LedgerBackedOutbox(path=tmp_path / "ledger.sqlite3")
    # Retry once a second, so the collector below is subscribed before the retry.
    settings = settings_for(mosquitto_broker).model_copy(
        update={"reconnect_initial_s": 1.0, "reconnect_max_s": 1.0}
    )
    publisher = OutboxPublisher(
        settings=settings, identity=IDENTITY, outbox=outbox, backlog_batch=200
    )
    # One hour at 1 Hz queued while the broker was unreachable (simulated time).
    outbox.append_many([telemetry(n) for n in range(3600)])
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(publisher.run())
        await asyncio.sleep(0.2)  # the publisher has failed once and waits 1 s
        assert outbox.count() == 3600
        assert publisher.stats.connections == 0
        mosquitto_broker.restart()
        async with collecting(mosquitto_broker) as seen:
            assert publisher.stats.connections == 0, "collector must subscribe first"
            await wait_until(lambda: publisher.stats.connected, timeout_s=10, what="reconnect")
            await wait_until(lambda: len(seen) >= 1, timeout_s=10, what="first backlog batch")
            live_seq = outbox.append(telemetry(99_999))
            publisher.notify()
            await wait_until(lambda: outbox.count() == 0, timeout_s=30, what="backlog drained")
            await wait_until(
                lambda: len(seen) >= 3602, timeout_s=10, what=f"all messages (have {len(seen)})"
            )
            publisher.request_stop()
    bodies = [validate_payload(r.payload) for r in seen]
    device = [b for b in bodies if "seq" in b]
    seqs = [b["seq"] for b in device]
    backlog = [s for s in seqs if s != live_seq]
    assert backlog == list(range(1, 3601)), "backlog must arrive in seq order, once each"
    assert all(b["historical"] for b in device if b["seq"] != live_seq)
    live = next(b for b in device if b["seq"] == live_seq)
    assert live["historical"] is False
    # Live telemetry overtook most of the hour of backlog (bounded batches per step).
    assert seqs.index(live_seq) < 1000


async def test_three_broker_kills_lose_nothing(
    mosquitto_broker: MosquittoBroker, tmp_path: Path
) -> None:
    publisher, outbox, _archive = make_publisher(mosquitto_broker, tmp_path, historical_age_s=0.5)
    monitor = WardMonitor(
        settings=settings_for(mosquitto_broker, client_id="monitor"),
        model=WardModel(root_topic=ROOT, gap_grace_s=0.2, backfill_retry_s=0.5),
        sender="test-monitor",
        backfill_interval_s=0.1,
    )
    produced: list[int] = []
    received: dict[int, dict[str, object]] = {}

    def on_events(events: list[dict[str, object]]) -> None:
        for event in events:
            seq = event.get("seq")
            if isinstance(seq, int) and event["event"] not in ("duplicate", "gap"):
                received.setdefault(seq, event)

    monitor._on_events = on_events  # the sink is a constructor argument; set late for reuse

    async def produce() -> None:
        for n in range(400):
            produced.append(outbox.append(telemetry(n)))
            publisher.notify()
            await asyncio.sleep(0.01)

    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(publisher.run())
        tasks.create_task(monitor.run())
        await monitor.connected.wait()
        producer = tasks.create_task(produce())
        for _ in range(3):
            await asyncio.sleep(0.6)
            mosquitto_broker.kill()
            await asyncio.sleep(0.4)
            mosquitto_broker.restart()
        await producer
        await wait_until(lambda: outbox.count() == 0, timeout_s=20, what="outbox empty")
        tracker = monitor.model.tracker(IDENTITY.device_id)
        await wait_until(
            lambda: set(produced) <= set(received) and not tracker.missing_since_s,
            timeout_s=20,
            what="every produced seq at the monitor",
        )
        publisher.request_stop()
        monitor.request_stop()
    assert publisher.stats.connections >= 4
    assert outbox.count() == 0
    telemetry_seqs = sorted(s for s, e in received.items() if e["event"] == "telemetry")
    assert telemetry_seqs == produced, "every telemetry seq exactly once after de-duplication"
    assert any(received[s]["historical"] for s in produced), "backlog must be flagged historical"
    assert not all(received[s]["historical"] for s in produced)
    # Anything unrecoverable may only be a backfill reply (replies are not archived).
    reply_seqs = {s for s, e in received.items() if e["event"] == "backfill_reply"}
    high = max(received)
    lost = set(range(1, high + 1)) - set(received)
    assert tracker.unrecoverable == len(lost)
    assert lost.isdisjoint(produced)
    assert len(reply_seqs) + len(produced) + len(lost) == high


async def test_monitor_ack_reaches_a_second_monitor(
    mosquitto_broker: MosquittoBroker, tmp_path: Path
) -> None:
    outbox = LedgerBackedOutbox(path=tmp_path / "ledger.sqlite3")
    acks_applied: list[str] = []

    async def on_alarm_ack(command: AlarmAckCommand) -> None:
        # Minimal controller side: apply, then publish the acknowledged alarm and
        # the new active set through the outbox (as the ledger would, in one step).
        acks_applied.append(command.sender)
        now = datetime.now(UTC)
        outbox.append(
            outbox_entry(
                IDENTITY,
                root_topic=ROOT,
                schema="nebuliser.alarm",
                utc=now,
                event="acknowledged",
                alarm_code=command.alarm_code,
                priority="high",
                acknowledged_by=command.sender,
            )
        )
        outbox.append(
            outbox_entry(
                IDENTITY,
                root_topic=ROOT,
                schema="nebuliser.alarms_active",
                utc=now,
                alarms=[
                    {
                        "alarm_code": command.alarm_code,
                        "priority": "high",
                        "raised_utc": now,
                        "acknowledged": True,
                        "acknowledged_by": command.sender,
                    }
                ],
            )
        )
        publisher.notify()

    publisher = OutboxPublisher(
        settings=settings_for(mosquitto_broker),
        identity=IDENTITY,
        outbox=outbox,
        on_alarm_ack=on_alarm_ack,
    )
    now = datetime.now(UTC)
    outbox.append(
        outbox_entry(
            IDENTITY,
            root_topic=ROOT,
            schema="nebuliser.alarm",
            utc=now,
            event="raised",
            alarm_code="DRY_CUP",
            priority="high",
        )
    )
    outbox.append(
        outbox_entry(
            IDENTITY,
            root_topic=ROOT,
            schema="nebuliser.alarms_active",
            utc=now,
            alarms=[{"alarm_code": "DRY_CUP", "priority": "high", "raised_utc": now}],
        )
    )
    monitors = [
        WardMonitor(
            settings=settings_for(mosquitto_broker, client_id=f"mon{i}"),
            model=WardModel(root_topic=ROOT),
            sender=f"nurse-{i}",
            ward="W7",
        )
        for i in (1, 2)
    ]

    def alarms(i: int) -> list[tuple[str, bool, str | None]]:
        rows = monitors[i].model.rows(now_s=0)
        return [(a.alarm_code, a.acknowledged, a.acknowledged_by) for r in rows for a in r.alarms]

    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(publisher.run())
        for monitor in monitors:
            tasks.create_task(monitor.run())
        await wait_until(
            lambda: alarms(1) == [("DRY_CUP", False, None)],
            timeout_s=10,
            what="second monitor sees the raised alarm",
        )
        monitors[0].acknowledge(
            AckRequest(ward="W7", bed="B03", device_id=IDENTITY.device_id, alarm_code="DRY_CUP")
        )
        await wait_until(
            lambda: alarms(1) == [("DRY_CUP", True, "nurse-1")],
            timeout_s=10,
            what="second monitor sees the acknowledgement",
        )
        publisher.request_stop()
        for monitor in monitors:
            monitor.request_stop()
    assert acks_applied == ["nurse-1"]
    assert alarms(0) == [("DRY_CUP", True, "nurse-1")]


def test_payloads_stay_json(tmp_path: Path) -> None:
    outbox = LedgerBackedOutbox(path=tmp_path / "ledger.sqlite3")
    seq = outbox.append(telemetry(7))
    (row,) = outbox.pending(limit=10)
    assert row.seq == seq == 1
    assert json.loads(row.payload)["seq"] == 1
    outbox.delete([seq])
    assert outbox.append(telemetry(8)) == 2, "AUTOINCREMENT: a seq is never reused"


async def test_replayed_old_state_does_not_replace_the_retained_current_state(
    mosquitto_broker: MosquittoBroker, tmp_path: Path
) -> None:
    outbox = LedgerBackedOutbox(path=tmp_path / "ledger.sqlite3")
    now = datetime.now(UTC)

    def state(session_state: str) -> OutboxEntry:
        return outbox_entry(
            IDENTITY,
            root_topic=ROOT,
            schema="nebuliser.state",
            utc=now,
            session_state=session_state,
        )

    # A long backlog whose last row is an old state, queued while offline.
    outbox.append_many([telemetry(n) for n in range(2000)])
    old_state = outbox.append(state("stale_from_backlog"))
    publisher = OutboxPublisher(
        settings=settings_for(mosquitto_broker), identity=IDENTITY, outbox=outbox, backlog_batch=20
    )
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(publisher.run())
        await publisher.wait_connected()
        current = outbox.append(state("current"))  # live: overtakes the backlog
        publisher.notify()
        await wait_until(lambda: outbox.count() == 0, timeout_s=20, what="drain")
        publisher.request_stop()
    assert current > old_state
    async with collecting(mosquitto_broker, f"{ROOT}/W7/B03/state") as late:
        await wait_until(lambda: len(late) >= 1, timeout_s=5, what="retained state")
    retained = validate_payload(late[0].payload)
    assert late[0].retain
    assert (retained["seq"], retained["session_state"]) == (current, "current")


async def test_broker_refusal_keeps_rows_until_the_acl_is_fixed(tmp_path: Path) -> None:
    acl = tmp_path / "acl"
    base = tmp_path / "mosquitto"
    base.mkdir()
    # Commissioning mistake: the controller may only publish its presence.
    acl.write_text("topic readwrite nebuliser/v1/W7/B03/presence\ntopic read #\n")
    broker = MosquittoBroker(workdir=base, extra_config=[f"acl_file {acl}"])
    async with broker:
        outbox = LedgerBackedOutbox(path=tmp_path / "ledger.sqlite3")
        seqs = outbox.append_many([telemetry(n) for n in range(5)])
        publisher = OutboxPublisher(settings=settings_for(broker), identity=IDENTITY, outbox=outbox)
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(publisher.run())
            await wait_until(
                lambda: publisher.stats.connections >= 2,
                timeout_s=10,
                what="a refused batch and a retry",
            )
            assert publisher.stats.refused_publishes >= 5
            assert "Not authorized" in publisher.stats.last_refusal
            assert [r.seq for r in outbox.pending(limit=10)] == seqs, "nothing may be lost"
            acl.write_text("topic readwrite nebuliser/v1/W7/B03/#\n")
            broker.stop()
            broker.restart()
            await wait_until(lambda: outbox.count() == 0, timeout_s=10, what="drain after fix")
            publisher.request_stop()


class CountingOutbox(LedgerBackedOutbox):
    """The real outbox, counting the publisher's reads."""

    reads = 0

    def pending(self, *, limit: int = 100, after_seq: int = 0) -> list[OutboxRow]:
        self.reads += 1
        return super().pending(limit=limit, after_seq=after_seq)


async def test_idle_publisher_does_not_poll_and_wakes_on_notify(
    mosquitto_broker: MosquittoBroker, tmp_path: Path
) -> None:
    outbox = CountingOutbox(path=tmp_path / "ledger.sqlite3")
    publisher = OutboxPublisher(
        settings=settings_for(mosquitto_broker), identity=IDENTITY, outbox=outbox
    )
    async with collecting(mosquitto_broker) as seen, asyncio.TaskGroup() as tasks:
        tasks.create_task(publisher.run())
        await wait_until(lambda: publisher.stats.connected, timeout_s=10, what="connect")
        await wait_until(lambda: len(seen) >= 1, timeout_s=10, what="presence online")
        reads_when_idle = outbox.reads
        # Absence of activity can only be shown over an interval: the old publisher
        # read the outbox twice every 100 ms while idle (CPU on an idle bed).
        await asyncio.sleep(0.5)
        assert outbox.reads == reads_when_idle, "the idle publisher polled the outbox"
        outbox.append(telemetry(1))
        publisher.notify()
        await wait_until(lambda: outbox.count() == 0, timeout_s=5, what="notified row sent")
        publisher.request_stop()
