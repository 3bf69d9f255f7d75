"""Broker kill → backlog delivered: how fast a controller catches up after a broker crash.

A private Mosquitto is SIGKILLed `--kills` times (down `--down-s` each time, then
restarted on the same port). Two publishers run through the same kills:

* **controller** — a real `nebuliser serve` (simulator on a pty, telemetry 10 Hz,
  the shipped reconnect back-off: 0.2 s first wait, 1 s cap) queueing in its outbox;
* **bare paho** (reference) — a paho-mqtt client publishing a numbered QoS 1
  message at 10 Hz with paho's own offline queue and its default automatic
  reconnect (1 s first wait, doubling up to 120 s).

A paho subscriber with a persistent session (fixed client id, clean_start=False,
session expiry 300 s; it reconnects every 50 ms) records the arrival of every
message. For each kill and each publisher, *recovery* is the time from the moment the
restarted broker accepts connections to the arrival of the last message that was
created before that moment (the backlog of the outage); target ≤ 2 s for the
controller. Messages that never arrived (PUBACKed by the broker just before a
SIGKILL, not yet saved or delivered) are counted separately: the controller's
subscribers recover those by backfill (docs/mqtt.md), bare paho cannot.

Run: uv run python bench/recovery.py [--kills 10] [--down-s 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._bed import controller_process, machine, stop_process, wait_status, write_bench_config
from controller.benchconfig import bench_mqtt_section
from controller.telemetry import MosquittoBroker, MqttSettings

TARGET_RECOVERY_S = 2.0
REFERENCE_TOPIC = "bench/reference"


class Subscriber:
    """Persistent-session paho subscriber: arrival time and creation time per seq."""

    def __init__(self, host: str, port: int) -> None:
        self.lock = threading.Lock()
        # source -> seq -> (created epoch s, arrived epoch s)
        self.seen: dict[str, dict[int, tuple[float, float]]] = {"controller": {}, "paho": {}}
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id="bench-recovery-sub",
            protocol=mqtt.MQTTv5,
        )
        self.client.reconnect_delay_set(min_delay=0.05, max_delay=0.05)  # type: ignore[arg-type]
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 300
        self.client.connect(host, port, clean_start=False, properties=properties)
        self.client.loop_start()

    def _on_connect(self, client: Any, *_args: Any) -> None:
        client.subscribe([("nebuliser/v1/#", 1), (REFERENCE_TOPIC, 1)])

    def _on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        arrived = time.time()
        if message.retain:
            return
        body = json.loads(message.payload)
        if message.topic == REFERENCE_TOPIC:
            source, seq, created = "paho", int(body["n"]), float(body["t"])
        elif "seq" in body and message.topic.endswith("/telemetry"):
            source, seq = "controller", int(body["seq"])
            created = datetime.fromisoformat(body["utc"].replace("Z", "+00:00")).timestamp()
        else:
            return
        with self.lock:
            self.seen[source].setdefault(seq, (created, arrived))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class PahoPublisher(threading.Thread):
    """The reference: numbered QoS 1 messages at 10 Hz, paho's own queue and reconnect."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(daemon=True)
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="bench-recovery-paho", protocol=mqtt.MQTTv5
        )
        self.client.max_queued_messages_set(0)  # unbounded offline queue
        self.client.connect(host, port)
        self.client.loop_start()
        self.stop = threading.Event()
        self.sent = 0

    def run(self) -> None:
        next_at = time.monotonic()
        while not self.stop.is_set():
            self.sent += 1
            body = json.dumps({"n": self.sent, "t": time.time()})
            self.client.publish(REFERENCE_TOPIC, body, qos=1)
            next_at += 0.1
            time.sleep(max(0.0, next_at - time.monotonic()))

    def close(self) -> None:
        self.stop.set()
        self.join()
        self.client.loop_stop()
        self.client.disconnect()


