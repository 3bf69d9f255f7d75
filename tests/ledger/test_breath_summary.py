"""Breath summaries (ICD 1.1 runs): migration 2, once per session, append-only."""

from __future__ import annotations

import sqlite3
from fractions import Fraction
from pathlib import Path

import pytest

from controller.breath import BreathAccumulator
from controller.ledger import BREATH_SUMMARY_KEYS, Ledger, SessionStateError, UnknownSessionError
from tests.breath.test_accumulator import breath
from tests.ledger.conftest import SimClock, intent
from tests.ledger.test_schema import _v1_ledger


def figures() -> dict[str, object]:
    acc = BreathAccumulator(session_id=7, started_ms=0)
    acc.on_breath(breath(1, insp_dul=380, exp_dul=5), 3000)
    acc.on_breath(breath(3, insp_dul=400, exp_dul=0), 6000)
    return acc.summary().ledger_figures(
        concentration_per_ul=Fraction(200_000_000, 3000), dose_unit="vesicles", gated=True
    )


def test_record_and_read_back(ledger: Ledger, clock: SimClock) -> None:
    session_id = intent(ledger, clock)
    record = figures()
    assert set(record) == BREATH_SUMMARY_KEYS
    ledger.record_breath_summary(session_id, figures=record, at=clock.advance(1))
    stored = ledger.breath_summary(session_id)
    assert stored == record
    assert stored is not None
    assert stored["aerosol_insp_ul"] == 78.0
    assert stored["aerosol_insp_dose"] == pytest.approx(78 * 200_000_000 / 3000)
    assert stored["lost_reports"] == 1
    assert ledger.breath_summary(session_id + 1) is None


def test_once_per_session_and_only_for_a_known_session(ledger: Ledger, clock: SimClock) -> None:
    session_id = intent(ledger, clock)
    ledger.record_breath_summary(session_id, figures=figures(), at=clock.now())
    with pytest.raises(SessionStateError, match="already has a breath summary"):
        ledger.record_breath_summary(session_id, figures=figures(), at=clock.now())
    with pytest.raises(UnknownSessionError):
        ledger.record_breath_summary(999, figures=figures(), at=clock.now())
    incomplete = {k: v for k, v in figures().items() if k != "lost_reports"}
    with pytest.raises(ValueError, match="lost_reports"):
        ledger.record_breath_summary(session_id, figures=incomplete, at=clock.now())


def test_breath_summaries_are_append_only(ledger: Ledger, clock: SimClock, db_path: Path) -> None:
    session_id = intent(ledger, clock)
    ledger.record_breath_summary(session_id, figures=figures(), at=clock.now())
    raw = sqlite3.connect(db_path)
    try:
        for statement in (
            "UPDATE breath_summaries SET body = '{}'",
            "DELETE FROM breath_summaries",
        ):
            with pytest.raises(sqlite3.IntegrityError, match="not allowed"):
                raw.execute(statement)
            raw.rollback()
    finally:
        raw.close()


def test_a_version_1_ledger_file_migrates_to_2(db_path: Path, clock: SimClock) -> None:
    _v1_ledger(db_path, clock)  # a file as version 1 wrote it (no breath_summaries)
    with Ledger.open(db_path) as ledger:
        assert ledger.breath_summary(1) is None  # the table is back
