"""Hospital topology (issue 16, item 5): two ward brokers bridged to a hospital broker
with the shipped `config/mosquitto/bridge-*.conf` (TLS with client certificates, topic
remapping, persistent bridge sessions, QoS 1), three real Mosquitto processes.

A 10 s bridge outage (both bridges black-holed by a TCP proxy, then cut) loses no
sequence number from either ward at the hospital; requests from the hospital reach
only the ward they name.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import aiomqtt
import pytest

from controller.telemetry import (
    DeviceIdentity,
    OutboxPublisher,
    encode_backfill_request,
    free_loopback_port,
)
from tests.faults._proxy import TcpProxy, tcp_proxy
from tests.support.mosquitto import MosquittoBroker
from tests.support.outbox import LedgerBackedOutbox
from tests.telemetry.helpers import ROOT, Received, settings_for, telemetry
from tests.telemetry.test_publisher import collecting, wait_until

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "config" / "mosquitto"
WARDS = ("W1", "W2")
OUTAGE_S = 10.0


def make_pki(directory: Path) -> Path:
    """A TEST CA, the hospital broker's certificate and one per bridge and monitor."""
    subprocess.run(
        [
            sys.executable, str(REPO / "scripts" / "make-test-ca"), "--out", str(directory),
            "--server-name", "localhost",
            "--client", "bridge-W1=bridge.W1", "--client", "bridge-W2=bridge.W2",
            "--client", "monitor-hospital=monitor.hospital",
        ],
        check=True, capture_output=True,
    )  # fmt: skip
    return directory


def hospital_config(pki: Path, tls_port: int, acl: Path) -> list[str]:
    """The shipped hospital listener, pointed at the test PKI and port."""
    text = (CONFIG / "bridge-hospital.conf").read_text()
    text = text.replace("listener 8883", f"listener {tls_port} 127.0.0.1")
    text = text.replace("/etc/mosquitto/bridge/hospital.", f"{pki}/server.")
    text = text.replace("/etc/mosquitto/bridge/", f"{pki}/")
    text = text.replace("/etc/mosquitto/bridge-hospital.acl", str(acl))
    return text.splitlines()


def hospital_acl(directory: Path) -> Path:
    """The shipped ACL with its W7 block repeated for every test ward."""
    text = (CONFIG / "bridge-hospital.acl").read_text()
    ward_block, monitor_block = text.split("# A hospital-wide monitor", 1)
    start = ward_block.index("user bridge.W7")
    block = ward_block[start:]
    wards = "\n".join(block.replace("W7", ward) for ward in WARDS)
    path = directory / "hospital.acl"
    path.write_text(ward_block[:start] + wards + "\n# A hospital-wide monitor" + monitor_block)
    return path


def ward_config(ward: str, pki: Path, proxy_port: int) -> list[str]:
    """The shipped ward bridge, for `ward`, through the proxy in front of the hospital."""
    text = (CONFIG / "bridge-ward.conf").read_text()
    text = text.replace("hospital-broker.example.org:8883", f"127.0.0.1:{proxy_port}")
    text = text.replace("/etc/mosquitto/bridge/", f"{pki}/")
    return text.replace("W7", ward).splitlines()


@contextlib.asynccontextmanager
async def hospital_monitor(
    pki: Path, port: int, seen: list[Received]
) -> AsyncIterator[aiomqtt.Client]:
    """A TLS client with the monitor.hospital certificate, collecting everything."""
    tls = aiomqtt.TLSParameters(
        ca_certs=str(pki / "ca.crt"),
        certfile=str(pki / "monitor-hospital.crt"),
        keyfile=str(pki / "monitor-hospital.key"),
        cert_reqs=ssl.CERT_REQUIRED,
        tls_version=ssl.PROTOCOL_TLS_CLIENT,
    )
    async with aiomqtt.Client(
        "127.0.0.1", port, identifier=f"hospital-{uuid.uuid4().hex[:6]}", tls_params=tls
    ) as client:
        await client.subscribe(f"{ROOT}/#", qos=1)

        async def read() -> None:
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                seen.append(Received(str(message.topic), message.payload, bool(message.retain)))

        async with asyncio.TaskGroup() as tasks:
            reader = tasks.create_task(read())
            try:
                yield client
            finally:
                reader.cancel()


def seqs_from(seen: list[Received], device_id: str) -> set[int]:
    found = set()
    for received in seen:
        body = received.body
        if body.get("device_id") == device_id and "seq" in body:
            found.add(int(body["seq"]))
    return found