def recovery_s(
    seen: dict[int, tuple[float, float]], up_at: float, down_at: float
) -> tuple[float | None, int]:
    """(broker up → arrival of the outage's whole backlog, seqs of it never arrived).

    The backlog is every seq after the last one that arrived before the kill, up to
    the first one created after the restart; None when part of it never arrived.
    """
    before = [seq for seq, (_created, arrived) in seen.items() if arrived < down_at]
    after = [seq for seq, (created, _arrived) in seen.items() if created >= up_at]
    if not before or not after:
        return None, 0
    backlog = range(max(before) + 1, min(after))
    missing = sum(1 for seq in backlog if seq not in seen)
    arrivals = [seen[seq][1] for seq in backlog if seq in seen]
    if missing or not arrivals:
        return None, missing
    return max(arrivals) - up_at, 0


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--down-s", type=float, default=3.0)
    parser.add_argument("--up-s", type=float, default=4.0, help="time between restart and kill")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print("command: uv run python bench/recovery.py " + " ".join(sys.argv[1:]))
    defaults = MqttSettings()
    outages: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        (directory / "mosquitto").mkdir()
        async with MosquittoBroker(workdir=directory / "mosquitto") as broker:
            simulator = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "controller.cli", "simulate", "--pty",
                "--link", str(directory / "mn1"),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            assert simulator.stdout is not None
            await simulator.stdout.readline()
            mqtt_section = bench_mqtt_section(
                host=broker.host, port=broker.port, client_id="bench-recovery-ctl",
                telemetry_hz=10, keepalive_s=defaults.keepalive_s,
                reconnect_initial_s=defaults.reconnect_initial_s,
                reconnect_max_s=defaults.reconnect_max_s,
                publish_timeout_s=defaults.publish_timeout_s,
            )  # fmt: skip
            config_path, config = write_bench_config(
                directory, port=str(directory / "mn1"), session_ul=200, mqtt=mqtt_section
            )
            subscriber = Subscriber(broker.host, broker.port)
            reference = PahoPublisher(broker.host, broker.port)
            reference.start()
            controller = await controller_process(config_path)
            try:
                await wait_status(config, lambda s: s["link_up"], 20)
                await asyncio.sleep(args.up_s)
                for kill in range(args.kills):
                    down_at = time.time()
                    broker.kill()
                    await asyncio.sleep(args.down_s)
                    await asyncio.to_thread(broker.restart)
                    up_at = time.time()
                    outages.append((down_at, up_at))
                    print(f"  kill {kill + 1}/{args.kills}: down {up_at - down_at:.1f} s")
                    await asyncio.sleep(args.up_s)
            finally:
                await stop_process(controller)
                await stop_process(simulator)
                reference.close()
                subscriber.close()
    print(f"{'broker up → outage backlog delivered':40s} {'median s':>9s} {'max s':>7s} "
          f"{'missing':>8s}")  # fmt: skip
    figures: dict[str, list[float]] = {}
    for source in ("controller", "paho"):
        seen = subscriber.seen[source]
        results = [recovery_s(seen, up_at, down_at) for down_at, up_at in outages]
        values = [value for value, _ in results if value is not None]
        missing = sum(lost for _, lost in results)
        incomplete = sum(1 for value, _ in results if value is None)
        figures[source] = values if not incomplete else [float("inf")]
        label = "controller (nebuliser serve)" if source == "controller" else "reference: bare paho"
        worst = f"{max(values):7.2f}" if values and not incomplete else f"{'∞':>7s}"
        median = f"{statistics.median(values):9.2f}" if values else f"{'-':>9s}"
        print(f"{label:40s} {median} {worst} {missing:8d}   "
              f"({len(values)} kills complete, {incomplete} not)")  # fmt: skip
    controller_values = figures["controller"]
    ok = bool(controller_values) and max(controller_values) <= TARGET_RECOVERY_S
    print(
        f"target: controller backlog delivered ≤ {TARGET_RECOVERY_S:g} s after the broker is "
        f"back, every kill: {'met' if ok else 'MISSED'}"
    )


if __name__ == "__main__":
    asyncio.run(main())
