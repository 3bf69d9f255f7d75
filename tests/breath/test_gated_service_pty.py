"""Breath-gated sessions through the whole controller, in real time.

`run_service` (the controller, in this process) and `simulators/mn1` as an ICD 1.1
head with a breathing patient (or as a version-1 head) on a real pty; the nurse's
requests through the control socket. A fast head (6 mL/min) and a shortened cap keep
each gated run to seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from controller.benchconfig import BenchPrescription, bench_config_text, init_bench_ledger
from controller.config import NebuliserConfig, load_config
from controller.ledger import LEDGER_FILE_NAME, Ledger
from controller.service import run_service
from simulators.mn1 import BreathingModel, DeviceModel, RunningSimulator, run_pty_simulator
from tests.controller.test_mqtt_service import capturing, mqtt_section, until
from tests.controller.test_service_pty import start_confirmed, wait_status
from tests.support.mosquitto import MosquittoBroker
from tests.telemetry.helpers import validate_payload

FAST_UL_MIN = 6000  # 100 µL/s
CAP_UL = 200


def gated_config(
    tmp_path: Path, *, port: str, session_ul: int, apnoea_s: int = 5, extra: str = ""
) -> NebuliserConfig:
    """The bench configuration with a breath-gated prescription."""
    text = bench_config_text(
        port=port,
        data_dir=tmp_path / "data",
        prescription=BenchPrescription(
            subject_id="TEST-001", lot_id="LOT-T", session_ul=session_ul
        ),
        device='device_id = "neb-test"',
        extra=extra,
    )
    text += (
        "[prescription.delivery]\n"
        'mode = "breath_gated"\n'
        f"gate_pct = 80\nlead_breaths = 1\napnoea_s = {apnoea_s}\n"
    )
    path = tmp_path / "controller.toml"
    path.write_text(text, encoding="utf-8")
    config = load_config(path)
    init_bench_ledger(config)
    return config


@contextlib.asynccontextmanager
async def gated_bed(
    tmp_path: Path,
    model: DeviceModel,
    *,
    session_ul: int = CAP_UL,
    apnoea_s: int = 5,
    extra: str = "",
) -> AsyncIterator[tuple[NebuliserConfig, RunningSimulator]]:
    """The simulator on a pty and the controller on it, the head identified."""
    async with run_pty_simulator(model) as sim:
        config = gated_config(
            tmp_path, port=sim.device_path, session_ul=session_ul, apnoea_s=apnoea_s, extra=extra
        )
        stop = asyncio.Event()
        async with asyncio.TaskGroup() as group:
            group.create_task(run_service(config, stop_requested=stop))
            try:
                await wait_status(config, lambda s: s["link_up"] and s["device"], 10)
                yield config, sim
            finally:
                stop.set()


def head_11(pattern: str) -> DeviceModel:
    return DeviceModel(
        nominal_ul_min=FAST_UL_MIN, fill_ul=3000, breathing=BreathingModel(pattern=pattern)
    )


def alarm_codes(status: dict[str, Any]) -> set[str]:
    return {alarm["code"] for alarm in status["alarms"]}


def breath_summary(config: NebuliserConfig, session_id: int) -> dict[str, Any] | None:
    with Ledger.open(config.storage.data_dir / LEDGER_FILE_NAME, read_only=True) as ledger:
        return ledger.breath_summary(session_id)


async def wait_summary(
    config: NebuliserConfig, session_id: int, timeout_s: float
) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while (figures := breath_summary(config, session_id)) is None:
        assert asyncio.get_running_loop().time() < deadline, "no breath summary recorded"
        await asyncio.sleep(0.1)
    return figures


@pytest.mark.parametrize("pattern", ["iso27427", "adult", "severe"])
async def test_a_gated_pilot_session_runs_to_its_cap(tmp_path: Path, pattern: str) -> None:
    model = head_11(pattern)
    async with gated_bed(tmp_path, model) as (config, _sim):
        reply = await start_confirmed(config)
        assert reply["started"], reply
        running = await wait_status(config, lambda s: s["session"] is not None, 5)
        assert running["breathing"]["head"] == "breath_gated"
        assert running["breathing"]["gated"] is True
        status = await wait_status(config, lambda s: s["last_session"] is not None, 60)
        last = status["last_session"]
        assert CAP_UL - 40 <= last["delivered_ul"] <= CAP_UL  # host stop: one latency early
        assert model.truth().delivered_ul <= CAP_UL + 1
        figures = await wait_summary(config, last["session_id"], 15)
        assert figures["gated"] is True
        assert figures["breaths"] >= 1
        total = figures["aerosol_insp_ul"] + figures["aerosol_exp_ul"]
        assert abs(total - last["delivered_ul"]) <= 2
        assert figures["aerosol_exp_ul"] <= 0.05 * total
        # Each BREATH report of the run is stored too, through the writer thread.
        with Ledger.open(config.storage.data_dir / LEDGER_FILE_NAME, read_only=True) as ledger:
            rows = ledger.breaths(last["session_id"])
        assert len(rows) == figures["breaths"]
        assert sum(r.aerosol_insp_dul for r in rows) / 10 == figures["aerosol_insp_ul"]
        assert sum(r.lost_before for r in rows) == figures["lost_reports"]
        final = await wait_status(config, lambda s: True, 1)
        assert alarm_codes(final) == set(), final["alarms"]


async def test_apnoea_raises_no_breathing_and_the_session_resumes(tmp_path: Path) -> None:
    model = head_11("severe")
    async with gated_bed(tmp_path, model, session_ul=400) as (config, sim):
        assert (await start_confirmed(config))["started"]
        await wait_status(config, lambda s: s["session"] and s["session"]["delivered_ul"] > 20, 20)
        sim.apply(lambda m, t: m.breathing_apnoea(9, now_ms=t))
        paused = await wait_status(config, lambda s: "no_breathing_detected" in alarm_codes(s), 20)
        assert paused["session"] is not None  # still our session: WAITING, not ended
        assert paused["device_status"]["state"] == "WAITING"
        assert paused["breathing"]["waiting"] is True
        resumed = await wait_status(
            config, lambda s: "no_breathing_detected" not in alarm_codes(s), 20
        )
        assert resumed["session"] is not None
        done = await wait_status(config, lambda s: s["last_session"] is not None, 60)
        assert 400 - 40 <= done["last_session"]["delivered_ul"] <= 400


async def test_mask_off_ends_the_session_no_breathing(tmp_path: Path) -> None:
    model = head_11("severe")
    async with gated_bed(tmp_path, model, session_ul=400) as (config, sim):
        assert (await start_confirmed(config))["started"]
        await wait_status(config, lambda s: s["session"] and s["session"]["delivered_ul"] > 20, 20)
        sim.apply(lambda m, t: m.set_mask_off(True, now_ms=t))
        status = await wait_status(config, lambda s: s["last_session"] is not None, 40)
        last = status["last_session"]
        assert last["device_reason"] == "NO_BREATHING"
        assert last["delivered_ul"] < 400
        ended = await wait_status(
            config, lambda s: "session_ended_no_breathing" in alarm_codes(s), 5
        )
        assert ended["state"] == "idle"


async def test_a_gated_prescription_is_refused_on_a_version_1_head(tmp_path: Path) -> None:
    model = DeviceModel(nominal_ul_min=FAST_UL_MIN, fill_ul=3000)
    async with gated_bed(tmp_path, model) as (config, _sim):
        reply = await start_confirmed(config)
        assert not reply["started"]
        assert any("head_not_breath_aware" in r for r in reply["reasons"]), reply
        assert any("ICD version 1" in r for r in reply["reasons"]), reply
        status = await wait_status(config, lambda s: True, 1)
        assert status["breathing"]["head"] == "version_1"
        # `session status` says so before anyone tries.
        assert any(r.startswith("head_not_breath_aware") for r in status["start_refusals"])
    assert model.truth().sessions == []
    assert model.truth().session_id == 0
    with Ledger.open(config.storage.data_dir / LEDGER_FILE_NAME, read_only=True) as ledger:
        assert ledger.history("TEST-001") == []


async def test_the_breathing_message_is_published_at_each_change_and_validates(
    tmp_path: Path,
) -> None:
    workdir = tmp_path / "mosquitto"
    workdir.mkdir()
    model = head_11("severe")
    async with (
        MosquittoBroker(workdir=workdir) as broker,
        capturing(broker) as capture,
        gated_bed(tmp_path, model, session_ul=800, extra=mqtt_section(broker)) as (config, _sim),
    ):
        await until(lambda: bool(capture.bodies("breathing")), 10, "a first breathing message")
        reply = await start_confirmed(config)
        assert reply["started"], reply
        sid = reply["session_id"]
        await wait_status(config, lambda s: s["last_session"] is not None, 60)
        await until(
            lambda: any(
                b["session_id"] is None and b["reason"] == "state_change"
                for b in capture.bodies("breathing")[1:]
            ),
            10,
            "the breathing message at the session's end",
        )
    bodies = capture.bodies("breathing")
    for topic, payload, _retain in capture.messages:
        if topic.endswith("/breathing"):
            validate_payload(payload)
    during = [b for b in bodies if b["session_id"] == sid]
    assert during, bodies
    assert during[0]["reason"] == "state_change"
    assert all(b["gated"] for b in during)
    assert any(b["rate_bpm"] is not None for b in bodies)
    assert any(b["insp_share_pct"] is not None and b["insp_share_pct"] >= 95 for b in during), [
        (b["reason"], b["waiting"], b["breaths"], b["insp_share_pct"]) for b in during
    ]
