"""Blinding at the broker (issue 20): a ward station never reads a bed's command topic.

A pharmacy's signed `prescription.update` carries the whole prescription (drug, lot,
arm, cohort) on `<root>/<ward>/<bed>/command`. The shipped ACLs let ward stations and
the hospital monitor read every topic a bed publishes, and write (never read) the
command topic. Run on the shipped hardened config and ACL (tests/security/_broker.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from controller.cli import main
from controller.telemetry._topics import SCHEMA_ROUTES
from tests.security._broker import (
    ACL_FILE,
    REPO,
    Peer,
    free_port,
    hardened_config_for_test,
    make_pki,
    running_broker,
)

pytestmark = pytest.mark.slow

WARD = "nebuliser/v1/3west"
BED = f"{WARD}/07"
HOSPITAL_ACL = REPO / "config" / "mosquitto" / "bridge-hospital.acl"
#: What a bed publishes besides its device messages (SCHEMA_ROUTES): the Last Will,
#: the audit anchor (controller/service/_commands.py) and command replies.
OTHER_BED_SUFFIXES = {"presence", "audit/head", "command/reply"}
BED_SUFFIXES = {route.suffix for route in SCHEMA_ROUTES.values()} | OTHER_BED_SUFFIXES
#: Topics that carry command envelopes (signed, or the provisional unsigned ack).
COMMAND_SUFFIXES = ("command", "cmd/ack")
DRUG = "Zelvanorin-ACTIVE"
LOT = "LOT-ACT-4711"


@dataclass(frozen=True)
class Broker:
    port: int
    pki: Path

    def peer(self, stem: str) -> Peer:
        return Peer(port=self.port, ca=self.pki / "ca.crt", cert_stem=self.pki / stem)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    base = tmp_path_factory.mktemp("blinding")
    pki = make_pki(
        base / "pki",
        ca_name="Nebuliser TEST CA",
        extra=["--ward", "3west", "--beds", "07", "--client", "pharmacy=pharmacy.hospital"],
    )
    port = free_port()
    work = base / "work"
    work.mkdir()
    with running_broker(hardened_config_for_test(port=port, pki=pki, workdir=work), port):
        yield Broker(port=port, pki=pki)


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


def _signed(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, cmd: list[str]) -> bytes:
    """A real signed command envelope, as `nebuliser command sign` prints it."""
    if not (tmp_path / f"{name}.key").exists():
        assert main(["keys", "generate", "--out", str(tmp_path), "--name", name]) == 0
    capsys.readouterr()
    argv = ["command", "sign", "--key", str(tmp_path / f"{name}.key"), "--sender", name]
    assert main([*argv, "--device", "neb-0007", "--counter", "1", *cmd]) == 0
    return capsys.readouterr().out.strip().encode()


def _prescription_update(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> bytes:
    rx = tmp_path / "rx.toml"
    rx.write_text(
        f'[prescription]\ndrug = "{DRUG}"\n[prescription.arm]\nblinded = true\n'
        f'arm = "active"\ncohort = "C2"\n[prescription.lot]\nid = "{LOT}"\n'
    )
    assert main(["keys", "generate", "--out", str(tmp_path), "--name", "pharmacy-1"]) == 0
    key = str(tmp_path / "pharmacy-1.key")
    assert main(["prescription", "sign", "--key", key, "--key-id", "pharmacy-1", str(rx)]) == 0
    envelope = _signed(tmp_path, capsys, "pharmacy-1", ["prescription.update", str(rx)])
    assert DRUG.encode() in envelope  # what must not leak
    assert LOT.encode() in envelope
    return envelope


def test_ward_station_reads_bed_topics_and_replies_but_never_the_pharmacy_update(
    broker: Broker, peers: list[Peer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    update = _prescription_update(tmp_path, capsys)
    ack = _signed(tmp_path, capsys, "ward-3west", ["alarm.ack", "E_TEMP", "--by", "rn.ito"])
    bed = _connected(peers, broker.peer("bed-3west-07"))
    ward = _connected(peers, broker.peer("ward-station-3west"))
    pharmacy = _connected(peers, broker.peer("pharmacy"))
    bed.subscribe(f"{BED}/command")
    ward.subscribe(f"{WARD}/#")  # what `nebuliser monitor` subscribes to
    ward.subscribe(f"{BED}/command")  # asking for it by name does not help either
    pharmacy.subscribe("#")

    pharmacy.publish(f"{BED}/command", update)
    ward.publish(f"{BED}/command", ack)
    # The bed receives both: the pharmacy's update and the ward station's signed ack.
    seen_by_bed = bed.wait_until(lambda got: len(got) >= 2, "both commands")
    assert sorted(payload for _, payload in seen_by_bed) == sorted([update, ack])

    # Only now does the bed publish (the update was routed before any of this).
    for suffix in sorted(BED_SUFFIXES):
        bed.publish(f"{BED}/{suffix}", f"from-bed:{suffix}".encode())
    bed.publish(f"{BED}/state", b"marker")
    seen_by_ward = ward.wait_until(lambda got: (f"{BED}/state", b"marker") in got, "marker")
    assert {topic for topic, _ in seen_by_ward} == {f"{BED}/{s}" for s in BED_SUFFIXES}
    assert not [t for t, _ in seen_by_ward if t == f"{BED}/command"], "command topic leaked"
    assert all(DRUG.encode() not in payload for _, payload in seen_by_ward)

    # The pharmacy reads the replies to its commands and nothing else of the bed.
    seen_by_pharmacy = pharmacy.wait_for(f"{BED}/command/reply")
    assert {topic for topic, _ in seen_by_pharmacy} == {f"{BED}/command/reply"}


def _read_grants(acl: Path, user: str) -> list[str]:
    """The `topic read` filters of one `user` block of an ACL file."""
    text = acl.read_text()
    block = re.search(rf"^user {re.escape(user)}\n(.*?)(?=^user |\Z)", text, re.M | re.S)
    assert block is not None, f"no 'user {user}' block in {acl}"
    lines = [line.split() for line in block.group(1).splitlines() if line.startswith("topic ")]
    assert all(line[1] in {"read", "write"} for line in lines), f"{user}: read or write only"
    return [line[2] for line in lines if line[1] == "read"]


@pytest.mark.parametrize(
    ("acl", "user", "ward"),
    [(ACL_FILE, "ward-station.3west", "3west"), (HOSPITAL_ACL, "monitor.hospital", "W7")],
    ids=["ward-station", "hospital-monitor"],
)
def test_acl_read_grants_cover_every_bed_topic_and_no_command_topic(
    acl: Path, user: str, ward: str
) -> None:
    """A new topic a bed publishes must be granted here, and a grant that reaches a
    command topic (`#`, `+/+`, `command/#`) unblinds a study."""
    grants = _read_grants(acl, user)
    base = f"nebuliser/v1/{ward}/07"

    def readable(topic: str) -> bool:
        return any(mqtt.topic_matches_sub(grant, topic) for grant in grants)

    assert [s for s in sorted(BED_SUFFIXES) if not readable(f"{base}/{s}")] == []
    for suffix in COMMAND_SUFFIXES:
        for topic in (f"{base}/{suffix}", f"{base}/{suffix}/anything"):
            if topic != f"{base}/command/reply":
                assert not readable(topic), f"{user} may read {topic}"


@pytest.mark.parametrize("acl", [ACL_FILE, HOSPITAL_ACL], ids=["ward", "hospital"])
def test_the_pharmacy_reads_only_command_replies(acl: Path) -> None:
    assert _read_grants(acl, "pharmacy.hospital") == ["nebuliser/v1/+/+/command/reply"]
