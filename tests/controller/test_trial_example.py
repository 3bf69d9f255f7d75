"""The example protocol's trial tables (issue 20): checks on, its lot in date for the course."""

from __future__ import annotations

import tomllib
from datetime import date, timedelta

from controller.cli.config import example_config_text
from controller.dosing import Prescription


def test_the_example_s_lot_stays_in_date_for_the_templated_course() -> None:
    start = date(2028, 3, 1)
    document = tomllib.loads(example_config_text(start=start))
    rx = Prescription.model_validate(document["prescription"])
    assert rx.checks.scan_subject
    assert rx.checks.scan_lot
    (lot,) = rx.lots
    assert lot.lot_id == rx.lot.lot_id
    assert rx.limits.course_end == start + timedelta(days=4)
    assert lot.expires == start + timedelta(days=4 + 180)
    (cohort,) = rx.cohorts
    assert (cohort.session_ul, cohort.session_dose) == (3000, 2.0e8)
