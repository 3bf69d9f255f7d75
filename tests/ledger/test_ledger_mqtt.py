"""Real processes and a real Mosquitto: the ledger's continuity evidence on the ward.

One bed is used for real once per module: `nebuliser serve` (a subprocess, with
`[mqtt]`) runs a session to its cap on the simulated head while a station-side
`WardModel` listens, a backup is taken before the session, and the controller is
stopped with SIGTERM. Then:

* a station that connects afterwards gets the retained `ledger/anchor`, and it is
  the ledger's own high-water mark (the anchor file's);
* a copy of the bed whose ledger was deleted is refused (exit 4) and the HIGH
  `ledger_discontinuity` alarm reaches a subscriber, with a seq above every seq the
  bed used; after `ledger restore`, `serve`'s messages continue above it;
* with a broker that accepts the connection but never answers, the refusal still
  exits 4 within the bound, and says so;
* when the whole data directory is lost, `ledger restore --ward-anchor` finds the
  missing session from the anchor the ward station kept.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from controller.benchconfig import BenchPrescription, bench_mqtt_section, write_bench_config
from controller.cli import main
from controller.config import NebuliserConfig
from controller.ledger import ANCHOR_FILE_NAME, LEDGER_FILE_NAME, LedgerLocation, open_checked
from controller.service._refusal_alarm import (
    REFUSAL_PUBLISH_BOUND_S,
    SEQ_FILE_NAME,
    device_seq_floor,
)
from controller.telemetry import MqttSettings, SentArchive, WardModel
from simulators.mn1 import DeviceModel, run_pty_simulator
from tests.controller.test_service_pty import FAST_UL_MIN, start_confirmed, wait_status
from tests.support.mosquitto import MosquittoBroker
from tests.telemetry.helpers import validate_payload

DEVICE_ID = "neb-mqtt"
EXIT_LEDGER = 4


@dataclass(frozen=True)
class UsedBed:
    """A data directory after one real session with MQTT, and a backup from before it."""

    data_dir: Path
    backup: Path
    config: NebuliserConfig
    live_anchors: tuple[dict[str, Any], ...]
    #: What a station connecting after the controller stopped got on `ledger/anchor`.
    late_anchor: tuple[tuple[str, bytes, bool], ...]


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


def _topic(config: NebuliserConfig, suffix: str) -> str:
    assert config.mqtt is not None
    return f"{config.mqtt.root_topic}/{config.device.ward}/{config.device.bed}/{suffix}"


@asynccontextmanager
async def _station(
    broker: MosquittoBroker, config: NebuliserConfig, seen: list[tuple[str, bytes, bool]]
) -> AsyncIterator[None]:
    """A subscriber on the bed's whole subtree, as the ward station is."""
    async with aiomqtt.Client(
        broker.host, broker.port, identifier=f"station-{time.monotonic_ns()}",
        protocol=aiomqtt.ProtocolVersion.V5,
    ) as client:  # fmt: skip
        await client.subscribe(_topic(config, "#"), qos=1)

        async def read() -> None:
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                seen.append((str(message.topic), message.payload, bool(message.retain)))

        async with asyncio.TaskGroup() as group:
            reader = group.create_task(read())
            try:
                yield
            finally:
                reader.cancel()


async def _until(predicate: Any, timeout_s: float, what: str) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            while not predicate():  # noqa: ASYNC110 - another process publishes
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"not within {timeout_s} s: {what}") from None


def _anchors(seen: list[tuple[str, bytes, bool]]) -> list[dict[str, Any]]:
    return [json.loads(p) for t, p, _ in seen if t.endswith("/ledger/anchor")]


