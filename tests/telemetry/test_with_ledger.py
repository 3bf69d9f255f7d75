"""The publisher draining the real ledger's outbox, and a backfill reply committed
through the ledger."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

from controller.dosing import Instant
from controller.ledger import Ledger
from controller.telemetry import (
    OutboxPublisher,
    SentArchive,
    WardModel,
    WardMonitor,
    ledger_appender,
    ledger_message,
    outbox_entry,
)
from tests.support.mosquitto import MosquittoBroker
from tests.telemetry.helpers import IDENTITY, ROOT, settings_for, telemetry, validate_payload
from tests.telemetry.test_publisher import collecting, wait_until


def now_instant() -> Instant:
    return Instant.from_parts(
        utc=datetime.now(UTC), boot_id="boot-a", monotonic_ns=time.monotonic_ns()
    )


async def test_ledger_outbox_drains_and_answers_backfill(
    mosquitto_broker: MosquittoBroker, tmp_path: Path
) -> None:
    with Ledger.create(tmp_path / "ledger.sqlite3", device_id="neb-t", subject_id="S-1") as ledger:
        archive = SentArchive(path=tmp_path / "telemetry-sent.sqlite3")
        publisher = OutboxPublisher(
            settings=settings_for(mosquitto_broker),
            identity=IDENTITY,
            outbox=ledger.outbox,
            archive=archive,
            append_reply=ledger_appender(ledger.outbox, now=now_instant),
        )
        state = outbox_entry(
            IDENTITY,
            root_topic=ROOT,
            schema="nebuliser.state",
            utc=datetime.now(UTC),
            session_state="idle",
        )
        first = ledger.outbox.append(ledger_message(state), at=now_instant())
        for n in range(4):
            ledger.outbox.append(ledger_message(telemetry(n)), at=now_instant())
        model = WardModel(root_topic=ROOT, gap_grace_s=0.0)
        monitor = WardMonitor(
            settings=settings_for(mosquitto_broker, client_id="mon"),
            model=model,
            sender="mon",
            backfill_interval_s=0.05,
        )
        async with collecting(mosquitto_broker) as seen, asyncio.TaskGroup() as tasks:
            tasks.create_task(publisher.run())
            await wait_until(lambda: ledger.outbox.count() == 0, timeout_s=10, what="drain")
            # The monitor saw the first message, then was away while 2..5 went out;
            # the next live one opens a gap that it backfills from the archive.
            model.feed(f"{ROOT}/W7/B03/state", state.build(first), now_s=0.0)
            tasks.create_task(monitor.run())
            await monitor.connected.wait()
            live = ledger.outbox.append(ledger_message(telemetry(100)), at=now_instant())
            publisher.notify()
            await wait_until(
                lambda: (
                    publisher.stats.backfill_replies >= 1
                    and live in model.tracker(IDENTITY.device_id).seen
                    and not model.tracker(IDENTITY.device_id).missing_since_s
                ),
                timeout_s=10,
                what="backfill reply resolving the gap",
            )
            publisher.request_stop()
            monitor.request_stop()
        bodies = [validate_payload(r.payload) for r in seen]
        replies = [b for b in bodies if b["schema"] == "nebuliser.backfill_reply"]
        assert len(replies) == 1, "the reply went out through the ledger's outbox"
        assert replies[0]["seq"] > live
        assert [m["seq"] for m in replies[0]["messages"]] == list(range(first + 1, live))
        assert all(m["historical"] for m in replies[0]["messages"])
        assert replies[0]["unavailable"] == []
        assert model.tracker(IDENTITY.device_id).unrecoverable == 0
        assert ledger.outbox.count() == 0
