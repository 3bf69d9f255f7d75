"""A ward subscriber that misses nothing, with plain paho-mqtt (no project code).

It follows the replay contract of docs/mqtt.md ("What a subscriber must do to miss
nothing"):

1. a **persistent session**: a fixed client id, `clean_start=False` and a session
   expiry, so the broker queues QoS 1 messages for it while it is disconnected;
   it subscribes again on every connect (a broker that lost the session, e.g. one
   restarted without persistence, needs it);
2. **sequence numbers**: each controller numbers its messages (`seq`, per device,
   never reused); a missing seq is a gap;
3. **backfill**: a gap still open after a grace time is asked for on the bed's
   `backfill/request` topic; the controller answers on `backfill/reply` with the
   archived messages and the seqs it can no longer provide (`unavailable`).

Output: one JSON line per message seen for the first time
(`{"device_id": …, "seq": …, "schema": …, "historical": …}`), one per seq given up
(`{"unavailable": …}`), and `{"subscribed": true}` after each (re)subscription.

Run:
    python docs/examples/paho_subscriber.py --host ward-broker.local --port 1883 \\
        --client-id ward7-display-1 --ward W7
(`pip install paho-mqtt` ≥ 2.0.) Stop with Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

GAP_GRACE_S = 1.0  # QoS 1 re-delivery usually fills a gap by itself first
ASK_AGAIN_S = 3.0  # ask again for a range still missing after this long
SESSION_EXPIRY_S = 3600  # the broker keeps our queue for an hour offline


class Device:
    """Seq bookkeeping for one controller."""

    def __init__(self, ward: str, bed: str) -> None:
        self.ward, self.bed = ward, bed
        self.seen: set[int] = set()
        self.high = 0  # highest seq seen live (0: no baseline yet)
        self.missing: dict[int, float] = {}  # seq -> when it went missing
        self.asked_at = 0.0


class Subscriber:
    def __init__(self, args: argparse.Namespace) -> None:
        self.root, self.ward = args.root, args.ward
        self.devices: dict[str, Device] = {}
        self.lock = threading.Lock()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=args.client_id, protocol=mqtt.MQTTv5
        )
        if args.username:
            self.client.username_pw_set(args.username, args.password)
        if args.cafile:
            self.client.tls_set(ca_certs=args.cafile)
        self.client.reconnect_delay_set(min_delay=0.1, max_delay=1)  # type: ignore[arg-type]
        self.client.on_connect = self.on_connect
        self.client.on_message = self.on_message
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = SESSION_EXPIRY_S
        self.client.connect_async(
            args.host, args.port, keepalive=10, clean_start=False, properties=properties
        )

    def on_connect(
        self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _p: Any
    ) -> None:
        if reason.is_failure:
            return
        client.subscribe(f"{self.root}/{self.ward}/+/#", qos=1)
        emit({"subscribed": True})

    def on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            body = json.loads(message.payload)
        except ValueError:
            return
        if not isinstance(body, dict) or "seq" not in body:
            return  # presence, and requests from other monitors, carry no seq
        with self.lock:
            self.handle(body, retained=bool(message.retain))

    def handle(self, body: dict[str, Any], *, retained: bool) -> None:
        device = self.devices.setdefault(body["device_id"], Device(body["ward"], body["bed"]))
        seq = int(body["seq"])
        if seq in device.seen:
            return  # a duplicate (QoS 1 re-delivery, a replay, a republish)
        device.seen.add(seq)
        emit({"device_id": body["device_id"], "seq": seq, "schema": body.get("schema"),
              "historical": bool(body.get("historical"))})  # fmt: skip
        device.missing.pop(seq, None)
        if retained:
            pass  # a retained copy may be old: it never sets the baseline
        elif device.high == 0:
            device.high = seq  # the first live message is the baseline
        elif seq > device.high:
            now = time.monotonic()
            for gap in range(device.high + 1, seq):
                if gap not in device.seen:
                    device.missing[gap] = now
            device.high = seq
        if body.get("schema") == "nebuliser.backfill_reply":
            for embedded in body.get("messages", []):
                self.handle(embedded, retained=False)
            for lost in body.get("unavailable", []):
                if device.missing.pop(lost, None) is not None:
                    device.seen.add(lost)
                    emit({"device_id": body["device_id"], "unavailable": lost})

    def ask_for_gaps(self) -> None:
        now = time.monotonic()
        with self.lock:
            for device_id, device in self.devices.items():
                due = sorted(s for s, since in device.missing.items() if now - since >= GAP_GRACE_S)
                if not due or now - device.asked_at < ASK_AGAIN_S:
                    continue
                device.asked_at = now
                for first, last in ranges(due):
                    request = {
                        "schema": "nebuliser.backfill_request", "schema_version": 1,
                        "utc": datetime.now(UTC).isoformat(timespec="milliseconds")
                        .replace("+00:00", "Z"),
                        "request_id": uuid.uuid4().hex[:12], "requester": "paho-example",
                        "device_id": device_id, "from_seq": first, "to_seq": last,
                    }  # fmt: skip
                    topic = f"{self.root}/{device.ward}/{device.bed}/backfill/request"
                    self.client.publish(topic, json.dumps(request), qos=1)


def ranges(seqs: list[int]) -> list[tuple[int, int]]:
    """[3, 4, 5, 9] -> [(3, 5), (9, 9)]."""
    out: list[tuple[int, int]] = []
    for seq in seqs:
        if out and out[-1][1] == seq - 1:
            out[-1] = (out[-1][0], seq)
        else:
            out.append((seq, seq))
    return out


def emit(line: dict[str, Any]) -> None:
    print(json.dumps(line), flush=True)  # noqa: T201 - the example's output is its stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--client-id", required=True, help="fixed and unique on the broker")
    parser.add_argument("--ward", default="+", help="one ward, or + for every ward")
    parser.add_argument("--root", default="nebuliser/v1")
    parser.add_argument("--username")
    parser.add_argument("--password")
    parser.add_argument("--cafile", help="CA certificate for TLS")
    args = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    subscriber = Subscriber(args)
    subscriber.client.loop_start()
    try:
        while not stop.wait(0.2):
            subscriber.ask_for_gaps()
    except KeyboardInterrupt:
        pass
    subscriber.client.loop_stop()
    subscriber.client.disconnect()
    return 0


if __name__ == "__main__":
    sys.exit(main())
