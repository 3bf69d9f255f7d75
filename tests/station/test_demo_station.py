"""`nebuliser demo --station` serves the ward station page for the demo ward and
says where; without it, the demo ends by saying how to see the ward in a browser."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import urllib.request
from pathlib import Path

import pytest

from controller.cli import main

REPO = Path(__file__).resolve().parents[2]


def test_demo_without_station_says_how_to_see_the_ward(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--log-level", "error", "demo", "--nominal-ul-min", "20000"]) == 0
    assert "uv run nebuliser demo --station" in capsys.readouterr().out


@pytest.mark.slow
async def test_demo_station_serves_the_demo_ward() -> None:
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "controller.cli", "--log-level", "error", "demo",
        "--nominal-ul-min", "20000", "--station",
        cwd=REPO, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert child.stdout is not None
    try:
        async with asyncio.timeout(60):
            while True:
                line = (await child.stdout.readline()).decode()
                assert line, "the demo ended without printing the station URL"
                if line.startswith("ward station (web page): "):
                    url = line.split()[4]
                    break
        with urllib.request.urlopen(url + "api/me", timeout=10) as response:  # noqa: ASYNC210
            me = json.loads(response.read())
        assert me["title"] == "Ward demo-ward (demo)"
        assert me["can_acknowledge"] is False, "the demo station only shows the ward"
        await asyncio.wait_for(child.communicate(), 90)
        assert child.returncode == 0
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
