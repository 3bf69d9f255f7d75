"""Ward station: 1000 beds × 1 Hz through one station; display lag in a real
headless Chromium, station CPU and memory.

A publisher subprocess (`bench/monitor_load.py --publisher`) sends one valid
`nebuliser.telemetry` message per bed per second, spread over the second, QoS 1,
to a private Mosquitto. `nebuliser station` runs as its own process (so its CPU
and memory are its own) and Debian's Chromium, driven by Playwright, shows the
page at 1920×1080. Display lag of a message = the moment the page has drawn the
tile that shows it (the end of the animation frame, `Date.now()`) − the message's
own UTC stamp; the page records it for every tile it redraws with new data
(`window.stationStats.lagsMs`). The first 3 s (start-up, first snapshot) are left
out. Reference: the same messages' lag at a bare paho subscriber in this process,
measured in the same run.

Run: uv run python bench/station_load.py [--beds 1000] [--seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._bed import machine
from bench.monitor_load import ROOT, _lag_s
from controller.telemetry import MosquittoBroker
from tests.support.browser import chromium

REPO = Path(__file__).resolve().parents[1]
TARGET_LAG_S = 1.0
TARGET_CPU_PCT = 50.0
TARGET_RSS_MB = 300.0
WARM_UP_S = 3.0
_TICK_S = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK_S  # utime + stime


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _row(label: str, values: list[float]) -> str:
    ordered = sorted(values) or [float("nan")]
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (f"{label:40s} {len(values):7d} {statistics.median(ordered):8.3f} "
            f"{p99:8.3f} {ordered[-1]:8.3f}")  # fmt: skip


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--beds", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print("command: uv run python bench/station_load.py " + " ".join(sys.argv[1:]))
    bare_lags: list[float] = []
    cpu_samples: list[float] = []
    rss_samples: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "mosquitto").mkdir()
        async with (
            MosquittoBroker(workdir=Path(tmp) / "mosquitto") as broker,
            chromium() as browser,
        ):
            station = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "controller.cli", "--log-level", "warning", "station",
                "--broker", broker.url, "--listen", "127.0.0.1:0",
                cwd=REPO, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            assert station.stdout is not None
            line = (await asyncio.wait_for(station.stdout.readline(), 30)).decode()
            url = line.split()[2]
            # The page's Content-Security-Policy forbids eval; the bench's own probes
            # (wait_for_function, evaluate) are strings, so this context bypasses it.
            context = await browser.new_context(
                viewport={"width": 1920, "height": 1080}, bypass_csp=True
            )
            page = await context.new_page()
            await page.goto(url)
            await page.wait_for_function(
                "document.getElementById('link').textContent === 'broker connected'"
            )
            bare = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-bare")
            bare.on_message = lambda _c, _u, m: bare_lags.append(_lag_s(m.payload))
            bare.connect(broker.host, broker.port)
            bare.subscribe(f"{ROOT}/+/+/telemetry", qos=1)
            bare.loop_start()
            load = await asyncio.create_subprocess_exec(
                sys.executable, str(REPO / "bench" / "monitor_load.py"),
                "--publisher", str(broker.port), "--beds", str(args.beds),
                "--seconds", str(args.seconds),
            )  # fmt: skip
            began = time.monotonic()
            await asyncio.sleep(WARM_UP_S)
            await page.evaluate(
                "window.stationStats.lagsMs.length = 0; window.stationStats.stationLagMs.length = 0"
            )
            bare_lags.clear()
            cpu_start, wall_start = _cpu_s(station.pid), time.monotonic()
            last_cpu, last_wall = cpu_start, wall_start
            while load.returncode is None:
                try:
                    await asyncio.wait_for(load.wait(), 1.0)
                except TimeoutError:
                    cpu, wall = _cpu_s(station.pid), time.monotonic()
                    cpu_samples.append(100 * (cpu - last_cpu) / (wall - last_wall))
                    rss_samples.append(_rss_mb(station.pid))
                    last_cpu, last_wall = cpu, wall
            cpu_total = 100 * (_cpu_s(station.pid) - cpu_start) / (time.monotonic() - wall_start)
            stats = await page.evaluate(
                "({lags: window.stationStats.lagsMs, tiles: document.querySelectorAll("
                "'#beds > article').length, snapshots: window.stationStats.snapshots, "
                "render: window.stationStats.renderMs, apply: window.stationStats.applyMs, "
                "pushed: window.stationStats.stationLagMs})"
            )
            ran_s = time.monotonic() - began
            await page.screenshot(path=str(Path(tmp) / "load.png"))
            bare.loop_stop()
            bare.disconnect()
            station.terminate()
            await station.wait()
    lags = [ms / 1000 for ms in stats["lags"]]
    print(f"{args.beds} beds × 1 Hz for {args.seconds:g} s ({ran_s:.0f} s with start-up); "
          f"{stats['tiles']} tiles on the page, {stats['snapshots']} snapshot(s)")  # fmt: skip
    print(f"{'measure':40s} {'n':>7s} {'p50 s':>8s} {'p99 s':>8s} {'max s':>8s}")
    print(_row("reference: bare paho subscriber lag", bare_lags))
    print(_row("Chromium display lag (drawn tile)", lags))
    print(_row("station: lag when pushed (data in push)", [ms / 1000 for ms in stats["pushed"]]))
    print(_row("page: script time per frame drawn", [ms / 1000 for ms in stats["render"]]))
    print(_row("page: script time per push applied", [ms / 1000 for ms in stats["apply"]]))
    print(f"station process: CPU {cpu_total:.0f} % of one core (1 s samples: max "
          f"{max(cpu_samples, default=float('nan')):.0f} %), RSS max "
          f"{max(rss_samples, default=float('nan')):.0f} MB")  # fmt: skip
    ordered = sorted(lags)
    p99 = ordered[int(len(ordered) * 0.99)] if ordered else float("inf")
    rss = max(rss_samples, default=float("inf"))
    for label, ok in (
        (f"display lag p99 ≤ {TARGET_LAG_S:g} s (p99 {p99:.3f} s)", p99 <= TARGET_LAG_S),
        (f"station CPU ≤ {TARGET_CPU_PCT:g} % ({cpu_total:.0f} %)", cpu_total <= TARGET_CPU_PCT),
        (f"station RSS ≤ {TARGET_RSS_MB:g} MB ({rss:.0f} MB)", rss <= TARGET_RSS_MB),
    ):
        print(f"target {label}: {'met' if ok else 'MISSED'}")


if __name__ == "__main__":
    asyncio.run(main())
