"""Cap or fault → STOP on the wire after a year of service: empty vs full ledger.

Issue 14: the STOP path must not degrade with history or uptime. Two controllers run
side by side in the same run, samples alternating between them (and between the two
triggers) so that the machine's other load hits both alike; each is a real
`nebuliser serve` subprocess with MQTT configured (a private Mosquitto, telemetry at
10 Hz, so the publisher settles a batch about ten times a second) and a scripted head
on a pty (`bench/_bed.py`):

* **empty** — a fresh data directory (`nebuliser ledger init`'s empty ledger);
* **year** — the same, but the ledger holds `--ledger-days` (default 365) days of a
  once-daily course of the pilot dose (3 mL at 400 µL/min: decision, intent, started,
  a progress row every 5 s, ended — 93 events a day, written as the controller writes
  them), and `telemetry-sent.sqlite3` holds `--archive-rows` acknowledged messages
  (default: the archive's own bound, `SentArchive`'s `max_rows`, 500,000 rows — what
  a year of 1 Hz or a day of 10 Hz telemetry leaves: it keeps at most 24 h and at
  most that many rows; older telemetry is not stored by design), their send times
  spread over the last 24 h so that rows keep ageing out during the run and each new
  row pushes one over the bound (the pruning the archive must do in service).

For each sample the head writes a STATUS with `delivered_ul` at the cap, or with a
fault bit, and stamps the write; the latency is until the host's STOP frame is
readable on the pty master. Targets, per trigger: p50(year) ≤ 1.5 × p50(empty) and
max(year) ≤ max(empty) + 2 ms.

Run: uv run python bench/uptime.py [--samples 30] [--archive-rows 500000] [--ledger-days 365]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
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
from controller.dosing import Instant
from controller.ledger import (
    LEDGER_FILE_NAME,
    EndSource,
    Ledger,
    OutboxKind,
    OutboxMessage,
    OutboxRow,
)
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


#: The pilot dose: 3 mL at 400 µL/min (450 s), a progress row every 5 s.
_DOSE_UL = 3000
_DOSE_S = 450
_PROGRESS_S = 5


def fill_ledger(path: Path, *, days: int, subject_id: str) -> tuple[int, float]:
    """`days` once-daily sessions ending two days ago; (events written, seconds taken).

    Each session is written as the service writes it (one transaction per session
    here, with `Ledger.batch`, to fill a year in seconds)."""
    began = time.perf_counter()
    today = datetime.now(UTC).replace(hour=9, minute=0, second=0, microsecond=0)
    with Ledger.open(path, progress_interval_ms=_PROGRESS_S * 1000) as ledger:
        first_event = ledger.head.seq if ledger.head else 0
        for day in range(days, 0, -1):
            start = today - timedelta(days=day + 1)
            boot = f"bench-boot-{day}"

            def at(offset_s: float, *, start: datetime = start, boot: str = boot) -> Instant:
                return Instant(
                    utc=start + timedelta(seconds=offset_s),
                    boot_id=boot,
                    monotonic_ns=int((3600 + offset_s) * 1e9),
                )

            trace = {"action": "allow", "bench": "a year of a once-daily course"}
            with ledger.batch():
                ledger.record_decision(subject_id=subject_id, allowed=True, trace=trace, at=at(0))
                sid = ledger.record_intent(
                    subject_id=subject_id, planned_cap_ul=_DOSE_UL, device_target_ul=_DOSE_UL,
                    device_max_duration_s=600, output_pct=100, decision_trace=trace, at=at(1),
                    drug="exosome vesicles (inhaled)", concentration_per_ml=2.0e8 / 3,
                    dose_unit="vesicles",
                )  # fmt: skip
                ledger.record_started(sid, at=at(2))
                for second in range(_PROGRESS_S, _DOSE_S, _PROGRESS_S):
                    ledger.record_progress(
                        sid, delivered_ul=_DOSE_UL * second // _DOSE_S, flow_ul_min=400,
                        reservoir_ul=3000 - _DOSE_UL * second // _DOSE_S, at=at(2 + second),
                    )  # fmt: skip
                ledger.record_ended(
                    sid, delivered_ul=_DOSE_UL, duration_ms=_DOSE_S * 1000,
                    reason="TARGET_REACHED", source=EndSource.DEVICE, at=at(2 + _DOSE_S),
                    device_reason="TARGET_REACHED",
                )  # fmt: skip
        written = (ledger.head.seq if ledger.head else 0) - first_event
    return written, time.perf_counter() - began


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


def prefill(config: NebuliserConfig, *, label: str, rows: int, days: int) -> None:
    """`days` of a once-daily course in the bed's ledger, `rows` in its sent archive."""
    if days:
        assert config.prescription is not None
        events, took_s = fill_ledger(
            config.storage.data_dir / LEDGER_FILE_NAME,
            days=days,
            subject_id=config.prescription.subject_id,
        )
        size_mib = (config.storage.data_dir / LEDGER_FILE_NAME).stat().st_size / 2**20
        print(f"  {label}: ledger pre-filled with {days} sessions, {events} events, "
              f"{size_mib:.1f} MiB, in {took_s:.1f} s")  # fmt: skip
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


@dataclass
class Bed:
    """One controller with its scripted head; latencies (ms) per trigger kind."""

    label: str
    rows: int
    head: ScriptedHead
    config: NebuliserConfig
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"cap": [], "fault": []})


