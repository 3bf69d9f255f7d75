"""The demo's ward station (`nebuliser demo --station`): the station page served on
loopback for the demo ward, and a pause at the end so a newcomer can look at it."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator

from controller.telemetry import MosquittoBroker, MqttSettings

__all__ = ["demo_station", "linger"]

STATION_HINT = "see the ward in a browser: uv run nebuliser demo --station"


@contextlib.asynccontextmanager
async def demo_station(
    broker: MosquittoBroker | None, *, wanted: bool, ward: str
) -> AsyncIterator[str | None]:
    """A view-only station on 127.0.0.1 (a free port) for the demo ward; yields its
    URL, or None when not wanted or without MQTT."""
    if not wanted or broker is None:
        yield None
        return
    # The web stack loads only when the demo serves the page.
    from controller.station import Station, StationOptions  # noqa: PLC0415

    settings = MqttSettings(
        host=broker.host, port=broker.port, client_id="demo-web-station", reconnect_max_s=1.0
    )
    station = Station(
        StationOptions(mqtt=settings, listen_port=0, ward=ward, title=f"Ward {ward} (demo)")
    )
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(station.run())
        await asyncio.wait_for(station.started.wait(), 30)
        print(f"ward station (web page): {station.url}  open it in a browser")
        try:
            yield station.url
        finally:
            station.request_stop()


async def linger(url: str | None) -> None:
    """With a station and a terminal: keep the ward running until Enter or Ctrl-C."""
    if url is None:
        print(STATION_HINT)
        return
    if not sys.stdin.isatty():
        return
    print(f"the demo ward stays up for the station at {url}: press Enter to stop")
    pressed = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_reader(sys.stdin.fileno(), pressed.set)
    try:
        await pressed.wait()
    finally:
        loop.remove_reader(sys.stdin.fileno())
