"""Signed remote commands reach the running controller: a real Mosquitto, the simulator
on a real pty, the service in this process, a ward station publishing signed envelopes.

Real time throughout (commands are checked against the wall clock); the confirm
window is 5 s (its floor) so the expiry test stays short."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controller.benchconfig import bench_mqtt_section
from controller.cli import main
from controller.config import NebuliserConfig
from controller.ledger import LEDGER_FILE_NAME, EventKind, Ledger
from controller.security import (
    AUDIT_DB_NAME,
    AlarmAckBody,
    CommandBody,
    CommandName,
    PrescriptionUpdateBody,
    RequestStartBody,
    StopBody,
    command_topic,
    load_verified_prescription_bytes,
    public_key_to_text,
    reply_topic,
    sign_command,
    sign_prescription_bytes,
    verify_audit_log,
)
from simulators.mn1 import DeviceModel, RunningSimulator, run_pty_simulator
from tests.support.mosquitto import MosquittoBroker

from ._setup import write_config
from .test_service_pty import running_controller, start_confirmed, wait_status

DEVICE = "neb-test"
WARD, BED = "ward-a", "bed-01"
SLOW_UL_MIN = 400  # 200 µL take 30 s: long enough to stop a running session remotely


@dataclass(frozen=True)
class Keys:
    ward: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    pharmacy: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    stranger: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)


def security_section(keys: Keys, *, confirm_window_s: int = 5) -> str:
    def pub(key: Ed25519PrivateKey) -> str:
        return public_key_to_text(key.public_key())

    return f"""[security]
confirm_window_s = {confirm_window_s}
require_signed_prescriptions = false  # bench: the test prescription is inline
[[security.senders]]
id = "ward-3west"
public_key = "{pub(keys.ward)}"
role = "ward_station"
[[security.senders]]
id = "pharmacy-1"
public_key = "{pub(keys.pharmacy)}"
role = "pharmacy"
"""


def mqtt_section(broker: MosquittoBroker) -> str:
    return bench_mqtt_section(host=broker.host, port=broker.port, client_id="ctl-neb-test")


class Counter:
    def __init__(self) -> None:
        self.value = 0

    def next(self) -> int:
        self.value += 1
        return self.value


def signed(
    key: Ed25519PrivateKey,
    command: CommandName,
    body: CommandBody,
    *,
    counter: int,
    sender: str = "ward-3west",
) -> bytes:
    return sign_command(
        key=key,
        sender_id=sender,
        device_id=DEVICE,
        counter=counter,
        command=command,
        body=body,
        issued_at_ms=int(time.time() * 1000),
        validity_s=30,
    )


def command_id_of(payload: bytes) -> str:
    return str(json.loads(payload)["command_id"])


class Station:
    """A ward station on the test broker: publishes commands, reads the bed's replies."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self._client = client
        self.replies: list[dict[str, Any]] = []
        self.heads: list[dict[str, Any]] = []

    async def publish(self, topic: str, payload: bytes) -> None:
        await self._client.publish(topic, payload, qos=1)

    async def send(self, payload: bytes, *, retain: bool = False) -> None:
        await self._client.publish(command_topic(ward=WARD, bed=BED), payload, qos=1, retain=retain)

    async def reply(
        self,
        command_id: str | None,
        *,
        stage: str | None = None,
        nth: int = 0,
        timeout_s: float = 10,
    ) -> dict[str, Any]:
        """The `nth` (0 = first) reply for `command_id` (and `stage`), waiting for it."""

        def match(reply: dict[str, Any]) -> bool:
            return reply.get("command_id") == command_id and (
                stage is None or reply.get("stage") == stage
            )

        async with asyncio.timeout(timeout_s):
            while True:
                matches = [seen for seen in self.replies if match(seen)]
                if len(matches) > nth:
                    return matches[nth]
                message = await anext(aiter(self._client.messages))
                assert isinstance(message.payload, bytes)
                body = json.loads(message.payload)
                if str(message.topic).endswith("/audit/head"):
                    self.heads.append(body)
                else:
                    self.replies.append(body)

    async def command(self, payload: bytes, **kwargs: Any) -> dict[str, Any]:
        await self.send(payload)
        return await self.reply(command_id_of(payload), **kwargs)


