"""The ward station through the SHIPPED hardened broker (mutual TLS, the ACL): it
reads its ward with the `ward-station.3west` certificate, and a nurse's
acknowledgement — a signed `alarm.ack`, the only kind the ACL lets a station send —
reaches the bed, which confirms it with her name."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from controller.security import generate_key_files, load_public_key_file, public_key_to_text
from controller.station import Station, StationOptions, UsersFile
from controller.telemetry import MqttSettings, TlsSettings
from controller.telemetry._ack_signer import AckSigningKey
from simulators.mn1 import DeviceModel, run_pty_simulator
from tests.controller._setup import write_config
from tests.controller.test_service_pty import running_controller, wait_status
from tests.security._broker import free_port, hardened_config_for_test, make_pki, running_broker

pytestmark = pytest.mark.slow


def post(url: str, body: dict[str, Any], cookie: str = "") -> tuple[int, dict[str, Any], str]:
    headers = {"X-Station": "1", "Cookie": cookie}
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    with urllib.request.urlopen(req, timeout=10) as response:
        return response.status, json.loads(response.read()), response.headers["Set-Cookie"] or ""


async def test_signed_acknowledgement_through_the_hardened_broker(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki", ca_name="Test CA", extra=["--ward", "3west", "--beds", "07"])
    work = tmp_path / "broker"
    work.mkdir()
    port = free_port()
    conf = hardened_config_for_test(port=port, pki=pki, workdir=work)
    private_key, public_key = generate_key_files(out_dir=tmp_path, name="station-3west")
    security = f"""[security]
require_signed_prescriptions = false  # bench: the test prescription is inline
[[security.senders]]
id = "station-3west"
public_key = "{public_key_to_text(load_public_key_file(public_key))}"
role = "ward_station"
"""
    mqtt = f"""
[mqtt]
host = "localhost"
port = {port}
client_id = "bed-3west-07"
keepalive_s = 2
telemetry_hz = 1
reconnect_initial_s = 0.05
reconnect_max_s = 0.3
[mqtt.tls]
ca_file = "{pki / "ca.crt"}"
cert_file = "{pki / "bed-3west-07.crt"}"
key_file = "{pki / "bed-3west-07.key"}"
"""
    users = UsersFile.load(tmp_path / "users")
    users.set_password("j.smith", "correct horse")
    station = Station(
        StationOptions(
            mqtt=MqttSettings(
                host="localhost",
                port=port,
                client_id="ward-station-3west",
                reconnect_initial_s=0.1,
                reconnect_max_s=0.5,
                tls=TlsSettings(
                    ca_file=pki / "ca.crt",
                    cert_file=pki / "ward-station-3west.crt",
                    key_file=pki / "ward-station-3west.key",
                ),
            ),
            listen_port=0,
            ward="3west",
            users_file=users.path,
            signer=AckSigningKey(
                key_file=private_key, sender_id="station-3west", counter_file=tmp_path / "ctr"
            ),
        )
    )
    model = DeviceModel(nominal_ul_min=600, fill_ul=3000)
    with running_broker(conf, port):
        async with run_pty_simulator(model) as sim:
            _, config = write_config(tmp_path, port=sim.device_path, security=security, extra=mqtt)
            config = config.model_copy(
                update={"device": config.device.model_copy(update={"ward": "3west", "bed": "07"})}
            )
            async with running_controller(config), asyncio.TaskGroup() as tasks:
                tasks.create_task(station.run())
                try:
                    await wait_status(config, lambda s: s["link_up"] and s["device"], 10)
                    await asyncio.wait_for(station.started.wait(), 20)
                    sim.apply(lambda m, now: m.set_condition("head_disconnected", True, now_ms=now))
                    row = await _row_with_alarm(station)
                    _, _, cookie = await asyncio.to_thread(
                        post,
                        station.url + "api/login",
                        {"name": "j.smith", "password": "correct horse"},
                    )
                    ack = {"ward": "3west", "bed": "07", "alarm_code": row}
                    status, _, _ = await asyncio.to_thread(
                        post, station.url + "api/ack", ack, cookie.split(";")[0]
                    )
                    assert status == 200
                    by = await _acknowledged_by(station, row)
                finally:
                    station.request_stop()
    assert by == "j.smith", "the bed confirmed the nurse's signed acknowledgement"


async def _row_with_alarm(station: Station) -> str:
    async with asyncio.timeout(15):
        while True:
            row = station.ward.model.row("3west", "07")
            if row is not None and row.alarms:
                return row.alarms[0].alarm_code
            await asyncio.sleep(0.05)


async def _acknowledged_by(station: Station, code: str) -> str | None:
    async with asyncio.timeout(15):
        while True:
            row = station.ward.model.row("3west", "07")
            assert row is not None
            acked = [a for a in row.alarms if a.alarm_code == code and a.acknowledged]
            if acked:
                return acked[0].acknowledged_by
            await asyncio.sleep(0.05)
