"""Host-only overshoot: the simulated head ignores its cap, only the host stops it.

Real processes: `nebuliser simulate --pty` with the `ignore_target_cap` defect and a
`nebuliser serve`. Each session's true delivered volume (the simulator's truth,
not what STATUS says) is compared with the cap. Overshoot = delivered − cap; a
negative figure means the host's predictive stop ended the session below the cap.
Reference: the volume one 100 ms STATUS period carries at that rate (what a host
that reacted only on STATUS, without prediction, could overshoot by).

Run: uv run python bench/overshoot.py [--sessions 10] [--rates 400,600] [--cap-ul 20]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
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
from simulators.mn1 import SimulatorControlClient

TARGET_P99_UL = 1.0


async def run_rate(rate_ul_min: int, sessions: int, cap_ul: int) -> list[float]:
    """Overshoots (µL) of `sessions` host-stopped sessions at `rate_ul_min`."""
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        control = directory / "sim.ctl"
        simulator = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "controller.cli", "simulate", "--pty",
            "--link", str(directory / "mn1"), "--control", str(control),
            "--nominal-ul-min", str(rate_ul_min), "--fill-ul", "6000",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        assert simulator.stdout is not None
        await simulator.stdout.readline()
        while not control.exists():  # noqa: ASYNC110 - another process creates the socket
            await asyncio.sleep(0.02)
        config_path, config = write_bench_config(
            directory, port=str(directory / "mn1"), session_ul=cap_ul
        )
        controller = await controller_process(config_path)
        overshoots: list[float] = []
        try:
            async with SimulatorControlClient(path=control) as sim:
                await sim.set_defect("ignore_target_cap")
                await wait_status(config, lambda s: s["link_up"] and s["state"] == "idle", 15)
                for _ in range(sessions):
                    began = time.monotonic()
                    reply = await start_confirmed(config)
                    if not reply.get("started"):
                        raise RuntimeError(f"start refused: {reply}")
                    await wait_status(config, lambda s: s["last_session"] is not None
                                      and s["session"] is None, 60)  # fmt: skip
                    truth = await sim.state()
                    [ended] = [
                        s for s in truth["sessions"] if s["session_id"] == reply["session_id"]
                    ]
                    overshoots.append(float(ended["delivered_ul"]) - cap_ul)
                    await asyncio.sleep(max(0.0, 1.05 - (time.monotonic() - began)))
        finally:
            await stop_process(controller)
            await stop_process(simulator)
    return overshoots


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--rates", default="400,600", help="µL/min, comma-separated")
    parser.add_argument("--cap-ul", type=int, default=20)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print("command: uv run python bench/overshoot.py " + " ".join(sys.argv[1:]))
    print(f"{'rate':>9s} {'n':>3s} {'p50 µL':>8s} {'p99 µL':>8s} {'max µL':>8s} "
          f"{'ref µL/100ms':>12s} {'max/ref':>8s}")  # fmt: skip
    worst = -1e9
    for rate in (int(r) for r in args.rates.split(",")):
        values = sorted(await run_rate(rate, args.sessions, args.cap_ul))
        p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
        reference = rate / 60 * 0.1
        worst = max(worst, p99)
        print(f"{rate:>5d}/min {len(values):3d} {statistics.median(values):8.2f} {p99:8.2f} "
              f"{values[-1]:8.2f} {reference:12.2f} {values[-1] / reference:8.2f}")  # fmt: skip
    verdict = "met" if worst <= TARGET_P99_UL else "MISSED"
    print(f"target overshoot p99 ≤ {TARGET_P99_UL} µL: {verdict} (worst p99 {worst:+.2f} µL)")


if __name__ == "__main__":
    asyncio.run(main())