@contextlib.asynccontextmanager
async def station(broker: MosquittoBroker) -> AsyncIterator[Station]:
    async with aiomqtt.Client(
        broker.host, broker.port, identifier="ward-station", protocol=aiomqtt.ProtocolVersion.V5
    ) as client:
        await client.subscribe(reply_topic(ward=WARD, bed=BED), qos=1)
        await client.subscribe(f"nebuliser/v1/{WARD}/{BED}/audit/head", qos=1)
        yield Station(client)


@dataclass
class Bed:
    config: NebuliserConfig
    sim: RunningSimulator
    model: DeviceModel
    station: Station
    service: asyncio.Task[int]
    broker: MosquittoBroker


@contextlib.asynccontextmanager
async def bed(
    tmp_path: Path, keys: Keys, *, nominal_ul_min: int = SLOW_UL_MIN, trial_tables: str = ""
) -> AsyncIterator[Bed]:
    workdir = tmp_path / "mosquitto"
    workdir.mkdir()
    model = DeviceModel(nominal_ul_min=nominal_ul_min, fill_ul=3000, serial="SIM-REMOTE")
    async with (
        MosquittoBroker(workdir=workdir) as broker,
        run_pty_simulator(model) as sim,
        station(broker) as ward_station,
    ):
        _, config = write_config(
            tmp_path,
            port=sim.device_path,
            session_ul=200,
            security=security_section(keys),
            extra=mqtt_section(broker),
            trial_tables=trial_tables,
        )
        async with running_controller(config) as service:
            await wait_status(config, lambda s: s["link_up"] and s["device"], 5)
            # The intake is subscribed once an (unauthenticated) probe gets its reply.
            probe = b"{}"
            for _ in range(50):
                await ward_station.send(probe)
                with contextlib.suppress(TimeoutError):
                    await ward_station.reply(None, timeout_s=0.2)
                    break
            yield Bed(
                config=config,
                sim=sim,
                model=model,
                station=ward_station,
                service=service,
                broker=broker,
            )


def ledger_commands(config: NebuliserConfig) -> list[dict[str, Any]]:
    with Ledger.open(config.storage.data_dir / LEDGER_FILE_NAME, read_only=True) as ledger:
        return [dict(e.body) for e in ledger.events(kinds=[EventKind.COMMAND])]


def audit_bodies(config: NebuliserConfig, kind: str) -> list[dict[str, Any]]:
    with contextlib.closing(sqlite3.connect(config.storage.data_dir / AUDIT_DB_NAME)) as conn:
        rows = conn.execute(
            "SELECT body_json FROM audit_log WHERE kind = ? ORDER BY idx", (kind,)
        ).fetchall()
    return [json.loads(row[0]) for row in rows]


