"""`[prescription.delivery]`: continuous or breath-gated, validated against ICD 1.1 ranges."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from controller.dosing import (
    DELIVERY_APNOEA_S,
    DELIVERY_GATE_PCT,
    DELIVERY_LEAD_BREATHS,
    Prescription,
    load_prescription,
)
from drivers.mn1 import GATED_APNOEA_S, GATED_GATE_PCT, GATED_LEAD_BREATHS
from tests.dosing._factories import make_prescription

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "example.toml"


def with_delivery(delivery: dict[str, Any]) -> Prescription:
    base = make_prescription(session_ul=3000).model_dump(mode="json")
    return Prescription.model_validate({**base, "delivery": delivery})


def test_default_is_continuous_so_existing_prescriptions_are_unchanged() -> None:
    pilot = load_prescription(EXAMPLE)
    assert pilot.delivery.mode == "continuous"
    assert not pilot.delivery.breath_gated


def test_breath_gated_with_defaults() -> None:
    delivery = with_delivery({"mode": "breath_gated"}).delivery
    assert delivery.breath_gated
    assert (delivery.gated_gate_pct, delivery.gated_lead_breaths, delivery.gated_apnoea_s) == (
        80,
        3,
        15,
    )


def test_breath_gated_from_toml(tmp_path: Path) -> None:
    text = EXAMPLE.read_text(encoding="utf-8").replace(
        "[prescription.delivery]\n",
        '[prescription.delivery]\nmode = "breath_gated"\ngate_pct = 70\n'
        "lead_breaths = 0\napnoea_s = 60\n",
    )
    path = tmp_path / "gated.toml"
    path.write_text(text, encoding="utf-8")
    assert tomllib.loads(text)["prescription"]["delivery"]["gate_pct"] == 70
    delivery = load_prescription(path).delivery
    assert (delivery.gated_gate_pct, delivery.gated_lead_breaths, delivery.gated_apnoea_s) == (
        70,
        0,
        60,
    )


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("gate_pct", 29, r"delivery.gate_pct = 29 is outside 30..90"),
        ("gate_pct", 91, r"delivery.gate_pct = 91 is outside 30..90"),
        ("lead_breaths", -1, r"delivery.lead_breaths = -1 is outside 0..10"),
        ("lead_breaths", 11, r"delivery.lead_breaths = 11 is outside 0..10"),
        ("apnoea_s", 4, r"delivery.apnoea_s = 4 is outside 5..60"),
        ("apnoea_s", 61, r"delivery.apnoea_s = 61 is outside 5..60"),
    ],
)
def test_out_of_range_names_the_field_and_the_range(field: str, value: int, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        with_delivery({"mode": "breath_gated", field: value})


@pytest.mark.parametrize(("field", "value"), [("gate_pct", 30), ("gate_pct", 90), ("apnoea_s", 5)])
def test_range_edges_are_accepted(field: str, value: int) -> None:
    assert getattr(with_delivery({"mode": "breath_gated", field: value}).delivery, field) == value


def test_gating_settings_on_a_continuous_prescription_are_refused() -> None:
    with pytest.raises(ValidationError, match=r'only apply to mode = "breath_gated"'):
        with_delivery({"mode": "continuous", "gate_pct": 80})


@pytest.mark.parametrize(
    ("delivery", "pattern"),
    [
        ({"mode": "gated"}, "continuous"),  # names the allowed modes
        ({"mode": "breath_gated", "gate_pct": "80"}, "valid integer"),  # strict: no strings
        ({"mode": "breath_gated", "gate": 80}, "Extra inputs"),
    ],
)
def test_strict(delivery: dict[str, Any], pattern: str) -> None:
    with pytest.raises(ValidationError, match=pattern):
        with_delivery(delivery)


def test_ranges_match_the_driver() -> None:
    for ours, driver in (
        (DELIVERY_GATE_PCT, GATED_GATE_PCT),
        (DELIVERY_LEAD_BREATHS, GATED_LEAD_BREATHS),
        (DELIVERY_APNOEA_S, GATED_APNOEA_S),
    ):
        assert range(ours[0], ours[1] + 1) == driver
