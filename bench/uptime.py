"""Cap → STOP on the wire after a day of uptime: empty vs full sent-message archive.

Issue 14: the STOP path must not degrade with uptime. Two controllers run side by
side in the same run, samples alternating between them so that the machine's other
load hits both alike; each is a real `nebuliser serve` subprocess with MQTT
configured (a private Mosquitto, telemetry at 10 Hz, so the publisher settles a batch
about ten times a second) and a scripted head on a pty (`bench/_bed.py`):

* **empty** — a fresh data directory;
* **full** — the same, but `telemetry-sent.sqlite3` pre-filled with `--archive-rows`
  acknowledged messages (default 86,400: a 24 h archive at 1 Hz, or 2.4 h at 10 Hz),
  their send times spread over the last 24 h so that rows keep ageing out during the
  run (the pruning the archive must do in service).

For each sample the head writes a STATUS with `delivered_ul` at the cap and stamps
the write; the latency is until the host's STOP frame is readable on the pty master.
Targets: p50(full) ≤ 1.5 × p50(empty) and max(full) ≤ max(empty) + 2 ms.

Run: uv run python bench/uptime.py [--samples 30] [--archive-rows 86400]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
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
from controller.benchconfig import bench_mqtt_section
from controller.clock import SystemClock
from controller.config import NebuliserConfig
from controller.ledger import LEDGER_FILE_NAME, Ledger, OutboxKind, OutboxMessage, OutboxRow
from controller.service import device_identity
from controller.service._telemetry import SENT_ARCHIVE_FILE_NAME
from controller.telemetry import MosquittoBroker, SentArchive, outbox_entry, utc_text

TARGET_P50_RATIO = 1.5
TARGET_MAX_EXTRA_MS = 2.0


def fill_archive(path: Path, *, rows: int, topic: str, payload: bytes) -> float:
    """`rows` acknowledged telemetry messages sent over the last 24 h; seconds taken."""
    began = time.perf_counter()
    archive = SentArchive(path=path)
    now = datetime.now(UTC)
    step_s = 24 * 3600 / rows
    batch: list[OutboxRow] = []
    for index in range(rows):
        sent = now - timedelta(seconds=24 * 3600 - index * step_s)
        batch.append(
            OutboxRow(
                seq=index + 1,
                kind=OutboxKind.TELEMETRY,
                topic=topic,
                payload=payload,
                qos=1,
                retain=False,
                created_utc=sent,
            )
        )
        if len(batch) == 5000 or index == rows - 1:
            archive.record(batch, sent_utc=utc_text(batch[-1].created_utc))
            batch = []
    archive.close()
    return time.perf_counter() - began


def advance_outbox_seq(ledger_path: Path, last_seq: int) -> None:
    """Make the fresh ledger allocate seqs above the archived ones, as after a day."""
    with Ledger.open(ledger_path) as ledger:
        seq = ledger.outbox.append(
            OutboxMessage(kind=OutboxKind.TELEMETRY, topic="x", payload=b"{}"),
            at=SystemClock().now(),
        )
        ledger.outbox.delete([seq])
    # sqlite_sequence holds the outbox's high-water mark (AUTOINCREMENT).
    with contextlib.closing(sqlite3.connect(ledger_path)) as db, db:
        db.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'outbox'", (last_seq,))


@dataclass
class Bed:
    """One controller with its scripted head; its archive pre-filled with `rows`."""

    label: str
    rows: int
    head: ScriptedHead
    config: NebuliserConfig
    latencies: list[float] = field(default_factory=list)


@contextlib.asynccontextmanager
async def running_bed(
    directory: Path, broker: MosquittoBroker, label: str, rows: int
) -> AsyncIterator[Bed]:
    """Start a controller (MQTT at 10 Hz) and its head; stop both afterwards."""
    master_fd, slave_fd, path = new_pty()
    head = ScriptedHead(master_fd)
    head.start()
    mqtt = bench_mqtt_section(
        host=broker.host, port=broker.port, client_id=f"uptime-{label}", telemetry_hz=10
    )
    config_path, config = write_bench_config(directory, port=path, session_ul=100, mqtt=mqtt)
    if rows:
        assert config.mqtt is not None
        config.storage.data_dir.mkdir(parents=True, exist_ok=True)
        sample = outbox_entry(
            device_identity(config), root_topic=config.mqtt.root_topic,
            schema="nebuliser.telemetry", utc=datetime.now(UTC), session_id=None,
            running=False, delivered_ul=0, cap_ul=0, flow_ul_min=0, reservoir_ul=3000,
            temperature_cC=2500, faults=[], link_quality_pct=100,
        )  # fmt: skip
        took_s = fill_archive(
            config.storage.data_dir / SENT_ARCHIVE_FILE_NAME,
            rows=rows,
            topic=sample.topic,
            payload=sample.build(1),
        )
        advance_outbox_seq(config.storage.data_dir / LEDGER_FILE_NAME, rows)
        print(f"  {label}: archive pre-filled with {rows} rows in {took_s:.1f} s")
    process = await controller_process(config_path)
    try:
        await wait_status(config, lambda s: s["link_up"] and s["state"] == "idle", 30)
        yield Bed(label=label, rows=rows, head=head, config=config)
    finally:
        await stop_process(process)
        head.close()
        os.close(slave_fd)
    if rows:
        archive_path = config.storage.data_dir / SENT_ARCHIVE_FILE_NAME
        with contextlib.closing(sqlite3.connect(archive_path)) as db:
            (left,) = db.execute("SELECT count(*) FROM sent").fetchone()
        print(f"  {label}: archive after the run: {left} rows (aged-out rows pruned)")


async def sample(bed: Bed, rng: random.Random) -> None:
    """One session, stopped by a cap STATUS; appends the latency (ms)."""
    reply = await start_confirmed(bed.config)
    if not reply.get("started"):
        raise RuntimeError(f"{bed.label}: start refused: {reply}")
    await wait_status(bed.config, lambda s: s["state"] == "nebulising", 5)
    await asyncio.sleep(rng.uniform(0.05, 0.25))
    bed.head.trigger("cap")
    if not await asyncio.to_thread(bed.head.stop_event.wait, 3.0):
        raise RuntimeError(f"{bed.label}: no STOP after a cap trigger")
    assert bed.head.trigger_written_ns is not None
    assert bed.head.stop_arrived_ns is not None
    bed.latencies.append((bed.head.stop_arrived_ns - bed.head.trigger_written_ns) / 1e6)
    await wait_status(bed.config, lambda s: s["session"] is None, 5)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=30, help="cap samples per archive size")
    parser.add_argument("--archive-rows", type=int, default=86_400)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print("command: uv run python bench/uptime.py " + " ".join(sys.argv[1:]))
    rng = random.Random(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "mosquitto").mkdir()
        async with contextlib.AsyncExitStack() as stack:
            broker = await stack.enter_async_context(MosquittoBroker(workdir=root / "mosquitto"))
            beds = []
            for label, rows in (("empty", 0), ("full", args.archive_rows)):
                (root / label).mkdir()
                beds.append(
                    await stack.enter_async_context(running_bed(root / label, broker, label, rows))
                )
            print(f"{args.samples} cap samples per controller, alternating …")
            for _ in range(args.samples):
                for bed in beds:
                    began = time.monotonic()
                    await sample(bed, rng)
                    # The other bed's session fills the 1 s minimum interval.
                    await asyncio.sleep(max(0.0, 0.55 - (time.monotonic() - began)))
    results = {bed.label: bed.latencies for bed in beds}
    print(f"{'cap STATUS → STOP on wire':34s} {'n':>4s} {'p50 ms':>8s} {'max ms':>8s}")
    for label, values in results.items():
        name = f"{label} archive"
        print(f"{name:34s} {len(values):4d} {statistics.median(values):8.3f} {max(values):8.3f}")
        print(f"  largest: {', '.join(f'{v:.2f}' for v in sorted(values)[-5:])} ms")
    empty, full = results["empty"], results["full"]
    ratio = statistics.median(full) / statistics.median(empty)
    extra_ms = max(full) - max(empty)
    ok = ratio <= TARGET_P50_RATIO and extra_ms <= TARGET_MAX_EXTRA_MS
    print(f"p50 full / p50 empty: {ratio:.2f} (target ≤ {TARGET_P50_RATIO})")
    print(f"max full − max empty: {extra_ms:+.2f} ms (target ≤ {TARGET_MAX_EXTRA_MS} ms)")
    print(f"verdict: {'met' if ok else 'MISSED'} (max is the largest of n samples, not a p99)")


if __name__ == "__main__":
    asyncio.run(main())
