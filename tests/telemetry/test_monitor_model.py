"""The ward monitor's pure model: no broker, no terminal."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from controller.ledger import OutboxKind, OutboxRow
from controller.telemetry import (
    DeviceIdentity,
    SentArchive,
    WardModel,
    build_backfill_reply,
    encode_presence,
    outbox_entry,
)
from controller.telemetry._schemas import BackfillRequest
from tests.telemetry.helpers import IDENTITY, ROOT, telemetry, validate_payload

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
TELEMETRY_TOPIC = f"{ROOT}/W7/B03/telemetry"


def feed_telemetry(
    model: WardModel, seq: int, *, now_s: float = 0.0, delivered_ul: int = 0, **kw: Any
) -> list[dict[str, Any]]:
    return model.feed(TELEMETRY_TOPIC, telemetry(delivered_ul).build(seq), now_s=now_s, **kw)


def test_gaps_duplicates_and_late_fills_are_counted() -> None:
    model = WardModel(root_topic=ROOT)
    for seq in (10, 11, 14, 11, 12):
        feed_telemetry(model, seq)
    tracker = model.tracker(IDENTITY.device_id)
    assert sorted(tracker.missing_since_s) == [13]
    assert tracker.duplicates == 1
    (row,) = model.rows(now_s=0.0)
    assert (row.gaps, row.duplicates) == (1, 1)


def test_gap_and_duplicate_events_are_emitted_for_json_output() -> None:
    model = WardModel(root_topic=ROOT)
    feed_telemetry(model, 1)
    events = feed_telemetry(model, 5)
    assert events[0] == {
        "event": "gap",
        "ward": "W7",
        "bed": "B03",
        "device_id": "MN1-0042",
        "from_seq": 2,
        "to_seq": 4,
    }
    assert events[1]["event"] == "telemetry"
    assert events[1]["seq"] == 5
    assert json.dumps(events)  # every event is one JSON line
    assert [e["event"] for e in feed_telemetry(model, 5)] == ["duplicate"]


def test_backfill_is_asked_after_grace_then_rate_limited() -> None:
    model = WardModel(root_topic=ROOT, gap_grace_s=1.0, backfill_retry_s=5.0)
    for seq in (1, 4, 5, 9):
        feed_telemetry(model, seq, now_s=0.0)
    assert model.backfill_asks(now_s=0.5) == [], "QoS 1 may still deliver: wait the grace"
    asks = model.backfill_asks(now_s=1.0)
    assert [(a.from_seq, a.to_seq) for a in asks] == [(2, 3), (6, 8)]
    assert {(a.ward, a.bed, a.device_id) for a in asks} == {("W7", "B03", "MN1-0042")}
    assert model.backfill_asks(now_s=2.0) == []
    feed_telemetry(model, 2, now_s=3.0, retained=False)
    assert [(a.from_seq, a.to_seq) for a in model.backfill_asks(now_s=6.0)] == [(3, 3), (6, 8)]


def test_retained_messages_do_not_set_the_baseline() -> None:
    model = WardModel(root_topic=ROOT)
    state = outbox_entry(
        IDENTITY, root_topic=ROOT, schema="nebuliser.state", utc=NOW, session_state="idle"
    )
    model.feed(f"{ROOT}/W7/B03/state", state.build(3), now_s=0.0, retained=True)
    feed_telemetry(model, 500)
    feed_telemetry(model, 501)
    assert model.tracker(IDENTITY.device_id).missing_since_s == {}
    (row,) = model.rows(now_s=0.0)
    assert row.session_state == "idle"


def test_backfill_reply_fills_gaps_and_marks_unavailable(tmp_path: Path) -> None:
    archive = SentArchive(path=tmp_path / "sent.sqlite3")
    rows = [
        OutboxRow(
            seq=s,
            kind=OutboxKind.TELEMETRY,
            topic=TELEMETRY_TOPIC,
            payload=telemetry(s * 10).build(s),
            qos=1,
            retain=False,
            created_utc=NOW,
        )
        for s in (1, 2, 4, 5)  # 3 was never archived (say it aged out)
    ]
    archive.record(rows, sent_utc="2026-11-25T12:00:01.000Z")
    model = WardModel(root_topic=ROOT)
    feed_telemetry(model, 1)
    feed_telemetry(model, 6)
    (ask,) = model.backfill_asks(now_s=10.0)
    request = BackfillRequest(
        request_id="r1",
        requester="mon",
        device_id=ask.device_id,
        from_seq=ask.from_seq,
        to_seq=ask.to_seq,
        utc=NOW,
    )
    entry = build_backfill_reply(
        request, identity=IDENTITY, root_topic=ROOT, archive=archive, utc=NOW
    )
    assert entry is not None
    assert entry.topic == f"{ROOT}/W7/B03/backfill/reply"
    body = validate_payload(entry.build(7))
    assert body["unavailable"] == [3]
    assert [m["seq"] for m in body["messages"]] == [2, 4, 5]
    assert all(m["historical"] for m in body["messages"])
    events = model.feed(entry.topic, entry.build(7), now_s=11.0)
    tracker = model.tracker(IDENTITY.device_id)
    assert tracker.missing_since_s == {}
    assert tracker.unrecoverable == 1
    assert [e["seq"] for e in events if e["event"] == "telemetry"] == [2, 4, 5]
    # The view shows the newest sample (seq 6), not the older backfilled ones.
    (row,) = model.rows(now_s=11.0)
    assert row.delivered_ul == 0


def test_backfill_reply_is_bounded_and_says_truncated(tmp_path: Path) -> None:
    archive = SentArchive(path=tmp_path / "sent.sqlite3")
    rows = [
        OutboxRow(
            seq=s,
            kind=OutboxKind.TELEMETRY,
            topic=TELEMETRY_TOPIC,
            payload=telemetry(s).build(s),
            qos=1,
            retain=False,
            created_utc=NOW,
        )
        for s in range(1, 501)
    ]
    archive.record(rows, sent_utc="2026-11-25T12:00:01.000Z")
    request = BackfillRequest(
        request_id="r",
        requester="m",
        device_id=IDENTITY.device_id,
        from_seq=1,
        to_seq=10_000,
        utc=NOW,
    )
    entry = build_backfill_reply(
        request, identity=IDENTITY, root_topic=ROOT, archive=archive, utc=NOW, max_messages=50
    )
    assert entry is not None
    body = json.loads(entry.build(900))
    assert (body["from_seq"], body["to_seq"], body["truncated"]) == (1, 50, True)
    assert body["unavailable"] == []
    other = BackfillRequest(
        request_id="r", requester="m", device_id="someone-else", from_seq=1, to_seq=2, utc=NOW
    )
    assert (
        build_backfill_reply(other, identity=IDENTITY, root_topic=ROOT, archive=archive, utc=NOW)
        is None
    )
    assert archive.prune(sent_before_utc="2026-11-25T12:00:02.000Z") == 500


def test_progress_time_left_alarms_and_staleness() -> None:
    model = WardModel(root_topic=ROOT)
    sample = outbox_entry(
        IDENTITY,
        root_topic=ROOT,
        schema="nebuliser.telemetry",
        utc=NOW,
        running=True,
        delivered_ul=1000,
        cap_ul=2500,
        flow_ul_min=300,
        link_quality_pct=80,
    )
    model.feed(TELEMETRY_TOPIC, sample.build(1), now_s=100.0)
    for seq, priority, code in ((2, "low", "LOW_RES"), (3, "high", "DRY_CUP")):
        raised = outbox_entry(
            IDENTITY,
            root_topic=ROOT,
            schema="nebuliser.alarm",
            utc=NOW,
            event="raised",
            alarm_code=code,
            priority=priority,
        )
        model.feed(f"{ROOT}/W7/B03/alarm", raised.build(seq), now_s=100.0)
    (row,) = model.rows(now_s=101.0)
    assert row.time_left_s == 300.0  # 1500 uL at 300 uL/min
    assert [a.alarm_code for a in row.alarms] == ["DRY_CUP", "LOW_RES"], "highest first"
    assert row.stale is False
    (row,) = model.rows(now_s=102.5)
    assert row.stale is True, "no message for more than 2x the 1 Hz interval"
    cleared = outbox_entry(
        IDENTITY,
        root_topic=ROOT,
        schema="nebuliser.alarm",
        utc=NOW,
        event="cleared",
        alarm_code="DRY_CUP",
        priority="high",
    )
    model.feed(f"{ROOT}/W7/B03/alarm", cleared.build(4), now_s=103.0)
    (row,) = model.rows(now_s=103.0)
    assert [a.alarm_code for a in row.alarms] == ["LOW_RES"]


def test_presence_offline_and_other_beds() -> None:
    model = WardModel(root_topic=ROOT)
    other = DeviceIdentity(device_id="MN1-0001", ward="W7", bed="B01", boot_id="b")
    model.feed(
        f"{ROOT}/W7/B01/presence",
        encode_presence(other, online=False, reason="last_will", utc=NOW, telemetry_hz=1),
        now_s=0.0,
        retained=True,
    )
    feed_telemetry(model, 1)
    rows = model.rows(now_s=0.5)
    assert [(r.bed, r.online, r.stale) for r in rows] == [
        ("B01", False, False),
        ("B03", None, False),
    ]


def test_garbage_is_counted_not_fatal() -> None:
    model = WardModel(root_topic=ROOT)
    events = model.feed(TELEMETRY_TOPIC, b"{not json", now_s=0.0)
    assert events[0]["event"] == "invalid"
    model.feed(TELEMETRY_TOPIC, json.dumps({"schema": "nebuliser.telemetry"}).encode(), now_s=0)
    assert model.invalid == 2
    assert model.feed("elsewhere/x", b"{}", now_s=0.0) == []


def _anchor(seq: int, last_event_seq: int) -> bytes:
    entry = outbox_entry(
        IDENTITY,
        root_topic=ROOT,
        schema="nebuliser.ledger_anchor",
        utc=NOW,
        ledger_id="ledger-1",
        last_event_seq=last_event_seq,
        last_event_hash="cd" * 32,
        last_session_id=2,
        reason="ended",
    )
    assert entry.topic == f"{ROOT}/W7/B03/ledger/anchor"
    return entry.build(seq)


def test_the_newest_ledger_anchor_is_kept_per_bed_and_counts_in_the_seq_stream() -> None:
    model = WardModel(root_topic=ROOT)
    topic = f"{ROOT}/W7/B03/ledger/anchor"
    model.feed(topic, _anchor(3, 9), now_s=0.0, retained=True)  # what the broker kept
    row = model.row("W7", "B03")
    assert row is not None
    assert row.ledger_anchor is not None
    assert row.ledger_anchor.last_event_seq == 9
    feed_telemetry(model, 4)
    [event] = model.feed(topic, _anchor(5, 12), now_s=0.0)
    assert event["event"] == "ledger_anchor"
    feed_telemetry(model, 6)
    model.feed(topic, _anchor(3, 9), now_s=0.0)  # a late duplicate of an older one
    assert row.ledger_anchor.last_event_seq == 12
    assert (row.gaps, row.duplicates) == (0, 1)
