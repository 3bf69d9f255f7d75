"""The public replay contract (docs/mqtt.md): the plain paho example in docs/examples/
holds every sequence number through broker SIGKILLs (issue 16, item 3)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from controller.telemetry import OutboxPublisher, SentArchive
from tests.support.mosquitto import MosquittoBroker
from tests.support.outbox import LedgerBackedOutbox
from tests.telemetry.helpers import IDENTITY, settings_for, telemetry
from tests.telemetry.test_publisher import wait_until

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "paho_subscriber.py"


class ExampleOutput:
    """The example's JSON lines, read as they come."""

    def __init__(self) -> None:
        self.seqs: set[int] = set()
        self.unavailable: set[int] = set()
        self.schemas: dict[int, str] = {}
        self.subscriptions = 0

    def take(self, line: dict[str, Any]) -> None:
        if line.get("subscribed"):
            self.subscriptions += 1
        elif "unavailable" in line:
            self.unavailable.add(int(line["unavailable"]))
        elif "seq" in line:
            self.seqs.add(int(line["seq"]))
            self.schemas[int(line["seq"])] = str(line["schema"])


@contextlib.asynccontextmanager
async def example(broker: MosquittoBroker) -> AsyncIterator[ExampleOutput]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLE), "--host", broker.host, "--port", str(broker.port),
        "--client-id", "ward7-display-1", "--ward", IDENTITY.ward,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    output = ExampleOutput()

    async def read() -> None:
        assert process.stdout is not None
        while line := await process.stdout.readline():
            output.take(json.loads(line))

    async with asyncio.TaskGroup() as tasks:
        reader = tasks.create_task(read())
        try:
            yield output
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), timeout=10)
            reader.cancel()
    assert process.returncode == 0, await process.stderr.read() if process.stderr else b""


async def test_plain_paho_example_holds_every_seq_through_broker_kills(
    mosquitto_broker: MosquittoBroker, tmp_path: Path
) -> None:
    outbox = LedgerBackedOutbox(path=tmp_path / "ledger.sqlite3")
    publisher = OutboxPublisher(
        settings=settings_for(mosquitto_broker),
        identity=IDENTITY,
        outbox=outbox,
        archive=SentArchive(path=tmp_path / "telemetry-sent.sqlite3"),
        append_reply=outbox.append,
    )
    produced: list[int] = []

    async def produce(count: int) -> None:
        for n in range(count):
            produced.append(outbox.append(telemetry(n)))
            publisher.notify()
            await asyncio.sleep(0.02)  # 50 Hz, a busy bed

    async with example(mosquitto_broker) as seen, asyncio.TaskGroup() as tasks:
        tasks.create_task(publisher.run())
        await wait_until(lambda: seen.subscriptions >= 1, timeout_s=20, what="example subscribed")
        producer = tasks.create_task(produce(300))
        for _ in range(3):
            await asyncio.sleep(0.8)  # let the broker save the session (autosave 1 s)
            mosquitto_broker.kill()
            await asyncio.sleep(0.5)
            mosquitto_broker.restart()
        await producer
        await produce(20)  # a trailing gap shows only when a later seq arrives
        await wait_until(
            lambda: set(produced) <= seen.seqs,
            timeout_s=30,
            what="every produced seq at the example",
        )
        publisher.request_stop()
    assert publisher.stats.connections >= 4, "the broker kills must have cut the publisher off"
    # Anything given up may only be a backfill reply (replies are not archived).
    assert all(seen.schemas.get(s) != "nebuliser.telemetry" for s in seen.unavailable)
    assert set(produced).isdisjoint(seen.unavailable)