async def _one_real_session(directory: Path, broker: MosquittoBroker) -> UsedBed:
    mqtt = bench_mqtt_section(host=broker.host, port=broker.port, client_id="ctl-neb-mqtt")
    model = DeviceModel(nominal_ul_min=FAST_UL_MIN, fill_ul=3000)
    seen: list[tuple[str, bytes, bool]] = []
    async with run_pty_simulator(model) as sim:
        config_path, config = _write_config(directory, port=sim.device_path, mqtt=mqtt, init=True)
        async with _station(broker, config, seen):
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "controller.cli", "serve", "--config", str(config_path),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            try:
                await wait_status(config, lambda s: s["link_up"] and s["device"], 20)
                backup = directory / "before-session.sqlite3"
                assert main(["ledger", "backup", str(backup), "--config", str(config_path)]) == 0
                assert (await start_confirmed(config))["started"]
                await wait_status(config, lambda s: s["last_session"] is not None, 20)
                await _until(
                    lambda: any(a["reason"] == "ended" for a in _anchors(seen)), 10,
                    "the session's `ended` anchor reached the station",
                )  # fmt: skip
                process.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(process.wait(), 20) == 0
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
    # A station that connects after the controller stopped still gets the newest one
    # (read here, before another test's controller publishes on the same broker).
    late: list[tuple[str, bytes, bool]] = []
    async with _station(broker, config, late):
        await _until(lambda: bool(_anchors(late)), 10, "the retained anchor arrived")
    return UsedBed(
        data_dir=config.storage.data_dir,
        backup=backup,
        config=config,
        live_anchors=tuple(_anchors(seen)),
        late_anchor=tuple(s for s in late if s[0].endswith("/ledger/anchor")),
    )


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    running = MosquittoBroker(workdir=tmp_path_factory.mktemp("mosquitto"))
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def used_bed(tmp_path_factory: pytest.TempPathFactory, broker: MosquittoBroker) -> UsedBed:
    return asyncio.run(_one_real_session(tmp_path_factory.mktemp("used"), broker))


