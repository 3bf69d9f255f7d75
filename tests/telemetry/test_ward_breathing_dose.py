"""Breathing, the dose in the lot's units and the course summary in the shared ward
model and its two views (station tile and detail, terminal row): pure tests."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest
from pydantic import ValidationError
from rich.console import Console

from controller.cli._monitor_screen import render_rows
from controller.station._view import bed_detail, tile
from controller.telemetry import (
    BedRow,
    PrescriptionSummary,
    WardModel,
    dose_text,
    outbox_entry,
)
from controller.telemetry._monitor_row import BREATHING_MAX_AGE_S
from tests.telemetry.helpers import IDENTITY, ROOT, telemetry, validate_payload

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
# The pilot lot: 2.0e8 vesicles in 3 mL.
OPEN_RX: dict[str, Any] = {
    "prescription_id": "EXO-PILOT-01",
    "label": "exosome vesicles (inhaled)",
    "blinded": False,
    "dose_cap_ul": 3000,
    "dose_unit": "vesicles",
    "concentration_per_ml": 2.0e8 / 3,
}
BLINDED_RX: dict[str, Any] = {
    "prescription_id": "EXO-PILOT-01",
    "label": "study medication (blinded)",
    "blinded": True,
    "dose_cap_ul": 3000,
}


def feed(model: WardModel, schema: str, seq: int, *, now_s: float = 0.0, **fields: Any) -> None:
    entry = outbox_entry(IDENTITY, root_topic=ROOT, schema=schema, utc=NOW, **fields)
    payload = entry.build(seq)
    validate_payload(payload)  # what the bed publishes is what the schema says
    events = model.feed(entry.topic, payload, now_s=now_s)
    assert not [e for e in events if e["event"] == "invalid"], events


def state(model: WardModel, seq: int, prescription: dict[str, Any]) -> None:
    feed(model, "nebuliser.state", seq, session_state="nebulising", prescription=prescription)


def breathing(model: WardModel, seq: int, *, now_s: float = 0.0, **fields: Any) -> None:
    body: dict[str, Any] = {
        "reason": "periodic",
        "session_id": 1,
        "gated": True,
        "waiting": False,
        "rate_bpm": 15.2,
        "tidal_ml": 480,
        "ie_ratio": 2.0,
        "insp_share_pct": 97.4,
        "seconds_since_breath": 1,
        "breaths": 40,
    } | fields
    feed(model, "nebuliser.breathing", seq, now_s=now_s, **body)


def the_row(model: WardModel) -> BedRow:
    row = model.row("W7", "B03")
    assert row is not None
    return row


def station_tile(model: WardModel, now_s: float) -> dict[str, Any]:
    (row,) = model.rows(now_s=now_s)
    return tile(row, now_s=now_s, wall_now=NOW, acks=[], station_sender=None)


def terminal(model: WardModel, now_s: float) -> str:
    console = Console(record=True, width=220, color_system=None)
    console.print(render_rows(model.rows(now_s=now_s), now_s=now_s, width=220, title="W7"))
    return console.export_text()


def test_breathing_rate_and_inspiratory_share_reach_the_tile_and_the_terminal() -> None:
    model = WardModel(root_topic=ROOT)
    state(model, 1, OPEN_RX)
    model.feed(f"{ROOT}/W7/B03/telemetry", telemetry(1000).build(2), now_s=0.0)
    breathing(model, 3)
    shown = station_tile(model, 0.5)["breathing"]
    assert shown["rate_bpm"] == pytest.approx(15.2)
    assert shown["insp_share_pct"] == pytest.approx(97.4)
    assert shown["text"] == "15/min · insp 97 %"
    assert "15/min 97% insp" in terminal(model, 0.5)


def test_waiting_is_shown_as_no_breath() -> None:
    model = WardModel(root_topic=ROOT)
    breathing(model, 1, waiting=True, reason="state_change", seconds_since_breath=12)
    model.feed(f"{ROOT}/W7/B03/telemetry", telemetry(0).build(2), now_s=0.0)
    shown = station_tile(model, 0.5)["breathing"]
    assert shown["waiting"] is True
    assert shown["text"] == "WAITING — no breath 12 s"
    assert "WAITING no breath" in terminal(model, 0.5)


def test_no_breathing_shown_for_a_version_1_head_or_a_head_that_stopped_reporting() -> None:
    model = WardModel(root_topic=ROOT)
    model.feed(f"{ROOT}/W7/B03/telemetry", telemetry(10).build(1), now_s=0.0)
    assert station_tile(model, 0.5)["breathing"] is None, "a version-1.0 head: no breathing"
    assert "insp" not in terminal(model, 0.5)
    # A continuous session before its first breath: nothing measured, nothing shown.
    breathing(model, 2, gated=False, rate_bpm=None, insp_share_pct=None, breaths=0)
    assert station_tile(model, 0.5)["breathing"] is None
    breathing(model, 3, now_s=1.0)
    late_s = 1.0 + BREATHING_MAX_AGE_S + 0.5
    model.feed(f"{ROOT}/W7/B03/telemetry", telemetry(20).build(4), now_s=late_s)
    assert station_tile(model, late_s)["breathing"] is None, "old breathing is not current"


def test_a_backfilled_breathing_report_is_not_the_breathing_now() -> None:
    model = WardModel(root_topic=ROOT)
    entry = outbox_entry(
        IDENTITY,
        root_topic=ROOT,
        schema="nebuliser.breathing",
        utc=NOW,
        reason="periodic",
        gated=True,
        waiting=False,
        rate_bpm=30.0,
        historical=True,
    )
    model.feed(entry.topic, entry.build(1), now_s=0.0)
    assert the_row(model).breathing is None


def test_dose_in_the_lot_units_for_an_open_prescription_and_blinded_otherwise() -> None:
    model = WardModel(root_topic=ROOT)
    state(model, 1, OPEN_RX)
    model.feed(f"{ROOT}/W7/B03/telemetry", telemetry(1500).build(2), now_s=0.0)
    view = station_tile(model, 0.5)
    assert view["dose"] == "1.00×10⁸ vesicles"  # 1.5 mL of 2.0e8 per 3 mL
    assert view["blinded"] is False
    assert "1.00×10⁸ vesicles" in terminal(model, 0.5)
    # The prescription changes to a blinded one: the unit and concentration go too.
    state(model, 3, BLINDED_RX)
    view = station_tile(model, 0.5)
    assert view["dose"] == "blinded"
    assert view["blinded"] is True
    assert the_row(model).concentration_per_ml is None
    text = terminal(model, 0.5)
    assert "blinded" in text
    assert "vesicles" not in text


def test_a_blinded_summary_cannot_carry_a_drug_unit_figure() -> None:
    with pytest.raises(ValidationError, match="would unblind"):
        PrescriptionSummary.model_validate(
            BLINDED_RX | {"dose_unit": "vesicles", "concentration_per_ml": 6.7e7}
        )
    with pytest.raises(ValidationError, match="both or neither"):
        PrescriptionSummary.model_validate(OPEN_RX | {"dose_unit": None})


@pytest.mark.parametrize(
    ("value", "unit", "text"),
    [
        (1.3333e7, "vesicles", "1.33×10⁷ vesicles"),
        (0.5, "mg", "0.50 mg"),
        (250.0, "ug", "250 µg"),
        (0.0, "mg", "0.00 mg"),
    ],
)
def test_dose_text(value: float, unit: str, text: str) -> None:
    assert dose_text(value, unit) == text


COURSE: dict[str, Any] = {
    "reason": "session_end",
    "rolling_24h_ul": 400,
    "rolling_24h_max_ul": 600,
    "rolling_24h_sessions": 2,
    "rolling_24h_max_sessions": 3,
    "course_ul": 1400,
    "course_max_ul": None,
    "course_sessions": 7,
    "course_max_sessions": 10,
    "uncertain_runs": 0,
    "timezone": "Europe/Berlin",
    "days": [
        {"day": date(2026, 11, 24), "counted_ul": 1000, "runs": 5},
        {"day": date(2026, 11, 25), "counted_ul": 400, "runs": 2},
    ],
}


def test_course_summary_reaches_the_detail_view() -> None:
    model = WardModel(root_topic=ROOT)
    state(model, 1, OPEN_RX)
    feed(model, "nebuliser.course", 2, **COURSE)
    row = the_row(model)
    detail = bed_detail(row, model.history("W7", "B03"), station_sender=None)
    course = detail["course"]
    assert course["rolling_24h_ul"] == 400
    assert course["rolling_24h_max_ul"] == 600
    assert course["course_ul"] == 1400
    assert course["course_sessions"] == 7
    assert course["course_dose"] == "9.33×10⁷ vesicles"
    assert course["days"] == [
        {"day": "2026-11-24", "counted_ul": 1000, "runs": 5},
        {"day": "2026-11-25", "counted_ul": 400, "runs": 2},
    ]
    # An older course message (lower seq) does not replace the newer one.
    feed(model, "nebuliser.course", 1, **(COURSE | {"course_ul": 1}))
    assert model.history("W7", "B03").course is not None
    assert model.history("W7", "B03").course.course_ul == 1400  # type: ignore[union-attr]


def test_a_blinded_course_shows_volumes_only() -> None:
    model = WardModel(root_topic=ROOT)
    state(model, 1, BLINDED_RX)
    feed(model, "nebuliser.course", 2, **COURSE)
    course = bed_detail(the_row(model), model.history("W7", "B03"), station_sender=None)["course"]
    assert course["course_ul"] == 1400
    assert course["rolling_24h_dose"] is None
    assert course["course_dose"] is None


def test_no_course_yet_is_none() -> None:
    model = WardModel(root_topic=ROOT)
    state(model, 1, OPEN_RX)
    assert (
        bed_detail(the_row(model), model.history("W7", "B03"), station_sender=None)["course"]
        is None
    )