@contextlib.asynccontextmanager
async def running_bed(
    directory: Path, broker: MosquittoBroker, label: str, rows: int, days: int
) -> AsyncIterator[Bed]:
    """Start a controller (MQTT at 10 Hz) and its head; stop both afterwards.

    `rows` acknowledged messages in its sent archive, `days` of sessions in its ledger."""
    master_fd, slave_fd, path = new_pty()
    head = ScriptedHead(master_fd)
    head.start()
    mqtt = bench_mqtt_section(
        host=broker.host, port=broker.port, client_id=f"uptime-{label}", telemetry_hz=10
    )
    config_path, config = write_bench_config(
        directory, port=path, session_ul=100, mqtt=mqtt, min_interval_s=None
    )
    prefill(config, label=label, rows=rows, days=days)
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


def largest(values: list[float], count: int) -> list[int]:
    """Indices of the `count` largest values, smallest first."""
    return sorted(range(len(values)), key=values.__getitem__)[-count:]


async def sample(bed: Bed, kind: str, rng: random.Random) -> None:
    """One session, stopped by a cap or fault STATUS; appends the latency (ms)."""
    reply = await start_confirmed(bed.config)
    if not reply.get("started"):
        raise RuntimeError(f"{bed.label}: start refused: {reply}")
    await wait_status(bed.config, lambda s: s["state"] == "nebulising", 5)
    await asyncio.sleep(rng.uniform(0.05, 0.25))
    bed.head.trigger(kind)
    if not await asyncio.to_thread(bed.head.stop_event.wait, 3.0):
        raise RuntimeError(f"{bed.label}: no STOP after a {kind} trigger")
    assert bed.head.trigger_written_ns is not None
    assert bed.head.stop_arrived_ns is not None
    bed.latencies[kind].append((bed.head.stop_arrived_ns - bed.head.trigger_written_ns) / 1e6)
    await wait_status(bed.config, lambda s: s["session"] is None, 5)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--samples", type=int, default=30, help="samples per trigger and controller (≤ 110)"
    )
    archive_bound = inspect.signature(SentArchive).parameters["max_rows"].default
    parser.add_argument("--archive-rows", type=int, default=archive_bound)
    parser.add_argument("--ledger-days", type=int, default=365)
    parser.add_argument("--settle-s", type=float, default=10.0, help="wait after start-up")
    args = parser.parse_args()
    if not 0 < args.samples <= 110:
        parser.error("--samples must be 1..110 (cap samples use the 24 h volume ceiling)")
    print(f"machine: {machine()}")
    print("command: uv run python bench/uptime.py " + " ".join(sys.argv[1:]))
    print(f"load average at start (1, 5, 15 min): {os.getloadavg()}")
    rng = random.Random(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "mosquitto").mkdir()
        async with contextlib.AsyncExitStack() as stack:
            broker = await stack.enter_async_context(MosquittoBroker(workdir=root / "mosquitto"))
            beds = []
            for label, rows, days in (
                ("empty", 0, 0),
                ("year", args.archive_rows, args.ledger_days),
            ):
                (root / label).mkdir()
                beds.append(
                    await stack.enter_async_context(
                        running_bed(root / label, broker, label, rows, days)
                    )
                )
            # Start-up work ends first: the audit mirror's first pass copies the
            # pre-filled year's decisions into a new audit log (in service the audit
            # log has them already).
            await asyncio.sleep(args.settle_s)
            print(f"{args.samples} cap and {args.samples} fault samples per controller, "
                  "alternating …")  # fmt: skip
            for _ in range(args.samples):
                for kind in ("cap", "fault"):
                    for bed in beds:
                        await sample(bed, kind, rng)
    print(f"{'STATUS → STOP on wire':30s} {'n':>4s} {'p50 ms':>8s} {'max ms':>8s}")
    verdicts = []
    for kind in ("cap", "fault"):
        for bed in beds:
            values = bed.latencies[kind]
            name = f"{kind}, {bed.label} ledger"
            slowest = ", ".join(f"{values[i]:.2f} (#{i})" for i in largest(values, 3))
            print(f"{name:30s} {len(values):4d} {statistics.median(values):8.3f} "
                  f"{max(values):8.3f}   largest (sample #): {slowest}")  # fmt: skip
        empty, year = beds[0].latencies[kind], beds[1].latencies[kind]
        ratio = statistics.median(year) / statistics.median(empty)
        extra_ms = max(year) - max(empty)
        ok = ratio <= TARGET_P50_RATIO and extra_ms <= TARGET_MAX_EXTRA_MS
        verdicts.append(ok)
        print(f"  {kind}: p50 year / p50 empty {ratio:.2f} (target ≤ {TARGET_P50_RATIO}); "
              f"max year − max empty {extra_ms:+.2f} ms (target ≤ {TARGET_MAX_EXTRA_MS} ms): "
              f"{'met' if ok else 'MISSED'}")  # fmt: skip
    print(f"verdict: {'met' if all(verdicts) else 'MISSED'} "
          "(max is the largest of n samples, not a p99)")  # fmt: skip
    print(f"load average at end (1, 5, 15 min): {os.getloadavg()}")


if __name__ == "__main__":
    asyncio.run(main())
