"""Exact state after any outage: a broker restarted without persistence has every
retained topic of the bed back within a second (issue 16, item 1)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from controller.telemetry import (
    MqttSettings,
    OutboxPublisher,
    SentArchive,
    WardModel,
    outbox_entry,
)
from tests.support.mosquitto import MosquittoBroker
from tests.support.outbox import LedgerBackedOutbox
from tests.telemetry.helpers import IDENTITY, ROOT, settings_for, telemetry, validate_payload
from tests.telemetry.test_publisher import collecting, wait_until
from tests.telemetry.test_schemas import NOW

BASE = f"{ROOT}/W7/B03"
RETAINED = (f"{BASE}/state", f"{BASE}/session", f"{BASE}/alarms/active")


def bed_picture(outbox: LedgerBackedOutbox) -> dict[str, int]:
    """Queue a bed in alarm mid-session; the seq of each retained topic's newest row."""

    def entry(schema: str, **fields: Any) -> int:
        return outbox.append(
            outbox_entry(IDENTITY, root_topic=ROOT, schema=schema, utc=NOW, **fields)
        )

    entry("nebuliser.state", session_state="idle", telemetry_hz=1)
    seqs = {
        f"{BASE}/session": entry(
            "nebuliser.session", event="started", session_id=7, dose_cap_ul=2500,
            reasons=[{"code": "started"}],
        ),
        f"{BASE}/state": entry(
            "nebuliser.state", session_state="nebulising", session_id=7, telemetry_hz=1
        ),
        f"{BASE}/alarms/active": entry(
            "nebuliser.alarms_active",
            alarms=[{"alarm_code": "output_low", "priority": "medium", "raised_utc": NOW}],
        ),
    }  # fmt: skip
    outbox.append(telemetry(1))
    return seqs


async def test_broker_restart_without_persistence_gets_every_retained_topic_back(
    tmp_path: Path,
) -> None:
    (tmp_path / "mosquitto").mkdir()
    broker = MosquittoBroker(workdir=tmp_path / "mosquitto", persistence=False)
    broker.start()
    outbox = LedgerBackedOutbox(path=tmp_path / "ledger.sqlite3")
    archive = SentArchive(path=tmp_path / "telemetry-sent.sqlite3")
    # The shipped back-off (0.2 s first wait, 1 s cap), not the tests' fast one.
    defaults = MqttSettings()
    settings = settings_for(broker).model_copy(
        update={
            "reconnect_initial_s": defaults.reconnect_initial_s,
            "reconnect_max_s": defaults.reconnect_max_s,
        }
    )
    publisher = OutboxPublisher(
        settings=settings, identity=IDENTITY, outbox=outbox, archive=archive
    )
    newest = bed_picture(outbox)
    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(publisher.run())
            await wait_until(lambda: outbox.count() == 0, timeout_s=10, what="first drain")
            broker.kill()
            # Down long enough for the back-off to reach its cap.
            await wait_until(
                lambda: publisher.stats.connection_failures >= 5, timeout_s=20, what="5 failures"
            )
            broker.restart()  # persistence off: every retained message is gone
            async with collecting(broker) as seen:
                subscribed_at = time.monotonic()

                def retained_back() -> bool:
                    return {r.topic for r in seen} >= set(RETAINED)

                await wait_until(retained_back, timeout_s=10, what="retained topics back")
                elapsed_s = time.monotonic() - subscribed_at
            # A monitor started now (after the republish) gets them as retained copies.
            async with collecting(broker) as late:
                await wait_until(
                    lambda: {r.topic for r in late if r.retain} >= set(RETAINED),
                    timeout_s=5,
                    what="retained copies for a late monitor",
                )
            publisher.request_stop()
    finally:
        broker.stop()
    assert elapsed_s <= 1.0, f"retained state took {elapsed_s:.2f} s after the monitor connected"
    model = WardModel(root_topic=ROOT)
    for received in late:
        if received.topic in RETAINED:
            body = validate_payload(received.payload)
            assert body["seq"] == newest[received.topic], "the original seq, not a new one"
            assert body["republished"] is True
            assert body["historical"] is True
        model.feed(received.topic, received.payload, now_s=0.0, retained=received.retain)
    (row,) = model.rows(now_s=0.0)
    assert row.session_state == "nebulising"
    assert [a.alarm_code for a in row.alarms] == ["output_low"]
    assert publisher.stats.republished >= 3
