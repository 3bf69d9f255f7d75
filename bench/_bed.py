"""Shared pieces of the benchmarks: a controller config, processes, a scripted head.

`ScriptedHead` is a minimal MN-1 on a pty master, run in a thread, for timing only:
it answers HELLO/START/STOP/CLEAR_FAULTS, sends STATUS every 100 ms, and on request
writes one *trigger* STATUS (a fault bit, or delivered at the cap) at a known
instant, then stamps the arrival of the host's STOP. The physics-faithful device is
`simulators/mn1`; this one exists because the time stamps must be taken in the
thread that owns the pty master, before any decoding.
"""

from __future__ import annotations

import asyncio
import os
import select
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller import benchconfig as bench_config
from controller.config import NebuliserConfig
from controller.control import ControlClient, ControlUnavailableError
from drivers.mn1 import (
    Ack,
    ClearFaults,
    Deframer,
    DeviceState,
    FaultBits,
    Frame,
    Hello,
    Ident,
    Start,
    Status,
    Stop,
    StopReason,
    encode_frame,
)

__all__ = [
    "ScriptedHead",
    "controller_process",
    "machine",
    "start_confirmed",
    "wait_status",
    "write_bench_config",
]


def machine() -> str:
    """`nproc` and the CPU model, for the record."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="ascii").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} × {model}, python {sys.version.split()[0]}"


def write_bench_config(
    directory: Path,
    *,
    port: str,
    session_ul: int,
    mqtt: str = "",
    extra_session: str = "",
    min_interval_s: int | None = 1,
    max_sessions: int = 1000,
) -> tuple[Path, NebuliserConfig]:
    """A controller config for benchmarks: many sessions allowed, 1 s interval
    (`min_interval_s=None`: sessions back to back, for samples in quick succession)."""
    return bench_config.write_bench_config(
        directory,
        port=port,
        prescription=bench_config.BenchPrescription(
            subject_id="BENCH-001",
            lot_id="LOT-B",
            session_ul=session_ul,
            with_session_dose=False,
            min_interval_s=min_interval_s,
            rolling_24h_max_sessions=max_sessions,
            rolling_24h_max_ul=12000,
            course_max_sessions=max_sessions,
        ),
        device='device_id = "neb-bench"',
        session=f"confirm_timeout_s = 10\n{extra_session}",
        extra=mqtt,
    )


async def controller_process(config_path: Path) -> asyncio.subprocess.Process:
    """`python -m controller.cli serve --config FILE`, output discarded."""
    log = os.environ.get("BENCH_CONTROLLER_LOG")  # keep the controller's log for profiling
    stderr = open(log, "ab") if log else asyncio.subprocess.DEVNULL  # noqa: SIM115, ASYNC230
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "controller.cli", "serve", "--config", str(config_path),
        stdout=asyncio.subprocess.DEVNULL, stderr=stderr,
    )  # fmt: skip


async def stop_process(process: asyncio.subprocess.Process) -> None:
    """SIGTERM and reap (SIGKILL after 10 s)."""
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()


async def wait_status(config: NebuliserConfig, predicate: Any, timeout_s: float) -> dict[str, Any]:
    """Poll the controller's `session.status` until `predicate` holds."""
    deadline = time.monotonic() + timeout_s
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            async with ControlClient(path=config.control_socket) as client:
                last = await client.call("session.status")
        except (ControlUnavailableError, ConnectionError, OSError):
            last = {}
        if last and predicate(last):
            return last
        await asyncio.sleep(0.02)
    raise RuntimeError(f"controller condition not met in {timeout_s} s; last {last}")


async def start_confirmed(config: NebuliserConfig) -> dict[str, Any]:
    """`session.start` confirmed at the bedside terminal; the final reply."""
    async with ControlClient(path=config.control_socket) as client:
        await client.send("session.start")
        first: dict[str, Any] = await client.receive()
        if first.get("final"):
            return first
        await client.send("confirm")
        final: dict[str, Any] = await client.receive()
        return final


