"""What the shared ward model offers its two views (terminal monitor and ward
station): change versions, urgency order, offline-since, alarm history, delivery
curves and command replies. Pure: no broker."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from controller.telemetry import (
    ActiveAlarm,
    BedRow,
    DeviceIdentity,
    MqttSettings,
    WardModel,
    WardMonitor,
    encode_presence,
    outbox_entry,
    urgency_key,
)
from controller.telemetry._monitor_history import MAX_CURVE_POINTS
from tests.telemetry.helpers import IDENTITY, ROOT

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
ALARM_TOPIC = f"{ROOT}/W7/B03/alarm"
TELEMETRY_TOPIC = f"{ROOT}/W7/B03/telemetry"


def alarm_payload(seq: int, event: str, code: str = "device_head_disconnected") -> bytes:
    entry = outbox_entry(
        IDENTITY,
        root_topic=ROOT,
        schema="nebuliser.alarm",
        utc=NOW + timedelta(seconds=seq),
        event=event,
        alarm_code=code,
        priority="medium",
        text="Nebuliser head disconnected",
        acknowledged_by="j.smith_station-3west" if event == "acknowledged" else None,
    )
    return entry.build(seq)


def sample(seq: int, *, session_id: int, delivered_ul: int, seconds: float) -> bytes:
    entry = outbox_entry(
        IDENTITY,
        root_topic=ROOT,
        schema="nebuliser.telemetry",
        utc=NOW + timedelta(seconds=seconds),
        session_id=session_id,
        running=True,
        delivered_ul=delivered_ul,
        cap_ul=3000,
        flow_ul_min=600,
    )
    return entry.build(seq)


def test_version_moves_only_when_a_row_changes() -> None:
    model = WardModel(root_topic=ROOT, message_events=False)
    model.feed(TELEMETRY_TOPIC, sample(1, session_id=1, delivered_ul=10, seconds=0), now_s=0.0)
    (row,) = model.rows(now_s=0.1)
    seen = model.version
    assert row.version == seen
    model.rows(now_s=0.2)
    assert model.version == seen, "reading rows changes nothing"
    model.feed(TELEMETRY_TOPIC, sample(1, session_id=1, delivered_ul=10, seconds=0), now_s=0.3)
    assert model.version == seen, "a duplicate changes nothing"
    (row,) = model.rows(now_s=5.0)
    assert row.stale
    assert row.version > seen, "going stale is a change a view must draw"


def test_message_events_off_still_reports_gaps_and_replies() -> None:
    model = WardModel(root_topic=ROOT, message_events=False)
    assert (
        model.feed(TELEMETRY_TOPIC, sample(1, session_id=1, delivered_ul=1, seconds=0), now_s=0)
        == []
    )
    events = model.feed(
        TELEMETRY_TOPIC, sample(4, session_id=1, delivered_ul=2, seconds=1), now_s=0
    )
    assert [e["event"] for e in events] == ["gap"]
    reply = {"command_id": "c1", "status": "accepted", "device_id": IDENTITY.device_id}
    events = model.feed(f"{ROOT}/W7/B03/command/reply", json.dumps(reply).encode(), now_s=0)
    assert events == [{"event": "command_reply", "ward": "W7", "bed": "B03", **reply}]
    # The command itself (station -> bed) is not part of the device stream.
    assert model.feed(f"{ROOT}/W7/B03/command", b"{}", now_s=0) == []
    assert model.invalid == 0


def test_offline_since_is_kept_until_the_bed_comes_back() -> None:
    model = WardModel(root_topic=ROOT)
    topic = f"{ROOT}/W7/B03/presence"

    def presence(online: bool) -> bytes:
        reason = "connected" if online else "last_will"
        return encode_presence(IDENTITY, online=online, reason=reason, utc=NOW, telemetry_hz=1)

    model.feed(topic, presence(True), now_s=1.0)
    model.feed(topic, presence(False), now_s=7.0)
    model.feed(topic, presence(False), now_s=9.0)  # a repeat does not move "since"
    (row,) = model.rows(now_s=10.0)
    assert (row.online, row.offline_since_s, row.no_data) == (False, 7.0, True)
    model.feed(topic, presence(True), now_s=11.0)
    (row,) = model.rows(now_s=11.0)
    assert row.offline_since_s is None


def test_alarm_history_keeps_every_event_once() -> None:
    model = WardModel(root_topic=ROOT)
    model.feed(ALARM_TOPIC, alarm_payload(1, "raised"), now_s=0)
    model.feed(ALARM_TOPIC, alarm_payload(2, "acknowledged"), now_s=0)
    model.feed(ALARM_TOPIC, alarm_payload(2, "acknowledged"), now_s=0)  # duplicate
    history = model.history("W7", "B03")
    assert [(e.event, e.acknowledged_by) for e in history.alarms] == [
        ("raised", None),
        ("acknowledged", "j.smith_station-3west"),
    ]
    (row,) = model.rows(now_s=0)
    assert row.alarms[0].acknowledged_by == "j.smith_station-3west"


def test_delivery_curves_of_current_and_previous_runs_are_bounded() -> None:
    model = WardModel(root_topic=ROOT)
    seq = 0
    for session_id in (1, 2, 3):
        for n in range(MAX_CURVE_POINTS + 50):
            seq += 1
            payload = sample(seq, session_id=session_id, delivered_ul=n, seconds=seq)
            model.feed(TELEMETRY_TOPIC, payload, now_s=0)
    runs = list(model.history("W7", "B03").runs)
    assert [r.session_id for r in runs] == [2, 3], "the current and the previous run"
    for run in runs:
        assert len(run.utc_ms) <= MAX_CURVE_POINTS
        assert run.delivered_ul[0] == 0, "thinning keeps the start"
        assert list(run.utc_ms) == sorted(run.utc_ms)


def active(priority: str, *, acked: bool = False) -> ActiveAlarm:
    return ActiveAlarm.model_validate(
        {
            "alarm_code": f"x_{priority}",
            "priority": priority,
            "raised_utc": NOW,
            "acknowledged": acked,
        }
    )


def test_urgency_order_puts_unacknowledged_high_first_and_silent_beds_before_low() -> None:
    rows = [
        BedRow(ward="W1", bed="B01", online=True),
        BedRow(ward="W1", bed="B02", online=True, alarms=[active("low")]),
        BedRow(ward="W1", bed="B03", online=False),
        BedRow(ward="W1", bed="B04", online=True, alarms=[active("high", acked=True)]),
        BedRow(ward="W1", bed="B05", online=True, alarms=[active("medium")]),
        BedRow(ward="W2", bed="B00", online=True, alarms=[active("high")]),
        BedRow(ward="W1", bed="B06", online=True, alarms=[active("high")]),
    ]
    ordered = [r.bed for r in sorted(rows, key=urgency_key)]
    assert ordered == ["B06", "B00", "B05", "B03", "B02", "B04", "B01"]


def test_other_identity_rows_are_separate_beds() -> None:
    model = WardModel(root_topic=ROOT)
    other = DeviceIdentity(device_id="MN1-0001", ward="W7", bed="B01", boot_id="b")
    model.feed(
        f"{ROOT}/W7/B01/presence",
        encode_presence(other, online=True, reason="connected", utc=NOW, telemetry_hz=1),
        now_s=0.0,
    )
    assert model.row("W7", "B01") is not None
    assert model.row("W7", "B99") is None


def test_a_message_on_an_unexpected_topic_still_goes_by_its_schema() -> None:
    # The fast path trusts the topic only when the payload validates against it.
    model = WardModel(root_topic=ROOT)
    model.feed(TELEMETRY_TOPIC, alarm_payload(1, "raised"), now_s=0)
    (row,) = model.rows(now_s=0)
    assert [a.alarm_code for a in row.alarms] == ["device_head_disconnected"]
    assert model.invalid == 0


def test_monitor_subscribes_to_one_several_or_all_wards() -> None:
    def filters(ward: str | None) -> list[str]:
        settings = MqttSettings(client_id="t")
        model = WardModel(root_topic=ROOT)
        return WardMonitor(settings=settings, model=model, sender="s", ward=ward).subscriptions

    assert filters("W7") == [f"{ROOT}/W7/+/#"]
    assert filters("W7, W8") == [f"{ROOT}/W7/+/#", f"{ROOT}/W8/+/#"]
    assert filters(None) == [f"{ROOT}/+/+/#"]