def _serve(config_path: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    began = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "controller.cli", "serve", "--config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return result, time.monotonic() - began


def _refusing_copy(used_bed: UsedBed, tmp_path: Path, *, mqtt: str) -> tuple[Path, Path]:
    """(config, data dir): a copy of the used bed with its ledger deleted."""
    shutil.copytree(used_bed.data_dir, tmp_path / "data")
    (tmp_path / "data" / "control.sock").unlink(missing_ok=True)
    for path in (tmp_path / "data").glob(f"{LEDGER_FILE_NAME}*"):
        path.unlink()
    config_path, _ = _write_config(tmp_path, port=str(tmp_path / "no-head"), mqtt=mqtt, init=False)
    return config_path, tmp_path / "data"


def test_a_station_gets_the_retained_ledger_anchor_after_a_session(used_bed: UsedBed) -> None:
    reasons = [a["reason"] for a in used_bed.live_anchors]
    assert reasons[:1] == ["startup"]
    assert {"intent", "started", "ended"} <= set(reasons)
    file_anchor = json.loads((used_bed.data_dir / ANCHOR_FILE_NAME).read_text())
    [(topic, payload, retained)] = used_bed.late_anchor
    assert retained
    body = validate_payload(payload)  # docs/schemas/nebuliser.ledger_anchor.v1.json
    for field in ("ledger_id", "last_event_seq", "last_event_hash", "last_session_id"):
        assert body[field] == file_anchor[field], field
    model = WardModel(root_topic="nebuliser/v1")
    model.feed(topic, payload, now_s=0.0, retained=True)
    row = model.row(used_bed.config.device.ward, used_bed.config.device.bed)
    assert row is not None
    assert row.ledger_anchor is not None
    assert row.ledger_anchor.last_event_hash == file_anchor["last_event_hash"]


async def test_a_refused_ledger_publishes_the_high_alarm(
    used_bed: UsedBed, broker: MosquittoBroker, tmp_path: Path
) -> None:
    mqtt = bench_mqtt_section(host=broker.host, port=broker.port, client_id="ctl-neb-mqtt")
    config_path, data_dir = _refusing_copy(used_bed, tmp_path, mqtt=mqtt)
    archive = SentArchive(path=data_dir / "telemetry-sent.sqlite3", read_only=True)
    used_archive_max = archive.max_seq()  # every seq the broker acknowledged
    archive.close()
    assert used_archive_max > 0
    seen: list[tuple[str, bytes, bool]] = []
    async with _station(broker, used_bed.config, seen):
        result, _ = await asyncio.to_thread(_serve, config_path)
        assert result.returncode == EXIT_LEDGER, (result.stdout, result.stderr)
        assert "Traceback" not in result.stdout + result.stderr
        assert "ledger refusal alarm published" in result.stdout + result.stderr

        def alarms() -> list[dict[str, Any]]:
            bodies = [json.loads(p) for t, p, _ in seen if t.endswith(("/alarm", "/alarms/active"))]
            return [b for b in bodies if b["seq"] > used_archive_max]

        await _until(lambda: len(alarms()) == 2, 10, "the alarm and the active set arrived")
    raised, active = alarms()
    assert (raised["alarm_code"], raised["priority"], raised["event"]) == (
        "ledger_discontinuity", "high", "raised",
    )  # fmt: skip
    assert "ledger restore" in raised["text"]
    assert [(a["alarm_code"], a["priority"]) for a in active["alarms"]] == [
        ("ledger_discontinuity", "high")
    ]
    for _, payload, _ in seen[-2:]:
        validate_payload(payload)
    # The seqs continue the bed's own: one above the last it used, never a repeat.
    assert (raised["seq"], active["seq"]) == (used_archive_max + 1, used_archive_max + 2)
    assert device_seq_floor(data_dir) == used_archive_max + 2
    # A station that joins later still sees the bed's HIGH alarm (retained).
    late: list[tuple[str, bytes, bool]] = []
    async with _station(broker, used_bed.config, late):
        await _until(
            lambda: any(t.endswith("/alarms/active") for t, _, _ in late), 10, "retained set"
        )
    [(_, payload, retained)] = [s for s in late if s[0].endswith("/alarms/active")]
    assert retained
    assert json.loads(payload)["seq"] == active["seq"]
    # After the restore, `serve` starts again and its messages continue above the
    # alarm's seqs: the first is its start-up anchor.
    assert main(["ledger", "restore", str(used_bed.backup), "--by", "CE Smith",
                 "--config", str(config_path)]) == 0  # fmt: skip
    async with run_pty_simulator(DeviceModel(nominal_ul_min=FAST_UL_MIN)) as sim:
        config_path, config = _write_config(tmp_path, port=sim.device_path, mqtt=mqtt, init=False)
        after: list[tuple[str, bytes, bool]] = []
        async with _station(broker, config, after):
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "controller.cli", "serve", "--config", str(config_path),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            try:
                await _until(
                    lambda: any(
                        a["reason"] == "startup" and a["seq"] > active["seq"]
                        for a in _anchors(after)
                    ),
                    20,
                    "the restored controller's start-up anchor",
                )
                await _until(
                    lambda: any(
                        t.endswith("/alarms/active")
                        and not r
                        and json.loads(p)["seq"] > active["seq"]
                        for t, p, r in after
                    ),
                    20,
                    "the restored controller's alarm set",
                )
            finally:
                process.send_signal(signal.SIGTERM)
                await asyncio.wait_for(process.wait(), 20)
    bodies = [json.loads(p) for _, p, retained in after if not retained]  # this run's
    [startup] = [b for b in bodies if b["schema"] == "nebuliser.ledger_anchor"][:1]
    assert (startup["reason"], startup["seq"]) == ("startup", active["seq"] + 1)
    # Nothing reuses the alarm's seqs (the backup's own waiting rows are replayed below).
    seqs = [b["seq"] for b in bodies if "seq" in b]  # presence has none
    assert not [q for q in seqs if used_archive_max < q <= active["seq"]], seqs
    # The ward's refusal alarm is cleared: the restored controller no longer has it
    # (other alarms, such as the restored session's, may follow).
    ours = [
        b
        for b in bodies
        if b["schema"] == "nebuliser.alarm"
        and b["seq"] > active["seq"]
        and b["alarm_code"] == "ledger_discontinuity"
    ]
    assert [b["event"] for b in ours] == ["cleared"]
    sets = sorted(
        (b for b in bodies if b["schema"] == "nebuliser.alarms_active"), key=lambda b: b["seq"]
    )
    assert sets[0]["seq"] > active["seq"]
    assert sets[0]["alarms"] == []
    assert all(a["alarm_code"] != "ledger_discontinuity" for b in sets for a in b["alarms"])


@pytest.fixture
def silent_broker() -> Iterator[tuple[str, int]]:
    """A TCP port that accepts connections (the kernel does) but never answers MQTT."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield "127.0.0.1", listener.getsockname()[1]


def test_a_silent_broker_does_not_hold_up_the_refusal_beyond_the_bound(
    used_bed: UsedBed, tmp_path: Path, silent_broker: tuple[str, int]
) -> None:
    host, port = silent_broker
    # The client's own timeouts are far longer than the bound: only the bound can end it.
    mqtt = bench_mqtt_section(
        host=host, port=port, client_id="ctl-neb-mqtt", keepalive_s=120, publish_timeout_s=20
    )
    config_path, data_dir = _refusing_copy(used_bed, tmp_path / "silent", mqtt=mqtt)
    floor_before = device_seq_floor(data_dir)
    silent, silent_s = _serve(config_path)
    # The same refusal without [mqtt]: what start-up and the check cost on this machine.
    plain_path, _ = _refusing_copy(used_bed, tmp_path / "plain", mqtt="")
    plain, plain_s = _serve(plain_path)
    for result in (silent, plain):
        assert result.returncode == EXIT_LEDGER, (result.stdout, result.stderr)
        assert "Traceback" not in result.stdout + result.stderr
    log = silent.stdout + silent.stderr
    assert f"NOT published: broker {host}:{port} not reachable within 3 s" in log, log
    # Two bounded waits: the ward's retained anchor at start-up (3 s by default), then
    # the refusal alarm (3 s); neither can hold the exit up by more.
    assert "not reachable within 3 s (no answer); start-up checks the local anchors only" in log
    bounds = REFUSAL_PUBLISH_BOUND_S + MqttSettings().ward_anchor_timeout_s
    assert silent_s - plain_s < bounds + 2.5, (silent_s, plain_s)
    # Never connected: the seqs taken for the alarm were given back (no gap for monitors).
    assert json.loads((data_dir / SEQ_FILE_NAME).read_text())["last_seq"] <= floor_before
    assert device_seq_floor(data_dir) == floor_before


def test_restore_uses_the_ward_stations_anchor_when_the_local_ones_are_gone(
    used_bed: UsedBed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The whole data directory was lost (ledger, audit log, anchor file); the backup
    from before the session and the anchor the ward station kept are all that is left."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    config_path, _ = _write_config(tmp_path, port=str(tmp_path / "no-head"), mqtt="", init=False)
    [(_, payload, _)] = used_bed.late_anchor
    ward = tmp_path / "ward-anchor.json"
    ward.write_bytes(payload)  # as `mosquitto_sub -t .../ledger/anchor -C 1 > FILE` saves it
    restore = ["ledger", "restore", str(used_bed.backup), "--config", str(config_path)]

    assert main([*restore, "--dry-run"]) == 0
    assert "MISSING" not in capsys.readouterr().out  # nothing local shows the loss
    assert main([*restore, "--dry-run", "--ward-anchor", str(ward)]) == 0
    dry = capsys.readouterr().out
    assert "MISSING" in dry, dry
    assert "session #1 TEST-001" in dry, dry

    bad = tmp_path / "not-an-anchor.json"
    bad.write_text('{"schema": "nebuliser.state"}')
    assert main([*restore, "--dry-run", "--ward-anchor", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "not a nebuliser.ledger_anchor message" in err
    assert "mosquitto_sub" in err

    assert main([*restore, "--by", "CE Smith", "--ward-anchor", str(ward)]) == 0
    with open_checked(LedgerLocation(data_dir=data_dir), device_id=DEVICE_ID) as ledger:
        [session] = ledger.history("TEST-001")
    assert (session.session_id, session.status.value, session.counted_ul) == (1, "uncertain", 200)
