"""Addendum 1.1 over a real pty: `nebuliser simulate --icd 1.1` and a version-1 head."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

from drivers.mn1 import (
    BreathReceived,
    CapabilitiesDiscovered,
    CommandFailed,
    LinkEvent,
    NoCapabilities,
    SerialLink,
    StartGated,
)
from simulators.mn1 import DeviceModel, run_pty_simulator

_NEBULISER = str(Path(sys.executable).with_name("nebuliser"))
GATED = StartGated(
    session_id=3,
    target_ul=100,
    max_duration_s=600,
    output_pct=100,
    gate_pct=80,
    lead_breaths=1,
    apnoea_s=10,
)


async def wait_for_event(link: SerialLink, kind: type[object], timeout_s: float) -> LinkEvent:
    async with asyncio.timeout(timeout_s):
        while True:
            event = await link.next_event()
            if isinstance(event, kind):
                return event


async def test_version_1_head_has_no_capabilities_and_refuses_a_gated_start() -> None:
    model = DeviceModel(serial="SIM-V1")
    async with run_pty_simulator(model) as sim, SerialLink(url=sim.device_path) as link:
        verdict = await wait_for_event(link, NoCapabilities, 5)
        assert isinstance(verdict, NoCapabilities)
        outcome = await link.command(GATED)
        assert isinstance(outcome, CommandFailed)
        assert "version-1 head" in outcome.reason
        assert not model.truth().nebulising


async def test_cli_icd_1_1_head_discovers_caps_reports_breaths_and_takes_ctl(
    tmp_path: Path,
) -> None:
    control = tmp_path / "mn1.ctl"
    process = await asyncio.create_subprocess_exec(
        _NEBULISER, "simulate", "--pty", "--icd", "1.1", "--breathing", "severe",
        "--control", str(control), "--trigger-ml-s", "60",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        async with asyncio.timeout(30):
            pty_path = (await process.stdout.readline()).decode().strip()
        async with SerialLink(url=pty_path) as link:
            found = await wait_for_event(link, CapabilitiesDiscovered, 10)
            assert isinstance(found, CapabilitiesDiscovered)
            assert found.caps.breath_gated
            assert found.caps.trigger_ml_s == 60
            breath = await wait_for_event(link, BreathReceived, 10)  # 32/min
            assert isinstance(breath, BreathReceived)
            assert breath.breath.tidal_ml == 350
        ctl = await asyncio.create_subprocess_exec(
            _NEBULISER, "simulate", "ctl", "--control", str(control), "mask", "off",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        async with asyncio.timeout(30):
            out, err = await ctl.communicate()
        assert ctl.returncode == 0, err
        assert json.loads(out)["state"]["breathing"]["mask_off"] is True
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def test_cli_no_breath_gating_needs_icd_1_1() -> None:
    result = subprocess.run(
        [_NEBULISER, "simulate", "--pty", "--no-breath-gating"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--icd 1.1" in result.stderr
