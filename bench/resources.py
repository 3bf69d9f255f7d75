"""Controller memory and CPU at 10 Hz STATUS and 1 Hz telemetry; import and start-up time.

Real processes: `nebuliser simulate --pty` (STATUS every 100 ms), a private
Mosquitto, and `nebuliser serve` publishing telemetry at 1 Hz, with one long
session running (400 µL/min, 3000 µL cap: 7.5 min). Every second the controller's
RSS (/proc/PID/status VmRSS) and CPU time (/proc/PID/stat utime+stime) are read.
References in the same run: a bare `python -c pass` interpreter (RSS and start-up).

Run: uv run python bench/resources.py [--minutes 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._bed import (
    controller_process,
    machine,
    start_confirmed,
    stop_process,
    wait_status,
    write_bench_config,
)
from controller.config import load_config
from controller.telemetry import MosquittoBroker

TARGET_RSS_MIB = 45.0
_TICKS = os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    """Resident set size of a process (MiB)."""
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def timed_run(args: list[str], repeats: int = 5) -> float:
    """Median wall time (s) of a short command."""
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        subprocess.run(args, check=True, capture_output=True)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def bare_python_rss_mib() -> float:
    """RSS of an idle bare interpreter."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(2)"])
    try:
        time.sleep(0.5)
        return rss_mib(process.pid)
    finally:
        process.kill()
        process.wait()


async def startup_s(config_path: Path, config_socket: Path, repeats: int = 3) -> float:
    """Median time from spawn to the control socket answering `session.status`."""
    config = load_config(config_path)
    times = []
    for _ in range(repeats):
        config_socket.unlink(missing_ok=True)  # noqa: ASYNC240 - instant, between runs
        began = time.perf_counter()
        process = await controller_process(config_path)
        await wait_status(config, lambda s: True, 20)
        times.append(time.perf_counter() - began)
        await stop_process(process)
    return statistics.median(times)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print("command: uv run python bench/resources.py " + " ".join(sys.argv[1:]))
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        (directory / "mosquitto").mkdir()
        simulator = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "controller.cli", "simulate", "--pty",
            "--link", str(directory / "mn1"), "--fill-ul", "6000",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        assert simulator.stdout is not None
        await simulator.stdout.readline()
        async with MosquittoBroker(workdir=directory / "mosquitto") as broker:
            mqtt = (
                f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n'
                'client_id = "ctl-bench"\ntelemetry_hz = 1\n'
            )
            config_path, config = write_bench_config(
                directory, port=str(directory / "mn1"), session_ul=3000, mqtt=mqtt
            )
            import_s = timed_run([sys.executable, "-c", "import controller.cli.serve"])
            bare_s = timed_run([sys.executable, "-c", "pass"])
            start_s = await startup_s(config_path, config.control_socket)
            controller = await controller_process(config_path)
            try:
                await wait_status(config, lambda s: s["link_up"] and s["state"] == "idle", 15)
                reply = await start_confirmed(config)
                if not reply.get("started"):
                    raise RuntimeError(f"start refused: {reply}")
                pid = controller.pid
                rss: list[float] = []
                began_cpu, began = cpu_s(pid), time.monotonic()
                while time.monotonic() - began < args.minutes * 60:
                    rss.append(rss_mib(pid))
                    await asyncio.sleep(1.0)
                cpu_pct = 100 * (cpu_s(pid) - began_cpu) / (time.monotonic() - began)
            finally:
                await stop_process(controller)
        await stop_process(simulator)
    bare_rss = bare_python_rss_mib()
    print(f"{'measure':44s} {'figure':>10s} {'reference':>10s} {'ratio':>6s}")
    print(f"{'RSS max over ' + f'{args.minutes:g} min (MiB)':44s} {max(rss):10.1f} "
          f"{bare_rss:10.1f} {max(rss) / bare_rss:6.1f}")  # fmt: skip
    print(
        f"{'RSS growth first→last minute (MiB)':44s} {rss[-1] - rss[min(60, len(rss) - 1)]:10.2f}"
    )
    print(f"{'CPU (% of one core)':44s} {cpu_pct:10.2f}")
    print(f"{'import controller.cli.serve (s)':44s} {import_s:10.3f} {bare_s:10.3f} "
          f"{import_s / bare_s:6.1f}")  # fmt: skip
    print(f"{'spawn → control socket answers (s)':44s} {start_s:10.3f} {bare_s:10.3f} "
          f"{start_s / bare_s:6.1f}")  # fmt: skip
    verdict = "met" if max(rss) <= TARGET_RSS_MIB else "MISSED"
    print(f"target RSS ≤ {TARGET_RSS_MIB:g} MiB: {verdict}")


if __name__ == "__main__":
    asyncio.run(main())
