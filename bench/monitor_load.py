"""Ward monitor: 1000 beds × 1 Hz telemetry through one broker; display lag.

A publisher subprocess (this script with `--publisher`) sends one valid
`nebuliser.telemetry` message per bed per second (1000 device ids, each with its
own seq), spread evenly over the second, QoS 1, to a private Mosquitto. The ward
monitor (`WardMonitor` + `WardModel`, the code behind `nebuliser monitor`) runs in
this process; each message's display lag = the moment the model has applied it −
the message's own UTC stamp. `rows()` (what the screen draws) is timed once a second.
Reference: the same messages' lag at a bare paho subscriber in this process
(receive only, no model), measured in the same run.

Run: uv run python bench/monitor_load.py [--beds 1000] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._bed import machine
from controller.telemetry import (
    DeviceIdentity,
    MosquittoBroker,
    MqttSettings,
    WardModel,
    WardMonitor,
    outbox_entry,
)

ROOT = "nebuliser/v1"
TARGET_LAG_S = 1.0


def publish(port: int, beds: int, seconds: float) -> None:
    """The load: `beds` devices at 1 Hz for `seconds` (run in a subprocess)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-load")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    identities = [
        DeviceIdentity(
            device_id=f"neb-{i:04d}",
            ward=f"ward-{i // 50:02d}",
            bed=f"bed-{i % 50:02d}",
            boot_id="bench",
        )
        for i in range(beds)
    ]
    began = time.monotonic()
    tick = 0
    while time.monotonic() - began < seconds:
        for index, identity in enumerate(identities):
            due = began + tick + index / beds
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            entry = outbox_entry(
                identity, root_topic=ROOT, schema="nebuliser.telemetry",
                utc=datetime.now(UTC), session_id=None, running=False, delivered_ul=0,
                cap_ul=0, flow_ul_min=0, reservoir_ul=3000, temperature_cC=2500, faults=[],
                link_quality_pct=100,
            )  # fmt: skip
            client.publish(entry.topic, entry.build(tick + 1), qos=1)
        tick += 1
    time.sleep(1.0)
    client.loop_stop()
    client.disconnect()


def _lag_s(payload: bytes | bytearray | dict[str, Any]) -> float:
    body = payload if isinstance(payload, dict) else json.loads(payload)
    utc = datetime.fromisoformat(str(body["utc"]).replace("Z", "+00:00"))
    return time.time() - utc.timestamp()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--beds", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--publisher", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.publisher:
        publish(args.publisher, args.beds, args.seconds)
        return
    print(f"machine: {machine()}")
    print("command: uv run python bench/monitor_load.py " + " ".join(sys.argv[1:]))
    lags: list[float] = []
    bare_lags: list[float] = []
    rows_ms: list[float] = []

    def on_events(events: list[dict[str, Any]]) -> None:
        lags.extend(_lag_s(event) for event in events if event.get("event") == "telemetry")

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "mosquitto").mkdir()
        async with MosquittoBroker(workdir=Path(tmp) / "mosquitto") as broker:
            bare = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-bare")
            bare.on_message = lambda _c, _u, m: bare_lags.append(_lag_s(m.payload))
            bare.connect(broker.host, broker.port)
            bare.subscribe(f"{ROOT}/+/+/telemetry", qos=1)
            bare.loop_start()
            model = WardModel(root_topic=ROOT)
            settings = MqttSettings(host=broker.host, port=broker.port, client_id="bench-monitor")
            monitor = WardMonitor(
                settings=settings, model=model, sender="bench", on_events=on_events
            )
            async with asyncio.TaskGroup() as group:
                group.create_task(monitor.run())
                await asyncio.wait_for(monitor.connected.wait(), 10)
                load = await asyncio.create_subprocess_exec(
                    sys.executable, __file__, "--publisher", str(broker.port),
                    "--beds", str(args.beds), "--seconds", str(args.seconds),
                )  # fmt: skip
                while load.returncode is None:
                    began = time.perf_counter()
                    rows = model.rows(now_s=time.monotonic())
                    rows_ms.append((time.perf_counter() - began) * 1000)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(load.wait(), 1.0)
                await asyncio.sleep(1.0)
                monitor.request_stop()
            bare.loop_stop()
            bare.disconnect()
    expected = int(args.beds * args.seconds)

    def row(label: str, values: list[float]) -> str:
        ordered = sorted(values) or [float("nan")]
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        return (f"{label:36s} {len(values):7d} {statistics.median(ordered):8.3f} "
                f"{p99:8.3f} {ordered[-1]:8.3f}")  # fmt: skip

    print(f"{args.beds} beds × 1 Hz for {args.seconds:g} s: ~{expected} messages; "
          f"{len(rows)} rows on screen")  # fmt: skip
    print(f"{'measure':36s} {'n':>7s} {'p50 s':>8s} {'p99 s':>8s} {'max s':>8s}")
    print(row("reference: bare paho subscriber lag", bare_lags))
    print(row("WardMonitor display lag", lags))
    print(f"rows() for the screen: median {statistics.median(rows_ms):.1f} ms, "
          f"max {max(rows_ms):.1f} ms")  # fmt: skip
    worst = max(lags) if lags else float("inf")
    verdict = "met" if worst <= TARGET_LAG_S and len(lags) >= len(bare_lags) * 0.99 else "MISSED"
    print(f"target display lag ≤ {TARGET_LAG_S:g} s: {verdict} (max {worst:.3f} s)")


if __name__ == "__main__":
    asyncio.run(main())
