"""The CPU reference of `bench/resources.py`: the same libraries, the least work.

Imports what `nebuliser serve` imports, then does only what no controller can avoid
at 10 Hz STATUS and 1 Hz telemetry: the MN-1 link on the pty (HELLO, heartbeat, a
decoded STATUS every 100 ms) and one QoS 1 telemetry-sized publish a second. No
session, no ledger, no alarm rules, no log lines.

Run by resources.py: python bench/_reference_process.py PTY BROKER_HOST BROKER_PORT
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiomqtt

import controller.cli.serve  # noqa: F401 - the same libraries as the service
from drivers.mn1 import SerialLink, StatusReceived


async def main(pty: str, host: str, port: int) -> None:
    statuses = 0
    async with SerialLink(url=pty) as link, aiomqtt.Client(host, port) as client:

        async def publish() -> None:
            while True:
                body = b'{"schema":"nebuliser.telemetry","statuses":%d}' % statuses
                await client.publish("bench/reference/telemetry", body * 6, qos=1)
                await asyncio.sleep(1.0)

        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(publish())
            async for event in link.events():
                if isinstance(event, StatusReceived):
                    statuses += 1


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
