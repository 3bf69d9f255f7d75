"""Opening, migrations, pragmas, append-only enforcement and refused newer schemas."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from controller.ledger import (
    SCHEMA_VERSION,
    EndSource,
    Ledger,
    LedgerCorruptError,
    LedgerMissingError,
    LedgerSchemaTooNewError,
    LedgerSchemaUnexpectedError,
    OutboxKind,
    OutboxMessage,
    ReconcileSource,
    SessionStateError,
    UnknownSessionError,
    verify_chain,
)
from tests.ledger.conftest import SimClock, create_ledger, intent


def test_an_empty_file_is_refused_and_set_aside_never_taken_for_a_new_ledger(
    db_path: Path,
) -> None:
    db_path.touch()  # SQLite would take a 0-byte file for a valid, empty database
    with pytest.raises(LedgerCorruptError, match="empty") as caught:
        Ledger.open(db_path)
    assert caught.value.quarantined_to is not None
    assert caught.value.quarantined_to.exists()
    assert not db_path.exists()


def test_creates_only_on_purpose_and_reopens_idempotently(db_path: Path) -> None:
    with pytest.raises(LedgerMissingError, match="ledger init"):
        Ledger.open(db_path)
    assert not db_path.exists()
    with create_ledger(db_path) as first:
        ledger_id = first.ledger_id
    with Ledger.open(db_path) as second:
        assert second.ledger_id == ledger_id
    raw = sqlite3.connect(db_path)
    try:
        versions = raw.execute("SELECT version FROM schema_version").fetchall()
        mode = raw.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        raw.close()
    assert versions == [(v,) for v in range(1, SCHEMA_VERSION + 1)]
    assert mode == "wal"


def test_connection_uses_full_sync_and_foreign_keys(ledger: Ledger) -> None:
    connection = ledger._db.connection  # white-box: the pragmas are per connection
    assert connection.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert connection.execute("PRAGMA foreign_keys").fetchone()[0] == 1


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE events SET delivered_ul = 0",
        "DELETE FROM events",
        "UPDATE sessions SET subject_id = 'other'",
        "DELETE FROM sessions",
        "DELETE FROM schema_version",
        "UPDATE ledger_meta SET value = 'x'",
        "UPDATE outbox SET topic = 'x'",
    ],
)
def test_append_only_tables_reject_update_and_delete(
    ledger: Ledger, clock: SimClock, db_path: Path, statement: str
) -> None:
    session_id = intent(ledger, clock)
    ledger.record_started(session_id, at=clock.advance(1))
    ledger.outbox.append(
        OutboxMessage(kind=OutboxKind.TELEMETRY, topic="t", payload=b"x"), at=clock.now()
    )
    raw = sqlite3.connect(db_path)
    try:
        with pytest.raises(sqlite3.IntegrityError, match=r"not allowed|never updated"):
            raw.execute(statement)
        raw.rollback()
    finally:
        raw.close()
    assert len(ledger.events(session_id=session_id)) == 2


def test_session_event_without_intent_is_rejected_by_the_database(
    ledger: Ledger, db_path: Path
) -> None:
    raw = sqlite3.connect(db_path)
    try:
        raw.execute("PRAGMA foreign_keys = ON")
        raw.execute("INSERT INTO sessions (subject_id, allocated_utc) VALUES ('s', 'now')")
        with pytest.raises(sqlite3.IntegrityError, match="without a recorded intent"):
            raw.execute(
                "INSERT INTO events (kind, session_id, utc, boot_id, monotonic_ns, body)"
                " VALUES ('started', 1, 'now', 'b', 0, '{}')"
            )
    finally:
        raw.close()


def test_state_rules_refuse_out_of_order_events(ledger: Ledger, clock: SimClock) -> None:
    with pytest.raises(UnknownSessionError):
        ledger.record_started(42, at=clock.now())
    session_id = intent(ledger, clock)
    with pytest.raises(SessionStateError, match="status is open"):
        ledger.reconcile(
            session_id, delivered_ul=1, source=ReconcileSource.DEVICE_STATUS, at=clock.now()
        )
    ledger.record_started(session_id, at=clock.advance(1))
    with pytest.raises(SessionStateError, match="already started"):
        ledger.record_started(session_id, at=clock.advance(1))
    ledger.record_ended(
        session_id,
        delivered_ul=100,
        duration_ms=1000,
        reason="HOST_STOP",
        source=EndSource.HOST,
        at=clock.advance(1),
    )
    with pytest.raises(SessionStateError, match="status is completed"):
        ledger.mark_uncertain(session_id, reason="restart", at=clock.now())


def test_device_cap_above_planned_cap_is_refused(ledger: Ledger, clock: SimClock) -> None:
    with pytest.raises(ValueError, match="may never exceed"):
        ledger.record_intent(
            subject_id="s",
            planned_cap_ul=100,
            device_target_ul=101,
            device_max_duration_s=60,
            output_pct=80,
            decision_trace={},
            at=clock.now(),
        )
    assert ledger.history("s") == []


def test_newer_schema_is_refused_and_left_in_place(db_path: Path) -> None:
    create_ledger(db_path).close()
    raw = sqlite3.connect(db_path)
    raw.execute("INSERT INTO schema_version (version, applied_utc) VALUES (?, 'future')", (99,))
    raw.commit()
    raw.close()
    with pytest.raises(LedgerSchemaTooNewError) as caught:
        Ledger.open(db_path)
    assert (caught.value.found, caught.value.supported) == (99, SCHEMA_VERSION)
    assert db_path.exists()
    assert not list(db_path.parent.glob("*.corrupt-*"))


def test_a_foreign_database_is_not_taken_for_a_ledger(db_path: Path) -> None:
    raw = sqlite3.connect(db_path)
    raw.execute("CREATE TABLE something_else (x INTEGER)")
    raw.commit()
    raw.close()
    with pytest.raises(LedgerCorruptError, match="not a ledger database"):
        Ledger.open(db_path)


def test_session_ids_are_monotonic_and_survive_reopen(db_path: Path, clock: SimClock) -> None:
    with create_ledger(db_path) as ledger:
        first = [intent(ledger, clock) for _ in range(3)]
    with Ledger.open(db_path) as ledger:
        later = intent(ledger, clock)
    assert first == [1, 2, 3]
    assert later == 4


def _v1_ledger(db_path: Path, clock: SimClock) -> None:
    """A ledger as release 1 wrote it: schema version 1, no chain hashes, no device id."""
    from controller.ledger._schema import MIGRATIONS  # noqa: PLC0415 - test-only detail

    raw = sqlite3.connect(db_path, isolation_level=None)
    try:
        raw.execute("PRAGMA journal_mode = WAL")
        version, statements = MIGRATIONS[0]
        for statement in statements:
            raw.execute(statement)
        raw.execute("INSERT INTO schema_version VALUES (?, 'v1')", (version,))
        raw.execute("INSERT INTO sessions (subject_id, allocated_utc) VALUES ('subj-1', 'x')")
        raw.execute(
            "INSERT INTO events (kind, session_id, subject_id, utc, boot_id, monotonic_ns, body)"
            " VALUES ('intent', 1, 'subj-1', ?, 'b1', 1, '{\"planned_cap_ul\": 500}')",
            (clock.now().utc.isoformat(),),
        )
    finally:
        raw.close()


def test_a_version_1_ledger_is_migrated_and_its_chain_continues(
    db_path: Path, clock: SimClock
) -> None:
    _v1_ledger(db_path, clock)
    with Ledger.open(db_path) as ledger:
        assert ledger.device_id is None  # from before `ledger init`
        old_head = ledger.head
        assert old_head is not None
        assert old_head.seq == 1
        ledger.record_started(1, at=clock.advance(1))
        new_head = ledger.head
    assert new_head is not None
    raw = sqlite3.connect(db_path)
    try:
        versions = [v for (v,) in raw.execute("SELECT version FROM schema_version")]
        stored = raw.execute("SELECT chain_hash FROM events ORDER BY event_id").fetchall()
        report = verify_chain(raw)
    finally:
        raw.close()
    assert versions == list(range(1, SCHEMA_VERSION + 1))
    assert stored == [(None,), (new_head.hash,)]  # old rows are never updated
    assert report.ok
    assert report.head == new_head


@pytest.mark.parametrize(
    ("change", "finding"),
    [
        ("DROP TRIGGER events_no_update", "missing trigger events_no_update"),
        ("CREATE TABLE extra (x INTEGER)", "unexpected table extra"),
        ("CREATE INDEX extra_index ON events(utc)", "unexpected index extra_index"),
        (
            "DROP VIEW session_status; CREATE VIEW session_status AS SELECT 1 AS session_id",
            "altered view session_status",
        ),
    ],
)
def test_any_schema_the_migrations_did_not_create_is_set_aside(
    db_path: Path, change: str, finding: str
) -> None:
    create_ledger(db_path).close()
    raw = sqlite3.connect(db_path)
    try:
        raw.executescript(change)
    finally:
        raw.close()
    with pytest.raises(LedgerSchemaUnexpectedError, match=finding) as caught:
        Ledger.open(db_path)
    assert caught.value.quarantined_to is not None
    assert caught.value.quarantined_to.exists()
    assert not db_path.exists()
