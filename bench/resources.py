"""Controller memory and CPU at 10 Hz STATUS and 1 Hz telemetry; import and start-up time.

Real processes: `nebuliser simulate --pty` (STATUS every 100 ms), a private
Mosquitto, and `nebuliser serve` publishing telemetry at 1 Hz with a session
running all the time (400 µL/min, 3000 µL cap: 7.5 min; the next one starts when it
ends). Its data directory is full as after a year (`bench/uptime.py`'s `prefill`:
`--ledger-days` of a once-daily course, the sent archive at its bound of rows).
Every second the controller's RSS (/proc/PID/status VmRSS) and CPU time
(/proc/PID/stat utime+stime) are read; RSS growth per hour is the least-squares
slope after the first minute.

References in the same run: a bare `python -c pass` interpreter (RSS and start-up),
and for CPU and RSS the same-library process (`bench/_reference_process.py`: the
service's imports, the MN-1 link to its own simulator at 10 Hz STATUS and one QoS 1
publish a second — the least a controller must do), measured over the same minutes.

Run: uv run python bench/resources.py [--minutes 10]
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
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
from bench.uptime import prefill
from controller.config import NebuliserConfig, load_config
from controller.telemetry import MosquittoBroker, SentArchive

TARGET_RSS_MIB = 45.0
TARGET_CPU_RATIO = 1.2
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


def growth_mib_per_h(rss: list[float]) -> float:
    """Least-squares slope of 1 Hz RSS samples after the first minute, per hour."""
    tail = rss[60:] if len(rss) > 120 else rss[len(rss) // 2 :]
    if len(tail) < 2:
        return 0.0
    mean_x, mean_y = (len(tail) - 1) / 2, statistics.fmean(tail)
    num = sum((x - mean_x) * (y - mean_y) for x, y in enumerate(tail))
    den = sum((x - mean_x) ** 2 for x in range(len(tail)))
    return num / den * 3600


async def simulator_on(link: Path) -> asyncio.subprocess.Process:
    """`nebuliser simulate --pty` at `link` (returns once the pty is there)."""
    simulator = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "controller.cli", "simulate", "--pty",
        "--link", str(link), "--fill-ul", "6000",  # two whole sessions: 15 min
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert simulator.stdout is not None
    await simulator.stdout.readline()
    return simulator


async def keep_a_session_running(config: NebuliserConfig) -> None:
    """Start a session whenever none is open (checked every 2 s), for ever."""
    while True:
        status = await wait_status(config, lambda s: s["link_up"], 15)
        if status["session"] is None:
            reply = await start_confirmed(config)
            if not reply.get("started"):
                print(f"  (no session running from now: start refused: {reply.get('reasons')})")
                return
        await asyncio.sleep(2.0)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--ledger-days", type=int, default=365)
    parser.add_argument(
        "--archive-rows", type=int,
        default=inspect.signature(SentArchive).parameters["max_rows"].default,
    )  # fmt: skip
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print("command: uv run python bench/resources.py " + " ".join(sys.argv[1:]))
    print(f"load average at start (1, 5, 15 min): {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        (directory / "mosquitto").mkdir()
        simulator = await simulator_on(directory / "mn1")
        ref_simulator = await simulator_on(directory / "mn1-ref")
        async with MosquittoBroker(workdir=directory / "mosquitto") as broker:
            mqtt = (
                f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n'
                'client_id = "ctl-bench"\ntelemetry_hz = 1\n'
            )
            config_path, config = write_bench_config(
                directory, port=str(directory / "mn1"), session_ul=3000, mqtt=mqtt
            )
            prefill(config, label="serve", rows=args.archive_rows, days=args.ledger_days)
            import_s = timed_run([sys.executable, "-c", "import controller.cli.serve"])
            bare_s = timed_run([sys.executable, "-c", "pass"])
            start_s = await startup_s(config_path, config.control_socket)
            controller = await controller_process(config_path)
            reference = await asyncio.create_subprocess_exec(
                sys.executable, str(Path(__file__).with_name("_reference_process.py")),
                str(directory / "mn1-ref"), broker.host, str(broker.port),
            )  # fmt: skip
            try:
                await wait_status(config, lambda s: s["link_up"] and s["state"] == "idle", 30)
                async with asyncio.TaskGroup() as tasks:
                    sessions = tasks.create_task(keep_a_session_running(config))
                    await asyncio.sleep(5.0)  # both settled (imports, connections)
                    pid, ref_pid = controller.pid, reference.pid
                    rss: list[float] = []
                    ref_rss: list[float] = []
                    began_cpu, began_ref_cpu = cpu_s(pid), cpu_s(ref_pid)
                    began = time.monotonic()
                    while time.monotonic() - began < args.minutes * 60:
                        rss.append(rss_mib(pid))
                        ref_rss.append(rss_mib(ref_pid))
                        await asyncio.sleep(1.0)
                    elapsed = time.monotonic() - began
                    cpu_pct = 100 * (cpu_s(pid) - began_cpu) / elapsed
                    ref_cpu_pct = 100 * (cpu_s(ref_pid) - began_ref_cpu) / elapsed
                    sessions.cancel()
            finally:
                await stop_process(controller)
                await stop_process(reference)
        await stop_process(simulator)
        await stop_process(ref_simulator)
    bare_rss = bare_python_rss_mib()
    print(f"{'measure':44s} {'figure':>10s} {'reference':>10s} {'ratio':>6s}")
    print(f"{'RSS max over ' + f'{args.minutes:g} min (MiB), vs bare python':44s} "
          f"{max(rss):10.1f} {bare_rss:10.1f} {max(rss) / bare_rss:6.1f}")  # fmt: skip
    print(f"{'RSS max (MiB), vs same-library process':44s} {max(rss):10.1f} "
          f"{max(ref_rss):10.1f} {max(rss) / max(ref_rss):6.2f}")  # fmt: skip
    print(f"{'RSS growth (MiB per hour, slope after 1 min)':44s} {growth_mib_per_h(rss):10.2f} "
          f"{growth_mib_per_h(ref_rss):10.2f}")  # fmt: skip
    print(f"{'CPU (ms per 100 ms = % of one core)':44s} {cpu_pct:10.2f} {ref_cpu_pct:10.2f} "
          f"{cpu_pct / ref_cpu_pct:6.2f}")  # fmt: skip
    print(f"{'import controller.cli.serve (s)':44s} {import_s:10.3f} {bare_s:10.3f} "
          f"{import_s / bare_s:6.1f}")  # fmt: skip
    print(f"{'spawn → control socket answers (s)':44s} {start_s:10.3f} {bare_s:10.3f} "
          f"{start_s / bare_s:6.1f}")  # fmt: skip
    rss_ok = max(rss) <= TARGET_RSS_MIB
    cpu_ok = cpu_pct <= TARGET_CPU_RATIO * ref_cpu_pct
    print(f"target RSS ≤ {TARGET_RSS_MIB:g} MiB: {'met' if rss_ok else 'MISSED'}")
    print(f"target CPU ≤ {TARGET_CPU_RATIO:g} × the same-library process: "
          f"{'met' if cpu_ok else 'MISSED'}")  # fmt: skip
    print(f"load average at end (1, 5, 15 min): {os.getloadavg()}")


if __name__ == "__main__":
    asyncio.run(main())
