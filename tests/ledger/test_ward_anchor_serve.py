"""Real processes and a real Mosquitto: `serve` compares the ward's retained anchor (issue 12).

A data directory lost or rolled back as a whole (ledger, audit log and anchor file
together) agrees with itself; only the ward station's retained `ledger/anchor` shows
the loss. One bed is used for real once per module: the whole data directory is copied
right after `ledger init` (the "earlier copy"), then `nebuliser serve` (a subprocess,
with `[mqtt]`) runs one session on the simulated head and publishes its anchors. Each
test first puts the ward's retained anchor back on the bed's topic (other tests'
controllers publish there), then:

* the earlier copy restored as a whole -> exit 4, the HIGH alarm, the reason;
* the data directory lost entirely -> exit 4 naming `ledger restore ... --ward-anchor`;
  a restore without the ward's anchor is still refused, with it `serve` starts;
* a broker that accepts the connection but never answers -> start-up goes on after the
  bound (3 s) with the local checks, and says so.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import pytest

from controller.benchconfig import BenchPrescription, bench_mqtt_section, write_bench_config
from controller.cli import main
from controller.config import NebuliserConfig
from controller.ledger import LedgerLocation, open_checked
from simulators.mn1 import DeviceModel, run_pty_simulator
from tests.controller.test_service_pty import FAST_UL_MIN, start_confirmed, wait_status
from tests.support.mosquitto import MosquittoBroker

DEVICE_ID = "neb-ward"
EXIT_LEDGER = 4


@dataclass(frozen=True)
class WardBed:
    """The earlier copy of a bed's data directory, and what the ward kept after a session."""

    early: Path
    backup: Path
    config: NebuliserConfig
    ward_payload: bytes


def _write_config(
    directory: Path, *, port: str, mqtt: str, init: bool
) -> tuple[Path, NebuliserConfig]:
    return write_bench_config(
        directory,
        port=port,
        prescription=BenchPrescription(subject_id="TEST-001", lot_id="LOT-T", session_ul=200),
        device=f'device_id = "{DEVICE_ID}"',
        session="confirm_timeout_s = 10",
        extra=mqtt,
        init=init,
    )


def _anchor_topic(config: NebuliserConfig) -> str:
    assert config.mqtt is not None
    return f"{config.mqtt.root_topic}/{config.device.ward}/{config.device.bed}/ledger/anchor"


async def _retained(broker: MosquittoBroker, topic: str, deadline_s: float) -> bytes | None:
    """The retained message on `topic`, polled until `deadline_s` (None if there is none)."""
    async with aiomqtt.Client(
        broker.host, broker.port, identifier=f"station-{time.monotonic_ns()}",
        protocol=aiomqtt.ProtocolVersion.V5,
    ) as client:  # fmt: skip
        await client.subscribe(topic, qos=1)
        try:
            async with asyncio.timeout(deadline_s):
                async for message in client.messages:
                    if message.retain and isinstance(message.payload, bytes):
                        return message.payload
        except TimeoutError:
            return None
    return None


async def _put_retained(broker: MosquittoBroker, topic: str, payload: bytes) -> None:
    """What the ward station holds for the bed (as the bed's last publication left it)."""
    async with aiomqtt.Client(
        broker.host, broker.port, identifier=f"ward-{time.monotonic_ns()}",
        protocol=aiomqtt.ProtocolVersion.V5,
    ) as client:  # fmt: skip
        await client.publish(topic, payload, qos=1, retain=True)


async def _use_bed(directory: Path, broker: MosquittoBroker) -> WardBed:
    mqtt = bench_mqtt_section(host=broker.host, port=broker.port, client_id="ctl-neb-ward")
    async with run_pty_simulator(DeviceModel(nominal_ul_min=FAST_UL_MIN, fill_ul=3000)) as sim:
        config_path, config = _write_config(directory, port=sim.device_path, mqtt=mqtt, init=True)
        early = directory / "early-copy"
        shutil.copytree(config.storage.data_dir, early)  # the whole directory, after init
        backup = directory / "after-init.sqlite3"
        assert main(["ledger", "backup", str(backup), "--config", str(config_path)]) == 0
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "controller.cli", "serve", "--config", str(config_path),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        try:
            await wait_status(config, lambda s: s["link_up"] and s["device"], 20)
            assert (await start_confirmed(config))["started"]
            await wait_status(config, lambda s: s["last_session"] is not None, 20)
            process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(process.wait(), 20) == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    payload = await _retained(broker, _anchor_topic(config), 10)
    assert payload is not None
    assert json.loads(payload)["reason"] == "ended"  # the session reached the ward
    return WardBed(early=early, backup=backup, config=config, ward_payload=payload)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    running = MosquittoBroker(workdir=tmp_path_factory.mktemp("mosquitto"))
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def ward_bed(tmp_path_factory: pytest.TempPathFactory, broker: MosquittoBroker) -> WardBed:
    return asyncio.run(_use_bed(tmp_path_factory.mktemp("ward-bed"), broker))


@pytest.fixture
def ward_holds_the_anchor(ward_bed: WardBed, broker: MosquittoBroker) -> None:
    asyncio.run(_put_retained(broker, _anchor_topic(ward_bed.config), ward_bed.ward_payload))


