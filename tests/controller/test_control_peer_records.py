"""Local access is attributable (docs/security.md C28): every start, confirm, stop,
alarm acknowledgement and fault clearing made through the real control socket leaves
a ledger row — and an audit record — that carries the kernel's word on the asking
process (SO_PEERCRED: pid, uid, gid, account name), not only the name that was typed."""

from __future__ import annotations

import json
import os
import pwd
import sqlite3
from pathlib import Path
from typing import Any

from controller.control import ControlClient
from controller.ledger import LEDGER_FILE_NAME, EventKind, Ledger
from controller.security import AUDIT_DB_NAME
from simulators.mn1 import DeviceModel

from .test_service_pty import bed, start_confirmed, wait_status

OPS = {
    "control.session.start",
    "control.confirm",
    "control.session.stop",
    "control.alarm.ack",
    "control.device.clear_faults",
}


def _control_rows(data_dir: Path) -> list[dict[str, Any]]:
    with Ledger.open(data_dir / LEDGER_FILE_NAME, read_only=True) as ledger:
        rows = [dict(e.body) for e in ledger.events(kinds=[EventKind.COMMAND])]
    return [row for row in rows if str(row["command"]).startswith("control.")]


def _audited_control_commands(data_dir: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(data_dir / AUDIT_DB_NAME) as conn:
        bodies = [json.loads(row[0]) for row in conn.execute(
            "SELECT body_json FROM audit_log WHERE kind = 'control_request' ORDER BY idx"
        )]  # fmt: skip
    return [
        b["event"]
        for b in bodies
        if "event" in b and str(b["event"]["command"]).startswith("control.")
    ]


def _assert_is_this_process(peer: dict[str, Any] | None) -> None:
    assert peer is not None, "a control-socket request was recorded without its peer"
    assert peer["pid"] == os.getpid()
    assert peer["uid"] == os.getuid()
    assert peer["gid"] == os.getgid()
    assert peer["user"] == pwd.getpwuid(os.getuid()).pw_name


async def test_start_confirm_ack_and_stop_rows_carry_the_socket_peer(tmp_path: Path) -> None:
    model = DeviceModel(nominal_ul_min=400, fill_ul=3000)
    async with bed(tmp_path, model) as (config, sim):
        reply = await start_confirmed(config)
        assert reply["started"], reply
        await wait_status(config, lambda s: s["session"] and s["session"]["delivered_ul"] > 0, 5)
        async with ControlClient(path=config.control_socket) as client:
            assert (await client.call("session.stop", by="nurse A"))["stopped"]
        await wait_status(config, lambda s: s["last_session"] is not None, 5)
        sim.apply(lambda m, t: m.set_condition("supply_low", True, now_ms=t))
        await wait_status(
            config, lambda s: any(a["code"] == "device_supply_low" for a in s["alarms"]), 5
        )
        async with ControlClient(path=config.control_socket) as client:
            acked = await client.call("alarm.ack", code="device_supply_low", by="nurse B")
            assert acked["ok"], acked
            # The supply is still low: the head keeps its fault, and the attempt is recorded.
            cleared = await client.call("device.clear_faults", by="engineer C")
            assert cleared["cleared"] is False, cleared

        def audited() -> bool:
            return {c["command"] for c in _audited_control_commands(config.storage.data_dir)} >= OPS

        await wait_status(config, lambda _s: audited(), 10)
    rows = _control_rows(config.storage.data_dir)
    assert {row["command"] for row in rows} == OPS, rows
    for row in rows:
        _assert_is_this_process(row["peer"])
    by_op = {row["command"]: row for row in rows}
    assert by_op["control.session.start"]["started"] is True
    assert by_op["control.session.stop"]["origin"] == "nurse A"
    assert by_op["control.alarm.ack"]["origin"] == "nurse B"
    assert by_op["control.alarm.ack"]["alarm_code"] == "device_supply_low"
    assert by_op["control.device.clear_faults"]["origin"] == "engineer C"
    assert by_op["control.device.clear_faults"]["cleared"] is False
    # The audit log (hash-chained, anchored off the bed) carries the same peer.
    for event in _audited_control_commands(config.storage.data_dir):
        _assert_is_this_process(event["peer"])
