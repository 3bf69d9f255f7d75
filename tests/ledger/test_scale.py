"""Costs that must not grow with the ledger (issue 14): a fixed number of SQLite
statements, and SQLite work that does not grow with the number of past sessions.

Statements are counted with `set_trace_callback`; the work SQLite does is counted in
virtual-machine steps with `set_progress_handler` (a full scan of the history shows
up there even when the number of statements stays the same).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

from controller.clock import SystemClock
from controller.dosing import AdmissionHistory, CourseTotals, Instant
from controller.ledger import LEDGER_FILE_NAME, Ledger
from controller.reports import read_sessions
from controller.service._audit import ServiceAudit
from tests.ledger.conftest import create_ledger
from tests.support.ledger_fill import fill_sessions

T = TypeVar("T")

_STEPS_PER_TICK = 100
_PASSES = 320
SUBJECT = "subj-1"


@dataclass
class SqlCost:
    statements: int = 0
    ticks: int = 0
    """Progress-handler calls: SQLite VM steps / _STEPS_PER_TICK."""


@contextmanager
def counted(connection: sqlite3.Connection) -> Iterator[SqlCost]:
    cost = SqlCost()

    def on_statement(_sql: str) -> None:
        cost.statements += 1

    def on_progress() -> int:
        cost.ticks += 1
        return 0

    connection.set_trace_callback(on_statement)
    connection.set_progress_handler(on_progress, _STEPS_PER_TICK)
    try:
        yield cost
    finally:
        connection.set_trace_callback(None)
        connection.set_progress_handler(None, 0)


def _filled(path: Path, sessions: int) -> Ledger:
    """A ledger with one session a day up to yesterday (an earlier boot)."""
    ledger = create_ledger(path)
    start = Instant(
        utc=datetime.now(UTC) - timedelta(days=sessions + 1), boot_id="boot-fill", monotonic_ns=0
    )
    fill_sessions(ledger, count=sessions, subject_id=SUBJECT, start=start)
    return ledger


def _cost(directory: Path, sessions: int, action: Callable[[Ledger], T]) -> tuple[SqlCost, T]:
    directory.mkdir()
    with (
        _filled(directory / LEDGER_FILE_NAME, sessions) as ledger,
        counted(ledger._db.connection) as cost,
    ):
        result = action(ledger)
    return cost, result


def test_ledger_show_reads_in_a_fixed_number_of_statements(tmp_path: Path) -> None:
    small, few = _cost(tmp_path / "small", 10, lambda ledger: ledger.summaries())
    large, many = _cost(tmp_path / "large", 300, lambda ledger: ledger.summaries())
    assert (len(few), len(many)) == (10, 300)
    assert all(len(s.alarms) == 0 and s.end_reason == "cap_predicted" for s in many)
    assert large.statements == small.statements, (small, large)


def test_report_sessions_reads_in_a_fixed_number_of_statements(tmp_path: Path) -> None:
    small, few = _cost(tmp_path / "small", 10, read_sessions)
    large, many = _cost(tmp_path / "large", 300, read_sessions)
    assert (len(few), len(many)) == (10, 300)
    # Each session's own alarm (raised just after its end) is reported with it.
    assert all(len(s.nearby_alarms) == 1 for s in many)
    assert large.statements == small.statements, (small, large)


def _admission_cost(directory: Path, sessions: int) -> tuple[SqlCost, AdmissionHistory]:
    """The cost of an admission after a first one and a new session (the service's
    case: the ledger object keeps the course counts between admissions)."""
    directory.mkdir()
    with _filled(directory / LEDGER_FILE_NAME, sessions) as ledger:
        now = Instant(utc=datetime.now(UTC), boot_id="boot-now", monotonic_ns=0)
        ledger.admission_history(SUBJECT, now)
        fill_sessions(ledger, count=1, subject_id=SUBJECT, start=now)
        with counted(ledger._db.connection) as cost:
            return cost, ledger.admission_history(SUBJECT, now)


def test_admission_reads_only_its_windows(tmp_path: Path) -> None:
    small, few = _admission_cost(tmp_path / "small", 10)
    large, many = _admission_cost(tmp_path / "large", 300)
    # The new session, the two latest before it (the interval), and the course totals.
    assert [len(few.runs), len(many.runs)] == [3, 3]
    assert many.course == CourseTotals(counted_ul=301 * 490, administrations=301)
    assert large.statements == small.statements, (small, large)
    assert large.ticks <= small.ticks * 1.5 + 5, (small, large)


def _mirror_cost(directory: Path, sessions: int) -> tuple[int, SqlCost]:
    """The audit mirror's first pass (copies the history), then the dearest of the
    next `_PASSES` passes, which find one new event."""
    directory.mkdir()
    clock = SystemClock()

    async def run() -> tuple[int, SqlCost]:
        with _filled(directory / LEDGER_FILE_NAME, sessions) as ledger:
            async with ServiceAudit(data_dir=directory, clock=clock).running() as audit:
                first = await audit.mirror_ledger()
                ledger.record_decision(subject_id=SUBJECT, allowed=True, trace={}, at=clock.now())
                stores = audit._recorder._resource
                assert stores is not None
                assert stores._reader is not None
                reader = stores._reader._db.connection
                # More passes than the old code made between two full rescans; the
                # dearest pass counts.
                costs: list[SqlCost] = []
                copied = 0
                for _ in range(_PASSES):
                    with counted(reader) as cost:
                        copied += await audit.mirror_ledger()
                    costs.append(cost)
                assert copied == 1
        return first, max(costs, key=lambda c: c.ticks)

    return asyncio.run(run())


def test_audit_mirror_reads_only_new_events(tmp_path: Path) -> None:
    first_small, small = _mirror_cost(tmp_path / "small", 10)
    first_large, large = _mirror_cost(tmp_path / "large", 300)
    # Every decision and alarm mirrored on the first pass: 2 per session.
    assert (first_small, first_large) == (20, 600)
    assert large.statements == small.statements, (small, large)
    # A rescan of the whole history costs ~30x more here: allow noise, not growth.
    assert large.ticks <= small.ticks * 1.5 + 5, (small, large)
