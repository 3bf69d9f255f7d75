"""Fault or cap in a STATUS frame → the controller's STOP bytes on the wire (pty).

A real `nebuliser serve` subprocess talks over a pty to a scripted head (a thread
on the pty master, `bench/_bed.py`). For each sample the head writes one STATUS
that carries either a fault bit while nebulising or `delivered_ul` at the cap, and
time-stamps the write; the latency is until the STOP frame is readable on the master.
Reference, measured in the same run: a bare pty round trip (write 30 bytes on the
master, a thread echoes them on the slave, read back on the master).

Fault samples come in quick succession (no minimum interval between sessions, a
fault 0–100 ms into each), so that the p99 the target names rests on ≥ 1,000
samples in a few minutes. Cap samples deliver a whole session each (the 24 h volume
ceiling allows ≤ 119 of them a day): their figure is the max of n, not a p99.

Run: uv run python bench/stop_latency.py [--fault-samples 1000] [--cap-samples 30]
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


def sample_kinds(fault_samples: int, cap_samples: int) -> list[str]:
    """Cap samples spread evenly among the fault samples."""
    kinds = ["fault"] * fault_samples
    for index in range(cap_samples):
        kinds.insert((index * (fault_samples + index)) // max(1, cap_samples) + index, "cap")
    return kinds


async def measure(fault_samples: int, cap_samples: int) -> dict[str, list[float]]:
    """Run the controller against the scripted head; latencies (ms) per trigger kind."""
    master_fd, slave_fd, path = new_pty()
    head = ScriptedHead(master_fd)
    head.start()
    results: dict[str, list[float]] = {"fault": [], "cap": []}
    rng = random.Random(1)
    kinds = sample_kinds(fault_samples, cap_samples)
    with tempfile.TemporaryDirectory() as tmp:
        config_path, config = write_bench_config(
            Path(tmp), port=path, session_ul=100, min_interval_s=None,
            max_sessions=len(kinds) + 10,
        )  # fmt: skip
        process = await controller_process(config_path)
        began = time.monotonic()
        try:
            await wait_status(config, lambda s: s["link_up"] and s["state"] == "idle", 15)
            for index, kind in enumerate(kinds):
                reply = await start_confirmed(config)
                if not reply.get("started"):
                    raise RuntimeError(f"start refused: {reply}")
                await wait_status(config, lambda s: s["state"] == "nebulising", 5)
                await asyncio.sleep(rng.uniform(0.0, 0.1))  # anywhere in a STATUS period
                head.trigger(kind)
                if not await asyncio.to_thread(head.stop_event.wait, 3.0):
                    raise RuntimeError(f"no STOP after a {kind} trigger")
                assert head.trigger_written_ns is not None
                assert head.stop_arrived_ns is not None
                results[kind].append((head.stop_arrived_ns - head.trigger_written_ns) / 1e6)
                await wait_status(config, lambda s: s["session"] is None, 5)
                if (index + 1) % 200 == 0:
                    print(f"  {index + 1}/{len(kinds)} samples, {time.monotonic() - began:.0f} s")
        finally:
            await stop_process(process)
            head.close()
            os.close(slave_fd)
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fault-samples", type=int, default=1000)
    parser.add_argument("--cap-samples", type=int, default=30, help="at most 110 (24 h volume)")
    args = parser.parse_args()
    if not 0 < args.cap_samples <= 110 or args.fault_samples < 1:
        parser.error("--cap-samples must be 1..110 and --fault-samples at least 1")
    print(f"machine: {machine()}")
    print("command: uv run python bench/stop_latency.py " + " ".join(sys.argv[1:]))
    print(f"load average at start (1, 5, 15 min): {os.getloadavg()}")
    reference_ms = [v / 1000 for v in pty_round_trip_us(1000)]
    ref = summary_ms(reference_ms)
    results = await measure(args.fault_samples, args.cap_samples)
    print(f"{'measure':36s} {'p50 ms':>8s} {'p99 ms':>10s} {'max ms':>8s} {'p50/ref':>8s}")
    print(f"{'reference: bare pty round trip (n=1000)':36s} {ref[0]:8.3f} {ref[1]:10.3f} "
          f"{ref[2]:8.3f}")  # fmt: skip
    for kind, values in results.items():
        p50, p99, worst = summary_ms(values)
        p99_text = f"{p99:10.3f}" if len(values) >= 1000 else f"{'max of n':>10s}"
        label = f"{kind} STATUS → STOP on wire (n={len(values)})"
        print(f"{label:36s} {p50:8.3f} {p99_text} {worst:8.3f} {p50 / ref[0]:8.1f}")
        largest = sorted(range(len(values)), key=values.__getitem__)[-5:]
        print(f"  largest: {', '.join(f'{values[i]:.2f} (#{i})' for i in largest)} ms")
        if len(values) >= 200:  # does it grow with the sessions in the ledger?
            fifths = [values[i * len(values) // 5 : (i + 1) * len(values) // 5] for i in range(5)]
            print("  p50 / max by fifth of the run: " + "; ".join(
                f"{statistics.median(f):.2f} / {max(f):.2f}" for f in fifths) + " ms")  # fmt: skip
    faults = results["fault"]
    if len(faults) >= 1000:
        p99 = summary_ms(faults)[1]
        verdict = "met" if p99 <= TARGET_P99_MS else "MISSED"
        print(f"target fault → STOP p99 ≤ {TARGET_P99_MS} ms over ≥ 1,000 samples: {verdict} "
              f"(p99 {p99:.3f} ms over {len(faults)})")  # fmt: skip
    else:
        print(f"no p99 verdict: {len(faults)} fault samples (< 1,000); max {max(faults):.3f} ms")
    print(f"load average at end (1, 5, 15 min): {os.getloadavg()}")


if __name__ == "__main__":
    asyncio.run(main())
