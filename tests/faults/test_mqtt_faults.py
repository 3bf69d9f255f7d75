"""Broker and network faults between a real controller process and a real Mosquitto.

The controller (`nebuliser serve` subprocess) publishes through a TCP proxy the test
controls; a ward monitor (`WardMonitor`, gap detection and backfill) subscribes to the
broker directly. A network partition (black hole) and a broker SIGKILL + restart
happen during a session; afterwards every telemetry sequence number from the first
one the monitor saw up to the newest must have reached the monitor, none given up.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from controller.benchconfig import bench_mqtt_section
from controller.telemetry import WardMonitor
from tests.controller.test_mqtt_service import capturing, monitoring, outbox_count, until
from tests.support.mosquitto import MosquittoBroker

from ._harness import (
    ControllerProcess,
    ScenarioReport,
    SimulatorProcess,
    record,
    start_confirmed,
    wait_status,
    write_fault_config,
)
from ._proxy import TcpProxy, tcp_proxy

DEVICE_ID = "neb-fault"


def _mqtt_section(proxy: TcpProxy) -> str:
    return bench_mqtt_section(
        host="127.0.0.1", port=proxy.port, client_id="ctl-neb-fault", telemetry_hz=10
    )


def _missing(monitor: WardMonitor, last_seq: int) -> list[int]:
    tracker = monitor.model.tracker(DEVICE_ID)
    if tracker.baseline_seq is None:
        return [-1]
    return sorted(set(range(tracker.baseline_seq, last_seq + 1)) - tracker.seen)


async def test_partition_and_broker_kill_lose_no_telemetry_sequence(tmp_path: Path) -> None:
    report_partition = record(ScenarioReport(scenario="MQTT: network partition 4 s (proxy)"))
    report_broker = record(ScenarioReport(scenario="MQTT: broker SIGKILL + restart"))
    workdir = tmp_path / "mosquitto"
    workdir.mkdir()
    events: list[dict[str, Any]] = []
    async with (
        MosquittoBroker(workdir=workdir) as broker,
        tcp_proxy(broker.host, broker.port) as proxy,
        SimulatorProcess.running(tmp_path / "sim") as sim,
        monitoring(broker, sender="station", events=events) as monitor,
    ):
        config_path, config = write_fault_config(
            tmp_path, port=str(sim.link_path), session_ul=1000, mqtt=_mqtt_section(proxy)
        )
        async with ControllerProcess.running(config_path) as controller:
            await controller.spawn()
            await wait_status(config, lambda s: s["link_up"] and s["state"] == "idle", 15)
            await until(lambda: monitor.model.tracker(DEVICE_ID).high_seq > 3, 10, "telemetry")
            assert (await start_confirmed(config))["started"]
            await asyncio.sleep(0.5)
            proxy.partition()
            await asyncio.sleep(4.0)  # > keepalive × 1.5: the controller notices
            proxy.heal()
            await asyncio.sleep(1.0)
            broker.kill()
            await asyncio.sleep(1.0)
            broker.restart()
            await wait_status(config, lambda s: s["last_session"] is not None, 20)
            loop = asyncio.get_running_loop()
            healed_at = loop.time()
            await until(lambda: outbox_count(config) == 0, 20, "outbox drained")
            drained_s = loop.time() - healed_at
            async with capturing(broker) as capture:
                await until(lambda: len(capture.bodies("telemetry")) >= 1, 5, "live telemetry")
                last_seq = capture.bodies("telemetry")[0]["seq"]
            with contextlib.suppress(AssertionError):  # reported below with the missing seqs
                await until(lambda: not _missing(monitor, last_seq), 20, "every seq once")
            await controller.terminate()
    tracker = monitor.model.tracker(DEVICE_ID)
    missing = _missing(monitor, last_seq)
    replayed = [e for e in events if e.get("event") == "telemetry" and e.get("historical")]
    for report in (report_partition, report_broker):
        report.runs = 1
        if missing:
            report.violations.append(f"seqs never reached the monitor: {missing[:20]}")
        if tracker.unrecoverable:
            report.violations.append(f"{tracker.unrecoverable} seqs given up by the monitor")
    figure = (
        f"seqs {tracker.baseline_seq}..{last_seq} all seen; {len(replayed)} replayed as "
        f"historical; outbox empty {drained_s:.1f} s after the session"
    )
    report_partition.worst = report_broker.worst = figure
    assert proxy.connections >= 2, "the controller never reconnected through the proxy"
    assert not report_partition.violations, report_partition.violations
