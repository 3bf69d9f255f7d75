"""Fill and residual volume: "fill F µL, nebulise to dryness" in the prescription, and
`classify_end` (completed / completed to dryness / early end)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from controller.dosing import (
    HOST_REASON_RESERVOIR_EMPTY,
    Delivery,
    EndClass,
    classify_end,
    dry_end_expected,
)
from tests.dosing._factories import make_prescription


def _delivery(**keys: Any) -> Delivery:
    return Delivery.model_validate(keys)


PILOT = _delivery(fill_ul=3000, residual_ul=100)  # 3 mL in the cup, to dryness


def test_pilot_form_expects_fill_minus_residual() -> None:
    assert PILOT.to_dryness
    assert PILOT.expected_dry_ul == 2900
    assert PILOT.dryness_tolerance_ul == 150  # 5 % of the fill
    assert not Delivery().to_dryness


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"fill_ul": 3000}, "needs delivery.residual_ul"),
        ({"residual_ul": 100}, "only apply with delivery.fill_ul"),
        ({"fill_ul": 100, "residual_ul": 100}, "is not below delivery.fill_ul"),
        ({"fill_ul": 3000, "residual_ul": 100, "dry_tolerance_ul": 2900}, "must be below"),
        ({"fill_ul": 7000, "residual_ul": 100}, "less than or equal to 6000"),
        ({"fill_ul": "3000", "residual_ul": 100}, "valid integer"),
    ],
)
def test_bad_fill_keys_are_refused_with_the_fix(keys: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _delivery(**keys)


def test_a_fill_that_the_session_cap_would_stop_early_is_refused() -> None:
    with pytest.raises(ValidationError, match="would stop at its cap before the cup is dry"):
        make_prescription(session_ul=2000, delivery={"fill_ul": 3000, "residual_ul": 100})
    rx = make_prescription(session_ul=3000, delivery={"fill_ul": 3000, "residual_ul": 100})
    assert rx.delivery.expected_dry_ul == 2900


@pytest.mark.parametrize(
    ("delivered_ul", "device_reason", "host_reason", "expected"),
    [
        (2900, "RESERVOIR_EMPTY", None, EndClass.COMPLETED_TO_DRYNESS),
        (2750, "RESERVOIR_EMPTY", None, EndClass.COMPLETED_TO_DRYNESS),  # tolerance edge
        (2749, "RESERVOIR_EMPTY", None, EndClass.EARLY_END),
        (640, "RESERVOIR_EMPTY", None, EndClass.EARLY_END),
        (3000, "TARGET_REACHED", None, EndClass.COMPLETED),
        (2990, "HOST_STOP", "cap_predicted", EndClass.COMPLETED),
        (712, "FAULT", None, EndClass.EARLY_END),
        (235, "HOST_STOP", "status_silent", EndClass.EARLY_END),
    ],
)
def test_classify_end_to_dryness(
    delivered_ul: int, device_reason: str, host_reason: str | None, expected: EndClass
) -> None:
    end = classify_end(
        PILOT, delivered_ul=delivered_ul, device_reason=device_reason, host_reason=host_reason
    )
    assert end.end is expected


def test_a_dry_cup_is_an_early_end_when_the_prescription_does_not_say_dryness() -> None:
    end = classify_end(Delivery(), delivered_ul=2900, device_reason="RESERVOIR_EMPTY")
    assert end.end is EndClass.EARLY_END
    assert end.reason == "ended before the planned volume: RESERVOIR_EMPTY"


def test_the_heads_own_residual_overrides_the_prescriptions() -> None:
    # A head whose mesh leaves 300 µL: 2700 µL is then dry at the expected volume.
    end = classify_end(PILOT, delivered_ul=2700, device_reason="RESERVOIR_EMPTY", residual_ul=300)
    assert end.end is EndClass.COMPLETED_TO_DRYNESS
    assert end.expected_ul == 2700
    assert "2700 µL of the 2700 µL expected from a 3000 µL fill" in end.reason


def test_a_host_stop_on_the_empty_cup_bit_is_still_a_dry_end() -> None:
    # The host's STOP on the RESERVOIR_EMPTY bit overtook the head's own stop.
    end = classify_end(
        PILOT,
        delivered_ul=2900,
        device_reason="HOST_STOP",
        host_reason=HOST_REASON_RESERVOIR_EMPTY,
    )
    assert end.end is EndClass.COMPLETED_TO_DRYNESS


@pytest.mark.parametrize(("delivered_ul", "expected"), [(2749, False), (2750, True), (2900, True)])
def test_dry_end_expected_tells_the_runtime_when_an_empty_cup_is_no_alarm(
    delivered_ul: int, expected: bool
) -> None:
    assert dry_end_expected(PILOT, delivered_ul=delivered_ul) is expected
    assert not dry_end_expected(Delivery(), delivered_ul=delivered_ul)
