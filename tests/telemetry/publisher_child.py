"""A controller-like process for the Last Will test: runs the publisher until killed.

Usage: python -m tests.telemetry.publisher_child PORT DB_PATH
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from controller.logging import configure_logging
from controller.telemetry import MqttSettings, OutboxPublisher
from tests.support.outbox import LedgerBackedOutbox
from tests.telemetry.helpers import IDENTITY


async def main(port: int, db_path: Path) -> None:
    settings = MqttSettings(host="127.0.0.1", port=port, client_id="child-B03", keepalive_s=2)
    publisher = OutboxPublisher(
        settings=settings, identity=IDENTITY, outbox=LedgerBackedOutbox(path=db_path)
    )
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(publisher.run())
        await publisher.wait_connected()
        print("connected", flush=True)


if __name__ == "__main__":
    configure_logging(level="warning", stream=sys.stderr, json=True)
    asyncio.run(main(int(sys.argv[1]), Path(sys.argv[2])))
