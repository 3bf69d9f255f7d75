"""Ledger costs against the number of past sessions (issue 14): 1k, 10k, 100k.

A ledger is pre-filled with N completed sessions of one subject, one a day (each: a
decision, intent, started, two progress rows, ended and an alarm: 7 events), written
in bulk through the ledger's own event writer (chain hashes included). Then, per N:

* **open** — `Ledger.open` read-write (the check at every service start), and the
  two SQLite checks alone: `PRAGMA integrity_check` and `PRAGMA quick_check`;
* **admission** — `Ledger.admission_history` + `decide()` as the service does it:
  the first after the ledger is opened (course totals counted from the indexes) and
  the next one (totals kept, only the new events added); the reference is the old
  way, `Ledger.history` (every session) + `decide()`;
* **show** — `Ledger.summaries()` (`nebuliser ledger show`);
* **report** — `read_sessions` (`nebuliser report sessions`).

Each figure is the median of `--runs` runs; the ratio is against the smallest N.
Targets: admission (kept totals) flat in N (ratio ≤ 2 at 100× the sessions); show
and report linear in what they print (a fixed number of queries).

Run: uv run python bench/ledger_scale.py [--sizes 1000,10000,100000] [--runs 2]  (about 2 min)
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._bed import machine
from controller.dosing import (
    DoseRequest,
    Instant,
    Prescription,
    StorageStatus,
    TrustedTime,
    decide,
)
from controller.ledger import LEDGER_FILE_NAME, EventKind, Ledger
from controller.ledger._database import Database
from controller.reports import read_sessions

SUBJECT = "S-bench"
DAY_S = 86_400
NS_PER_S = 1_000_000_000
BATCH = 2_000
TARGET_FLAT_RATIO = 2.0


def _prescription() -> Prescription:
    return Prescription.model_validate(
        {
            "subject_id": SUBJECT,
            "protocol_id": "P-bench",
            "drug": "salbutamol",
            "timezone": "UTC",
            "lot": {"lot_id": "L-1", "amount": 5.0, "unit": "mg", "per_volume_ml": 2.5},
            "arm": {"arm_id": "a", "cohort": "c", "blinded": False},
            "limits": {
                "session_ul": 500,
                "min_interval_s": 3_600,
                "rolling_24h_max_ul": 2_000,
                "course_max_ul": 10**9,
                "course_max_sessions": 10**6,
            },
        }
    )


def fill(ledger: Ledger, sessions: int, start: Instant) -> Instant:
    """`sessions` completed sessions a day apart from `start`, in bulk transactions."""
    database = ledger._db  # a benchmark fixture writes in bulk
    database.connection.execute("PRAGMA synchronous = OFF")
    at = start
    done = 0
    while done < sessions:
        with database.writing() as connection:
            for _ in range(min(BATCH, sessions - done)):
                _one_session(database, connection, at)
                at = Instant(
                    utc=at.utc + timedelta(seconds=DAY_S),
                    boot_id=at.boot_id,
                    monotonic_ns=at.monotonic_ns + DAY_S * NS_PER_S,
                )
            done += min(BATCH, sessions - done)
    database.connection.execute("PRAGMA synchronous = FULL")
    return at


def _one_session(database: Database, connection: sqlite3.Connection, at: Instant) -> None:
    insert = database.insert_event
    insert(
        connection,
        kind=EventKind.DECISION,
        at=at,
        subject_id=SUBJECT,
        body={"allowed": True, "trace": {}},
    )
    cursor = connection.execute(
        "INSERT INTO sessions (subject_id, allocated_utc) VALUES (?, ?)",
        (SUBJECT, at.utc.isoformat(timespec="microseconds")),
    )
    sid = cursor.lastrowid
    intent = {
        "planned_cap_ul": 500,
        "device_target_ul": 500,
        "device_max_duration_s": 600,
        "output_pct": 80,
        "drug": "salbutamol",
        "concentration_per_ml": 2.0,
        "dose_unit": "mg",
        "decision": {"allowed": True, "constraints": []},
    }
    insert(
        connection, kind=EventKind.INTENT, at=at, session_id=sid, subject_id=SUBJECT, body=intent
    )
    insert(connection, kind=EventKind.STARTED, at=at, session_id=sid, subject_id=SUBJECT, body={})
    for delivered in (150, 300):
        insert(
            connection,
            kind=EventKind.PROGRESS,
            at=at,
            session_id=sid,
            subject_id=SUBJECT,
            delivered_ul=delivered,
            body={"delivered_ul": delivered, "flow_ul_min": 100},
        )
    insert(
        connection,
        kind=EventKind.ENDED,
        at=at,
        session_id=sid,
        subject_id=SUBJECT,
        delivered_ul=490,
        body={
            "delivered_ul": 490,
            "duration_ms": 300_000,
            "reason": "cap_predicted",
            "source": "host",
            "host_reason": "cap_predicted",
            "device_reason": None,
        },
    )
    insert(
        connection,
        kind=EventKind.ALARM,
        at=at,
        body={
            "alarm_code": "dry_cup",
            "action": "raised",
            "actor": "controller",
            "priority": "",
            "message": "",
        },
    )


def _median_s(action: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        action()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _check_s(path: Path, pragma: str, runs: int) -> float:
    def check() -> None:
        with sqlite3.connect(path) as connection:
            assert connection.execute(f"PRAGMA {pragma}").fetchall() == [("ok",)]

    return _median_s(check, runs)


def measure(directory: Path, sessions: int, runs: int) -> dict[str, float]:
    path = directory / LEDGER_FILE_NAME
    start = Instant(
        utc=datetime.now(UTC) - timedelta(days=sessions + 1), boot_id="boot-fill", monotonic_ns=0
    )
    t0 = time.perf_counter()
    with Ledger.create(path, device_id="neb-bench", subject_id=SUBJECT) as ledger:
        fill(ledger, sessions, start)
    figures = {"fill": time.perf_counter() - t0, "mb": path.stat().st_size / 1e6}
    figures["open"] = _median_s(lambda: Ledger.open(path).close(), runs)
    figures["integrity_check"] = _check_s(path, "integrity_check", runs)
    figures["quick_check"] = _check_s(path, "quick_check", runs)
    prescription = _prescription()
    request = DoseRequest(subject_id=SUBJECT, storage=StorageStatus(ok=True))
    now = TrustedTime(
        instant=Instant(utc=datetime.now(UTC), boot_id="boot-now", monotonic_ns=10**12),
        trusted=True,
    )

    def admit(ledger: Ledger) -> object:
        return decide(prescription, ledger.admission_history(SUBJECT, now.instant), request, now)

    def first_admission() -> None:
        with Ledger.open(path, read_only=True) as fresh:
            t = time.perf_counter()
            admit(fresh)
            firsts.append(time.perf_counter() - t)

    firsts: list[float] = []
    for _ in range(runs):
        first_admission()
    figures["admission_first"] = statistics.median(firsts)
    with Ledger.open(path) as ledger:
        admit(ledger)
        fill(ledger, 1, now.instant)  # a new session since the last admission
        figures["admission"] = _median_s(lambda: admit(ledger), runs)
        whole = decide(prescription, ledger.history(SUBJECT), request, now)
        assert admit(ledger) == whole, "windowed admission differs from the whole history"
        figures["admission_whole"] = _median_s(
            lambda: decide(prescription, ledger.history(SUBJECT), request, now), runs
        )
        figures["show"] = _median_s(ledger.summaries, runs)
        figures["report"] = _median_s(lambda: read_sessions(ledger), runs)
    return figures


ROWS = (
    ("open", "Ledger.open (read-write)"),
    ("integrity_check", "  PRAGMA integrity_check"),
    ("quick_check", "  PRAGMA quick_check"),
    ("admission", "admission (totals kept)"),
    ("admission_first", "admission (first after open)"),
    ("admission_whole", "  reference: whole history"),
    ("show", "ledger show (summaries)"),
    ("report", "report sessions"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"machine: {machine()}")
    print(f"command: uv run python bench/ledger_scale.py --sizes {args.sizes} --runs {args.runs}")
    results: dict[int, dict[str, float]] = {}
    for sessions in sizes:
        with tempfile.TemporaryDirectory(dir=Path.home()) as directory:
            results[sessions] = measure(Path(directory), sessions, args.runs)
        figures = results[sessions]
        print(
            f"  {sessions} sessions ({sessions * 7} events, {figures['mb']:.0f} MB)"
            f" filled in {figures['fill']:.1f} s",
            flush=True,
        )
    base = sizes[0]
    header = "".join(f"{n:>12,}" for n in sizes)
    title = f"median of {args.runs} runs (ms)"
    print(f"\n{title:34}{header}   ratio {sizes[-1]:,}/{base:,}")
    for key, label in ROWS:
        cells = "".join(f"{results[n][key] * 1000:12.2f}" for n in sizes)
        ratio = results[sizes[-1]][key] / results[base][key]
        print(f"{label:34}{cells}   {ratio:8.1f}x")
    flat = results[sizes[-1]]["admission"] / results[base]["admission"]
    verdict = "PASS" if flat <= TARGET_FLAT_RATIO else "FAIL"
    print(
        f"\nadmission (totals kept) {sizes[-1]:,} vs {base:,} sessions: {flat:.2f}x "
        f"(target <= {TARGET_FLAT_RATIO}x): {verdict}"
    )


if __name__ == "__main__":
    main()
