"""One administration in several runs, with the real controller and the simulator on a pty.

A technical interruption (the head falls silent for longer than its watchdog) must not
cost the patient the day's dose: the refusal of a plain second start says that a
continuation is available, and `session start --continue` gives the rest of the cap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from controller.config import NebuliserConfig
from controller.control import ControlClient
from controller.ledger import LEDGER_FILE_NAME, Ledger
from controller.reports import AdministrationStatus, read_sessions, session_outcome
from controller.session import ASSUMED_STOP_LATENCY_MS
from simulators.mn1 import DeviceModel, LinkFaults

from .test_service_pty import bed, start_confirmed, wait_status

FLOW_UL_MIN = 3000
CAP_UL = 300


async def _start(config: NebuliserConfig, **args: Any) -> dict[str, Any]:
    async with ControlClient(path=config.control_socket) as client:
        await client.send("session.start", **args)
        first = await client.receive()
        if first.get("final"):
            return first
        assert first["event"] == "awaiting_confirm", first
        await client.send("confirm")
        return await client.receive()


async def _interrupt_at(config: NebuliserConfig, sim: Any, delivered_ul: int) -> dict[str, Any]:
    await wait_status(
        config, lambda s: s["session"] and s["session"]["delivered_ul"] >= delivered_ul, 20
    )
    sim.apply(lambda m, t: m.set_link_faults(LinkFaults(silent=True), now_ms=t))
    # 1 s of silence: the host stops the session (the head still hears it).
    await wait_status(config, lambda s: s["state"] != "nebulising", 10)
    sim.apply(lambda m, t: m.set_link_faults(LinkFaults(), now_ms=t))
    return await wait_status(config, lambda s: s["session"] is None, 10)


def _runs(config: NebuliserConfig) -> list[Any]:
    with Ledger.open(config.storage.data_dir / LEDGER_FILE_NAME, read_only=True) as ledger:
        return [r for r in ledger.history("TEST-001") if r.counts_as_session]


async def test_an_interrupted_dose_is_continued_to_its_cap(tmp_path: Path) -> None:
    model = DeviceModel(nominal_ul_min=FLOW_UL_MIN, fill_ul=3000)
    async with bed(tmp_path, model, session_ul=CAP_UL) as (config, sim):
        assert (await start_confirmed(config))["started"]
        await _interrupt_at(config, sim, 100)
        last = (await wait_status(config, lambda s: s["last_session"] is not None, 5))[
            "last_session"
        ]
        assert last["host_reason"] == "status_silent"
        first_ul = last["delivered_ul"]

        plain = await _start(config)
        assert not plain["started"]
        assert any("--continue" in r for r in plain["reasons"]), plain

        continued = await _start(config, **{"continue": True})
        assert continued["started"], continued
        assert continued["cap_ul"] == CAP_UL - first_ul
        await wait_status(
            config,
            lambda s: (
                s["session"] is None and s["last_session"]["session_id"] != last["session_id"]
            ),
            30,
        )
        again = await _start(config, **{"continue": True})
        assert not again["started"]
    runs = _runs(config)
    assert len(runs) == 2
    assert runs[1].administration_id == runs[0].session_id
    # Reported as one dose: the first run reads "continued in session N".
    with Ledger.open(config.storage.data_dir / LEDGER_FILE_NAME, read_only=True) as ledger:
        course = read_sessions(ledger, subject_id="TEST-001")
    assert course[0].continued_by == runs[1].session_id
    outcome = session_outcome(course[0])
    assert outcome.status is AdministrationStatus.CONTINUED
    assert f"continued in session {runs[1].session_id}" in (outcome.reason or "")
    total = sum(r.delivered_ul or 0 for r in runs)
    price_ul = 2 + -(-FLOW_UL_MIN * ASSUMED_STOP_LATENCY_MS // 60_000)
    assert CAP_UL - price_ul <= total <= CAP_UL
    assert model.truth().total_delivered_ul <= CAP_UL + 1


async def test_a_dose_stopped_by_the_nurse_is_not_continued(tmp_path: Path) -> None:
    model = DeviceModel(nominal_ul_min=FLOW_UL_MIN, fill_ul=3000)
    async with bed(tmp_path, model, session_ul=CAP_UL) as (config, _sim):
        assert (await start_confirmed(config))["started"]
        await wait_status(config, lambda s: s["session"] and s["session"]["delivered_ul"] >= 50, 20)
        async with ControlClient(path=config.control_socket) as client:
            await client.call("session.stop", by="nurse Ada")
        await wait_status(config, lambda s: s["session"] is None, 10)
        refused = await _start(config, **{"continue": True})
        assert not refused["started"]
        assert any(r.startswith("continuation: nothing to continue") for r in refused["reasons"])
