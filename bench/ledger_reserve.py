"""How to keep room for a session's end record on a full disk: reserve file vs. SQLite pages.

Rows (each on a fresh tmpfs this script mounts; run as root):

- allocating the reserve file (`ReserveFile.ensure`, posix_fallocate + fsync);
- `record_ended` on a disk with room (the reference);
- `record_ended` on a disk filled to 0 bytes free, with the reserve file released
  and the write retried (what the ledger does);
- the alternative, "SQLite page reservation": free pages kept inside the database
  file (a filler table dropped, so its pages sit on SQLite's freelist), then
  `record_ended` on a full disk without a reserve file.

Command (from the repository root, as root):

    uv run python bench/ledger_reserve.py --runs 5
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sqlite3
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from controller.dosing import Instant
from controller.ledger import (
    EndSource,
    Ledger,
    LedgerLocation,
    LedgerWriteError,
    ReserveFile,
    init_ledger,
    open_checked,
)

_FS_BYTES = 16 * 1024 * 1024
_RESERVE_BYTES = 8 * 1024 * 1024
_DEVICE = "neb-bench"


@contextlib.contextmanager
def tmpfs(size_bytes: int) -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as parent:
        where = Path(parent) / "fs"
        where.mkdir()
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(where)],
            check=True,
        )
        try:
            yield where
        finally:
            subprocess.run(["umount", "-l", str(where)], check=False)


def fill(directory: Path) -> None:
    fd = os.open(directory / "filler.bin", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 16, 4096, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)


_N = [0]


def _now() -> Instant:
    _N[0] += 1
    return Instant(utc=datetime.now(UTC), boot_id="bench", monotonic_ns=_N[0] * 10**9)


def _open_session(ledger: Ledger) -> int:
    session_id = ledger.record_intent(
        subject_id="S", planned_cap_ul=3000, device_target_ul=3000, device_max_duration_s=600,
        output_pct=100, decision_trace={}, at=_now(),
    )  # fmt: skip
    ledger.record_started(session_id, at=_now())
    return session_id


def _end(ledger: Ledger, session_id: int) -> float:
    started = time.perf_counter()
    ledger.record_ended(
        session_id, delivered_ul=2990, duration_ms=450_000, reason="TARGET_REACHED",
        source=EndSource.DEVICE, at=_now(),
    )  # fmt: skip
    return (time.perf_counter() - started) * 1000


def reserve_allocation_ms() -> float:
    with tmpfs(_FS_BYTES) as fs:
        reserve = ReserveFile(data_dir=fs, size_bytes=_RESERVE_BYTES)
        started = time.perf_counter()
        assert reserve.ensure()
        return (time.perf_counter() - started) * 1000


def end_with_room_ms() -> float:
    with tmpfs(_FS_BYTES) as fs:
        location = LedgerLocation(data_dir=fs / "data")
        init_ledger(location, device_id=_DEVICE, subject_id="S")
        with open_checked(location, device_id=_DEVICE, reserve_bytes=_RESERVE_BYTES) as ledger:
            return _end(ledger, _open_session(ledger))


def end_on_full_disk_with_reserve_ms() -> float:
    with tmpfs(_FS_BYTES) as fs:
        location = LedgerLocation(data_dir=fs / "data")
        init_ledger(location, device_id=_DEVICE, subject_id="S")
        with open_checked(location, device_id=_DEVICE, reserve_bytes=_RESERVE_BYTES) as ledger:
            session_id = _open_session(ledger)
            fill(fs)
            return _end(ledger, session_id)


def end_on_full_disk_with_free_pages() -> str:
    """Free pages inside the database instead of a reserve file."""
    with tmpfs(_FS_BYTES) as fs:
        location = LedgerLocation(data_dir=fs / "data")
        init_ledger(location, device_id=_DEVICE, subject_id="S")
        # Grow the file by ~2 MiB of pages, then free them (they stay in the file).
        raw = sqlite3.connect(location.ledger_path)
        raw.execute("PRAGMA journal_mode = WAL")
        raw.execute("BEGIN")
        raw.execute("CREATE TABLE filler (b BLOB)")
        raw.executemany("INSERT INTO filler VALUES (?)", [(b"\0" * 4000,)] * 500)
        raw.execute("COMMIT")
        raw.execute("DROP TABLE filler")
        raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        free_pages = raw.execute("PRAGMA freelist_count").fetchone()[0]
        raw.close()
        with Ledger.open(location.ledger_path) as ledger:
            session_id = _open_session(ledger)
            fill(fs)
            try:
                _end(ledger, session_id)
            except LedgerWriteError as exc:
                return f"FAILED with {free_pages} free pages in the file: {exc.__cause__}"
            return f"ok ({free_pages} free pages)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        raise SystemExit("run as root (the benchmark mounts small tmpfs file systems)")
    rows = [
        ("reserve allocation (8 MiB)", [reserve_allocation_ms() for _ in range(args.runs)]),
        (
            "record_ended, disk with room (reference)",
            [end_with_room_ms() for _ in range(args.runs)],
        ),
        (
            "record_ended, full disk, reserve released + retry",
            [end_on_full_disk_with_reserve_ms() for _ in range(args.runs)],
        ),
    ]
    reference = statistics.median(rows[1][1])
    print(f"uv run python bench/ledger_reserve.py --runs {args.runs}")
    for name, samples in rows:
        median = statistics.median(samples)
        print(
            f"{name:<52} median {median:7.2f} ms  max {max(samples):7.2f} ms"
            f"  ({median / reference:4.1f}x reference)"
        )
    label = "record_ended, full disk, free SQLite pages only"
    print(f"{label:<52} {end_on_full_disk_with_free_pages()}")


if __name__ == "__main__":
    main()