async def test_signed_remote_stop_stops_a_running_session_and_forgeries_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys, counter = Keys(), Counter()
    async with bed(tmp_path, keys) as b:
        assert (await start_confirmed(b.config))["started"]
        await wait_status(b.config, lambda s: s["session"] and s["session"]["delivered_ul"] > 0, 5)

        stop = signed(keys.ward, CommandName.STOP, StopBody(reason="sats"), counter=counter.next())
        reply = await b.station.command(stop)
        assert reply["status"] == "accepted", reply
        assert reply["stopped"] is True
        status = await wait_status(b.config, lambda s: s["last_session"] is not None, 5)
        assert status["last_session"]["host_reason"] == "remote_stop:ward-3west"
        assert not b.model.truth().nebulising

        # The same bytes again: a replay.
        await b.station.send(stop)
        replayed = await b.station.reply(command_id_of(stop), nth=1)
        assert replayed["reason_code"] == "replayed_counter", replayed
        # Signed by a key that is not ward-3west's: a forgery.
        forged = signed(keys.stranger, CommandName.STOP, StopBody(), counter=counter.next())
        assert (await b.station.command(forged))["reason_code"] == "bad_signature"
        # Not signed at all.
        unsigned = json.loads(signed(keys.ward, CommandName.STOP, StopBody(), counter=99))
        del unsigned["signature"]
        unsigned_bytes = json.dumps(unsigned).encode()
        assert (await b.station.command(unsigned_bytes))["reason_code"] == "invalid_envelope"
        # Retained: never acted on, even with a valid signature.
        retained = signed(keys.ward, CommandName.STOP, StopBody(), counter=counter.next())
        await b.station.send(retained, retain=True)
        assert (await b.station.reply(command_id_of(retained)))["reason_code"] == "retained"
        await b.station.send(b"", retain=True)  # clear it from the broker

        # An alarm acknowledgement for an alarm that is not active: refused, with why.
        body = AlarmAckBody(alarm_code="dry_cup", acknowledged_by="nurse.kim")
        ack = signed(keys.ward, CommandName.ALARM_ACK, body, counter=counter.next())
        ack_reply = await b.station.command(ack)
        assert ack_reply["status"] == "refused"
        assert ack_reply["reason_code"] in {"alarm_not_active", "unknown_alarm"}
        await asyncio.sleep(1.5)  # the audit mirror polls the ledger every second

    commands = ledger_commands(b.config)
    by_reason = {c.get("reason_code") for c in commands}
    assert {"replayed_counter", "bad_signature", "invalid_envelope", "retained"} <= by_reason
    assert any(c.get("status") == "accepted" and c["command"] == "stop" for c in commands)
    audited = audit_bodies(b.config, "command")
    assert {a.get("code") for a in audited} >= {"replayed_counter", "bad_signature", "retained"}
    assert any(a["outcome"] == "accepted" and a["command"] == "stop" for a in audited)
    assert audit_bodies(b.config, "decision"), "decisions are mirrored from the ledger"
    assert audit_bodies(b.config, "config")
    assert audit_bodies(b.config, "prescription")
    assert audit_bodies(b.config, "anchor")[-1]["reason"] == "shutdown"
    with contextlib.closing(sqlite3.connect(b.config.storage.data_dir / AUDIT_DB_NAME)) as conn:
        [(last_kind,)] = conn.execute("SELECT kind FROM audit_log ORDER BY idx DESC LIMIT 1")
    assert last_kind == "anchor", "the shutdown anchor covers every record, tallies included"
    # The whole chain verifies, from the CLI too.
    data_dir = b.config.storage.data_dir
    assert verify_audit_log(data_dir / AUDIT_DB_NAME).ok
    capsys.readouterr()
    assert main(["audit", "verify", "--data-dir", str(data_dir)]) == 0
    assert "OK" in capsys.readouterr().out


async def test_remote_start_request_expires_without_the_bedside_confirm(tmp_path: Path) -> None:
    keys = Keys()
    async with bed(tmp_path, keys) as b:
        request = signed(
            keys.ward, CommandName.SESSION_REQUEST_START, RequestStartBody(), counter=1
        )
        first = await b.station.command(request, stage="awaiting_confirm")
        assert first["status"] == "accepted"
        assert first["confirm_window_s"] == 5
        # Nobody presses CONFIRM: after 5 s it expires and nothing starts.
        final = await b.station.reply(command_id_of(request), stage="expired", timeout_s=10)
        assert final["status"] == "refused"
        assert final["reason_code"] == "confirm_expired"
        status = await wait_status(b.config, lambda s: True, 1)
        assert status["state"] == "idle"
        assert status["session"] is None
        assert not b.model.truth().nebulising
        await asyncio.sleep(0.2)
    statuses = [r["status"] for r in audit_bodies(b.config, "start_request")]
    assert statuses == ["pending", "expired"]
    assert any(c.get("reason_code") == "confirm_expired" for c in ledger_commands(b.config))


