"""Last Will: a controller process that dies is shown offline by the broker."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.support.mosquitto import MosquittoBroker
from tests.telemetry.helpers import ROOT, validate_payload
from tests.telemetry.test_publisher import collecting, wait_until

REPO = Path(__file__).resolve().parents[2]
#: Mosquitto 2.0 checks keepalives in a sweep at most every 5 s (strictly more than 5
#: whole seconds apart), so a silent client is dropped up to 6 s after 1.5 × keepalive.
MOSQUITTO_KEEPALIVE_SWEEP_S = 6


@pytest.mark.slow
async def test_sigkilled_publisher_goes_offline_within_keepalive(
    mosquitto_broker: MosquittoBroker, tmp_path: Path
) -> None:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.telemetry.publisher_child",
        str(mosquitto_broker.port),
        str(tmp_path / "ledger.sqlite3"),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), timeout=20)
        assert line.strip() == b"connected"
        presence_topic = f"{ROOT}/W7/B03/presence"
        async with collecting(mosquitto_broker, presence_topic) as seen:
            await wait_until(lambda: len(seen) >= 1, timeout_s=5, what="retained presence")
            assert validate_payload(seen[-1].payload)["online"] is True
            child.kill()  # SIGKILL: no chance to say goodbye
            killed_at = time.monotonic()
            await child.wait()
            # keepalive is 2 s; the broker must publish the Will within 1.5x that.
            await wait_until(
                lambda: not seen[-1].body["online"], timeout_s=3.0, what="the Last Will"
            )
            elapsed_s = time.monotonic() - killed_at
        will = validate_payload(seen[-1].payload)
        assert will["reason"] == "last_will"
        assert will["device_id"] == "MN1-0042"
        assert elapsed_s < 3.0
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()


@pytest.mark.slow
async def test_hung_publisher_goes_offline_after_one_and_a_half_keepalives(
    mosquitto_broker: MosquittoBroker, tmp_path: Path
) -> None:
    """docs/mqtt.md: a hung controller (alive, silent) is declared offline by the broker
    after 1.5 × keepalive_s; the Will carries no time (the subscriber stamps arrival)."""
    keepalive_s = 2  # tests/telemetry/publisher_child.py
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.telemetry.publisher_child",
        str(mosquitto_broker.port), str(tmp_path / "ledger.sqlite3"),
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), timeout=20)
        assert line.strip() == b"connected"
        presence_topic = f"{ROOT}/W7/B03/presence"
        async with collecting(mosquitto_broker, presence_topic) as seen:
            await wait_until(lambda: len(seen) >= 1, timeout_s=5, what="retained presence")
            online = validate_payload(seen[-1].payload)
            assert online["online"] is True
            assert online["utc"] is not None, "online presence says when it connected"
            child.send_signal(signal.SIGSTOP)  # hung: the TCP connection stays open
            stopped_at = time.monotonic()
            await wait_until(
                lambda: not seen[-1].body["online"], timeout_s=10, what="the Last Will"
            )
            elapsed_s = time.monotonic() - stopped_at
        will = validate_payload(seen[-1].payload)
        assert will["reason"] == "last_will"
        assert will["utc"] is None, "the Will must not carry the connect time"
        # docs/mqtt.md: the broker allows 1.5 × keepalive after the last packet (sent at
        # most one keepalive before the hang), and Mosquitto 2.0 sweeps its clients'
        # keepalives only every 5 s (6 s in whole seconds); 1 s for a loaded machine.
        earliest_s = 1.5 * keepalive_s - keepalive_s
        latest_s = 1.5 * keepalive_s + MOSQUITTO_KEEPALIVE_SWEEP_S + 1.0
        assert earliest_s <= elapsed_s <= latest_s, f"Will after {elapsed_s:.1f} s"
    finally:
        if child.returncode is None:
            child.send_signal(signal.SIGCONT)
            child.kill()
            await child.wait()
