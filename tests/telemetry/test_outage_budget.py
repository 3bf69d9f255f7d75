"""Drops that are honest and bounded (issue 16, item 4): a 2 h broker outage at 10 Hz
with a 1 MB outbox budget, in accelerated time, through the real ledger outbox and the
real alarm rules, the way the service wires them (drop counter read every 5 s)."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from controller.alarms import AlarmCode, AlarmEventKind, AlarmState, evaluate
from controller.dosing import Instant
from controller.ledger import AlarmAction, EventKind, Ledger
from controller.ledger._schema import MIGRATIONS
from controller.service import MqttPublications
from controller.telemetry import ledger_message
from tests.alarms.test_alarms import quiet
from tests.dosing._factories import make_prescription
from tests.telemetry.helpers import IDENTITY, ROOT, telemetry

BUDGET_BYTES = 1_000_000
HZ = 10
OUTAGE_S = 2 * 3600
DROP_CHECK_S = 5  # controller/service/_telemetry.py reads the counter this often


def test_two_hour_outage_at_10_hz_stays_within_a_1_mb_budget(tmp_path: Path) -> None:
    publications = MqttPublications(
        identity=IDENTITY, root_topic=ROOT, prescription=make_prescription()
    )
    start = datetime(2026, 11, 25, 8, tzinfo=UTC)
    sample = ledger_message(telemetry(1))
    state = AlarmState()
    raised: list[int] = []
    counted = 0
    largest_bytes = 0
    with Ledger.create(
        tmp_path / "ledger.sqlite3",
        device_id="neb-test",
        subject_id="S-1",
        outbox_budget_bytes=BUDGET_BYTES,
    ) as ledger:
        events_before = len(ledger.events())
        for second in range(OUTAGE_S):
            at = Instant(
                utc=start + timedelta(seconds=second), boot_id="b", monotonic_ns=second * 10**9
            )
            # One second of samples in one transaction (accelerated time; the service
            # commits each sample on its own, which drops the same rows).
            ledger.outbox.append_many([sample] * HZ, at=at)
            largest_bytes = max(largest_bytes, ledger.outbox.bytes())
            if second % DROP_CHECK_S:
                continue
            counted = ledger.outbox.dropped_total()
            facts = quiet(telemetry_dropped_total=counted)
            state, events = evaluate(facts, state, second * 1000)
            for event in events:
                if event.code is not AlarmCode.TELEMETRY_DROPPED:
                    continue
                assert event.kind is AlarmEventKind.RAISED, f"flapped at {second} s"
                raised.append(second)
                ledger.record_alarm(
                    alarm_code=event.code.value,
                    action=AlarmAction.RAISED,
                    actor="controller",
                    at=at,
                    publish=publications.alarm(event, state),
                )
        dropped, dropped_bytes, _last = ledger.outbox.drops()
        waiting = ledger.outbox.count()
        alarm_rows = len(ledger.events()) - events_before
    assert largest_bytes <= BUDGET_BYTES, f"outbox reached {largest_bytes} bytes"
    assert len(raised) == 1, f"telemetry_dropped raised at {raised} s"
    assert alarm_rows == 1, "only the one alarm is a ledger row; drops are outbox counters"
    assert dropped + waiting == OUTAGE_S * HZ + 2  # every sample kept or counted (+ alarm msgs)
    assert dropped_bytes > 0
    alarm = state.get(AlarmCode.TELEMETRY_DROPPED)
    assert alarm is not None
    assert alarm.condition_present, "still latched at the end of the outage"
    # The running count: everything dropped up to the last 5 s read of the counter.
    assert f"({counted} in total)" in alarm.message
    assert dropped - counted <= DROP_CHECK_S * HZ


def test_schema_2_folds_earlier_drop_events_into_the_outbox_counters(tmp_path: Path) -> None:
    """A ledger written by schema 1 (one `outbox_drop` event per drop) opens with its
    drops already counted in the outbox's own counters; the old events stay."""
    path = tmp_path / "ledger.sqlite3"
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("BEGIN")
        for statement in dict(MIGRATIONS)[1]:
            db.execute(statement)
        db.execute("INSERT INTO schema_version (version, applied_utc) VALUES (1, 'then')")
        for count, size, last in ((3, 1000, 12), (2, 700, 20)):
            body = json.dumps({"count": count, "bytes": size, "first_seq": 1, "last_seq": last})
            db.execute(
                "INSERT INTO events (kind, utc, boot_id, monotonic_ns, body)"
                " VALUES ('outbox_drop', '2026-11-25T00:00:00+00:00', 'b', 0, ?)",
                (body,),
            )
        db.execute("COMMIT")
    with Ledger.open(path) as ledger:
        assert ledger.outbox.drops() == (5, 1700, 20)
        assert len(ledger.events(kinds=[EventKind.OUTBOX_DROP])) == 2
