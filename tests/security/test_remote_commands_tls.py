"""The running controller's command intake through the SHIPPED hardened broker: mutual
TLS with the bed's certificate, the ACL (the bed reads its command topic and writes its
reply and audit-head topics), a ward station with its own certificate."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controller.security import (
    CommandName,
    StopBody,
    command_topic,
    public_key_to_text,
    reply_topic,
    sign_command,
)
from simulators.mn1 import DeviceModel, run_pty_simulator
from tests.controller._setup import write_config
from tests.controller.test_service_pty import running_controller, wait_status
from tests.security._broker import (
    Peer,
    free_port,
    hardened_config_for_test,
    make_pki,
    running_broker,
)

pytestmark = pytest.mark.slow


async def test_signed_stop_through_the_hardened_broker_with_client_certificates(
    tmp_path: Path,
) -> None:
    pki = make_pki(tmp_path / "pki", ca_name="Test CA", extra=["--ward", "3west", "--beds", "07"])
    work = tmp_path / "broker"
    work.mkdir()
    port = free_port()
    conf = hardened_config_for_test(port=port, pki=pki, workdir=work)
    key = Ed25519PrivateKey.generate()
    security = f"""[security]
require_signed_prescriptions = false  # bench: the test prescription is inline
[[security.senders]]
id = "ward-3west"
public_key = "{public_key_to_text(key.public_key())}"
role = "ward_station"
"""
    mqtt = f"""
[mqtt]
host = "localhost"
port = {port}
client_id = "bed-3west-07"
keepalive_s = 2
reconnect_initial_s = 0.05
reconnect_max_s = 0.3
[mqtt.tls]
ca_file = "{pki / "ca.crt"}"
cert_file = "{pki / "bed-3west-07.crt"}"
key_file = "{pki / "bed-3west-07.key"}"
"""
    station = Peer(port=port, ca=pki / "ca.crt", cert_stem=pki / "ward-station-3west")
    model = DeviceModel(nominal_ul_min=6000, fill_ul=3000)
    with running_broker(conf, port):
        async with run_pty_simulator(model) as sim:
            _, config = write_config(tmp_path, port=sim.device_path, security=security, extra=mqtt)
            config = config.model_copy(
                update={"device": config.device.model_copy(update={"ward": "3west", "bed": "07"})}
            )
            async with running_controller(config):
                await wait_status(config, lambda s: s["link_up"] and s["device"], 5)
                assert station.connect()
                try:
                    station.subscribe(reply_topic(ward="3west", bed="07"))
                    replies: list[dict[str, object]] = []
                    for counter in range(1, 40):  # until the bed's intake has subscribed
                        stop = sign_command(
                            key=key,
                            sender_id="ward-3west",
                            device_id="neb-test",
                            counter=counter,
                            command=CommandName.STOP,
                            body=StopBody(),
                            issued_at_ms=int(time.time() * 1000),
                        )
                        station.publish(command_topic(ward="3west", bed="07"), stop)
                        await asyncio.sleep(0.1)  # paho's own thread delivers
                        replies = [json.loads(p) for _, p in station.received]
                        if replies:
                            break
                finally:
                    station.close()
    assert replies, "no reply from the bed through the hardened broker"
    assert replies[0]["status"] == "accepted"
    assert replies[0]["command"] == "stop"
