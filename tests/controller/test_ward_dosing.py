"""Issue 15 on a ward: the real controller against the simulator on a real pty.

A reduced dose is the nurse's decision: refused with what is left, then given after
`--volume-ul N` or a "y" at the bedside terminal (the `nebuliser` command in a real
subprocess on a real terminal).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controller.benchconfig import (
    BenchPrescription,
    bench_config_text,
    init_bench_ledger,
    write_bench_config,
)
from controller.cli import main
from controller.config import NebuliserConfig, load_config
from controller.control import ControlClient
from controller.ledger import LEDGER_FILE_NAME, EventKind, Ledger
from controller.security import (
    CommandName,
    RequestStartBody,
    StopBody,
    public_key_to_text,
    sign_override,
)
from simulators.mn1 import DeviceModel, RunningSimulator, run_pty_simulator

from . import test_remote_commands as remote
from .test_service_pty import FAST_UL_MIN, running_controller, start_confirmed, wait_status

SESSION_UL = 200
DAILY_UL = 300  # less than two sessions: the second one cannot be the full 200 µL


@contextlib.asynccontextmanager
async def small_daily_bed(
    tmp_path: Path,
) -> AsyncIterator[tuple[Path, NebuliserConfig, RunningSimulator]]:
    model = DeviceModel(nominal_ul_min=FAST_UL_MIN, fill_ul=3000, serial="SIM-WARD")
    async with run_pty_simulator(model) as sim:
        path, config = write_bench_config(
            tmp_path,
            port=sim.device_path,
            prescription=BenchPrescription(
                subject_id="TEST-001",
                session_ul=SESSION_UL,
                min_interval_s=1,
                rolling_24h_max_ul=DAILY_UL,
            ),
            device='device_id = "neb-ward"',
            session="confirm_timeout_s = 10",
        )
        async with running_controller(config):
            await wait_status(config, lambda s: s["link_up"] and s["device"], 5)
            yield path, config, sim


async def _first_dose(config: NebuliserConfig) -> int:
    assert (await start_confirmed(config))["started"]
    status = await wait_status(config, lambda s: s["last_session"] is not None, 15)
    delivered: int = status["last_session"]["delivered_ul"]
    assert 0 < delivered <= SESSION_UL
    return delivered


async def _start(config: NebuliserConfig, **params: Any) -> dict[str, Any]:
    async with ControlClient(path=config.control_socket) as client:
        await client.send("session.start", **params)
        first = await client.receive()
        if first.get("final"):
            return first
        assert first["event"] == "awaiting_confirm", first
        await client.send("confirm")
        reply = await client.receive()
        reply["awaiting"] = first
        return reply


def _start_decisions(ledger: Ledger) -> list[dict[str, Any]]:
    """The dose engine's decisions (the host's stop decisions are DECISION rows too)."""
    events = ledger.events(kinds=[EventKind.DECISION])
    return [dict(e.body) for e in events if "constraints" in e.body["trace"]]


async def _read_until(fd: int, needle: bytes, seen: bytearray, timeout_s: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while needle not in seen:
        if loop.time() > deadline:
            raise AssertionError(f"{needle!r} not shown; terminal so far: {bytes(seen)!r}")
        try:
            seen += os.read(fd, 4096)
        except BlockingIOError:
            await asyncio.sleep(0.02)
        except OSError:  # EIO: the child closed the terminal
            raise AssertionError(f"terminal closed before {needle!r}: {bytes(seen)!r}") from None


async def test_less_left_is_refused_with_the_amount_then_given_with_volume_ul(
    tmp_path: Path,
) -> None:
    async with small_daily_bed(tmp_path) as (_path, config, _sim):
        delivered = await _first_dose(config)
        left = DAILY_UL - delivered
        refused = await _start(config)
        assert not refused["started"]
        assert refused["reasons"] == [
            f"reduced_dose: only {left} µL of the {SESSION_UL} µL wanted remain because "
            f"rolling_24h_ul: {delivered} µL in the last 24h of {DAILY_UL} µL leaves "
            f"allowance ({left} µL); a smaller dose must be accepted explicitly"
        ]
        offer = refused["reduced_dose_offer"]
        assert (offer["allowed_ul"], offer["wanted_ul"], offer["constraint"]) == (
            left,
            SESSION_UL,
            "rolling_24h_ul",
        )
        started = await _start(config, requested_ul=left)
        assert started["started"], started
        assert started["cap_ul"] == left
        assert "asked for, below the prescribed" in started["awaiting"]["reduced_dose"]
        status = await wait_status(
            config, lambda s: (s["last_session"] or {}).get("session_id") == 2, 15
        )
        assert status["last_session"]["delivered_ul"] <= left
    with Ledger.open(config.storage.data_dir / LEDGER_FILE_NAME, read_only=True) as ledger:
        decisions = _start_decisions(ledger)
    refusal = next(d for d in decisions if not d["allowed"])
    assert refusal["trace"]["refusal_codes"] == ["reduced_dose"], refusal


async def test_nurse_answers_yes_at_the_bedside_terminal(tmp_path: Path) -> None:
    async with small_daily_bed(tmp_path) as (path, config, _sim):
        delivered = await _first_dose(config)
        left = DAILY_UL - delivered
        primary, secondary = os.openpty()
        os.set_blocking(primary, False)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "controller.cli", "session", "start", "--config", str(path),
            stdin=secondary, stdout=secondary, stderr=secondary,
        )  # fmt: skip
        os.close(secondary)
        seen = bytearray()
        try:
            question = f"only {left} µL of {SESSION_UL} µL remain because rolling_24h_ul".encode()
            await _read_until(primary, question, seen, 20)
            await _read_until(primary, f"give {left} µL? [y/N]".encode(), seen, 5)
            os.write(primary, b"y\n")
            await _read_until(primary, b"type 'yes' and Enter here:", seen, 20)
            assert f"Start {left} µL".encode() in seen
            os.write(primary, b"yes\n")
            assert await asyncio.wait_for(process.wait(), 20) == 0
            with contextlib.suppress(AssertionError):
                await _read_until(primary, b"confirmed by bedside terminal", seen, 2)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            os.close(primary)
        assert f"({left} µL cap, confirmed by bedside terminal)".encode() in seen, bytes(seen)
        status = await wait_status(
            config, lambda s: (s["last_session"] or {}).get("session_id") == 2, 15
        )
        assert status["last_session"]["delivered_ul"] <= left
    with Ledger.open(config.storage.data_dir / LEDGER_FILE_NAME, read_only=True) as ledger:
        decisions = _start_decisions(ledger)
    accepted = [d for d in decisions if d["allowed"]][-1]
    (entry,) = [c for c in accepted["trace"]["constraints"] if c["code"] == "reduced_dose"]
    assert entry["passed"]
    assert entry["reason"].startswith(f"reduced_dose: {left} µL accepted explicitly: only")
    assert entry["limited_by"] == "rolling_24h_ul"


async def test_declining_the_smaller_dose_starts_nothing(tmp_path: Path) -> None:
    async with small_daily_bed(tmp_path) as (path, config, _sim):
        await _first_dose(config)
        primary, secondary = os.openpty()
        os.set_blocking(primary, False)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "controller.cli", "session", "start", "--config", str(path),
            stdin=secondary, stdout=secondary, stderr=secondary,
        )  # fmt: skip
        os.close(secondary)
        seen = bytearray()
        try:
            await _read_until(primary, b"[y/N]", seen, 20)
            os.write(primary, b"\n")  # Enter alone is no
            assert await asyncio.wait_for(process.wait(), 20) == 1
            await _read_until(primary, b"--volume-ul", seen, 5)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            os.close(primary)
        status = await wait_status(config, lambda s: s["state"] == "idle", 5)
        assert status["last_session"]["session_id"] == 1


async def _cli(path: Path, *args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "controller.cli", *args, "--config", str(path),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode is not None
    return process.returncode, out.decode()


async def test_status_shows_a_pending_start_and_stop_cancels_it(tmp_path: Path) -> None:
    async with small_daily_bed(tmp_path) as (path, config, sim):
        async with ControlClient(path=config.control_socket) as asking:
            await asking.send("session.start", by="nurse A")
            waiting = await asking.receive()
            assert waiting["event"] == "awaiting_confirm"
            status = await wait_status(config, lambda s: bool(s["pending_starts"]), 5)
            (pending,) = status["pending_starts"]
            assert (pending["requested_by"], pending["channel"], pending["cap_ul"]) == (
                "nurse A",
                "control socket",
                SESSION_UL,
            )
            code, shown = await _cli(path, "session", "status")
            assert code == 0
            assert "pending:  start of 200 µL asked for by nurse A (control socket" in shown
            code, stopped = await _cli(path, "session", "stop", "--by", "nurse B")
            assert code == 0
            assert "cancelled 1 start(s) waiting for CONFIRM" in stopped
            final = await asking.receive()
        assert final["final"]
        assert not final["started"]
        assert final["reasons"] == [
            "start cancelled by nurse B (session stop) before the bedside CONFIRM; nothing started"
        ]
        status = await wait_status(config, lambda s: not s["pending_starts"], 5)
        assert status["state"] == "idle"
        assert status["last_session"] is None
        assert not sim.model.truth().nebulising


INVESTIGATOR_KEY = Ed25519PrivateKey.generate()


@contextlib.asynccontextmanager
async def override_bed(tmp_path: Path) -> AsyncIterator[tuple[Path, NebuliserConfig]]:
    """A bed whose interval (1 h) is soft for investigators; Dr Jane Smith holds a key."""
    model = DeviceModel(nominal_ul_min=FAST_UL_MIN, fill_ul=3000, serial="SIM-OVR")
    async with run_pty_simulator(model) as sim:
        security = (
            "[security]\nrequire_signed_prescriptions = false\n"
            "[[security.senders]]\n"
            'id = "dr-smith"\n'
            f'public_key = "{public_key_to_text(INVESTIGATOR_KEY.public_key())}"\n'
            'role = "investigator"\n'
            'name = "Dr Jane Smith"\n'
        )
        text = bench_config_text(
            port=sim.device_path,
            data_dir=tmp_path / "data",
            prescription=BenchPrescription(
                subject_id="TEST-001", session_ul=SESSION_UL, min_interval_s=3600
            ),
            device='device_id = "neb-ovr"',
            security=security,
        )
        # The prescription's limits table is last: the soft interval goes there.
        text += 'soft_limits = ["interval"]\noverride_roles = ["investigator"]\n'
        path = tmp_path / "controller.toml"
        path.write_text(text, encoding="utf-8")
        config = load_config(path)
        init_bench_ledger(config)
        async with running_controller(config):
            await wait_status(config, lambda s: s["link_up"] and s["device"], 5)
            yield path, config


def _credential(*, key: Ed25519PrivateKey = INVESTIGATOR_KEY) -> str:
    return sign_override(
        key=key,
        sender_id="dr-smith",
        device_id="neb-ovr",
        subject_id="TEST-001",
        role="investigator",
        reason="protocol deviation 7 approved",
        constraint_codes=["interval"],
        issued_at_ms=int(time.time() * 1000),
    ).decode()


async def test_an_override_needs_a_valid_credential_and_names_the_person(
    tmp_path: Path,
) -> None:
    async with override_bed(tmp_path) as (path, config):
        await _first_dose(config)
        plain = await _start(config)
        assert any(r.startswith("interval:") for r in plain["reasons"]), plain
        # A role typed at the terminal lifts nothing.
        code, shown = await _cli(
            path, "session", "start", "--button-only", "--override-role", "investigator",
            "--override-reason", "trust me", "--override", "interval",
        )  # fmt: skip
        assert code == 1
        assert "override by role 'investigator' refused: an override needs an investigator's" in (
            shown
        )
        forged = await _start(
            config, override_credential=_credential(key=Ed25519PrivateKey.generate())
        )
        assert not forged["started"]
        assert forged["reasons"][0].startswith("override credential refused (bad_signature)")
        credential = _credential()
        started = await _start(config, override_credential=credential)
        assert started["started"], started
        await wait_status(config, lambda s: (s["last_session"] or {}).get("session_id") == 2, 15)
        replayed = await _start(config, override_credential=credential)
        assert not replayed["started"]
        assert "replayed_counter" in replayed["reasons"][0] or "duplicate" in replayed["reasons"][0]
    with Ledger.open(config.storage.data_dir / LEDGER_FILE_NAME, read_only=True) as ledger:
        overrides = [e.body for e in ledger.events(kinds=[EventKind.OVERRIDE])]
        commands = [e.body for e in ledger.events(kinds=[EventKind.COMMAND])]
    # Every refused attempt to lift a limit is on the record too: who tried and why.
    refusals = [c for c in commands if c["command"] == "session.override_refused"]
    assert [r["reason"].split(":")[0] for r in refusals] == [
        "override by role 'investigator' refused",
        "override credential refused (bad_signature)",
        refusals[2]["reason"].split(":")[0],
    ]
    assert "replayed_counter" in refusals[2]["reason"] or "duplicate" in refusals[2]["reason"]
    assert all(r["subject_id"] == "TEST-001" and r["origin"] for r in refusals)
    # The kernel's word on who asked (SO_PEERCRED), not only the name typed.
    assert {r["peer"]["uid"] for r in refusals} == {os.getuid()}
    # Recorded with each admission of the one start (before and after CONFIRM).
    assert {o["credential_id"] for o in overrides} == {json.loads(credential)["command_id"]}
    assert {o["signed_by"] for o in overrides} == {"Dr Jane Smith (key dr-smith)"}
    assert all(o["constraint_codes"] == ["interval"] for o in overrides)
    report = tmp_path / "sessions.csv"
    args = ["report", "sessions", "--format", "csv", "--config", str(path), "-o", str(report)]
    assert main(args) == 0
    rows = list(csv.DictReader(io.StringIO(report.read_text(encoding="utf-8"))))
    assert rows[1]["overrides"] == (
        "investigator: protocol deviation 7 approved (interval) "
        "signed by Dr Jane Smith (key dr-smith)"
    )


async def test_a_run_to_dryness_is_reported_complete(tmp_path: Path) -> None:
    """The pilot's form at bench scale: 300 µL in the cup, the mesh leaves 100 µL."""
    model = DeviceModel(nominal_ul_min=FAST_UL_MIN, fill_ul=300, residual_ul=100)
    async with run_pty_simulator(model) as sim:
        text = bench_config_text(
            port=sim.device_path,
            data_dir=tmp_path / "data",
            prescription=BenchPrescription(subject_id="TEST-001", session_ul=300),
            device='device_id = "neb-dry"',
        )
        text += "[prescription.delivery]\nfill_ul = 300\nresidual_ul = 100\n"
        path = tmp_path / "controller.toml"
        path.write_text(text, encoding="utf-8")
        config = load_config(path)
        init_bench_ledger(config)
        async with running_controller(config):
            await wait_status(config, lambda s: s["link_up"] and s["device"], 5)
            assert (await start_confirmed(config))["started"]
            status = await wait_status(config, lambda s: s["last_session"] is not None, 15)
    assert status["last_session"]["device_reason"] == "RESERVOIR_EMPTY"
    assert 150 <= status["last_session"]["delivered_ul"] <= 200
    report = tmp_path / "sessions.csv"
    args = ["report", "sessions", "--format", "csv", "--config", str(path), "-o", str(report)]
    assert main(args) == 0
    (row,) = csv.DictReader(io.StringIO(report.read_text(encoding="utf-8")))
    assert row["status"] == "completed to dryness"


