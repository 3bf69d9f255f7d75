"""The running controller publishes ward telemetry: a real Mosquitto, the simulator on a
real pty, the service in this process, monitors subscribed to the ward."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.benchconfig import bench_mqtt_section
from controller.config import NebuliserConfig
from controller.ledger import LEDGER_FILE_NAME, Ledger
from controller.telemetry import (
    AckRequest,
    BackfillAsk,
    MqttSettings,
    WardModel,
    WardMonitor,
    mqtt_client,
    publish_backfill_ask,
)
from simulators.mn1 import DeviceModel, run_pty_simulator
from tests.support.mosquitto import MosquittoBroker
from tests.telemetry.helpers import validate_payload

from ._setup import BENCH_SECURITY, write_config
from .test_service_pty import FAST_UL_MIN, running_controller, start_confirmed, wait_status

ROOT = "nebuliser/v1"


def mqtt_section(broker: MosquittoBroker, *, telemetry_hz: int = 5) -> str:
    """The `[mqtt]` table of a controller talking to the test broker (fast reconnect)."""
    return bench_mqtt_section(
        host=broker.host, port=broker.port, client_id="ctl-neb-test", telemetry_hz=telemetry_hz
    )


def monitor_settings(broker: MosquittoBroker) -> MqttSettings:
    """Settings for a ward monitor on the test broker."""
    return MqttSettings(
        host=broker.host,
        port=broker.port,
        client_id="monitor",
        keepalive_s=2,
        reconnect_initial_s=0.05,
        reconnect_max_s=0.3,
    )


@dataclass
class Capture:
    """Every message a raw subscriber saw, in arrival order."""

    messages: list[tuple[str, bytes, bool]] = field(default_factory=list)

    def bodies(self, suffix: str | None = None) -> list[dict[str, Any]]:
        """Decoded payloads, optionally only those on topics ending with `suffix`."""
        return [
            json.loads(payload)
            for topic, payload, _retain in self.messages
            if suffix is None or topic.endswith("/" + suffix)
        ]


@contextlib.asynccontextmanager
async def capturing(broker: MosquittoBroker) -> AsyncIterator[Capture]:
    """A plain subscriber on the whole tree (QoS 1) collecting every message."""
    capture = Capture()
    settings = monitor_settings(broker)
    async with mqtt_client(settings, client_id="capture") as client:
        await client.subscribe(f"{ROOT}/#", qos=1)

        async def read() -> None:
            async for message in client.messages:
                payload = message.payload if isinstance(message.payload, bytes) else b""
                capture.messages.append((str(message.topic), payload, bool(message.retain)))

        async with asyncio.TaskGroup() as group:
            reader = group.create_task(read())
            try:
                yield capture
            finally:
                reader.cancel()


@contextlib.asynccontextmanager
async def monitoring(
    broker: MosquittoBroker, *, sender: str, events: list[dict[str, Any]] | None = None
) -> AsyncIterator[WardMonitor]:
    """A `WardMonitor` (gap detection and backfill) running until the block ends;
    its normalised events are appended to `events` when given."""
    monitor = WardMonitor(
        settings=monitor_settings(broker),
        model=WardModel(root_topic=ROOT),
        sender=sender,
        on_events=events.extend if events is not None else None,
    )
    async with asyncio.TaskGroup() as group:
        group.create_task(monitor.run())
        await asyncio.wait_for(monitor.connected.wait(), 5)
        try:
            yield monitor
        finally:
            monitor.request_stop()


async def until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `predicate` every 20 ms; fail naming `what` after `timeout_s`."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.02)


def outbox_count(config: NebuliserConfig) -> int:
    """Rows still waiting in the controller's outbox."""
    with Ledger.open(config.storage.data_dir / LEDGER_FILE_NAME, read_only=True) as ledger:
        return ledger.outbox.count()