def _serve(config_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller.cli", "serve", "--config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


def _audited_alarms(data_dir: Path) -> list[dict[str, object]]:
    with sqlite3.connect(data_dir / "audit.sqlite3") as connection:
        rows = connection.execute("SELECT body_json FROM audit_log WHERE kind = 'alarm'")
        return [json.loads(body) for (body,) in rows]


def _refused(result: subprocess.CompletedProcess[str], data_dir: Path) -> str:
    out = result.stdout + result.stderr
    assert result.returncode == EXIT_LEDGER, out
    assert "Traceback" not in out
    assert "ward ledger anchor" in out, out
    assert ": anchor: ledger" in out, out
    assert "ledger refusal alarm published" in out, out
    [alarm] = [a for a in _audited_alarms(data_dir) if a["action"] == "raised"]
    assert (alarm["alarm_code"], alarm["priority"]) == ("ledger_discontinuity", "high")
    return out


@pytest.mark.usefixtures("ward_holds_the_anchor")
def test_a_whole_data_dir_restored_from_an_earlier_copy_is_refused(
    ward_bed: WardBed, broker: MosquittoBroker, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    shutil.copytree(ward_bed.early, data_dir)
    # Locally everything agrees: the ledger continues its own anchors.
    probe = tmp_path / "probe"
    shutil.copytree(ward_bed.early, probe)
    open_checked(LedgerLocation(data_dir=probe), device_id=DEVICE_ID).close()
    mqtt = bench_mqtt_section(host=broker.host, port=broker.port, client_id="ctl-neb-ward")
    config_path, _ = _write_config(tmp_path, port=str(tmp_path / "no-head"), mqtt=mqtt, init=False)
    out = _refused(_serve(config_path), data_dir)
    assert "ward station's retained anchor" in out, out
    assert "ledger_older_than_anchor" in out or "records are missing" in out, out
    assert "--ward-anchor" in out, out


@pytest.mark.usefixtures("ward_holds_the_anchor")
def test_a_lost_data_dir_is_refused_and_a_restore_with_the_ward_anchor_starts(
    ward_bed: WardBed, broker: MosquittoBroker, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    mqtt = bench_mqtt_section(host=broker.host, port=broker.port, client_id="ctl-neb-ward")
    config_path, _ = _write_config(tmp_path, port=str(tmp_path / "no-head"), mqtt=mqtt, init=False)
    out = _refused(_serve(config_path), data_dir)
    assert "nebuliser ledger restore BACKUP --ward-anchor" in out, out
    assert "do not run `ledger init`" in out, out

    # Restored without the ward's anchor: the session after the backup is unaccounted.
    restore = ["ledger", "restore", str(ward_bed.backup), "--by", "CE Smith"]
    assert main([*restore, "--config", str(config_path)]) == 0
    result = _serve(config_path)
    assert result.returncode == EXIT_LEDGER, result.stdout + result.stderr
    assert "ward station's retained anchor" in result.stdout + result.stderr

    # With it (saved as `mosquitto_sub -t .../ledger/anchor -C 1 > FILE` would): starts,
    # and the session the ward knew of is back, counting its full cap.
    ward_file = tmp_path / "ward-anchor.json"
    ward_file.write_bytes(ward_bed.ward_payload)
    assert main([*restore, "--ward-anchor", str(ward_file), "--config", str(config_path)]) == 0
    asyncio.run(_serves_until_link_up(tmp_path, mqtt))


async def _serves_until_link_up(directory: Path, mqtt: str, *, within_s: float = 20) -> str:
    async with run_pty_simulator(DeviceModel(nominal_ul_min=FAST_UL_MIN)) as sim:
        config_path, config = _write_config(directory, port=sim.device_path, mqtt=mqtt, init=False)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "controller.cli", "serve", "--config", str(config_path),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        try:
            status = await wait_status(config, lambda s: s["link_up"] and s["device"], within_s)
            assert status["link_up"]
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
            try:
                output, _ = await asyncio.wait_for(process.communicate(), 20)
            except TimeoutError:
                process.kill()  # never leave a controller behind for the next test
                await process.wait()
                raise AssertionError("serve did not exit within 20 s of SIGTERM") from None
        assert process.returncode == 0, output.decode()
        return output.decode()


@pytest.fixture
def silent_broker() -> Iterator[tuple[str, int]]:
    """A TCP port that accepts connections (the kernel does) but never answers MQTT."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield "127.0.0.1", listener.getsockname()[1]


def test_a_silent_broker_does_not_hold_up_start_up_beyond_the_bound(
    ward_bed: WardBed, tmp_path: Path, silent_broker: tuple[str, int]
) -> None:
    """The client's own timeouts (60 s) are far past the 20 s the test waits for the
    link: only the 3 s bound lets the controller come up; it does not refuse by itself."""
    host, port = silent_broker
    shutil.copytree(ward_bed.early, tmp_path / "data")
    mqtt = bench_mqtt_section(
        host=host, port=port, client_id="ctl-neb-ward", keepalive_s=120, publish_timeout_s=60
    )
    began = time.monotonic()
    out = asyncio.run(_serves_until_link_up(tmp_path, mqtt, within_s=15))
    assert time.monotonic() - began < 60
    assert f"broker {host}:{port} not reachable within 3 s" in out, out
    assert "start-up checks the local anchors only" in out, out
