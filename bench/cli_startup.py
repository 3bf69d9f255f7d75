"""CLI start-up: `nebuliser --help`, `--version` and `session status` against a running
controller, timed by hyperfine next to two references in the same run: a bare
interpreter (`python -c pass`) and the import of the two libraries every real
controller needs (`python -c "import aiomqtt, serial"`). Target: ≤ 0.25 s each
(issue 14 item 4; docs/performance.md, "CLI start-up").

    uv run python bench/cli_startup.py [--runs 30]

Needs `hyperfine` (`apt-get install hyperfine`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tty
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._bed import (
    ScriptedHead,
    controller_process,
    machine,
    stop_process,
    wait_status,
    write_bench_config,
)

TARGET_S = 0.25


def _hyperfine(commands: dict[str, str], runs: int) -> dict[str, dict[str, float]]:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        argv = ["hyperfine", "-N", "--warmup", "3", "--runs", str(runs), "--export-json", out.name]
        for name, command in commands.items():
            argv += ["--command-name", name, command]
        print("$", " ".join([*argv[:6], "..."]), flush=True)
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        results = json.loads(Path(out.name).read_text(encoding="utf-8"))["results"]
    return {r["command"]: {k: r[k] for k in ("median", "min", "max", "mean")} for r in results}


async def _measure(runs: int) -> dict[str, dict[str, float]]:
    master_fd, slave_fd = os.openpty()
    tty.setraw(slave_fd)
    head = ScriptedHead(master_fd)
    head.start()
    nebuliser = str(Path(sys.executable).with_name("nebuliser"))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            config_path, config = write_bench_config(
                Path(tmp), port=os.ttyname(slave_fd), session_ul=100
            )
            process = await controller_process(config_path)
            try:
                await wait_status(config, lambda s: s["link_up"], 15)
                commands = {
                    "python -c pass": f"{sys.executable} -c pass",
                    "python -c 'import aiomqtt, serial'": (
                        f"{sys.executable} -c 'import aiomqtt, serial'"
                    ),
                    "nebuliser --help": f"{nebuliser} --help",
                    "nebuliser --version": f"{nebuliser} --version",
                    "nebuliser session status": (
                        f"{nebuliser} session status --config {config_path}"
                    ),
                }
                return await asyncio.to_thread(_hyperfine, commands, runs)
            finally:
                await stop_process(process)
    finally:
        head.close()
        os.close(slave_fd)


def main() -> int:
    """Print each figure, its ratio to the bare interpreter, and the verdict."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    if shutil.which("hyperfine") is None:
        print("hyperfine is not installed: apt-get install hyperfine", file=sys.stderr)
        return 2
    print(f"machine: {machine()}")
    results = asyncio.run(_measure(args.runs))
    bare = results["python -c pass"]["median"]
    print(f"{'command':36} {'median':>8} {'min':>8} {'max':>8} {'× bare':>7}  verdict")
    missed = 0
    for name, figures in results.items():
        verdict = ""
        if name.startswith("nebuliser"):
            met = figures["median"] <= TARGET_S
            missed += not met
            verdict = f"{'met' if met else 'MISSED'} (≤ {TARGET_S} s)"
        print(
            f"{name:36} {figures['median']:8.3f} {figures['min']:8.3f} {figures['max']:8.3f} "
            f"{figures['median'] / bare:7.1f}  {verdict}"
        )
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