async def test_remote_start_request_starts_when_confirm_is_pressed_and_prescription_rules(
    tmp_path: Path,
) -> None:
    keys = Keys()
    async with bed(tmp_path, keys) as b:
        request = signed(
            keys.ward, CommandName.SESSION_REQUEST_START, RequestStartBody(), counter=1
        )
        await b.station.command(request, stage="awaiting_confirm")
        b.sim.apply(lambda m, t: m.press_confirm_button(now_ms=t))
        started = await b.station.reply(command_id_of(request), stage="started")
        assert started["status"] == "accepted"
        assert started["confirmed_by"] == "CONFIRM button"
        await wait_status(b.config, lambda s: s["session"] and s["session"]["delivered_ul"] > 0, 5)

        # A pharmacy update while the session runs: refused, nothing stored.
        rx = b"not applied while running"
        signature = sign_prescription_bytes(rx, key=keys.pharmacy, key_id="pharmacy-1")
        body = PrescriptionUpdateBody(
            prescription_toml=rx.decode(),
            pharmacy_key_id="pharmacy-1",
            prescription_sha256=signature.sha256,
            prescription_signature=signature.signature,
        )
        running = signed(
            keys.pharmacy, CommandName.PRESCRIPTION_UPDATE, body, counter=1, sender="pharmacy-1"
        )
        assert (await b.station.command(running))["reason_code"] == "session_running"

        stop = signed(keys.ward, CommandName.STOP, StopBody(), counter=2)
        assert (await b.station.command(stop))["stopped"] is True
        await wait_status(b.config, lambda s: s["last_session"] is not None, 5)
    assert not (b.config.storage.data_dir / "prescriptions").exists()
    assert [r["status"] for r in audit_bodies(b.config, "start_request")] == [
        "pending",
        "confirmed",
    ]


def _prescription_toml(config_path_text: str) -> str:
    start = config_path_text.index("[prescription]")
    return config_path_text[start:].split("\n[mqtt]", maxsplit=1)[0].strip() + "\n"


async def test_prescription_update_ward_key_refused_pharmacy_stored_for_restart(
    tmp_path: Path,
) -> None:
    keys = Keys()
    async with bed(tmp_path, keys) as b:
        text = _prescription_toml((tmp_path / "controller.toml").read_text("utf-8"))
        text = text.replace('subject_id = "TEST-001"', 'subject_id = "TEST-002"')
        data = text.encode()
        signature = sign_prescription_bytes(data, key=keys.pharmacy, key_id="pharmacy-1")
        body = PrescriptionUpdateBody(
            prescription_toml=text,
            pharmacy_key_id="pharmacy-1",
            prescription_sha256=signature.sha256,
            prescription_signature=signature.signature,
        )
        # The ward station's key may not change prescriptions, whatever it embeds.
        by_ward = signed(keys.ward, CommandName.PRESCRIPTION_UPDATE, body, counter=1)
        assert (await b.station.command(by_ward))["reason_code"] == "role_not_permitted"
        by_pharmacy = signed(
            keys.pharmacy, CommandName.PRESCRIPTION_UPDATE, body, counter=1, sender="pharmacy-1"
        )
        stored = await b.station.command(by_pharmacy)
        assert stored["status"] == "accepted", stored
        assert stored["stage"] == "stored_restart_required"
        # Not applied to the running controller.
        status = await wait_status(b.config, lambda s: True, 1)
        assert status["subject_id"] == "TEST-001"
    path = b.config.storage.data_dir / "prescriptions" / stored["stored_as"]
    verified = load_verified_prescription_bytes(
        path, pharmacy_keys={"pharmacy-1": keys.pharmacy.public_key()}, require_signed=True
    )
    assert verified == data
    [record] = [p for p in audit_bodies(b.config, "prescription") if p["event"] != "in_force"]
    assert record["applied"] is False
    assert record["signed_by"] == "pharmacy-1"


