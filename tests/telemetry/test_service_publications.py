"""The running controller's publications (pure): every message validates against its
exported schema, and a blinded subject's messages never name the arm, the lot or a
dose figure."""

from __future__ import annotations

import json
from typing import Any

from controller.alarms import AlarmCode, AlarmInputs, AlarmState, acknowledge, evaluate
from controller.dosing import decide
from controller.ledger import OutboxMessage, OutboxStamp
from controller.service import MqttPublications, fault_codes, link_quality_pct
from controller.telemetry import DeviceIdentity
from drivers.mn1 import FaultBits
from tests.dosing._factories import at, make_prescription, request, session, trusted
from tests.telemetry.helpers import validate_payload

IDENTITY = DeviceIdentity(device_id="neb-7", ward="W7", bed="B03", boot_id="b00t")
LIMITS: dict[str, Any] = {
    "session_ul": 3000,
    "session_dose": 2.0e8,
    "rolling_24h_max_dose": 2.0e8,
    "min_interval_s": 3600,
}


def _publications(*, blinded: bool) -> MqttPublications:
    return MqttPublications(
        identity=IDENTITY,
        root_topic="nebuliser/v1",
        prescription=make_prescription(blinded=blinded, **LIMITS),
    )


def _payloads(messages: Any, first_seq: int = 10) -> list[dict[str, Any]]:
    bodies = []
    for offset, message in enumerate(messages):
        assert isinstance(message, OutboxMessage)
        assert message.qos == 1
        payload = message.payload
        assert callable(payload)
        raw = payload(OutboxStamp(seq=first_seq + offset, event_id=1, session_id=None))
        body = validate_payload(raw)
        assert body["seq"] == first_seq + offset
        assert message.topic.startswith("nebuliser/v1/W7/B03/")
        bodies.append(body)
    return bodies


def test_decisions_of_a_blinded_subject_carry_codes_and_volumes_only() -> None:
    prescription = make_prescription(blinded=True, **LIMITS)
    decision = decide(prescription, [], request(), trusted(at(0)))
    assert decision.allowed
    [open_body] = _payloads(_publications(blinded=False).decision(decision, {}))
    [blind_body] = _payloads(_publications(blinded=True).decision(decision, {}))
    assert open_body["decision"] == blind_body["decision"] == "allow"
    assert blind_body["granted_cap_ul"] == decision.session_cap_ul
    # The unblinded trace shows the dose constraint's figures; the blinded one does not.
    open_dose = next(c for c in open_body["constraints"] if c["code"] == "session_dose")
    blind_dose = next(c for c in blind_body["constraints"] if c["code"] == "session_dose")
    assert open_dose["limit"] == 2.0e8
    assert blind_dose["limit"] is None
    assert blind_dose["value"] is None
    blind_ul = next(c for c in blind_body["constraints"] if c["code"] == "session_ul")
    assert blind_ul["limit"] == 3000
    text = json.dumps(blind_body)
    for secret in ("arm-high", "cohort-16e8", "LOT-1", "vesicles", "2e8", "200000000"):
        assert secret not in text, secret
    assert all(c["text"] == "" for c in blind_body["constraints"])


def test_refusal_reasons_are_published_as_codes() -> None:
    prescription = make_prescription(blinded=True, **LIMITS)
    history = [session(1, at(0), delivered_ul=3000)]
    decision = decide(prescription, history, request(), trusted(at(60)))
    assert not decision.allowed
    [body] = _payloads(_publications(blinded=True).decision(decision, {}))
    assert body["decision"] == "refuse"
    assert body["granted_cap_ul"] is None
    assert "interval" in {r["code"] for r in body["reasons"]}


