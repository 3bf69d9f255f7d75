"""Outages during a session: the broker SIGKILLed and restarted three times (nothing
lost, backlog flagged historical), and the controller process SIGKILLed and restarted
(seqs continue without reuse, a new boot id, the Last Will marks the bed offline)."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

from controller.telemetry import WardMonitor
from simulators.mn1 import DeviceModel, run_pty_simulator
from tests.support.mosquitto import MosquittoBroker
from tests.telemetry.helpers import validate_payload

from ._setup import write_config
from .test_mqtt_service import (
    capturing,
    monitoring,
    mqtt_section,
    outbox_count,
    until,
)
from .test_service_pty import running_controller, start_confirmed, wait_status


def validate_json(payload: bytes) -> dict[str, Any]:
    """A published payload, checked against its exported JSON Schema."""
    body = validate_payload(payload)
    assert json.loads(payload) == body
    return body


def _seen_all(monitor: WardMonitor, device_id: str, last_seq: int) -> bool:
    tracker = monitor.model.tracker(device_id)
    if tracker.baseline_seq is None:
        return False
    expected = set(range(tracker.baseline_seq, last_seq + 1))
    return expected <= tracker.seen


async def test_broker_killed_three_times_mid_session_loses_nothing(tmp_path: Path) -> None:
    workdir = tmp_path / "mosquitto"
    workdir.mkdir()
    model = DeviceModel(nominal_ul_min=3000, fill_ul=3000)  # 50 µL/s: ~8 s session
    events: list[dict[str, Any]] = []
    async with (
        MosquittoBroker(workdir=workdir) as broker,
        run_pty_simulator(model) as sim,
        monitoring(broker, sender="station", events=events) as monitor,
    ):
        _, config = write_config(
            tmp_path,
            port=sim.device_path,
            session_ul=400,
            extra=mqtt_section(broker, telemetry_hz=10),
        )
        async with running_controller(config):
            await wait_status(config, lambda s: s["link_up"] and s["device"], 5)
            await until(lambda: monitor.model.tracker("neb-test").high_seq > 3, 5, "telemetry")
            assert (await start_confirmed(config))["started"]
            for _ in range(3):
                await asyncio.sleep(0.6)
                broker.kill()  # SIGKILL: a crash, queued messages of the last second lost
                await asyncio.sleep(0.7)  # the controller keeps sampling into its outbox
                broker.restart()
            status = await wait_status(config, lambda s: s["last_session"] is not None, 15)
            assert status["last_session"]["delivered_ul"] <= 400
            await until(lambda: outbox_count(config) == 0, 10, "outbox drained")
            async with capturing(broker) as capture:
                # The next live message tells us the newest seq; then every seq up to
                # it must have reached the monitor (live, replayed or backfilled).
                await until(lambda: len(capture.bodies("telemetry")) >= 1, 5, "live telemetry")
                last_seq = capture.bodies("telemetry")[0]["seq"]
                await until(lambda: _seen_all(monitor, "neb-test", last_seq), 15, "every seq once")
        tracker = monitor.model.tracker("neb-test")
        assert tracker.unrecoverable == 0
        assert not tracker.missing_since_s
        # Duplicates may arrive (QoS 1 re-delivery, retained re-sends) and are dropped by seq;
        # the set of seqs is exactly the contiguous range.
        assert tracker.baseline_seq is not None
        assert set(range(tracker.baseline_seq, last_seq + 1)) <= tracker.seen
        # The backlog queued while the broker was down was replayed flagged historical.
        replayed = [e for e in events if e.get("event") == "telemetry" and e["historical"]]
        assert len(replayed) >= 3
        assert all(not e["retained"] for e in replayed)
        assert outbox_count(config) == 0


async def _spawn(config_path: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "controller.cli", "serve", "--config", str(config_path),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


async def test_controller_killed_mid_session_will_fires_and_seqs_continue(
    tmp_path: Path,
) -> None:
    workdir = tmp_path / "mosquitto"
    workdir.mkdir()
    model = DeviceModel(nominal_ul_min=400, fill_ul=3000)
    async with (
        MosquittoBroker(workdir=workdir) as broker,
        run_pty_simulator(model) as sim,
        capturing(broker) as capture,
    ):
        config_path, config = write_config(
            tmp_path, port=sim.device_path, session_ul=1000, extra=mqtt_section(broker)
        )
        process = await _spawn(config_path)
        try:
            await wait_status(config, lambda s: s["link_up"] and s["device"], 10)
            assert (await start_confirmed(config))["started"]
            await until(
                lambda: any(t["running"] for t in capture.bodies("telemetry")), 5, "running"
            )
            before = [b for b in capture.bodies() if "seq" in b]
            first_boot = before[-1]["boot_id"]
            process.send_signal(signal.SIGKILL)
            await process.wait()
            # The broker publishes the Last Will as soon as the TCP connection drops.
            await until(
                lambda: any(
                    p["reason"] == "last_will" and not p["online"]
                    for p in capture.bodies("presence")
                ),
                5,
                "Last Will: bed offline",
            )
            last_seq_before = max(b["seq"] for b in capture.bodies() if "seq" in b)

            (config.storage.data_dir / "control.sock").unlink(missing_ok=True)
            seen_before_restart = len(capture.messages)
            process = await _spawn(config_path)
            await wait_status(config, lambda s: s["link_up"] and s["device"], 10)

            def after() -> list[dict[str, Any]]:
                return [
                    b
                    for b in [
                        validate_json(p) for _t, p, r in capture.messages[seen_before_restart:]
                    ]
                    if "seq" in b
                ]

            await until(
                lambda: any(
                    b["schema"] == "nebuliser.session" and b.get("outcome") == "uncertain"
                    for b in after()
                ),
                10,
                "the interrupted session published as uncertain",
            )
            await until(
                lambda: any(not b["historical"] for b in after()), 5, "live from the new process"
            )
            new_boots = {b["boot_id"] for b in after() if not b["historical"]}
            assert new_boots
            assert first_boot not in new_boots
            # Seqs continue from the outbox: none reused across the restart.
            fresh = [b["seq"] for b in after() if b["boot_id"] != first_boot]
            assert min(fresh) > last_seq_before
            assert len(fresh) == len(set(fresh))
            online = list(capture.bodies("presence"))[-1]
            assert online["online"]
            assert online["boot_id"] in new_boots
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                await asyncio.wait_for(process.wait(), 10)


async def test_controller_republishes_retained_state_after_broker_restart_without_persistence(
    tmp_path: Path,
) -> None:
    workdir = tmp_path / "mosquitto"
    workdir.mkdir()
    model = DeviceModel(nominal_ul_min=600, fill_ul=3000)  # 10 µL/s: still running below
    broker = MosquittoBroker(workdir=workdir, persistence=False)
    async with run_pty_simulator(model) as sim:
        broker.start()
        try:
            _, config = write_config(
                tmp_path, port=sim.device_path, session_ul=400, extra=mqtt_section(broker)
            )
            async with running_controller(config):
                await wait_status(config, lambda s: s["link_up"] and s["device"], 5)
                assert (await start_confirmed(config))["started"]
                async with capturing(broker) as before:
                    await until(
                        lambda: any(
                            b["session_state"] == "nebulising" for b in before.bodies("state")
                        ),
                        10,
                        "the nebulising state published",
                    )
                await until(lambda: outbox_count(config) == 0, 10, "state and session sent")
                broker.kill()
                broker.restart()  # no persistence: the retained state is gone
                async with capturing(broker) as capture:

                    def retained(suffix: str) -> list[dict[str, Any]]:
                        # Retained on the broker: delivered with the retain flag if
                        # the republish came first, live (flag off) if it came after.
                        return [body for body in capture.bodies(suffix) if body["republished"]]

                    await until(
                        lambda: bool(retained("state") and retained("session")),
                        5,
                        "retained state and session back on the broker",
                    )
                state = validate_json(json.dumps(retained("state")[-1]).encode())
                session = retained("session")[-1]
                assert state["session_state"] == "nebulising"
                assert state["republished"] is True
                assert session["event"] == "started"
        finally:
            broker.stop()