async def test_a_full_session_publishes_valid_messages_and_remote_ack_reaches_every_monitor(
    tmp_path: Path,
) -> None:
    workdir = tmp_path / "mosquitto"
    workdir.mkdir()
    model = DeviceModel(nominal_ul_min=FAST_UL_MIN, fill_ul=3000)
    async with (
        MosquittoBroker(workdir=workdir) as broker,
        run_pty_simulator(model) as sim,
        capturing(broker) as capture,
        monitoring(broker, sender="nurse-a") as nurse_a,
        monitoring(broker, sender="nurse-b") as nurse_b,
    ):
        _, config = write_config(
            tmp_path,
            port=sim.device_path,
            session_ul=200,
            extra=mqtt_section(broker),
            # The monitors' acks are unsigned: accepted only with this bench setting.
            security=BENCH_SECURITY + "allow_unsigned_alarm_ack = true\n",
        )
        async with running_controller(config):
            await wait_status(config, lambda s: s["link_up"] and s["device"], 5)
            # Telemetry flows while idle, so monitors never see a silent bed.
            await until(lambda: len(capture.bodies("telemetry")) >= 2, 5, "idle telemetry")
            assert (await start_confirmed(config))["started"]
            await wait_status(config, lambda s: s["last_session"] is not None, 10)
            refused = await start_confirmed(config)
            assert not refused["started"]
            # A fault: the head comes off; the alarm is raised and published.
            sim.apply(lambda m, now: m.set_condition("head_disconnected", True, now_ms=now))
            await until(
                lambda: any(
                    b["event"] == "raised" and b["alarm_code"] == "device_head_disconnected"
                    for b in capture.bodies("alarm")
                ),
                5,
                "the fault alarm on MQTT",
            )
            [row] = [r for r in nurse_a.model.rows(now_s=0) if r.bed == "bed-01"]
            nurse_a.acknowledge(
                AckRequest(
                    ward=row.ward,
                    bed=row.bed,
                    device_id="neb-test",
                    alarm_code="device_head_disconnected",
                )
            )

            def b_sees_ack() -> bool:
                rows = nurse_b.model.rows(now_s=0)
                return any(
                    a.alarm_code == "device_head_disconnected"
                    and a.acknowledged_by == "unsigned.nurse-a"
                    for r in rows
                    for a in r.alarms
                )

            await until(b_sees_ack, 5, "monitor B sees monitor A's acknowledgement")
            status = await wait_status(config, lambda s: s["alarms"], 2)
            [alarm] = [a for a in status["alarms"] if a["code"] == "device_head_disconnected"]
            assert alarm["acknowledged_by"] == "unsigned.nurse-a"
            await until(lambda: outbox_count(config) == 0, 5, "outbox drained")
            # A monitor that missed the first three messages asks for them again; the
            # controller answers from its sent-message archive.
            first_seq = min(b["seq"] for b in capture.bodies() if "seq" in b)
            async with mqtt_client(monitor_settings(broker), client_id="asker") as asker:
                await publish_backfill_ask(
                    asker,
                    root_topic=ROOT,
                    ask=BackfillAsk(
                        ward="ward-a",
                        bed="bed-01",
                        device_id="neb-test",
                        from_seq=first_seq,
                        to_seq=first_seq + 2,
                    ),
                    requester="asker",
                )
            await until(lambda: bool(capture.bodies("backfill/reply")), 5, "backfill reply")
            [reply] = capture.bodies("backfill/reply")
            assert [m["seq"] for m in reply["messages"]] == [
                first_seq,
                first_seq + 1,
                first_seq + 2,
            ]
            assert all(m["historical"] for m in reply["messages"])
            assert reply["unavailable"] == []
        # After a clean stop the bed says it is offline (shutdown, not the Will).
        await until(
            lambda: any(not b["online"] for b in capture.bodies("presence")), 5, "presence off"
        )

    bodies = [validate_payload(payload) for _t, payload, _r in capture.messages]
    schemas = {b["schema"] for b in bodies}
    assert schemas >= {
        "nebuliser.presence",
        "nebuliser.state",
        "nebuliser.telemetry",
        "nebuliser.session",
        "nebuliser.decision",
        "nebuliser.alarm",
        "nebuliser.alarms_active",
    }
    sessions = capture.bodies("session")
    assert [s["event"] for s in sessions if not s["historical"]] == ["started", "ended"]
    ended = sessions[-1]
    assert ended["outcome"] == "completed"
    assert 0 < ended["delivered_ul"] <= ended["dose_cap_ul"] == 200
    decisions = [d["decision"] for d in capture.bodies("decision")]
    assert decisions.count("allow") >= 1
    assert "refuse" in decisions
    refusal = [d for d in capture.bodies("decision") if d["decision"] == "refuse"][-1]
    assert "interval" in {r["code"] for r in refusal["reasons"]}
    running = [t for t in capture.bodies("telemetry") if t["running"]]
    assert running
    assert max(t["delivered_ul"] for t in running) <= 200
    assert all(t["link_quality_pct"] > 0 for t in running)
    assert capture.bodies("presence")[-1]["reason"] == "shutdown"
    states = {s["session_state"] for s in capture.bodies("state")}
    assert {"idle", "nebulising"} <= states
    # Not blinded here: the prescription summary names the drug.
    assert capture.bodies("state")[-1]["prescription"]["blinded"] is False
    # Every seq exactly once (ignoring retained re-deliveries).
    seqs = [
        b["seq"]
        for (_t, _p, retain), b in zip(capture.messages, bodies, strict=True)
        if "seq" in b and not retain
    ]
    assert len(seqs) == len(set(seqs))
    # Contiguous (no gap); arrival order may differ: live rows go before backlog.
    assert sorted(seqs) == list(range(min(seqs), max(seqs) + 1))
    tracker = nurse_b.model.tracker("neb-test")
    assert not tracker.missing_since_s
    assert tracker.unrecoverable == 0
