"""Which asyncio serial backend writes a STOP fastest, and which survives a hang-up?

Measures, on a real pty (the simulator's and the tests' transport), the time from
the start of a STOP write to the moment a reader thread blocked on the pty master
has all 11 bytes, for:

- reference: bare `os.write` on the raw slave fd (no asyncio, no library);
- plain fd: `os.write` on the fd of a pyserial-configured port (the fallback design);
- pyserial-asyncio-fast: `transport.write` from inside the event loop;
- serialx: `transport.write` from inside the event loop;
- SerialLink.send_stop_now: our whole STOP path (sans-IO encode + seq + write).

Then, for each asyncio backend, what happens when the pty's other side closes
(the USB-unplug case): is `connection_lost` called, how fast, with what, and how
many ERROR log records it costs.

Run: uv run python bench/serial_backends.py [--samples 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import threading
import time
import tty
from collections.abc import Awaitable, Callable
from pathlib import Path

import serial
import serial_asyncio_fast
import serialx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drivers.mn1 import Ack, Deframer, Frame, SerialLink, Stop, encode_frame

STOP_FRAME = encode_frame(Stop(session_id=42), seq=7)


class MasterReader(threading.Thread):
    """Blocks on the pty master; stamps the arrival of each complete STOP frame.

    Other frames (HELLO, HEARTBEAT from SerialLink) are decoded and ignored; the
    time stamp is taken before any decoding.
    """

    def __init__(self, master_fd: int, *, ack: bool = False) -> None:
        super().__init__(daemon=True)
        self.master_fd = master_fd
        self.ack = ack  # answer each STOP like a device, so SerialLink does not retransmit
        self.arrivals_ns: list[int] = []
        self._deframer = Deframer()

    def run(self) -> None:
        while True:
            try:
                data = os.read(self.master_fd, 4096)
            except OSError:
                return
            if not data:
                return
            now = time.perf_counter_ns()
            for item in self._deframer.feed(data):
                if isinstance(item, Frame) and isinstance(item.message, Stop):
                    self.arrivals_ns.append(now)
                    if self.ack:
                        os.write(self.master_fd, encode_frame(Ack(ack_seq=item.seq), seq=0))


def new_pty() -> tuple[int, int, str]:
    master_fd, slave_fd = os.openpty()
    tty.setraw(slave_fd)
    return master_fd, slave_fd, os.ttyname(slave_fd)


def percentiles(latencies_us: list[float]) -> str:
    ordered = sorted(latencies_us)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"p50 {p50:8.1f} µs   p99 {p99:8.1f} µs   max {ordered[-1]:8.1f} µs"


WARMUP = 100  # samples discarded first: caches, CPU frequency, lazy imports


async def measure(samples: int, reader: MasterReader, write: Callable[[], object]) -> list[float]:
    """Write STOP frames 2 ms apart from inside the loop; return latencies (µs)."""
    starts: list[int] = []
    total = WARMUP + samples
    for _ in range(total):
        t0 = time.perf_counter_ns()
        write()
        starts.append(t0)
        await asyncio.sleep(0.002)  # the loop idles in epoll: the reader thread runs
    deadline = time.monotonic() + 2
    # The reader is a thread, not a task: polling its list is the simplest bounded wait.
    while len(reader.arrivals_ns) < total and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    if len(reader.arrivals_ns) != total:
        raise RuntimeError(f"{len(reader.arrivals_ns)} of {total} frames arrived")
    pairs = list(zip(starts, reader.arrivals_ns, strict=True))[WARMUP:]
    return [(arrived - started) / 1000 for started, arrived in pairs]


async def bench_reference(samples: int) -> list[float]:
    master_fd, slave_fd, _ = new_pty()
    reader = MasterReader(master_fd)
    reader.start()
    try:
        return await measure(samples, reader, lambda: _write_all(slave_fd))
    finally:
        os.close(slave_fd)
        os.close(master_fd)


def _write_all(fd: int) -> None:
    written = os.write(fd, STOP_FRAME)
    assert written == len(STOP_FRAME)


async def bench_plain_fd(samples: int) -> list[float]:
    master_fd, slave_fd, path = new_pty()
    port = serial.Serial(path, baudrate=115200, exclusive=True, timeout=0)
    reader = MasterReader(master_fd)
    reader.start()
    try:
        return await measure(samples, reader, lambda: _write_all(port.fileno()))
    finally:
        port.close()
        os.close(slave_fd)
        os.close(master_fd)


async def bench_transport(
    samples: int,
    open_transport: Callable[[str], Awaitable[asyncio.Transport]],
) -> list[float]:
    master_fd, slave_fd, path = new_pty()
    transport = await open_transport(path)
    reader = MasterReader(master_fd)
    reader.start()
    try:
        return await measure(samples, reader, lambda: transport.write(STOP_FRAME))
    finally:
        transport.abort()
        await asyncio.sleep(0.05)
        os.close(slave_fd)
        os.close(master_fd)


class _Sink(asyncio.Protocol):
    def __init__(self) -> None:
        self.lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


async def open_pyserial_asyncio_fast(path: str, sink: _Sink | None = None) -> asyncio.Transport:
    loop = asyncio.get_running_loop()
    protocol = sink if sink is not None else _Sink()
    transport, _ = await serial_asyncio_fast.create_serial_connection(
        loop, lambda: protocol, path, baudrate=115200, exclusive=True
    )
    assert isinstance(transport, asyncio.Transport)
    return transport


async def open_serialx(path: str, sink: _Sink | None = None) -> asyncio.Transport:
    loop = asyncio.get_running_loop()
    protocol = sink if sink is not None else _Sink()
    transport, _ = await serialx.create_serial_connection(
        loop, lambda: protocol, path, baudrate=115200
    )
    assert isinstance(transport, asyncio.Transport)
    return transport


async def bench_serial_link(samples: int) -> list[float]:
    master_fd, slave_fd, path = new_pty()
    reader = MasterReader(master_fd, ack=True)
    reader.start()
    try:
        async with SerialLink(url=path) as link:
            return await measure(samples, reader, lambda: link.send_stop_now(42))
    finally:
        os.close(slave_fd)
        os.close(master_fd)


class _ErrorCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


async def hang_up(name: str, opener: Callable[[str, _Sink], Awaitable[asyncio.Transport]]) -> str:
    """Close the pty master under an open transport; report what the backend does."""
    master_fd, slave_fd, path = new_pty()
    sink = _Sink()
    transport = await opener(path, sink)
    counter = _ErrorCounter()
    logging.getLogger().addHandler(counter)
    try:
        t0 = time.perf_counter()
        os.close(master_fd)
        os.close(slave_fd)
        try:
            exc = await asyncio.wait_for(asyncio.shield(sink.lost), 2)
        except TimeoutError:
            return f"{name:24s} connection_lost NOT called within 2 s"
        elapsed_ms = (time.perf_counter() - t0) * 1000
        try:
            transport.write(STOP_FRAME)
            after = "write after loss ignored"
        except Exception as write_exc:  # noqa: BLE001 - reporting whatever the backend does
            after = f"write after loss raises {type(write_exc).__name__}"
        return (
            f"{name:24s} connection_lost after {elapsed_ms:6.1f} ms with "
            f"{type(exc).__name__}: {exc}; {counter.count} ERROR log records; {after}"
        )
    finally:
        logging.getLogger().removeHandler(counter)
        transport.abort()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    args = parser.parse_args()
    samples: int = args.samples
    logging.basicConfig(level=logging.CRITICAL)  # count errors, do not print them

    print(
        f"STOP frame {len(STOP_FRAME)} bytes, {samples} samples each, pty, "
        f"python {sys.version.split()[0]}, {os.cpu_count()} cores"
    )
    print("command: uv run python bench/serial_backends.py " + " ".join(sys.argv[1:]))
    reference = await bench_reference(samples)
    ref_p50 = statistics.median(reference)
    rows = [
        ("reference os.write", reference),
        ("plain fd (pyserial cfg)", await bench_plain_fd(samples)),
        ("pyserial-asyncio-fast", await bench_transport(samples, open_pyserial_asyncio_fast)),
        ("serialx", await bench_transport(samples, open_serialx)),
        ("SerialLink.send_stop_now", await bench_serial_link(samples)),
    ]
    print("\nSTOP write → all bytes readable at the pty master")
    for name, latencies in rows:
        ratio = statistics.median(latencies) / ref_p50
        print(f"  {name:26s} {percentiles(latencies)}   p50/ref {ratio:4.2f}")
    print("\npty hang-up (other side closed) under an open transport")
    print("  " + await hang_up("pyserial-asyncio-fast", open_pyserial_asyncio_fast))
    print("  " + await hang_up("serialx", open_serialx))


if __name__ == "__main__":
    asyncio.run(main())
