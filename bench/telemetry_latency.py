"""Device STATUS → MQTT subscriber latency, against a bare paho publish → subscribe.

A real `nebuliser serve` (with `[mqtt]`) talks over a pty to the scripted head
(`bench/_bed.py`) and publishes to a private Mosquitto. For each sample a session
runs, the head writes one STATUS carrying a fault bit 50–250 ms into it (time-stamped
in the head's thread), and a paho subscriber in the same process time-stamps the arrival of the
`nebuliser.alarm` message (event "raised") it causes: the whole path STATUS bytes →
decode → alarm rule → ledger transaction with its outbox row → publisher → broker →
subscriber. Reference, same broker, same run: the two hops no controller can avoid,
chained — 30 bytes written on a pty master, read on the slave by a thread that at once
publishes with bare paho (QoS 1), until the subscriber receives it. Bare paho publish
→ subscribe alone is printed too.

Run: uv run python bench/telemetry_latency.py [--samples 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._bed import (
    ScriptedHead,
    controller_process,
    machine,
    start_confirmed,
    stop_process,
    wait_status,
    write_bench_config,
)
from bench.serial_backends import new_pty
from controller.telemetry import MosquittoBroker

TARGET_RATIO = 2.0  # issue 14: within 2× of the serial + broker hops


class AlarmWatcher:
    """Stamps (perf_counter_ns) each raised alarm message."""

    def __init__(self, host: str, port: int) -> None:
        self.raised_ns: list[int] = []
        self.event = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-alarms")
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.subscribe("+/+/+/+/alarm", qos=1)
        self.client.subscribe("+/+/+/alarm", qos=1)
        self.client.loop_start()

    def _on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        now = time.perf_counter_ns()
        body = json.loads(message.payload)
        if body.get("event") == "raised" and body.get("alarm_code") == "device_internal":
            self.raised_ns.append(now)
            self.event.set()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def bare_paho_ms(host: str, port: int, samples: int = 500) -> list[float]:
    """Bare paho: QoS 1 publish → the same process's subscriber receives (ms)."""
    got = threading.Event()
    arrived: list[int] = []

    def on_message(_c: Any, _u: Any, _m: Any) -> None:
        arrived.append(time.perf_counter_ns())
        got.set()

    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-ref-sub")
    sub.on_message = on_message
    sub.connect(host, port)
    sub.subscribe("bench/ref", qos=1)
    sub.loop_start()
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-ref-pub")
    pub.connect(host, port)
    pub.loop_start()
    time.sleep(0.5)
    values = []
    for _ in range(samples):
        got.clear()
        began = time.perf_counter_ns()
        pub.publish("bench/ref", b"x" * 400, qos=1)
        if not got.wait(2):
            raise RuntimeError("reference message lost")
        values.append((arrived[-1] - began) / 1e6)
        time.sleep(0.005)
    for client in (pub, sub):
        client.loop_stop()
        client.disconnect()
    return values


def serial_then_paho_ms(host: str, port: int, samples: int = 500) -> list[float]:
    """pty master write → slave read → bare paho QoS 1 publish → subscriber (ms)."""
    got = threading.Event()
    arrived: list[int] = []

    def on_message(_c: Any, _u: Any, _m: Any) -> None:
        arrived.append(time.perf_counter_ns())
        got.set()

    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-hop-sub")
    sub.on_message = on_message
    sub.connect(host, port)
    sub.subscribe("bench/hop", qos=1)
    sub.loop_start()
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-hop-pub")
    pub.connect(host, port)
    pub.loop_start()
    master_fd, slave_fd, _ = new_pty()

    def forward() -> None:  # the serial side: read a frame, publish it at once
        while True:
            try:
                data = os.read(slave_fd, 4096)
            except OSError:
                return
            if not data:
                return
            pub.publish("bench/hop", data * 13, qos=1)  # about an alarm message's size

    threading.Thread(target=forward, daemon=True).start()
    time.sleep(0.5)
    values = []
    frame = bytes(range(30))  # about one STATUS frame
    for _ in range(samples):
        got.clear()
        began = time.perf_counter_ns()
        os.write(master_fd, frame)
        if not got.wait(2):
            raise RuntimeError("reference message lost")
        values.append((arrived[-1] - began) / 1e6)
        time.sleep(0.005)
    for client in (pub, sub):
        client.loop_stop()
        client.disconnect()
    os.close(slave_fd)
    os.close(master_fd)
    return values


def summary(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values)
    return (
        statistics.median(ordered),
        ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        ordered[-1],
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print("command: uv run python bench/telemetry_latency.py " + " ".join(sys.argv[1:]))
    latencies: list[float] = []
    rng = random.Random(1)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        (directory / "mosquitto").mkdir()
        async with MosquittoBroker(workdir=directory / "mosquitto") as broker:
            bare = bare_paho_ms(broker.host, broker.port)
            reference = serial_then_paho_ms(broker.host, broker.port)
            master_fd, _slave_fd, path = new_pty()
            head = ScriptedHead(master_fd)
            head.start()
            watcher = AlarmWatcher(broker.host, broker.port)
            mqtt_section = (
                f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n'
                'client_id = "ctl-bench"\ntelemetry_hz = 1\n'
            )
            config_path, config = write_bench_config(
                directory, port=path, session_ul=500, mqtt=mqtt_section, min_interval_s=None
            )
            controller = await controller_process(config_path)
            try:
                await wait_status(config, lambda s: s["link_up"] and s["state"] == "idle", 15)
                await asyncio.sleep(1.0)
                for _ in range(args.samples):
                    reply = await start_confirmed(config)
                    if not reply.get("started"):
                        raise RuntimeError(f"start refused: {reply}")
                    await wait_status(config, lambda s: s["state"] == "nebulising", 5)
                    # Mid-session, as a fault comes: not while the started row is still
                    # being written (that write would be measured too).
                    await asyncio.sleep(rng.uniform(0.05, 0.25))
                    watcher.event.clear()
                    head.trigger("fault")
                    if not await asyncio.to_thread(watcher.event.wait, 5.0):
                        raise RuntimeError("no alarm message after a fault STATUS")
                    assert head.trigger_written_ns is not None
                    latencies.append((watcher.raised_ns[-1] - head.trigger_written_ns) / 1e6)
                    await wait_status(config, lambda s: s["session"] is None, 5)
            finally:
                await stop_process(controller)
                watcher.close()
                head.close()
    ref = summary(reference)
    got = summary(latencies)
    paho = summary(bare)
    print(f"{'measure':44s} {'p50 ms':>8s} {'p99 ms':>8s} {'max ms':>8s}")
    print(f"{'bare paho QoS1 pub → sub (n=500)':44s} {paho[0]:8.2f} {paho[1]:8.2f} {paho[2]:8.2f}")
    label = "reference: pty hop + bare paho (n=500)"
    print(f"{label:44s} {ref[0]:8.2f} {ref[1]:8.2f} {ref[2]:8.2f}")
    label = f"fault STATUS → alarm at subscriber (n={len(latencies)})"
    p99_text = "max of n" if len(latencies) < 1000 else f"{got[1]:8.2f}"
    print(f"{label:44s} {got[0]:8.2f} {p99_text:>8s} {got[2]:8.2f}")
    ratio = got[0] / ref[0]
    print(f"p50 ratio {ratio:.2f}× the reference; target ≤ {TARGET_RATIO}×: "
          f"{'met' if ratio <= TARGET_RATIO else 'MISSED'}")  # fmt: skip
    print(f"load average (1, 5, 15 min): {os.getloadavg()}")


if __name__ == "__main__":
    asyncio.run(main())
