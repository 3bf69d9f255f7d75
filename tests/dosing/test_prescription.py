"""Prescription validation: ceilings, plausibility of the lot, strictness, blinding."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from controller.dosing import (
    CEILING_24H_UL,
    CEILING_MAX_DURATION_S,
    CEILING_SESSION_UL,
    load_prescription,
)
from tests.dosing._factories import limit, make_prescription

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "example.toml"


def test_example_config_parses_as_the_pilot_protocol() -> None:
    pilot = load_prescription(EXAMPLE)
    assert pilot.limits.session_ul == 3000
    assert pilot.limits.session_dose == 2.0e8
    assert pilot.limits.course_max_sessions == 5
    # 3000 µL of 2.0e8/3 mL is exactly 2.0e8: no µL lost to rounding.
    assert pilot.dose_to_ul_floor(2.0e8) == 3000
    assert pilot.ul_to_dose(3000) == 200_000_000


def test_missing_prescription_table_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "other.toml"
    path.write_text("[device]\nport = 'x'\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"other\.toml: no \[prescription\] table"):
        load_prescription(path)


@pytest.mark.parametrize(
    ("field", "ceiling"),
    [
        ("session_ul", CEILING_SESSION_UL),
        ("rolling_24h_max_ul", CEILING_24H_UL),
        ("max_session_duration_s", CEILING_MAX_DURATION_S),
    ],
)
def test_ceiling_can_be_lowered_or_met_but_not_raised(field: str, ceiling: int) -> None:
    assert getattr(make_prescription(**limit(field, ceiling)).limits, field) == ceiling
    assert getattr(make_prescription(**limit(field, ceiling - 1)).limits, field) == ceiling - 1
    with pytest.raises(
        ValidationError,
        match=rf"limits\.{field} = {ceiling + 1} is above the hard ceiling {ceiling}",
    ):
        make_prescription(**limit(field, ceiling + 1))


@pytest.mark.parametrize("field", ["output_pct", "output_pct_min", "output_pct_max"])
@pytest.mark.parametrize("value", [9, 101])
def test_output_range_cannot_be_widened(field: str, value: int) -> None:
    with pytest.raises(
        ValidationError, match=rf"limits\.{field} = {value} is outside the hard range 10\.\.100"
    ):
        make_prescription(**limit(field, value))


def test_output_set_point_must_lie_in_the_configured_range() -> None:
    with pytest.raises(ValidationError, match="output_pct = 40 is outside"):
        make_prescription(output_pct=40, output_pct_min=50)


@pytest.mark.parametrize("factor", [10.0, 100.0, 0.1, 0.01])
def test_concentration_typo_is_caught_with_field_value_and_range(factor: float) -> None:
    with pytest.raises(ValidationError) as caught:
        make_prescription(amount=2.0e9 * factor, session_ul=3000, session_dose=2.0e9)
    message = str(caught.value)
    assert "lot concentration" in message
    assert f"{2.0e9 * factor / 3:.4g} vesicles/mL" in message
    assert "limits.session_dose = 2e+09" in message
    assert "plausible concentration for this prescription is 3.333e+08..1.333e+09" in message


def test_concentration_within_plausible_ratio_is_accepted() -> None:
    # A lot 1.5x stronger than nominal: accepted; the dose limit then shortens the volume.
    rx = make_prescription(amount=3.0e8, session_ul=3000, session_dose=2.0e8)
    assert rx.dose_to_ul_floor(2.0e8) == 2000


def test_concentration_outside_unit_range_is_caught() -> None:
    with pytest.raises(ValidationError, match=r"outside the plausible range 0\.001\.\.500 mg/mL"):
        make_prescription(amount=5000.0, per_volume_ml=1.0, unit="mg")


def test_session_dose_requires_session_volume() -> None:
    with pytest.raises(ValidationError, match=r"session_dose needs limits\.session_ul"):
        make_prescription(session_dose=2.0e8)


@pytest.mark.parametrize(
    ("extra", "pattern"),
    [
        ({"session_ul": "3000"}, "Input should be a valid integer"),
        ({"sesion_ul": 3000}, "Extra inputs are not permitted"),
        ({"soft_limits": ["session_ul"], "override_roles": ["investigator"]}, "soft_limits"),
        ({"soft_limits": ["interval"]}, "override_roles is empty"),
        ({"course_start": "2026-12-01"}, "valid date"),
    ],
)
def test_strict_validation(extra: dict[str, Any], pattern: str) -> None:
    with pytest.raises(ValidationError, match=pattern):
        make_prescription(**extra)


def test_course_end_before_start_is_refused() -> None:
    with pytest.raises(ValidationError, match="course_end 2026-11-30 is before"):
        make_prescription(course_start=date(2026, 12, 1), course_end=date(2026, 11, 30))


def test_unknown_timezone_is_refused() -> None:
    with pytest.raises(ValidationError, match="not a known IANA zone"):
        make_prescription(timezone="Mars/Olympus")


def test_blinded_public_summary_never_names_the_arm() -> None:
    rx = make_prescription(blinded=True, session_ul=3000, session_dose=2.0e8)
    text = json.dumps(rx.public_summary())
    for secret in ("arm-high", "cohort-16e8", "LOT-1", "arm_id", "cohort", "session_dose"):
        assert secret not in text
    assert rx.public_summary()["blinded"] is True


def test_unblinded_public_summary_names_the_arm() -> None:
    summary = make_prescription(blinded=False).public_summary()
    assert summary["arm_id"] == "arm-high"
    assert summary["cohort"] == "cohort-16e8"


def test_a_blinded_summary_names_no_drug_arm_cohort_lot_or_dose() -> None:
    """What telemetry may publish of two blinded arms (active and placebo, different
    products and lots) is the same: nothing in it tells the arms apart (issue 20)."""
    active = make_prescription(blinded=True, session_ul=3000)
    placebo = active.model_copy(
        update={
            "drug": "saline placebo",
            "lot": active.lot.model_copy(update={"lot_id": "LOT-PLACEBO"}),
            "arm": active.arm.model_copy(update={"arm_id": "placebo", "cohort": "c0"}),
        }
    )
    assert active.public_summary() == placebo.public_summary()
    assert "saline" not in str(placebo.public_summary())
    assert "test drug" not in str(active.public_summary())
