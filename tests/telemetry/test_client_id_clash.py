"""Two controllers configured with the same MQTT client id knock each other off the
broker (MQTT session takeover) over and over; telemetry must stay exact anyway: every
row stays in its outbox until its PUBACK (issue 16: "keep telemetry exact across such
disconnects"; issue 13 makes ids unique and enforced)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from controller.telemetry import DeviceIdentity, OutboxPublisher
from tests.support.mosquitto import MosquittoBroker
from tests.support.outbox import LedgerBackedOutbox
from tests.telemetry.helpers import ROOT, Received, settings_for, telemetry
from tests.telemetry.test_publisher import collecting, wait_until


async def test_two_beds_with_one_client_id_lose_no_telemetry(
    mosquitto_broker: MosquittoBroker, tmp_path: Path
) -> None:
    beds = ("B01", "B02")
    identities = {
        bed: DeviceIdentity(device_id=f"MN1-{bed}", ward="W7", bed=bed, boot_id="b") for bed in beds
    }
    outboxes = {bed: LedgerBackedOutbox(path=tmp_path / f"{bed}.sqlite3") for bed in beds}
    same_id = settings_for(mosquitto_broker, client_id="nebuliser")  # the old default
    publishers = {
        bed: OutboxPublisher(settings=same_id, identity=identities[bed], outbox=outboxes[bed])
        for bed in beds
    }
    produced: dict[str, list[int]] = {bed: [] for bed in beds}

    async def produce() -> None:
        for n in range(80):  # 20 Hz for 4 s per bed
            for bed in beds:
                produced[bed].append(outboxes[bed].append(telemetry(n, identity=identities[bed])))
                publishers[bed].notify()
            await asyncio.sleep(0.05)

    def received(seen: list[Received], device_id: str) -> set[int]:
        bodies = [r.body for r in seen]
        return {int(b["seq"]) for b in bodies if b.get("device_id") == device_id and "seq" in b}

    async with collecting(mosquitto_broker, f"{ROOT}/#") as seen, asyncio.TaskGroup() as tasks:
        for publisher in publishers.values():
            tasks.create_task(publisher.run())
        await produce()
        await wait_until(
            lambda: all(
                set(produced[bed]) <= received(seen, identities[bed].device_id) for bed in beds
            ),
            timeout_s=30,
            what="every seq of both beds",
        )
        await wait_until(
            lambda: all(outboxes[bed].count() == 0 for bed in beds), timeout_s=10, what="drained"
        )
        for publisher in publishers.values():
            publisher.request_stop()
    takeovers = sum(p.stats.connection_failures for p in publishers.values())
    assert takeovers >= 2, "the shared client id must actually have knocked them off"
