"""`nebuliser command send` end to end: a real subprocess publishes a signed command
through a real Mosquitto (the shipped dev config) to a bed that runs verify_command
with a real SQLite counter store and replies."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from controller.cli import main
from controller.exitcodes import ExitCode
from controller.security import (
    Role,
    SecuritySettings,
    SenderConfig,
    SenderRegistry,
    SqliteCounterStore,
    build_reply,
    command_topic,
    load_public_key_file,
    public_key_to_text,
    reply_topic,
    verify_command,
)
from tests.security._broker import DEV_CONF, Peer, free_port, raw_connect, running_broker

pytestmark = pytest.mark.slow

_NEBULISER = str(Path(sys.executable).with_name("nebuliser"))


@pytest.fixture
def dev_broker(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    text = DEV_CONF.read_text()
    assert "listener 1884 127.0.0.1\n" in text
    conf = tmp_path / "dev.conf"
    conf.write_text(text.replace("listener 1884 127.0.0.1\n", f"listener {port} 127.0.0.1\n"))
    with running_broker(conf, port):
        yield port


def test_dev_config_accepts_plaintext_so_the_tls_probe_is_meaningful(dev_broker: int) -> None:
    assert raw_connect(port=dev_broker, ca=Path("/nonexistent"), cert_stem=None, tls=False)


def _bed_responder(port: int, data_dir: Path, registry: SenderRegistry) -> Peer:
    bed = Peer(port=port, ca=Path("/nonexistent"), cert_stem=None, tls=False)
    assert bed.connect()
    store = SqliteCounterStore.in_data_dir(data_dir)
    assert bed.client is not None
    client = bed.client

    def on_message(_c: object, _u: object, message: object) -> None:
        payload = bytes(message.payload)  # type: ignore[attr-defined]
        now = datetime.now(UTC)
        outcome = verify_command(
            payload,
            retained=bool(message.retain),  # type: ignore[attr-defined]
            now=now,
            device_id="neb-0001",
            registry=registry,
            counters=store,
        )
        reply = build_reply(outcome, device_id="neb-0001", now=now)
        client.publish(reply_topic(ward="3west", bed="07"), reply, qos=1)

    client.on_message = on_message
    bed.subscribe(command_topic(ward="3west", bed="07"))
    return bed


def test_command_send_prints_accepted_then_refused_on_replay(
    tmp_path: Path, dev_broker: int
) -> None:
    assert main(["keys", "generate", "--out", str(tmp_path), "--name", "ward-3west"]) == 0
    public = public_key_to_text(load_public_key_file(tmp_path / "ward-3west.pub"))
    registry = SenderRegistry.from_settings(
        SecuritySettings(
            senders=(SenderConfig(id="ward-3west", public_key=public, role=Role.WARD_STATION),)
        )
    )
    bed = _bed_responder(dev_broker, tmp_path / "bed-data", registry)
    try:
        argv = [
            _NEBULISER, "command", "send", "--broker", f"mqtt://127.0.0.1:{dev_broker}",
            "--ward", "3west", "--bed", "07", "--timeout-s", "10",
            "--key", str(tmp_path / "ward-3west.key"), "--sender", "ward-3west",
            "--device", "neb-0001", "--counter", "3", "alarm.ack", "dry_cup", "--by", "nurse.kim",
        ]  # fmt: skip
        first = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        assert first.returncode == 0, first.stdout + first.stderr
        assert json.loads(first.stdout)["status"] == "accepted"
        second = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        assert second.returncode == 1, second.stderr
        reply = json.loads(second.stdout)
        assert reply["status"] == "refused"
        assert reply["reason_code"] == "replayed_counter"
    finally:
        bed.close()


def test_command_send_reports_no_reply(tmp_path: Path, dev_broker: int) -> None:
    assert main(["keys", "generate", "--out", str(tmp_path), "--name", "ward-3west"]) == 0
    argv = [
        _NEBULISER, "command", "send", "--broker", f"mqtt://127.0.0.1:{dev_broker}",
        "--ward", "3west", "--bed", "99", "--timeout-s", "0.5",
        "--key", str(tmp_path / "ward-3west.key"), "--sender", "ward-3west",
        "--device", "neb-0001", "--counter", "1", "stop",
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == ExitCode.BROKER
    assert "no reply within 0.5 s" in done.stderr