async def test_a_remote_start_waiting_for_confirm_is_shown_and_cancelled_at_the_bed(
    tmp_path: Path,
) -> None:
    keys = remote.Keys()
    async with remote.bed(tmp_path, keys) as b:
        request = remote.signed(
            keys.ward, CommandName.SESSION_REQUEST_START, RequestStartBody(), counter=1
        )
        first = await b.station.command(request, stage="awaiting_confirm")
        assert first["status"] == "accepted"
        status = await wait_status(b.config, lambda s: bool(s["pending_starts"]), 3)
        (pending,) = status["pending_starts"]
        assert (pending["requested_by"], pending["channel"]) == (
            "remote sender ward-3west",
            "remote command",
        )
        async with ControlClient(path=b.config.control_socket) as client:
            stopped = await client.call("session.stop", by="nurse B")
        assert stopped["cancelled_starts"] == 1
        status = await wait_status(b.config, lambda s: not s["pending_starts"], 3)
        assert status["state"] == "idle"
        assert status["session"] is None
        assert not b.model.truth().nebulising
        deadline = asyncio.get_running_loop().time() + 5
        while [r["status"] for r in remote.audit_bodies(b.config, "start_request")] != [
            "pending",
            "cancelled",
        ]:
            assert asyncio.get_running_loop().time() < deadline, "cancellation not audited"
            await asyncio.sleep(0.05)


async def test_a_remote_stop_cancels_a_start_waiting_at_the_bedside(tmp_path: Path) -> None:
    """A signed STOP from the ward cancels a bedside start still waiting for CONFIRM."""
    keys = remote.Keys()
    async with remote.bed(tmp_path, keys) as b:
        async with ControlClient(path=b.config.control_socket) as asking:
            await asking.send("session.start", by="nurse A")
            assert (await asking.receive())["event"] == "awaiting_confirm"
            await wait_status(b.config, lambda s: bool(s["pending_starts"]), 5)
            stop = remote.signed(keys.ward, CommandName.STOP, StopBody(reason="sats"), counter=1)
            reply = await b.station.command(stop)
            assert reply["status"] == "accepted", reply
            assert reply["cancelled_starts"] == 1
            final = await asking.receive()
        assert final["final"]
        assert not final["started"]
        assert final["reasons"] == [
            "start cancelled by remote stop by ward-3west before the bedside CONFIRM; "
            "nothing started"
        ]
        status = await wait_status(b.config, lambda s: not s["pending_starts"], 5)
        assert status["state"] == "idle"
        assert status["last_session"] is None
        assert not b.model.truth().nebulising
