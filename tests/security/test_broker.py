"""The shipped hardened Mosquitto config, run for real on a free loopback port."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from controller.cli import main
from tests.security._broker import (
    HARDENED_CONF,
    Peer,
    connack_for_client_id,
    free_port,
    hardened_config_for_test,
    make_pki,
    raw_connect,
    running_broker,
)

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Broker:
    port: int
    pki: Path
    rogue_pki: Path
    log: Path

    def peer(
        self,
        stem: str | None,
        *,
        ca: Path | None = None,
        tls: bool = True,
        client_id: str | None = None,
    ) -> Peer:
        cert = None if stem is None else self.pki / stem
        return Peer(
            port=self.port,
            ca=ca or self.pki / "ca.crt",
            cert_stem=cert,
            tls=tls,
            client_id=client_id,
        )


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    base = tmp_path_factory.mktemp("broker")
    pki = make_pki(
        base / "pki",
        ca_name="Nebuliser TEST CA",
        extra=[
            "--ward", "3west", "--beds", "07,08,09", "--ward", "4east", "--beds", "01",
            "--revoke", "bed-3west-09",  # a stolen bed: its certificate is in the CRL
        ],
    )  # fmt: skip
    rogue = make_pki(base / "rogue", ca_name="Rogue CA", extra=["--ward", "3west", "--beds", "07"])
    port = free_port()
    work = base / "work"
    work.mkdir()
    conf = hardened_config_for_test(port=port, pki=pki, workdir=work)
    with running_broker(conf, port):
        yield Broker(port=port, pki=pki, rogue_pki=rogue, log=work / "mosquitto.log")


@pytest.fixture
def peers() -> Iterator[list[Peer]]:
    opened: list[Peer] = []
    yield opened
    for peer in opened:
        peer.close()


def _connected(peers: list[Peer], peer: Peer) -> Peer:
    peers.append(peer)
    assert peer.connect(), "a correctly certified client must be able to connect"
    return peer


def test_hardened_config_has_one_tls_listener_and_no_anonymous() -> None:
    lines = [line.split("#", 1)[0].strip() for line in HARDENED_CONF.read_text().splitlines()]
    directives = [line.split() for line in lines if line]
    listeners = [d for d in directives if d[0] == "listener"]
    assert listeners == [["listener", "8883"]]
    assert not [d for d in directives if d[0] == "port"]
    settings = {d[0]: d[1:] for d in directives}
    assert settings["allow_anonymous"] == ["false"]
    assert settings["require_certificate"] == ["true"]
    assert settings["use_identity_as_username"] == ["true"]
    # One identity per certificate: the client id is replaced by the CN (issue 13).
    assert settings["use_username_as_clientid"] == ["true"]
    assert settings["tls_version"] == ["tlsv1.2"]
    assert settings["set_tcp_nodelay"] == ["true"]
    assert settings["persistence"] == ["true"]
    assert "autosave_interval" in settings
    assert "max_packet_size" in settings
    # Revocation and the flood bounds per client (docs/security.md §6).
    assert settings["crlfile"] == ["/etc/mosquitto/certs/nebuliser/ca.crl"]
    assert settings["max_queued_messages"] == ["1000"]
    assert settings["max_queued_bytes"] == ["1048576"]
    assert settings["max_inflight_messages"] == ["20"]


def test_broker_opens_exactly_one_listen_socket(broker: Broker) -> None:
    opened = [line for line in broker.log.read_text().splitlines() if "listen socket" in line]
    assert len(opened) == 1, opened
    assert f"port {broker.port}" in opened[0]


def test_raw_probe_control_certified_client_gets_connack(broker: Broker) -> None:
    assert raw_connect(
        port=broker.port, ca=broker.pki / "ca.crt", cert_stem=broker.pki / "bed-3west-07"
    )


def test_plaintext_mqtt_gets_no_connack(broker: Broker) -> None:
    assert not raw_connect(port=broker.port, ca=broker.pki / "ca.crt", cert_stem=None, tls=False)


def test_client_without_certificate_is_refused(broker: Broker) -> None:
    assert not raw_connect(port=broker.port, ca=broker.pki / "ca.crt", cert_stem=None)


def test_client_certificate_from_another_ca_is_refused(broker: Broker) -> None:
    assert not raw_connect(
        port=broker.port, ca=broker.pki / "ca.crt", cert_stem=broker.rogue_pki / "bed-3west-07"
    )


def test_revoked_certificate_is_refused_and_its_unrevoked_neighbour_is_not(
    broker: Broker,
) -> None:
    ca = broker.pki / "ca.crt"
    assert not raw_connect(port=broker.port, ca=ca, cert_stem=broker.pki / "bed-3west-09")
    assert raw_connect(port=broker.port, ca=ca, cert_stem=broker.pki / "bed-3west-08")


def test_empty_client_id_gets_identifier_rejected(broker: Broker) -> None:
    # CONNACK return code 2: identifier rejected (allow_zero_length_clientid false).
    connack = connack_for_client_id(
        port=broker.port, ca=broker.pki / "ca.crt", cert_stem=broker.pki / "bed-3west-07"
    )
    assert connack == b"\x20\x02\x00\x02"


@pytest.mark.parametrize(
    "client_id", [b"", b"\xff\xfe-not-utf8", b"bed\x0008"], ids=["empty", "not-utf8", "nul"]
)
def test_an_illegal_client_id_is_refused(broker: Broker, client_id: bytes) -> None:
    connack = connack_for_client_id(
        port=broker.port,
        ca=broker.pki / "ca.crt",
        cert_stem=broker.pki / "bed-3west-07",
        client_id=client_id,
    )
    assert connack != b"\x20\x02\x00\x00", f"client id {client_id!r} was accepted"


@pytest.mark.parametrize("stolen_id", ["neb-0008", "3west/08", "3west/+/#"])
def test_bed_7_certificate_cannot_connect_as_bed_8_nor_knock_it_off(
    broker: Broker, peers: list[Peer], stolen_id: str
) -> None:
    """Bed 8 runs (client id = its device id, as the controller configures it); bed 7's
    certificate connects with bed 8's configured id, the id the broker gave bed 8, or
    wildcards: it gets bed 7's identity, bed 8 stays connected, and bed 7 can still
    neither read nor write bed 8's topics."""
    bed8 = _connected(peers, broker.peer("bed-3west-08", client_id="neb-0008"))
    ward = _connected(peers, broker.peer("ward-station-3west"))
    # From here on (an earlier test's bed 8 may have been closed only just now).
    log_from = len(broker.log.read_text())
    bed8.subscribe("nebuliser/v1/3west/08/command")
    ward.subscribe("nebuliser/v1/3west/#")
    thief = _connected(peers, broker.peer("bed-3west-07", client_id=stolen_id))
    thief.subscribe("nebuliser/v1/3west/08/command")
    thief.subscribe("nebuliser/v1/3west/07/command")
    thief.publish("nebuliser/v1/3west/08/state", b"forged-by-7")
    thief.publish("nebuliser/v1/3west/07/state", b"marker")
    seen_by_ward = ward.wait_for("nebuliser/v1/3west/07/state")
    assert ("nebuliser/v1/3west/08/state", b"forged-by-7") not in seen_by_ward
    ward.publish("nebuliser/v1/3west/08/command", b"cmd-for-8")
    ward.publish("nebuliser/v1/3west/07/command", b"marker")  # same publisher, sent last
    seen_by_thief = thief.wait_for("nebuliser/v1/3west/07/command")
    assert all("/08/" not in topic for topic, _ in seen_by_thief), seen_by_thief
    # Bed 8 was never knocked off, and still gets its commands.
    seen_by_bed8 = bed8.wait_for("nebuliser/v1/3west/08/command")
    assert not bed8.disconnected, "bed 7's certificate took bed 8's session over"
    assert ("nebuliser/v1/3west/08/command", b"cmd-for-8") in seen_by_bed8
    log = broker.log.read_text()[log_from:]
    assert "Client 3west/08 already connected" not in log
    assert "Client neb-0008 already connected" not in log


