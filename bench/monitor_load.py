"""Ward monitor: 1000 beds × 1 Hz telemetry through one broker; display lag as a
person sees it, render included.

A publisher subprocess (this script with `--publisher`) sends one valid
`nebuliser.telemetry` message per bed per second (1000 device ids, each with its
own seq), spread evenly over the second, QoS 1, to a private Mosquitto. The live
view of `nebuliser monitor` (`run_live`: `WardMonitor` + `WardModel` + the paged
rich table) runs in this process and draws into a 160×50 terminal (written to
/dev/null). Display lag of a message = the moment the frame that first shows it
has been written − the message's own UTC stamp; only beds on the visible page can
be shown, so only their messages count (the others are counted as applied).
Reference: the same messages' lag at a bare paho subscriber in this process
(receive only, no model), measured in the same run. CPU and peak RSS are this
process's (monitor and paho reference together).

Run: uv run python bench/monitor_load.py [--beds 1000] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
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

from rich.console import Console

from bench._bed import machine
from controller.cli.monitor import run_live
from controller.telemetry import (
    BedRow,
    DeviceIdentity,
    MosquittoBroker,
    MqttSettings,
    WardModel,
    outbox_entry,
)

ROOT = "nebuliser/v1"
TARGET_LAG_S = 2.0  # issue 17: 1000 beds × 1 Hz, lag ≤ 2 s including render


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


def _row(label: str, values: list[float]) -> str:
    ordered = sorted(values) or [float("nan")]
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (f"{label:40s} {len(values):7d} {statistics.median(ordered):8.3f} "
            f"{p99:8.3f} {ordered[-1]:8.3f}")  # fmt: skip


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
    render_gaps_s: list[float] = []
    shown: dict[tuple[str, str], datetime] = {}
    last_render = [0.0]

    def on_render(rows: list[BedRow], done_at: float) -> None:
        if last_render[0]:
            render_gaps_s.append(done_at - last_render[0])
        last_render[0] = done_at
        for row in rows:
            key = (row.ward, row.bed)
            if row.data_utc is not None and shown.get(key) != row.data_utc:
                shown[key] = row.data_utc
                lags.append(done_at - row.data_utc.timestamp())

    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    wall_before = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "mosquitto").mkdir()
        async with MosquittoBroker(workdir=Path(tmp) / "mosquitto") as broker:
            bare = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-bare")
            bare.on_message = lambda _c, _u, m: bare_lags.append(_lag_s(m.payload))
            bare.connect(broker.host, broker.port)
            bare.subscribe(f"{ROOT}/+/+/telemetry", qos=1)
            bare.loop_start()
            model = WardModel(root_topic=ROOT, message_events=False)
            settings = MqttSettings(host=broker.host, port=broker.port, client_id="bench-monitor")
            with open(os.devnull, "w") as screen:  # noqa: ASYNC230 (a sink)
                console = Console(file=screen, width=160, height=50, force_terminal=True)
                async with asyncio.TaskGroup() as group:
                    load = await asyncio.create_subprocess_exec(
                        sys.executable, __file__, "--publisher", str(broker.port),
                        "--beds", str(args.beds), "--seconds", str(args.seconds),
                    )  # fmt: skip
                    group.create_task(
                        run_live(settings, model, "bench", None, args.seconds + 3,
                                 console=console, on_render=on_render, keyboard=False)
                    )  # fmt: skip
                    await load.wait()
            bare.loop_stop()
            bare.disconnect()
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    wall_s = time.monotonic() - wall_before
    cpu_s = (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime)
    applied = sum(len(model.tracker(d).seen) for d in (f"neb-{i:04d}" for i in range(args.beds)))
    expected = int(args.beds * args.seconds)
    print(f"{args.beds} beds × 1 Hz for {args.seconds:g} s: ~{expected} messages, "
          f"{applied} applied to the model; 160×50 terminal")  # fmt: skip
    print(f"{'measure':40s} {'n':>7s} {'p50 s':>8s} {'p99 s':>8s} {'max s':>8s}")
    print(_row("reference: bare paho subscriber lag", bare_lags))
    print(_row("monitor display lag (render included)", lags))
    print(_row("time between frames", render_gaps_s))
    print(f"this process: CPU {100 * cpu_s / wall_s:.0f} % of one core over {wall_s:.0f} s, "
          f"peak RSS {cpu_after.ru_maxrss / 1024:.0f} MiB")  # fmt: skip
    ordered = sorted(lags)
    p99 = ordered[int(len(ordered) * 0.99)] if ordered else float("inf")
    verdict = "met" if p99 <= TARGET_LAG_S and applied >= len(bare_lags) * 0.99 else "MISSED"
    print(f"target display lag p99 ≤ {TARGET_LAG_S:g} s including render: {verdict} "
          f"(p99 {p99:.3f} s, max {max(ordered, default=float('inf')):.3f} s)")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
