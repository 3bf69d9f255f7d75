"""`Ledger.batch()`: several records in one transaction — all of them or none."""

from __future__ import annotations

import pytest

from controller.ledger import AlarmAction, EventKind, Ledger, LedgerError
from controller.ledger._anchor import LedgerAnchor
from tests.ledger.conftest import SimClock, intent


def _alarm(ledger: Ledger, clock: SimClock, session_id: int) -> None:
    ledger.record_alarm(
        alarm_code="device_internal", action=AlarmAction.RAISED, actor="controller",
        at=clock.now(), session_id=session_id,
    )  # fmt: skip


def _stop_decision(ledger: Ledger, clock: SimClock, session_id: int) -> None:
    ledger.record_decision(
        subject_id="subj-1", allowed=False, trace={"action": "stop"}, at=clock.now(),
        session_id=session_id,
    )  # fmt: skip


def test_a_batch_is_one_commit(ledger: Ledger, clock: SimClock) -> None:
    sid = intent(ledger, clock)
    statements: list[str] = []
    ledger._db.connection.set_trace_callback(statements.append)
    with ledger.batch():
        _alarm(ledger, clock, sid)
        _stop_decision(ledger, clock, sid)
    ledger._db.connection.set_trace_callback(None)
    assert [s for s in statements if s == "COMMIT"] == ["COMMIT"]
    kinds = [e.kind for e in ledger.events(session_id=sid)]
    assert kinds[-2:] == [EventKind.ALARM, EventKind.DECISION]
    assert ledger.head is not None
    assert ledger.head.seq == ledger.events()[-1].event_id  # the chain head moved on commit


def test_a_failed_batch_records_nothing(ledger: Ledger, clock: SimClock) -> None:
    sid = intent(ledger, clock)
    before = ledger.events()

    def alarm_then_crash() -> None:
        with ledger.batch():
            _alarm(ledger, clock, sid)
            raise RuntimeError("in the middle")

    with pytest.raises(RuntimeError, match="in the middle"):
        alarm_then_crash()
    assert ledger.events() == before
    _stop_decision(ledger, clock, sid)  # and the ledger writes on afterwards
    assert len(ledger.events()) == len(before) + 1


def test_batches_do_not_nest(ledger: Ledger) -> None:
    with pytest.raises(LedgerError, match="do not nest"), ledger.batch(), ledger.batch():
        pass


def test_anchors_of_a_batch_are_written_after_its_commit(ledger: Ledger, clock: SimClock) -> None:
    sid = intent(ledger, clock)
    anchored: list[tuple[LedgerAnchor, int]] = []

    def sink(anchor: LedgerAnchor) -> None:
        committed = ledger._db.connection.in_transaction
        anchored.append((anchor, int(committed)))

    ledger.anchor_sink = sink
    with ledger.batch():
        ledger.record_started(sid, at=clock.now())
        assert anchored == []  # not yet: the batch may still roll back
    [(anchor, in_transaction)] = anchored
    assert in_transaction == 0
    assert anchor.last_event_seq == ledger.events()[-1].event_id