def test_make_test_ca_refuses_to_revoke_an_unknown_certificate(tmp_path: Path) -> None:
    with pytest.raises(subprocess.CalledProcessError) as failed:
        make_pki(tmp_path / "pki", ca_name="x", extra=["--ward", "3west", "--revoke", "nope"])
    assert b"no such certificate" in failed.value.stderr


def test_client_refuses_a_broker_signed_by_another_ca(broker: Broker) -> None:
    assert not raw_connect(
        port=broker.port, ca=broker.rogue_pki / "ca.crt", cert_stem=broker.pki / "bed-3west-07"
    )


def test_tls_1_3_is_negotiated(broker: Broker, peers: list[Peer]) -> None:
    peer = _connected(peers, broker.peer("bed-3west-07"))
    assert peer.client is not None
    sock = peer.client.socket()
    assert isinstance(sock, ssl.SSLSocket)
    assert sock.version() == "TLSv1.3"


def test_bed_7_cannot_read_bed_8(broker: Broker, peers: list[Peer]) -> None:
    bed7 = _connected(peers, broker.peer("bed-3west-07"))
    bed8 = _connected(peers, broker.peer("bed-3west-08"))
    ward = _connected(peers, broker.peer("ward-station-3west"))
    for topic in ("#", "nebuliser/v1/3west/#", "nebuliser/v1/3west/08/command"):
        bed7.subscribe(topic)
    bed7.subscribe("nebuliser/v1/3west/07/command")
    bed8.publish("nebuliser/v1/3west/08/state", b"bed8-state")
    ward.publish("nebuliser/v1/3west/08/command", b"cmd-for-8")
    ward.publish("nebuliser/v1/3west/07/command", b"marker")  # same publisher, sent last
    seen = bed7.wait_for("nebuliser/v1/3west/07/command")
    assert all("/08/" not in topic for topic, _ in seen), seen


