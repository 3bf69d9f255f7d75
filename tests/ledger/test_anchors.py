"""Anchors on disk: written after session events, read back, and `ledger init`'s rules."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

import pytest

from controller.ledger import (
    ANCHOR_FILE_NAME,
    EmptyHistoryAcceptance,
    EndSource,
    LedgerAnchor,
    LedgerExistsError,
    LedgerLocation,
    OutboxKind,
    OutboxMessage,
    init_ledger,
    open_checked,
    read_readings,
)
from controller.ledger._continuity import AUDIT_DB_NAME as LEDGER_SIDE_AUDIT_NAME
from controller.security import AUDIT_DB_NAME
from controller.telemetry import DeviceIdentity, ledger_anchor_entry, ledger_message
from tests.ledger.conftest import SimClock, intent
from tests.telemetry.helpers import validate_payload

DEVICE = "neb-anchor"


@pytest.fixture
def location(tmp_path: Path) -> LedgerLocation:
    where = LedgerLocation(data_dir=tmp_path / "data")
    init_ledger(where, device_id=DEVICE, subject_id="subj-1")
    return where


def _audit_anchor_seqs(location: LedgerLocation) -> list[tuple[str, int]]:
    with contextlib.closing(sqlite3.connect(location.audit_path)) as audit:
        rows = audit.execute(
            "SELECT body_json FROM audit_log WHERE kind = 'ledger_anchor' ORDER BY idx"
        ).fetchall()
    return [(json.loads(b)["reason"], json.loads(b)["last_event_seq"]) for (b,) in rows]


def test_the_audit_log_name_is_the_security_packages() -> None:
    assert LEDGER_SIDE_AUDIT_NAME == AUDIT_DB_NAME


def test_every_session_event_is_anchored_in_file_and_audit_log(
    location: LedgerLocation, clock: SimClock
) -> None:
    with open_checked(location, device_id=DEVICE) as ledger:
        session_id = intent(ledger, clock)
        after_intent = ledger.head
        ledger.record_started(session_id, at=clock.advance(1))
        ledger.record_progress(
            session_id, delivered_ul=10, flow_ul_min=400, reservoir_ul=900, at=clock.advance(1)
        )
        ledger.record_ended(
            session_id, delivered_ul=480, duration_ms=70_000, reason="TARGET_REACHED",
            source=EndSource.DEVICE, at=clock.advance(70),
        )  # fmt: skip
        head = ledger.head
    assert after_intent is not None
    assert head is not None
    reasons = _audit_anchor_seqs(location)
    assert [r for r, _ in reasons] == ["init", "startup", "intent", "started", "ended"]
    assert ("intent", after_intent.seq) in reasons
    file_anchor = json.loads((location.data_dir / ANCHOR_FILE_NAME).read_text())
    assert (file_anchor["last_event_seq"], file_anchor["last_event_hash"]) == (head.seq, head.hash)
    assert file_anchor["session"]["delivered_ul"] == 480
    assert file_anchor["session"]["status"] == "completed"
    [file_reading, audit_reading] = read_readings(location)
    assert file_reading.anchor == audit_reading.anchor


def test_the_mqtt_anchor_message_is_queued_after_each_anchor(
    location: LedgerLocation, clock: SimClock
) -> None:
    identity = DeviceIdentity(device_id=DEVICE, ward="w1", bed="b1", boot_id="boot-1")
    with open_checked(
        location,
        device_id=DEVICE,
        anchor_message=lambda anchor: ledger_message(
            ledger_anchor_entry(identity, root_topic="nebuliser", anchor=anchor)
        ),
    ) as ledger:
        intent(ledger, clock)
        rows = ledger.outbox.pending()
        head = ledger.head
    assert head is not None
    assert [(r.topic, r.kind, r.retain, r.qos) for r in rows] == [
        ("nebuliser/w1/b1/ledger/anchor", OutboxKind.STATE, True, 1)
    ] * 2
    newest = validate_payload(rows[-1].payload)  # against docs/schemas/
    assert newest["schema"] == "nebuliser.ledger_anchor"
    assert newest["session"]["status"] == "open"
    assert "subject_id" not in newest["session"]
    assert (newest["seq"], newest["ward"], newest["bed"]) == (rows[-1].seq, "w1", "b1")
    assert newest["last_event_hash"] == head.hash


def test_the_outbox_continues_above_seqs_used_outside_the_ledger(
    location: LedgerLocation,
) -> None:
    """A restored or new ledger never reuses a device seq (`seq_floor`, docs/mqtt.md)."""
    identity = DeviceIdentity(device_id=DEVICE, ward="w1", bed="b1", boot_id="boot-1")

    def message(anchor: LedgerAnchor) -> OutboxMessage:
        return ledger_message(ledger_anchor_entry(identity, root_topic="n", anchor=anchor))

    with open_checked(location, device_id=DEVICE, anchor_message=message, seq_floor=41) as ledger:
        assert [r.seq for r in ledger.outbox.pending()] == [42]
    with open_checked(location, device_id=DEVICE, anchor_message=message, seq_floor=5) as ledger:
        assert [r.seq for r in ledger.outbox.pending()] == [42, 43]


def test_an_unreadable_anchor_file_is_outvoted_by_the_audit_log(
    location: LedgerLocation,
) -> None:
    (location.data_dir / ANCHOR_FILE_NAME).write_text("{ not json")
    with open_checked(location, device_id=DEVICE):
        pass
    assert json.loads((location.data_dir / ANCHOR_FILE_NAME).read_text())["reason"] == "startup"


def test_init_refuses_where_a_ledger_was_and_records_an_accepted_empty_history(
    location: LedgerLocation,
) -> None:
    with pytest.raises(LedgerExistsError, match="already exists"):
        init_ledger(location, device_id=DEVICE, subject_id="subj-1")
    for path in location.data_dir.glob("ledger.sqlite3*"):
        path.unlink()
    with pytest.raises(LedgerExistsError, match="ledger restore"):
        init_ledger(location, device_id=DEVICE, subject_id="subj-1")
    with pytest.raises(ValueError, match="--by"):
        EmptyHistoryAcceptance(by=" ", reason="no backup")
    accepted = EmptyHistoryAcceptance(by="Dr A. Jones", reason="no backup; ward record checked")
    anchor = init_ledger(location, device_id=DEVICE, subject_id="subj-1", accept=accepted)
    with contextlib.closing(sqlite3.connect(location.audit_path)) as audit:
        rows = audit.execute(
            "SELECT body_json FROM audit_log WHERE kind = 'ledger_init' ORDER BY idx"
        ).fetchall()
    last = json.loads(rows[-1][0])
    assert (last["by"], last["accepted_empty_history"]) == ("Dr A. Jones", True)
    assert last["ledger_id"] == anchor.ledger_id
    assert last["previous_anchors"]  # the lost ledger's anchors are kept in the record
    with open_checked(location, device_id=DEVICE) as ledger:
        assert ledger.ledger_id == anchor.ledger_id


def test_init_refuses_while_files_are_set_aside(location: LedgerLocation) -> None:
    path = location.ledger_path
    path.rename(path.with_name(path.name + ".suspect-20261207T000000Z"))
    with pytest.raises(LedgerExistsError, match="moved aside"):
        init_ledger(
            location,
            device_id=DEVICE,
            subject_id="subj-1",
            accept=EmptyHistoryAcceptance(by="x", reason="y"),
        )
