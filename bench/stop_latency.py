"""Fault or cap in a STATUS frame → the controller's STOP bytes on the wire (pty).

A real `nebuliser serve` subprocess talks over a pty to a scripted head (a thread
on the pty master, `bench/_bed.py`). For each sample the head writes one STATUS
that carries either a fault bit while nebulising or `delivered_ul` at the cap, and
time-stamps the write; the latency is until the STOP frame is readable on the master.
Reference, measured in the same run: a bare pty round trip (write 30 bytes on the
master, a thread echoes them on the slave, read back on the master).

Run: uv run python bench/stop_latency.py [--samples 30]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._bed import (
    ScriptedHead,
    controller_process,
    machine,
    start_confirmed,
    stop_process,
    wait_status,
    write_bench_config,
)
from bench.serial_backends import new_pty

TARGET_P99_MS = 2.0


def pty_round_trip_us(samples: int) -> list[float]:
    """Bare pty: master write → slave read → slave write → master read (µs)."""
    master_fd, slave_fd, _ = new_pty()

    def echo() -> None:
        while True:
            try:
                data = os.read(slave_fd, 4096)
            except OSError:
                return
            if not data:
                return
            os.write(slave_fd, data)

    threading.Thread(target=echo, daemon=True).start()
    payload = bytes(range(30))  # about one STATUS frame
    latencies: list[float] = []
    for _ in range(samples + 50):
        t0 = time.perf_counter_ns()
        os.write(master_fd, payload)
        got = b""
        while len(got) < len(payload):
            got += os.read(master_fd, 4096)
        latencies.append((time.perf_counter_ns() - t0) / 1000)
        time.sleep(0.002)
    os.close(slave_fd)
    os.close(master_fd)
    return latencies[50:]


def summary_ms(values_ms: list[float]) -> tuple[float, float, float]:
    """(p50, p99, max) of a list."""
    ordered = sorted(values_ms)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered), p99, ordered[-1]


async def measure(samples: int) -> dict[str, list[float]]:
    """Run the controller against the scripted head; latencies (ms) per trigger kind."""
    master_fd, slave_fd, path = new_pty()
    head = ScriptedHead(master_fd)
    head.start()
    results: dict[str, list[float]] = {"fault": [], "cap": []}
    rng = random.Random(1)
    with tempfile.TemporaryDirectory() as tmp:
        config_path, config = write_bench_config(
            Path(tmp), port=path, session_ul=100
        )  # ≤ 60 cap samples in 24 h
        process = await controller_process(config_path)
        try:
            await wait_status(config, lambda s: s["link_up"] and s["state"] == "idle", 15)
            for index in range(samples * 2):
                kind = "fault" if index % 2 == 0 else "cap"
                reply = await start_confirmed(config)
                if not reply.get("started"):
                    raise RuntimeError(f"start refused: {reply}")
                await wait_status(config, lambda s: s["state"] == "nebulising", 5)
                await asyncio.sleep(rng.uniform(0.05, 0.25))
                began = time.monotonic()
                head.trigger(kind)
                if not await asyncio.to_thread(head.stop_event.wait, 3.0):
                    raise RuntimeError(f"no STOP after a {kind} trigger")
                assert head.trigger_written_ns is not None
                assert head.stop_arrived_ns is not None
                results[kind].append((head.stop_arrived_ns - head.trigger_written_ns) / 1e6)
                await wait_status(config, lambda s: s["session"] is None, 5)
                await asyncio.sleep(max(0.0, 1.05 - (time.monotonic() - began)))
        finally:
            await stop_process(process)
            head.close()
            os.close(slave_fd)
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=30, help="samples per trigger kind")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print("command: uv run python bench/stop_latency.py " + " ".join(sys.argv[1:]))
    reference_ms = [v / 1000 for v in pty_round_trip_us(1000)]
    ref = summary_ms(reference_ms)
    results = await measure(args.samples)
    print(f"{'measure':34s} {'p50 ms':>8s} {'p99 ms':>8s} {'max ms':>8s} {'p99/ref p99':>12s}")
    print(f"{'reference: bare pty round trip':34s} {ref[0]:8.3f} {ref[1]:8.3f} {ref[2]:8.3f}")
    for kind, values in results.items():
        p50, p99, worst = summary_ms(values)
        label = f"{kind} STATUS → STOP on wire (n={len(values)})"
        print(f"{label:34s} {p50:8.3f} {p99:8.3f} {worst:8.3f} {p99 / ref[1]:12.1f}")
        print(f"  largest: {', '.join(f'{v:.2f}' for v in sorted(values)[-5:])} ms")
    every = [v for values in results.values() for v in values]
    p99_all = summary_ms(every)[1]
    verdict = "met" if p99_all <= TARGET_P99_MS else "MISSED"
    print(f"target p99 ≤ {TARGET_P99_MS} ms: {verdict} (p99 over both kinds {p99_all:.3f} ms)")


if __name__ == "__main__":
    asyncio.run(main())