def test_session_messages_map_every_outcome() -> None:
    pubs = _publications(blinded=True)
    started, ended, stopped, uncertain, reconciled = (
        _payloads(pubs.session(body))[0]
        for body in (
            {"event": "started", "session_id": 4, "cap_ul": 3000, "subject_id": "S-001"},
            {
                "event": "ended",
                "session_id": 4,
                "delivered_ul": 2990,
                "cap_ul": 3000,
                "device_reason": "HOST_STOP",
                "host_reason": "cap_predicted",
                "dose": 1.99e8,
            },
            {
                "event": "ended",
                "session_id": 5,
                "delivered_ul": 100,
                "cap_ul": 3000,
                "device_reason": "HOST_STOP",
                "host_reason": "operator_stop:nurse kim",
            },
            {"event": "uncertain", "session_id": 6, "reason": "controller_restart"},
            {"event": "reconciled", "session_id": 6, "delivered_ul": 50, "source": "status"},
        )
    )
    assert (started["event"], started["dose_cap_ul"]) == ("started", 3000)
    assert (ended["outcome"], ended["delivered_ul"], ended["dose_cap_ul"]) == (
        "completed",
        2990,
        3000,
    )
    assert "dose" not in json.dumps(ended).replace("dose_cap_ul", "")
    assert stopped["outcome"] == "stopped"
    assert stopped["reasons"] == [{"code": "operator_stop:nurse_kim", "text": ""}]
    assert uncertain["outcome"] == "uncertain"
    assert reconciled["outcome"] == "reconciled"
    assert reconciled["delivered_ul"] == 50


def test_alarm_messages_carry_the_event_and_the_active_set() -> None:
    pubs = _publications(blinded=False)
    inputs = AlarmInputs(
        device_faults=int(FaultBits.HEAD_DISCONNECTED),
        link_lost=False,
        session_open=False,
        flow_ul_min=None,
        expected_flow_ul_min=None,
        session=None,
        device_nebulising=False,
        stop_sent_at_ms=None,
        session_stopped_by_watchdog=False,
        uncertain_session_id=None,
        clock_trusted=True,
        storage_low=False,
        storage_free_mib=1000,
        ledger_ok=True,
        swapped_to_serial=None,
        device_rebooted_mid_session=False,
        telemetry_dropped_total=0,
        command_flood=False,
        command_unrecorded_total=0,
    )
    state, events = evaluate(inputs, AlarmState(), 1000)
    [raised] = [e for e in events if e.code is AlarmCode.DEVICE_HEAD_DISCONNECTED]
    alarm, active = _payloads(pubs.alarm(raised, state))
    assert (alarm["event"], alarm["alarm_code"]) == ("raised", "device_head_disconnected")
    assert active["alarms"][0]["acknowledged"] is False
    state, [acked] = acknowledge(state, AlarmCode.DEVICE_HEAD_DISCONNECTED, "nurse kim", 3000)
    alarm, active = _payloads(pubs.alarm(acked, state))
    assert alarm["event"] == "acknowledged"
    assert alarm["acknowledged_by"] == "nurse_kim"
    assert active["alarms"][0]["acknowledged_by"] == "nurse_kim"


def test_fault_codes_and_link_quality() -> None:
    bits = int(FaultBits.HEAD_DISCONNECTED | FaultBits.MESH_CLOGGED) | (1 << 9)
    assert fault_codes(bits) == ["head_disconnected", "mesh_clogged", "bit_9"]
    assert fault_codes(0) == []
    assert link_quality_pct(link_up=True, status_age_ms=100, new_crc_errors=0) == 100
    assert link_quality_pct(link_up=True, status_age_ms=100, new_crc_errors=3) == 70
    assert link_quality_pct(link_up=True, status_age_ms=100, new_crc_errors=50) == 0
    assert link_quality_pct(link_up=True, status_age_ms=400, new_crc_errors=0) == 0
    assert link_quality_pct(link_up=False, status_age_ms=10, new_crc_errors=0) == 0
    assert link_quality_pct(link_up=True, status_age_ms=None, new_crc_errors=0) == 0