@pytest.mark.slow
async def test_two_wards_bridged_to_a_hospital_lose_nothing_through_a_10_s_outage(
    tmp_path: Path,
) -> None:
    pki = make_pki(tmp_path / "pki")
    tls_port = free_loopback_port()
    (tmp_path / "hospital").mkdir()
    hospital = MosquittoBroker(
        workdir=tmp_path / "hospital",
        extra_config=hospital_config(pki, tls_port, hospital_acl(tmp_path)),
    )
    hospital.start()
    brokers: dict[str, MosquittoBroker] = {}
    proxies: dict[str, TcpProxy] = {}
    identities = {
        ward: DeviceIdentity(device_id=f"MN1-{ward}", ward=ward, bed="B01", boot_id="b")
        for ward in WARDS
    }
    outboxes = {ward: LedgerBackedOutbox(path=tmp_path / f"{ward}.sqlite3") for ward in WARDS}
    produced: dict[str, list[int]] = {ward: [] for ward in WARDS}
    at_hospital: list[Received] = []
    try:
        async with contextlib.AsyncExitStack() as stack:
            for ward in WARDS:
                proxies[ward] = await stack.enter_async_context(tcp_proxy("127.0.0.1", tls_port))
                (tmp_path / ward).mkdir()
                brokers[ward] = MosquittoBroker(
                    workdir=tmp_path / ward,
                    extra_config=ward_config(ward, pki, proxies[ward].port),
                )
                brokers[ward].start()
                stack.callback(brokers[ward].stop)
            publishers = {
                ward: OutboxPublisher(
                    settings=settings_for(brokers[ward], client_id=f"ctl-{ward}"),
                    identity=identities[ward],
                    outbox=outboxes[ward],
                )
                for ward in WARDS
            }
            at_ward = {
                ward: await stack.enter_async_context(
                    collecting(brokers[ward], f"{ROOT}/+/+/backfill/request")
                )
                for ward in WARDS
            }
            monitor = await stack.enter_async_context(hospital_monitor(pki, tls_port, at_hospital))
            tasks = await stack.enter_async_context(asyncio.TaskGroup())
            for publisher in publishers.values():
                tasks.create_task(publisher.run())

            async def produce(seconds: float) -> None:
                for _ in range(int(seconds * 10)):  # 10 Hz per bed
                    for ward in WARDS:
                        produced[ward].append(
                            outboxes[ward].append(telemetry(1, identity=identities[ward]))
                        )
                        publishers[ward].notify()
                    await asyncio.sleep(0.1)

            def all_arrived() -> bool:
                return all(
                    set(produced[w]) <= seqs_from(at_hospital, identities[w].device_id)
                    for w in WARDS
                )

            await produce(1.0)
            await wait_until(all_arrived, timeout_s=20, what="first samples via the bridges")
            for proxy in proxies.values():
                proxy.partition()  # the hospital link dies silently
            await produce(OUTAGE_S)
            for ward in WARDS:
                arrived = seqs_from(at_hospital, identities[ward].device_id)
                assert not set(produced[ward]) <= arrived, "the outage must hold messages back"
            for proxy in proxies.values():
                proxy.heal()
            await produce(1.0)
            await wait_until(all_arrived, timeout_s=30, what="every seq of both wards")
            # Requests from the hospital go to the ward they name, and nowhere else.
            for ward in WARDS:
                request = encode_backfill_request(
                    request_id=f"req-{ward}", requester="hospital", from_seq=1, to_seq=2,
                    device_id=identities[ward].device_id, utc=datetime.now(UTC),
                )  # fmt: skip
                await monitor.publish(f"{ROOT}/{ward}/B01/backfill/request", request, qos=1)
            await wait_until(
                lambda: all(len(at_ward[w]) >= 1 for w in WARDS), timeout_s=10, what="requests"
            )
            for publisher in publishers.values():
                publisher.request_stop()
    finally:
        hospital.stop()
    for ward in WARDS:
        request_ids = {json.loads(r.payload)["request_id"] for r in at_ward[ward]}
        assert request_ids == {f"req-{ward}"}, f"{ward} got {request_ids}"
        assert all(r.topic.startswith(f"{ROOT}/{ward}/") for r in at_ward[ward])
    for ward in WARDS:
        assert len(produced[ward]) == int((2.0 + OUTAGE_S) * 10)
        assert set(produced[ward]) <= seqs_from(at_hospital, identities[ward].device_id)
