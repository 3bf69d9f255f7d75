"""What the controller publishes for the ward station about the prescription and the
course (pure): the dose unit only for an open prescription, the course in µL as the
dose rules count it, and nothing in drug units for a blinded subject (issue 20)."""

from __future__ import annotations

import json
from typing import Any

from controller.dosing import SessionStatus, decide, dose_usage
from controller.service._telemetry import MqttPublications
from controller.service._ward_summary import course_fields, prescription_summary
from controller.telemetry import outbox_entry
from tests.dosing._factories import at, make_prescription, request, session, trusted
from tests.telemetry.helpers import IDENTITY, ROOT, validate_payload

LIMITS: dict[str, Any] = {
    "session_ul": 3000,
    "session_dose": 2.0e8,
    "rolling_24h_max_ul": 6000,
    "rolling_24h_max_sessions": 3,
    "course_max_sessions": 10,
    "min_interval_s": 3600,
}
DAY_S = 24 * 3600
# Anything that would name the arm, the lot, or a figure in drug units.
SECRETS = ("arm-high", "cohort-16e8", "LOT-1", "vesicles", "test drug", "6666", "2e+08", "2e8")


def history() -> list[Any]:
    return [
        session(1, at(0), delivered_ul=3000),
        session(2, at(DAY_S + 60), delivered_ul=1200, status=SessionStatus.COMPLETED),
        session(3, at(DAY_S + 7200), planned_cap_ul=3000, status=SessionStatus.UNCERTAIN),
        session(4, at(DAY_S + 9000), status=SessionStatus.REFUSED_BY_DEVICE),
    ]


def published(schema: str, **fields: Any) -> bytes:
    entry = outbox_entry(IDENTITY, root_topic=ROOT, schema=schema, utc=at(0).utc, **fields)
    payload = entry.build(7)
    validate_payload(payload)
    return payload


def test_open_prescription_state_carries_the_lot_unit_and_concentration() -> None:
    summary = prescription_summary(make_prescription(**LIMITS))
    assert summary["dose_unit"] == "vesicles"
    assert summary["concentration_per_ml"] == 2.0e8 / 3
    body = json.loads(published("nebuliser.state", session_state="idle", prescription=summary))
    assert body["prescription"]["dose_unit"] == "vesicles"


def test_blinded_state_and_course_carry_no_drug_unit_figure() -> None:
    prescription = make_prescription(blinded=True, **LIMITS)
    summary = prescription_summary(prescription)
    assert "dose_unit" not in summary
    assert "concentration_per_ml" not in summary
    state = published("nebuliser.state", session_state="idle", prescription=summary)
    now = at(DAY_S + 10_000)
    course = published(
        "nebuliser.course",
        **course_fields(prescription, history(), now=now, reason="session_end"),
    )
    for payload in (state, course):
        text = payload.decode()
        for secret in SECRETS:
            assert secret not in text, (secret, text)
        assert "dose_unit" not in text
        assert "concentration" not in text


def test_course_counts_as_the_dose_rules_count() -> None:
    prescription = make_prescription(**LIMITS)
    now = at(DAY_S + 10_000)
    fields = course_fields(prescription, history(), now=now, reason="periodic")
    # Run 1 is more than 24 h old; run 3 is uncertain (its full cap counts); run 4 was
    # refused by the head (counts for nothing).
    assert fields["rolling_24h_ul"] == 1200 + 3000
    assert fields["rolling_24h_sessions"] == 2
    assert fields["course_ul"] == 3000 + 1200 + 3000
    assert fields["course_sessions"] == 3
    assert fields["uncertain_runs"] == 1
    assert fields["rolling_24h_max_ul"] == 6000
    assert [(d["day"].isoformat(), d["counted_ul"], d["runs"]) for d in fields["days"]] == [
        ("2026-12-01", 3000, 1),
        ("2026-12-02", 4200, 2),
    ]
    # The same figures decide() checks against the limits.
    decision = decide(prescription, history(), request(), trusted(now))
    by_code = {c.code: c for c in decision.constraints}
    assert by_code["rolling_24h_ul"].current == fields["rolling_24h_ul"]
    usage = dose_usage(prescription, history(), now)
    assert usage.course_ul == fields["course_ul"]


def test_a_session_end_asks_for_a_fresh_course_summary() -> None:
    publications = MqttPublications(
        identity=IDENTITY, root_topic=ROOT, prescription=make_prescription(**LIMITS)
    )
    assert publications.take_course_due() is False
    publications.session({"event": "started", "session_id": 5, "cap_ul": 3000})
    assert publications.take_course_due() is False, "a start changes nothing counted yet"
    publications.session({"event": "ended", "session_id": 5, "delivered_ul": 2990})
    assert publications.take_course_due() is True
    assert publications.take_course_due() is False, "once per end"
    publications.session({"event": "uncertain", "session_id": 6, "planned_cap_ul": 3000})
    assert publications.take_course_due() is True
