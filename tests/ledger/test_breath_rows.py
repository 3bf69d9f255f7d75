"""Each BREATH report of a run (ICD 1.1 §3): table `breaths`, append-only, in batches."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from controller.ledger import (
    BreathRecord,
    Ledger,
    LedgerError,
    LedgerWriteError,
)
from controller.ledger._schema import MIGRATIONS
from tests.ledger.conftest import SimClock, intent
from tests.ledger.test_schema import _v1_ledger

#: The migration that added the `breaths` table.
_BREATHS_VERSION = next(
    version for version, sql in MIGRATIONS if any("CREATE TABLE breaths" in s for s in sql)
)


def breath_row(
    session_id: int, breath_no: int, clock: SimClock, *, lost_before: int = 0, insp: int = 40
) -> BreathRecord:
    return BreathRecord(
        session_id=session_id,
        breath_no=breath_no,
        lost_before=lost_before,
        at=clock.advance(4),
        insp_ms=2000,
        exp_ms=2000,
        tidal_ml=500,
        peak_flow_ml_s=390,
        aerosol_insp_dul=insp,
        aerosol_exp_dul=1,
    )


def test_a_batch_is_stored_and_read_back_in_order(ledger: Ledger, clock: SimClock) -> None:
    sid = intent(ledger, clock)
    other = intent(ledger, clock)
    first = [breath_row(sid, n, clock) for n in (65534, 65535)]
    second = [breath_row(sid, 3, clock, lost_before=3), breath_row(other, 4, clock)]
    ledger.record_breaths(first)
    ledger.record_breaths(second)
    ledger.record_breaths([])  # nothing to do
    assert ledger.breaths(sid) == [*first, second[0]]  # every field, `at` included
    assert ledger.breaths(other) == [second[1]]
    assert ledger.breaths(other + 1) == []


def test_a_batch_is_all_or_none_and_needs_the_session_intent(
    ledger: Ledger, clock: SimClock
) -> None:
    sid = intent(ledger, clock)
    with pytest.raises(LedgerWriteError, match="rolled back"):
        ledger.record_breaths([breath_row(sid, 1, clock), breath_row(sid + 1, 2, clock)])
    assert ledger.breaths(sid) == []


def test_breath_rows_are_append_only(ledger: Ledger, clock: SimClock, db_path: Path) -> None:
    sid = intent(ledger, clock)
    ledger.record_breaths([breath_row(sid, 1, clock)])
    raw = sqlite3.connect(db_path)
    try:
        for statement in ("UPDATE breaths SET aerosol_exp_dul = 0", "DELETE FROM breaths"):
            with pytest.raises(sqlite3.IntegrityError, match="not allowed"):
                raw.execute(statement)
            raw.rollback()
    finally:
        raw.close()


def test_a_breath_record_outside_the_icd_ranges_is_refused_with_the_field(
    clock: SimClock,
) -> None:
    with pytest.raises(ValueError, match="aerosol_insp_dul must be a u16"):
        breath_row(1, 1, clock, insp=70_000)
    with pytest.raises(ValueError, match="lost_before must be >= 0"):
        breath_row(1, 1, clock, lost_before=-1)


def as_previous_version(db_path: Path) -> None:
    """Turn a ledger file into what the release before per-breath rows wrote: its
    sessions and breath summaries kept, table `breaths` and its schema row gone."""
    raw = sqlite3.connect(db_path, isolation_level=None)
    try:
        (guard,) = raw.execute(
            "SELECT sql FROM sqlite_master WHERE name = 'schema_version_no_delete'"
        ).fetchone()
        raw.execute("DROP TRIGGER schema_version_no_delete")
        raw.execute("DELETE FROM schema_version WHERE version >= ?", (_BREATHS_VERSION,))
        raw.execute(guard)
        raw.execute("DROP TABLE breaths")  # with its index and triggers
        raw.execute("DELETE FROM sqlite_sequence WHERE name = 'breaths'")
        for version, statements in MIGRATIONS:  # and what later migrations made
            if version > _BREATHS_VERSION:
                for statement in statements:
                    words = statement.split()
                    assert words[:2] == ["CREATE", "INDEX"], "teach this helper the new DDL"
                    raw.execute(f"DROP INDEX {words[2]}")
    finally:
        raw.close()


def test_a_ledger_from_before_per_breath_rows_migrates_and_has_none(
    db_path: Path, clock: SimClock
) -> None:
    with Ledger.create(db_path, device_id="neb-test", subject_id="subj-1") as ledger:
        sid = intent(ledger, clock)
    as_previous_version(db_path)
    with pytest.raises(LedgerError, match="older than"):
        Ledger.open(db_path, read_only=True)  # a report asks the controller to migrate
    with Ledger.open(db_path) as ledger:  # the controller's start migrates it
        assert ledger.breaths(sid) == []
        ledger.record_breaths([breath_row(sid, 1, clock)])  # and from then on keeps them
    with Ledger.open(db_path, read_only=True) as ledger:
        assert [r.breath_no for r in ledger.breaths(sid)] == [1]


def test_a_version_1_ledger_migrates_to_one_with_breath_rows(
    db_path: Path, clock: SimClock
) -> None:
    _v1_ledger(db_path, clock)
    with Ledger.open(db_path) as ledger:
        assert ledger.breaths(1) == []
