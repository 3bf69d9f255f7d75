"""A damaged file is detected at open, moved aside (never deleted), and not silently replaced."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from controller.ledger import (
    Ledger,
    LedgerCorruptError,
    LedgerQuarantinedError,
)
from tests.ledger.conftest import SimClock, create_ledger, intent


def _filled_ledger(db_path: Path, clock: SimClock, sessions: int = 40) -> None:
    with create_ledger(db_path) as ledger:
        for _ in range(sessions):
            intent(ledger, clock)
            clock.advance(60)


def _root_page(db_path: Path, table: str) -> tuple[int, int]:
    raw = sqlite3.connect(db_path)
    try:
        page_size = int(raw.execute("PRAGMA page_size").fetchone()[0])
        (root,) = raw.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)
        ).fetchone()
    finally:
        raw.close()
    return page_size, int(root)


def _overwrite(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(data)


def test_damaged_btree_page_fails_integrity_check_and_is_moved_aside(
    db_path: Path, clock: SimClock
) -> None:
    _filled_ledger(db_path, clock)
    page_size, root = _root_page(db_path, "events")
    original = db_path.read_bytes()
    # Scribble over the page header and cell pointers of the events table's root page.
    _overwrite(db_path, (root - 1) * page_size, b"\x0d\xff\xff\x00\x07" + b"\xa5" * 200)

    with pytest.raises(LedgerCorruptError) as caught:
        Ledger.open(db_path)

    moved = caught.value.quarantined_to
    assert moved is not None
    assert moved.name.startswith("ledger.sqlite3.corrupt-")
    assert not db_path.exists()
    assert moved.read_bytes()[: page_size * (root - 1)] == original[: page_size * (root - 1)]
    assert len(moved.read_bytes()) == len(original)  # kept whole for forensics


def test_overwritten_header_is_not_a_database_and_is_moved_aside(
    db_path: Path, clock: SimClock
) -> None:
    _filled_ledger(db_path, clock, sessions=3)
    _overwrite(db_path, 0, b"this is not sqlite!!")
    with pytest.raises(LedgerCorruptError) as caught:
        Ledger.open(db_path)
    assert caught.value.quarantined_to is not None
    assert caught.value.quarantined_to.exists()


def test_wal_and_shm_are_moved_with_the_main_file(db_path: Path, clock: SimClock) -> None:
    _filled_ledger(db_path, clock, sessions=2)
    _overwrite(db_path, 0, b"garbage garbage garbage")
    # As left behind by a crash: the write-ahead log and its index beside the main file.
    wal = db_path.with_name(db_path.name + "-wal")
    shm = db_path.with_name(db_path.name + "-shm")
    wal.write_bytes(b"wal evidence")
    shm.write_bytes(b"shm evidence")
    with pytest.raises(LedgerCorruptError) as caught:
        Ledger.open(db_path)
    moved = caught.value.quarantined_to
    assert moved is not None
    assert moved.with_name(moved.name + "-wal").read_bytes() == b"wal evidence"
    assert moved.with_name(moved.name + "-shm").read_bytes() == b"shm evidence"
    assert not wal.exists()
    assert not shm.exists()


def test_no_silent_fresh_ledger_after_quarantine_until_backup_restored(
    tmp_path: Path, db_path: Path, clock: SimClock
) -> None:
    _filled_ledger(db_path, clock, sessions=2)
    backup = tmp_path / "backup.sqlite3"
    with Ledger.open(db_path) as ledger:
        ledger.backup(backup)
    _overwrite(db_path, 0, b"x" * 100)
    with pytest.raises(LedgerCorruptError):
        Ledger.open(db_path)

    with pytest.raises(LedgerQuarantinedError, match="Restore the latest backup"):
        Ledger.open(db_path)
    assert not db_path.exists()

    backup.replace(db_path)  # the documented recovery: restore the backup into place
    with Ledger.open(db_path) as ledger:
        assert [r.session_id for r in ledger.history("subj-1")] == [1, 2]


def test_read_only_open_reports_corruption_but_leaves_the_file(
    db_path: Path, clock: SimClock
) -> None:
    _filled_ledger(db_path, clock, sessions=2)
    _overwrite(db_path, 0, b"y" * 100)
    with pytest.raises(LedgerCorruptError) as caught:
        Ledger.open(db_path, read_only=True)
    assert caught.value.quarantined_to is None
    assert db_path.exists()


def test_only_a_second_read_only_connection_may_skip_the_page_check(
    db_path: Path, clock: SimClock
) -> None:
    # The service's telemetry and audit readers open the file its writer has just
    # checked; they skip the check (seconds on a large ledger), nobody else may.
    _filled_ledger(db_path, clock)
    page_size, root = _root_page(db_path, "events_by_kind")
    _overwrite(db_path, (root - 1) * page_size, b"\x0a\xff\xff\x00\x07" + b"\xa5" * 200)
    with pytest.raises(LedgerCorruptError):
        Ledger.open(db_path, read_only=True)
    with Ledger.open(db_path, read_only=True, check=False) as reader:
        assert reader.schema_version >= 5
    with pytest.raises(ValueError, match="read-only"):
        Ledger.open(db_path, check=False)
    assert db_path.exists()