async def test_an_invalid_prescription_update_is_refused_without_quoting_the_file(
    tmp_path: Path,
) -> None:
    """The ward reads command replies: the refusal names no drug or arm (issue 20); the
    detail (which quotes the file) is kept in the bed's audit log."""
    keys = Keys()
    async with bed(tmp_path, keys) as b:
        text = _prescription_toml((tmp_path / "controller.toml").read_text("utf-8"))
        text = text.replace('subject_id = "TEST-001"', 'subject_id = "TEST-002"')
        text = text.replace("[prescription.arm]", '[prescription.arm]\nsecret_arm = "Zelvanorin"')
        data = text.encode()
        signature = sign_prescription_bytes(data, key=keys.pharmacy, key_id="pharmacy-1")
        body = PrescriptionUpdateBody(
            prescription_toml=text,
            pharmacy_key_id="pharmacy-1",
            prescription_sha256=signature.sha256,
            prescription_signature=signature.signature,
        )
        command = signed(
            keys.pharmacy, CommandName.PRESCRIPTION_UPDATE, body, counter=1, sender="pharmacy-1"
        )
        reply = await b.station.command(command)
    assert reply["status"] == "refused", reply
    assert reply["reason_code"] == "invalid_prescription"
    assert "Zelvanorin" not in json.dumps(reply)
    assert "audit log" in reply["reason"]
    [record] = [p for p in audit_bodies(b.config, "prescription") if p["event"] != "in_force"]
    assert record["event"] == "received_invalid"
    assert "secret_arm" in record["error"]
    assert not (b.config.storage.data_dir / "prescriptions").exists()


def _hostile_payloads(rng: random.Random) -> list[bytes]:
    payloads = [
        b"",
        b"\xff\xfe\x00garbage",
        b"{" * 20_000,
        b"[" * 5000 + b"]" * 5000,
        b'{"v": 1, "v": 1}',
        b'{"v": NaN}',
        b'{"v": 1.5e999}',
        b"x" * 200_000,
        json.dumps({"v": 1, "device_id": DEVICE, "body": {"a": [[[[[[[[[[1]]]]]]]]]]}}).encode(),
        json.dumps({"v": True, "counter": "1", "command": "stop", "signature": "A" * 86}).encode(),
    ]
    payloads += [os.urandom(rng.randrange(1, 2048)) for _ in range(150)]
    return payloads


async def test_hostile_payload_flood_does_not_crash_the_service(tmp_path: Path) -> None:
    keys, rng = Keys(), random.Random(7)
    async with bed(tmp_path, keys, nominal_ul_min=6000) as b:
        for payload in _hostile_payloads(rng):
            await b.station.send(payload)
        # After the flood a genuine stop is still accepted and answered.
        stop = signed(keys.ward, CommandName.STOP, StopBody(), counter=1)
        reply = await b.station.command(stop, timeout_s=30)
        assert reply["status"] == "accepted", reply
        assert not b.service.done()
        status = await wait_status(b.config, lambda s: s["link_up"], 2)
        assert status["state"] == "idle"
        # Refusals are answered one by one only up to the record rate (burst 20);
        # the rest are counted in `command_tally` audit records.
        refused = [r for r in b.station.replies if r["status"] == "refused"]
        assert len(refused) >= 20
        assert {"too_large", "malformed_json", "too_deeply_nested"} <= {
            r["reason_code"] for r in refused
        }
        expected = len(_hostile_payloads(random.Random(7)))
        deadline = asyncio.get_running_loop().time() + 10
        while sum(t["count"] for t in audit_bodies(b.config, "command_tally")) < expected:
            assert asyncio.get_running_loop().time() < deadline, "hostile messages not tallied"
            await asyncio.sleep(0.05)