class ScriptedHead(threading.Thread):
    """A minimal MN-1 on a pty master (see the module docstring)."""

    def __init__(self, master_fd: int, *, nominal_ul_min: int = 400) -> None:
        super().__init__(daemon=True)
        self.master_fd = master_fd
        self.nominal_ul_min = nominal_ul_min
        self._deframer = Deframer()
        self._seq = 0
        self._lock = threading.Lock()
        self._started_ns = time.monotonic_ns()
        self.state = DeviceState.IDLE
        self.session_id = 0
        self.target_ul = 0
        self.delivered_ul = 0
        self.faults = FaultBits(0)
        self.last_stop = StopReason.NONE
        self._trigger: str | None = None
        self.trigger_written_ns: int | None = None
        self.stop_arrived_ns: int | None = None
        self.stop_event = threading.Event()
        self._closed = False

    def _write(self, message: Any) -> None:
        self._seq = (self._seq + 1) & 0xFF
        os.write(self.master_fd, encode_frame(message, seq=self._seq))

    def _status(self) -> Status:
        nebulising = self.state is DeviceState.NEBULISING
        return Status(
            uptime_ms=(time.monotonic_ns() - self._started_ns) // 1_000_000,
            state=self.state,
            session_id=self.session_id,
            delivered_ul=self.delivered_ul,
            flow_ul_min=self.nominal_ul_min if nebulising else 0,
            reservoir_ul=3000,
            mesh_temp_cC=3000,
            drive_ma=120 if nebulising else 0,
            faults=self.faults,
            crc_errors=0,
            last_stop=self.last_stop,
            confirm_count=0,
        )

    def trigger(self, kind: str) -> None:
        """Arm a trigger STATUS: "fault" (INTERNAL bit while nebulising) or "cap"."""
        with self._lock:
            self.stop_event.clear()
            self.trigger_written_ns = None
            self.stop_arrived_ns = None
            self._trigger = kind
        os.write(self._wake_w, b"x")

    def close(self) -> None:
        """End the thread."""
        self._closed = True
        os.write(self._wake_w, b"x")

    def start(self) -> None:
        """Start the thread (with a self-pipe to wake it for triggers)."""
        self._wake_r, self._wake_w = os.pipe()
        super().start()

    def _on_frame(self, frame: Frame, now_ns: int) -> None:
        message = frame.message
        if isinstance(message, Stop):
            if self.stop_arrived_ns is None and self.trigger_written_ns is not None:
                self.stop_arrived_ns = now_ns
                self.stop_event.set()
            self._write(Ack(ack_seq=frame.seq))
            self.faults = FaultBits(0)  # the controller cannot send CLEAR_FAULTS (yet)
            if self.state is DeviceState.NEBULISING:
                self.state = DeviceState.IDLE
                self.last_stop = StopReason.HOST_STOP
            self._write(self._status())
        elif isinstance(message, Hello):
            self._write(
                Ident(
                    ack_seq=frame.seq,
                    serial="BENCH-HEAD",
                    fw_major=1,
                    fw_minor=0,
                    fw_patch=0,
                    hw_rev=1,
                    nominal_ul_min=self.nominal_ul_min,
                    reservoir_capacity_ul=6000,
                )
            )
        elif isinstance(message, Start):
            self._write(Ack(ack_seq=frame.seq))
            self.state = DeviceState.NEBULISING
            self.session_id = message.session_id
            self.target_ul = message.target_ul
            self.delivered_ul = 0
            self._write(self._status())
        elif isinstance(message, ClearFaults):
            self.faults = FaultBits(0)
            self._write(Ack(ack_seq=frame.seq))

    def run(self) -> None:
        try:
            self._run()
        except Exception as exc:
            print(f"scripted head failed: {exc!r}", file=sys.stderr)
            raise

    def _run(self) -> None:
        next_status = time.monotonic()
        while not self._closed:
            timeout = max(0.0, next_status - time.monotonic())
            ready, _, _ = select.select([self.master_fd, self._wake_r], [], [], timeout)
            now_ns = time.perf_counter_ns()
            if self.master_fd in ready:
                try:
                    data = os.read(self.master_fd, 4096)
                except OSError:
                    return
                for item in self._deframer.feed(data):
                    if isinstance(item, Frame):
                        self._on_frame(item, now_ns)
            if self._wake_r in ready:
                os.read(self._wake_r, 64)
                with self._lock:
                    kind, self._trigger = self._trigger, None
                if kind is not None and self.state is DeviceState.NEBULISING:
                    if kind == "fault":
                        self.faults = FaultBits.INTERNAL
                    else:
                        self.delivered_ul = self.target_ul
                    frame = encode_frame(self._status(), seq=(self._seq + 1) & 0xFF)
                    self._seq = (self._seq + 1) & 0xFF
                    self.trigger_written_ns = time.perf_counter_ns()
                    os.write(self.master_fd, frame)
            if time.monotonic() >= next_status:
                next_status += 0.1
                if self.state is DeviceState.NEBULISING and self.faults:
                    pass  # keeps reporting the fault while nebulising until STOP
                elif self.state is DeviceState.NEBULISING:
                    self.delivered_ul = min(self.target_ul - 1, self.delivered_ul + 1)
                self._write(self._status())
