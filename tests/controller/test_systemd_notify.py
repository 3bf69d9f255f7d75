"""systemd's notify/watchdog protocol, checked on a real AF_UNIX datagram socket.

The main test runs the real `nebuliser serve` as a subprocess against the simulator
on a pty, with NOTIFY_SOCKET and WATCHDOG_USEC set as systemd would set them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from controller.service import (
    ServiceContext,
    SystemdNotifier,
    systemd_notify_task,
    watchdog_interval_s,
)
from simulators.mn1 import DeviceModel, run_pty_simulator

from ._setup import write_config

WATCHDOG_USEC = 200_000  # pings every 0.1 s


@contextlib.contextmanager
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket in a short /tmp directory (sun_path is ≤ 107 bytes)."""
    directory = tempfile.mkdtemp(prefix="nb-notify-", dir="/tmp")
    path = os.path.join(directory, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    try:
        yield sock, path
    finally:
        sock.close()
        os.unlink(path)
        os.rmdir(directory)


async def next_message(sock: socket.socket, timeout_s: float) -> dict[str, str]:
    """One datagram, parsed into its KEY=value assignments."""
    async with asyncio.timeout(timeout_s):
        data = await asyncio.get_running_loop().sock_recv(sock, 4096)
    return dict(line.split("=", 1) for line in data.decode("utf-8").splitlines())


@contextlib.asynccontextmanager
async def serve_subprocess(config_path: Path, env: dict[str, str]) -> AsyncIterator[Any]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "controller.cli",
        "serve",
        "--config",
        str(config_path),
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.slow
async def test_serve_sends_ready_watchdog_and_stopping(tmp_path: Path) -> None:
    with notify_socket() as (sock, path):
        async with run_pty_simulator(DeviceModel(serial="SIM-SD", seed=3)) as sim:
            config_path, config = write_config(tmp_path, port=sim.device_path)
            env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": str(WATCHDOG_USEC)}
            async with serve_subprocess(config_path, env) as process:
                ready = await next_message(sock, 20)
                assert ready["READY"] == "1"
                assert ready["MAINPID"] == str(process.pid)
                # READY only once the control socket serves: clients can connect now.
                assert config.control_socket.exists()
                started = time.monotonic()
                pings = 0
                while pings < 5:
                    message = await next_message(sock, 2)
                    pings += message.get("WATCHDOG") == "1"
                elapsed_s = time.monotonic() - started
                # Half of WATCHDOG_USEC between pings: five take about 0.4-0.5 s.
                assert 0.3 < elapsed_s < 2.0
                process.send_signal(signal.SIGTERM)
                while True:
                    message = await next_message(sock, 5)
                    if "STOPPING" in message:
                        break
                    assert message == {"WATCHDOG": "1"}
                code = await asyncio.wait_for(process.wait(), 10)
                assert code == 0


def _context() -> ServiceContext:
    fake = SimpleNamespace(
        config=SimpleNamespace(device=SimpleNamespace(port="/dev/nebuliser"), control_socket="c"),
        stop_requested=asyncio.Event(),
    )
    return cast(ServiceContext, fake)


async def test_pings_come_from_the_event_loop_so_a_hung_loop_misses_them() -> None:
    with notify_socket() as (sock, path):
        ctx = _context()
        env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"}
        async with asyncio.TaskGroup() as group:
            pinger = group.create_task(systemd_notify_task(ctx, environ=env))
            assert (await next_message(sock, 2))["READY"] == "1"
            assert await next_message(sock, 1) == {"WATCHDOG": "1"}
            await asyncio.sleep(0)
            # The loop hangs on purpose: five pings fall due and none can be sent.
            time.sleep(0.5)  # noqa: ASYNC251
            hung_at = time.monotonic()
            with pytest.raises(BlockingIOError):
                sock.recv(4096)  # nothing was sent while the loop was blocked
            assert await next_message(sock, 1) == {"WATCHDOG": "1"}
            assert time.monotonic() - hung_at < 0.5
            ctx.stop_requested.set()
            while "STOPPING" not in (message := await next_message(sock, 1)):
                assert message == {"WATCHDOG": "1"}
            assert message["STOPPING"] == "1"
            pinger.cancel()  # as _serve cancels its workers after the graceful stop


async def test_without_notify_socket_the_task_returns_at_once() -> None:
    ctx = _context()
    async with asyncio.timeout(1):
        await systemd_notify_task(ctx, environ={"WATCHDOG_USEC": "100000"})
    assert not SystemdNotifier.from_environment({}).enabled
    assert not SystemdNotifier(address=None).notify("READY=1")


def test_abstract_namespace_address_is_used() -> None:
    name = f"nebuliser-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        assert SystemdNotifier(address="@" + name).notify("READY=1", "STATUS=x")
        assert sock.recv(100) == b"READY=1\nSTATUS=x"


def test_watchdog_interval_is_half_and_only_for_the_watched_pid() -> None:
    assert watchdog_interval_s({"WATCHDOG_USEC": "4000000"}) == 2.0
    pid = str(os.getpid())
    assert watchdog_interval_s({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": pid}) == 2.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval_s({}) is None


def test_a_vanished_listener_does_not_raise(tmp_path: Path) -> None:
    assert not SystemdNotifier(address=str(tmp_path / "gone")).notify("WATCHDOG=1")


REPO = Path(__file__).resolve().parents[2]


def _unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Sections of a systemd unit as (key, value) lists (keys may repeat)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            sections[current] = []
            continue
        key, _, value = line.partition("=")
        sections[current].append((key, value))
    return sections


def test_shipped_unit_is_notify_with_watchdog_and_hardening() -> None:
    unit = _unit(REPO / "config/systemd/nebuliser.service")
    service = dict(unit["Service"])
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert service["WatchdogSec"] == "10s"
    assert service["Restart"] in ("always", "on-failure")
    assert service["User"] == "nebuliser"
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["DevicePolicy"] == "closed"
    allowed = [v for k, v in unit["Service"] if k == "DeviceAllow"]
    assert "/dev/nebuliser rw" in allowed
    assert service["CapabilityBoundingSet"] == ""
    # The command line is one the CLI accepts.
    executable, *argv = service["ExecStart"].split()
    assert executable.endswith("/nebuliser")
    from controller.cli import build_parser  # noqa: PLC0415 - only this test needs it

    args = build_parser().parse_args(argv)
    assert args.command == "serve"
    assert args.config == Path("/etc/nebuliser/controller.toml")
    # The half-interval pings leave systemd a margin: 10 s watchdog -> 5 s pings.
    assert watchdog_interval_s({"WATCHDOG_USEC": "10000000"}) == 5.0


def test_shipped_unit_passes_systemd_analyze_where_available() -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    result = subprocess.run(
        [analyze, "verify", str(REPO / "config/systemd/nebuliser.service")],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    complaints = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        # The venv is not installed at /opt/nebuliser on a development machine.
        if line.strip() and "/opt/nebuliser/current/venv/bin/nebuliser" not in line
    ]
    assert complaints == []


def test_udev_rule_names_the_device_and_sets_the_ftdi_latency() -> None:
    rules = (REPO / "config/udev/99-nebuliser.rules").read_text(encoding="utf-8")
    joined = rules.replace("\\\n", " ")
    active = [line for line in joined.splitlines() if line and not line.startswith("#")]
    assert len(active) == 2
    for rule in active:
        assert 'SYMLINK+="nebuliser"' in rule
        assert 'GROUP="nebuliser"' in rule
        assert 'MODE="0660"' in rule
        assert 'ATTRS{serial}=="' in rule  # one head, not any adapter of that vendor
    assert "latency_timer" in active[0]
    assert "echo 1 >" in active[0]