def test_bed_7_cannot_write_bed_8(broker: Broker, peers: list[Peer]) -> None:
    bed7 = _connected(peers, broker.peer("bed-3west-07"))
    bed8 = _connected(peers, broker.peer("bed-3west-08"))
    ward = _connected(peers, broker.peer("ward-station-3west"))
    ward.subscribe("nebuliser/v1/3west/#")
    bed8.subscribe("nebuliser/v1/3west/08/command")
    bed7.publish("nebuliser/v1/3west/08/state", b"forged-state")
    bed7.publish("nebuliser/v1/3west/08/command", b"forged-command")
    bed7.publish("nebuliser/v1/3west/07/state", b"marker")
    seen_by_ward = ward.wait_for("nebuliser/v1/3west/07/state")
    assert all("/08/" not in topic for topic, _ in seen_by_ward), seen_by_ward
    ward.publish("nebuliser/v1/3west/08/command", b"real-command")
    seen_by_bed8 = bed8.wait_for("nebuliser/v1/3west/08/command")
    assert [payload for _, payload in seen_by_bed8] == [b"real-command"]


def test_ward_station_reads_its_ward_only_and_cannot_forge_bed_state(
    broker: Broker, peers: list[Peer]
) -> None:
    ward = _connected(peers, broker.peer("ward-station-3west"))
    bed7 = _connected(peers, broker.peer("bed-3west-07"))
    other_ward_bed = _connected(peers, broker.peer("bed-4east-01"))
    ward.subscribe("#")
    ward.publish("nebuliser/v1/3west/08/state", b"forged-by-ward")
    other_ward_bed.publish("nebuliser/v1/4east/01/state", b"other-ward")
    bed7.publish("nebuliser/v1/3west/07/state", b"marker")
    seen = ward.wait_for("nebuliser/v1/3west/07/state")
    topics = [topic for topic, _ in seen]
    assert "nebuliser/v1/4east/01/state" not in topics
    assert (("nebuliser/v1/3west/08/state", b"forged-by-ward")) not in seen


def test_make_test_ca_refuses_mismatched_arguments(tmp_path: Path) -> None:
    with pytest.raises(subprocess.CalledProcessError):
        make_pki(tmp_path, ca_name="x", extra=["--ward", "a", "--ward", "b", "--beds", "1"])


def test_command_send_over_mutual_tls_reaches_bed_and_returns_its_reply(
    broker: Broker, peers: list[Peer], tmp_path: Path
) -> None:
    bed = _connected(peers, broker.peer("bed-3west-07"))
    assert bed.client is not None
    client = bed.client

    def reply_refused(_c: object, _u: object, message: object) -> None:
        payload = json.loads(bytes(message.payload))  # type: ignore[attr-defined]
        reply = {"command_id": payload["command_id"], "status": "refused", "reason_code": "x"}
        client.publish("nebuliser/v1/3west/07/command/reply", json.dumps(reply), qos=1)

    client.on_message = reply_refused
    bed.subscribe("nebuliser/v1/3west/07/command")
    assert main(["keys", "generate", "--out", str(tmp_path), "--name", "ward-3west"]) == 0
    station = broker.pki / "ward-station-3west"
    argv = [
        str(Path(sys.executable).with_name("nebuliser")), "command", "send",
        "--broker", f"mqtts://localhost:{broker.port}", "--ward", "3west", "--bed", "07",
        "--tls-ca", str(broker.pki / "ca.crt"), "--tls-cert", f"{station}.crt",
        "--tls-key", f"{station}.key", "--timeout-s", "10",
        "--key", str(tmp_path / "ward-3west.key"), "--sender", "ward-3west",
        "--device", "neb-0001", "--counter", "1", "stop",
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, done.stdout + done.stderr  # refused by our stand-in bed
    assert json.loads(done.stdout)["reason_code"] == "x"


def test_ward_station_backfill_request_reaches_only_that_bed_and_unsigned_ack_is_blocked(
    broker: Broker, peers: list[Peer]
) -> None:
    ward = _connected(peers, broker.peer("ward-station-3west"))
    bed7 = _connected(peers, broker.peer("bed-3west-07"))
    bed8 = _connected(peers, broker.peer("bed-3west-08"))
    bed7.subscribe("nebuliser/v1/3west/07/#")
    bed8.subscribe("nebuliser/v1/3west/#")
    ward.publish("nebuliser/v1/3west/07/cmd/ack", b"unsigned-ack")
    ward.publish("nebuliser/v1/3west/07/backfill/request", b"req-7")
    ward.publish("nebuliser/v1/3west/08/command", b"marker-8")
    seen7 = bed7.wait_for("nebuliser/v1/3west/07/backfill/request")
    assert ("nebuliser/v1/3west/07/cmd/ack", b"unsigned-ack") not in seen7
    seen8 = bed8.wait_for("nebuliser/v1/3west/08/command")
    assert all("/07/" not in topic for topic, _ in seen8), seen8
