"""Schemas, builders and settings: pure tests."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from controller.telemetry import (
    ALL_SCHEMAS,
    MqttSettings,
    TlsSettings,
    encode_alarm_ack,
    encode_backfill_request,
    encode_presence,
    json_schema_documents,
    mark_historical,
    outbox_entry,
)
from tests.telemetry.helpers import IDENTITY, ROOT, SCHEMA_DIR, validate_payload

NOW = datetime(2026, 11, 25, 12, 0, 0, 123456, tzinfo=UTC)


def test_exported_schemas_are_up_to_date() -> None:
    documents = json_schema_documents()
    on_disk = {p.name: p.read_text() for p in SCHEMA_DIR.glob("nebuliser.*.json")}
    assert on_disk == documents, "docs/schemas/ is stale: run scripts/export-schemas"
    assert len(documents) == len(ALL_SCHEMAS)


SAMPLES: dict[str, dict[str, object]] = {
    "nebuliser.state": {
        "firmware": "1.4.2",
        "prescription": {
            "prescription_id": "RX-17",
            "label": "salbutamol 2.5 mg",
            "dose_cap_ul": 2500,
            "daily_cap_ul": 20000,
        },
        "session_state": "idle",
        "telemetry_hz": 2,
    },
    "nebuliser.telemetry": {
        "running": True,
        "delivered_ul": 120,
        "cap_ul": 2500,
        "flow_ul_min": 300,
        "faults": ["E_TEMP"],
    },
    "nebuliser.session": {
        "event": "ended",
        "session_id": 9,
        "dose_cap_ul": 2500,
        "delivered_ul": 2497,
        "outcome": "completed",
        "reasons": [{"code": "target_reached", "text": "delivered the prescribed dose"}],
    },
    "nebuliser.alarm": {"event": "raised", "alarm_code": "DRY_CUP", "priority": "high"},
    "nebuliser.alarms_active": {
        "alarms": [{"alarm_code": "DRY_CUP", "priority": "high", "raised_utc": NOW}]
    },
    "nebuliser.decision": {
        "decision": "refuse",
        "request": "start",
        "constraints": [
            {"code": "rolling_24h_ul", "ok": False, "limit": 20000, "value": 20500},
        ],
        "reasons": [{"code": "rolling_24h_ul", "text": "24 h limit reached"}],
    },
    "nebuliser.backfill_reply": {"request_id": "r1", "from_seq": 3, "to_seq": 4},
    "nebuliser.ledger_anchor": {
        "ledger_id": "4f1c2b9e0d6a4c3b8e7f6a5b4c3d2e1f",
        "last_event_seq": 17,
        "last_event_hash": "ab" * 32,
        "last_session_id": 3,
        "reason": "ended",
        "session": {
            "session_id": 3,
            "planned_cap_ul": 2500,
            "status": "completed",
            "delivered_ul": 2497,
            "intent_utc": "2026-11-25T11:58:00.000000+00:00",
        },
    },
    "nebuliser.breathing": {
        "reason": "state_change",
        "session_id": 9,
        "gated": True,
        "waiting": True,
        "rate_bpm": 31.8,
        "tidal_ml": 350,
        "ie_ratio": 1.5,
        "insp_share_pct": 99.6,
        "seconds_since_breath": 16,
        "breaths": 120,
    },
    "nebuliser.course": {
        "reason": "session_end",
        "rolling_24h_ul": 5000,
        "rolling_24h_max_ul": 6000,
        "rolling_24h_sessions": 2,
        "rolling_24h_max_sessions": 2,
        "course_ul": 14000,
        "course_sessions": 6,
        "timezone": "Europe/Berlin",
        "days": [{"day": "2026-11-25", "counted_ul": 5000, "runs": 2}],
    },
}


def test_open_state_may_carry_the_lot_unit_and_a_blinded_one_never() -> None:
    open_rx = {
        "prescription_id": "RX-17",
        "label": "exosome vesicles",
        "dose_cap_ul": 3000,
        "dose_unit": "vesicles",
        "concentration_per_ml": 6.666e7,
    }
    entry = outbox_entry(
        IDENTITY,
        root_topic=ROOT,
        schema="nebuliser.state",
        utc=NOW,
        session_state="idle",
        prescription=open_rx,
    )
    assert validate_payload(entry.build(1))["prescription"]["dose_unit"] == "vesicles"
    with pytest.raises(ValidationError, match="would unblind"):
        outbox_entry(
            IDENTITY,
            root_topic=ROOT,
            schema="nebuliser.state",
            utc=NOW,
            session_state="idle",
            prescription=open_rx | {"blinded": True},
        )
    # Without them, the keys are absent (not null): older subscribers see no change.
    blinded = open_rx | {"blinded": True, "dose_unit": None, "concentration_per_ml": None}
    payload = outbox_entry(
        IDENTITY,
        root_topic=ROOT,
        schema="nebuliser.state",
        utc=NOW,
        session_state="idle",
        prescription=blinded,
    ).build(2)
    assert b"dose_unit" not in payload
    assert b"concentration" not in payload


def test_course_is_retained_and_its_days_are_bounded() -> None:
    entry = outbox_entry(
        IDENTITY, root_topic=ROOT, schema="nebuliser.course", utc=NOW, **SAMPLES["nebuliser.course"]
    )
    assert (entry.topic, entry.retain, entry.kind) == ("nebuliser/v1/W7/B03/course", True, "state")
    too_many = [{"day": f"2026-10-{d:02d}", "counted_ul": 1, "runs": 1} for d in range(1, 32)]
    too_many.append({"day": "2026-11-01", "counted_ul": 1, "runs": 1})
    with pytest.raises(ValidationError, match="days"):
        outbox_entry(
            IDENTITY,
            root_topic=ROOT,
            schema="nebuliser.course",
            utc=NOW,
            **(SAMPLES["nebuliser.course"] | {"days": too_many}),
        )


@pytest.mark.parametrize("schema", sorted(SAMPLES))
def test_every_device_message_builds_and_validates(schema: str) -> None:
    entry = outbox_entry(IDENTITY, root_topic=ROOT, schema=schema, utc=NOW, **SAMPLES[schema])
    body = validate_payload(entry.build(42))
    assert body["seq"] == 42
    assert body["schema"] == schema
    assert body["historical"] is False
    assert body["utc"] == "2026-11-25T12:00:00.123Z"
    assert (body["device_id"], body["ward"], body["bed"], body["boot_id"]) == (
        "MN1-0042",
        "W7",
        "B03",
        "boot-a",
    )
    assert entry.qos == 1
    assert entry.topic.startswith("nebuliser/v1/W7/B03/")


def test_routes_put_retained_messages_on_retained_topics() -> None:
    state = outbox_entry(
        IDENTITY, root_topic=ROOT, schema="nebuliser.state", utc=NOW, session_state="idle"
    )
    active = outbox_entry(IDENTITY, root_topic=ROOT, schema="nebuliser.alarms_active", utc=NOW)
    tele = outbox_entry(
        IDENTITY,
        root_topic=ROOT,
        schema="nebuliser.telemetry",
        utc=NOW,
        running=False,
        delivered_ul=0,
        cap_ul=0,
        flow_ul_min=0,
    )
    assert (state.topic, state.retain, state.kind) == ("nebuliser/v1/W7/B03/state", True, "state")
    assert (active.topic, active.retain, active.kind) == (
        "nebuliser/v1/W7/B03/alarms/active",
        True,
        "alarm",
    )
    assert (tele.retain, tele.kind) == (False, "telemetry")


def test_invalid_fields_are_refused_before_any_seq_is_assigned() -> None:
    with pytest.raises(ValidationError, match="delivered_ul"):
        outbox_entry(
            IDENTITY,
            root_topic=ROOT,
            schema="nebuliser.telemetry",
            utc=NOW,
            running=True,
            delivered_ul=-1,
            cap_ul=0,
            flow_ul_min=0,
        )
    with pytest.raises(KeyError, match="unknown device schema"):
        outbox_entry(IDENTITY, root_topic=ROOT, schema="nebuliser.nope", utc=NOW)
    with pytest.raises(ValidationError, match="timezone"):
        outbox_entry(
            IDENTITY,
            root_topic=ROOT,
            schema="nebuliser.alarm",
            utc=datetime(2026, 1, 1),  # noqa: DTZ001 (naive on purpose)
            event="raised",
            alarm_code="X",
            priority="low",
        )


def test_local_time_is_stored_as_utc() -> None:
    plus_two = timezone(timedelta(hours=2))
    entry = outbox_entry(
        IDENTITY,
        root_topic=ROOT,
        schema="nebuliser.alarm",
        utc=datetime(2026, 1, 1, 14, 0, tzinfo=plus_two),
        event="raised",
        alarm_code="X",
        priority="low",
    )
    assert json.loads(entry.build(1))["utc"] == "2026-01-01T12:00:00.000Z"


def test_mark_historical_flips_only_the_flag() -> None:
    entry = outbox_entry(
        IDENTITY,
        root_topic=ROOT,
        schema="nebuliser.alarm",
        utc=NOW,
        event="cleared",
        alarm_code="X",
        priority="low",
    )
    original = json.loads(entry.build(5))
    flipped = json.loads(mark_historical(entry.build(5)))
    assert flipped == {**original, "historical": True}
    assert mark_historical(b"not json") == b"not json"
    # A backfill reply: only its own flag flips, not those of the messages it carries.
    reply = outbox_entry(
        IDENTITY, root_topic=ROOT, schema="nebuliser.backfill_reply", utc=NOW,
        request_id="r1", from_seq=3, to_seq=3, messages=[{**original, "historical": False}],
    )  # fmt: skip
    body = json.loads(mark_historical(reply.build(9)))
    assert body["historical"] is True
    assert body["messages"][0]["historical"] is False


def test_monitor_and_presence_payloads_validate() -> None:
    validate_payload(
        encode_presence(IDENTITY, online=False, reason="last_will", utc=NOW, telemetry_hz=1)
    )
    validate_payload(
        encode_alarm_ack(
            command_id="c1", sender="nurse-7", device_id="MN1-0042", alarm_code="DRY_CUP", utc=NOW
        )
    )
    validate_payload(
        encode_backfill_request(
            request_id="r", requester="mon", device_id="d", from_seq=1, to_seq=9, utc=NOW
        )
    )


@pytest.mark.parametrize("client_id", ["", "has space", "a/b", "wild#", "plus+", "x" * 65])
def test_unsafe_client_ids_are_refused(client_id: str) -> None:
    with pytest.raises(ValidationError, match="client_id"):
        MqttSettings(client_id=client_id)


def test_settings_bounds_and_tls_pairs(tmp_path: object) -> None:
    with pytest.raises(ValidationError, match="telemetry_hz"):
        MqttSettings(telemetry_hz=11)
    with pytest.raises(ValidationError, match="root_topic"):
        MqttSettings(root_topic="/nebuliser/#")
    with pytest.raises(ValidationError, match="cert_file and key_file"):
        TlsSettings(ca_file="ca.pem", cert_file="c.pem")  # type: ignore[arg-type]
    assert MqttSettings().telemetry_hz == 1
