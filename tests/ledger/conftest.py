"""Fixtures for ledger tests: real SQLite files in tmp_path and a simulated clock."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from controller.dosing import Instant
from controller.ledger import LEDGER_FILE_NAME, Ledger

BOOT_ID = "boot-test-0001"
EPOCH = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)


class SimClock:
    """Simulated time: wall clock and monotonic clock advance together unless stepped."""

    def __init__(self) -> None:
        self.utc = EPOCH
        self.monotonic_ns = 1_000_000_000
        self.boot_id = BOOT_ID

    def now(self) -> Instant:
        return Instant(utc=self.utc, boot_id=self.boot_id, monotonic_ns=self.monotonic_ns)

    def advance(self, seconds: float) -> Instant:
        self.utc += timedelta(seconds=seconds)
        self.monotonic_ns += int(seconds * 1e9)
        return self.now()


@pytest.fixture
def clock() -> SimClock:
    return SimClock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / LEDGER_FILE_NAME


DEVICE_ID = "neb-test"


def create_ledger(path: Path, **options: int) -> Ledger:
    """A new ledger, as `nebuliser ledger init` makes it (ledgers are never implicit)."""
    return Ledger.create(path, device_id=DEVICE_ID, subject_id="subj-1", **options)


@pytest.fixture
def ledger(db_path: Path) -> Iterator[Ledger]:
    with create_ledger(db_path, progress_interval_ms=1000) as opened:
        yield opened


def intent(
    ledger: Ledger, clock: SimClock, *, subject_id: str = "subj-1", cap_ul: int = 500
) -> int:
    """Record a plain intent and return the session id."""
    return ledger.record_intent(
        subject_id=subject_id,
        planned_cap_ul=cap_ul,
        device_target_ul=cap_ul,
        device_max_duration_s=600,
        output_pct=80,
        decision_trace={"allowed": True, "constraints": []},
        at=clock.now(),
        drug="salbutamol",
        concentration_per_ml=1.0,
        dose_unit="mg",
    )
