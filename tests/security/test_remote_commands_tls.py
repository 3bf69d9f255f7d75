"""The running controller through the SHIPPED hardened broker: mutual TLS with the
bed's certificate, the ACL (the bed reads its command topic and writes its telemetry,
reply and audit-head topics), a ward station with its own certificate, and one
identity per bed (`use_username_as_clientid`): the controller's ONE connection carries
telemetry and commands, is never taken over, and another bed's certificate cannot
knock it off (docs/security.md C26)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
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


async def _until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Poll (paho delivers on its own thread; the controller shares this loop)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def _connections_as(log: Path, client_id: str) -> int:
    return sum(f" as {client_id} (" in line for line in log.read_text().splitlines())


async def test_signed_stop_and_telemetry_through_the_hardened_broker_on_one_connection(
    tmp_path: Path,
) -> None:
    pki = make_pki(
        tmp_path / "pki", ca_name="Test CA", extra=["--ward", "3west", "--beds", "07,08"]
    )
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
    # Bed 8's certificate, trying bed 7's configured client id.
    thief = Peer(
        port=port, ca=pki / "ca.crt", cert_stem=pki / "bed-3west-08", client_id="bed-3west-07"
    )
    log = work / "mosquitto.log"
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
                    station.subscribe("nebuliser/v1/3west/07/telemetry")
                    # The bed publishes telemetry through the hardened broker.
                    await _until(lambda: any(t.endswith("/telemetry") for t, _ in station.received))
                    assert thief.connect()  # accepted, but as bed 8 ("3west/08")
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
                        if any(t.endswith("/reply") for t, _ in station.received):
                            break
                    replies = [json.loads(p) for t, p in station.received if t.endswith("/reply")]
                finally:
                    station.close()
                    thief.close()
    assert replies, "no reply from the bed through the hardened broker"
    assert replies[0]["status"] == "accepted"
    assert replies[0]["command"] == "stop"
    # ONE connection per bed, never taken over (two with one certificate would knock
    # each other off for ever, each logged as "already connected"), and not by bed 8's
    # certificate trying bed 7's configured client id either.
    # (A reconnect after a keepalive lost on a loaded machine is allowed; a takeover is not.)
    assert _connections_as(log, "3west/07") >= 1, log.read_text()
    assert "Client 3west/07 already connected" not in log.read_text()
    assert _connections_as(log, "bed-3west-07") == 0
