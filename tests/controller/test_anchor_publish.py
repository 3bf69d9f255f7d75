"""Audit anchors leave the bed at once and are kept (docs/security.md C27): the live
controller publishes its audit head retained, QoS 1, after every audited batch and
at shutdown; a ward monitor's model turns each into an `audit_head` event that
`AnchorStore` keeps; `nebuliser audit verify --anchors` then passes, and the last
anchor is the shutdown one naming the log's last record."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from controller.cli import main
from controller.security import AUDIT_DB_NAME, AnchorStore, verify_audit_log
from controller.telemetry import WardModel
from simulators.mn1 import DeviceModel, run_pty_simulator
from tests.support.mosquitto import MosquittoBroker

from ._setup import write_config
from .test_remote_commands import BED, WARD, Keys, mqtt_section, security_section
from .test_service_pty import running_controller, wait_status

HEAD_TOPIC = f"nebuliser/v1/{WARD}/{BED}/audit/head"


@contextlib.asynccontextmanager
async def _ward_monitor(
    broker: MosquittoBroker, events: list[dict[str, Any]]
) -> AsyncIterator[None]:
    """A subscriber on the ward feeding a `WardModel`, as `nebuliser monitor` does."""
    model = WardModel(root_topic="nebuliser/v1")
    async with aiomqtt.Client(
        broker.host, broker.port, identifier="anchor-keeper", protocol=aiomqtt.ProtocolVersion.V5
    ) as client:
        await client.subscribe(f"nebuliser/v1/{WARD}/#", qos=1)

        async def read() -> None:
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                events.extend(
                    model.feed(str(message.topic), message.payload, now_s=0,
                               retained=bool(message.retain))
                )  # fmt: skip

        async with asyncio.TaskGroup() as group:
            reader = group.create_task(read())
            try:
                yield
            finally:
                reader.cancel()


async def _late_joiner_gets_a_retained_head(broker: MosquittoBroker) -> bool:
    async with aiomqtt.Client(
        broker.host, broker.port, identifier="late-station", protocol=aiomqtt.ProtocolVersion.V5
    ) as client:
        await client.subscribe(HEAD_TOPIC, qos=1)
        async with asyncio.timeout(5):
            message = await anext(aiter(client.messages))
        return bool(message.retain)


async def _until(predicate: Any, timeout_s: float) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 - another process publishes
            await asyncio.sleep(0.05)


async def test_anchors_are_published_retained_kept_by_the_monitor_and_verify(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events: list[dict[str, Any]] = []

    def heads() -> list[dict[str, Any]]:
        return [e for e in events if e["event"] == "audit_head"]

    workdir = tmp_path / "mosquitto"
    workdir.mkdir()
    async with (
        MosquittoBroker(workdir=workdir) as broker,
        run_pty_simulator(DeviceModel(nominal_ul_min=400, fill_ul=3000)) as sim,
    ):
        _, config = write_config(
            tmp_path, port=sim.device_path, security=security_section(Keys()),
            extra=mqtt_section(broker),
        )  # fmt: skip
        async with _ward_monitor(broker, events):
            async with running_controller(config):
                await wait_status(config, lambda s: s["link_up"], 10)
                await _until(lambda: bool(heads()), 10)
                # A station that joins later gets the newest head at once: retained.
                assert await _late_joiner_gets_a_retained_head(broker)
                async with aiomqtt.Client(broker.host, broker.port, identifier="x") as sender:
                    await sender.publish(f"nebuliser/v1/{WARD}/{BED}/command", b"junk", qos=1)
                await _until(lambda: any(e["reason"] == "batch" for e in heads()[1:]), 10)
            # The controller has stopped: its last anchor was published on the way out.
            await _until(lambda: heads()[-1]["reason"] == "shutdown", 10)
    invalid = [e for e in events if e["event"] == "invalid"]
    assert not invalid, invalid
    store = AnchorStore(path=tmp_path / "station" / "anchors.jsonl")
    for event in heads():
        store.add(**{k: v for k, v in event.items() if k != "event"})
    data = config.storage.data_dir
    last = verify_audit_log(data / AUDIT_DB_NAME).head
    assert last is not None
    assert heads()[-1]["head"] == str(last), "the shutdown anchor names the last record"
    capsys.readouterr()
    assert main(["audit", "verify", "--data-dir", str(data), "--anchors", str(store.path)]) == 0
    assert "anchors match" in capsys.readouterr().out
