"""The five-rights check before CONFIRM (issue 20): right patient, right vial, in date.

Every refusal is a traced constraint of `decide()` — the decision row the ledger keeps
and the ward's decision message — with its code and its sentence.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from controller.dosing import (
    BedsideScan,
    Decision,
    Instant,
    Prescription,
    TrustedTime,
    decide,
    five_rights,
)

from ._factories import SUBJECT, at, trusted
from ._trial import GOOD_LOT, LOTS, scanned, trial_document, trial_prescription

FIVE_RIGHTS_CODES = {"scan_subject", "lot_known", "lot_arm", "lot_cohort", "lot_strength"}


def failed(decision: Decision) -> dict[str, str]:
    """Failed constraint codes → their sentences."""
    return {c.code: c.reason for c in decision.constraints if not c.passed}


def passed_codes(decision: Decision) -> set[str]:
    return {c.code for c in decision.constraints if c.passed}


def on(day: date, hour: int = 9) -> TrustedTime:
    """Trusted time at `hour` UTC on `day` (monotonic values do not matter here)."""
    utc = datetime(day.year, day.month, day.day, hour, tzinfo=UTC)
    return TrustedTime(instant=Instant(utc=utc, boot_id="b", monotonic_ns=0), trusted=True)


# --- the right scan ----------------------------------------------------------------------


def test_the_right_wristband_and_vial_are_admitted_with_every_check_traced() -> None:
    decision = decide(trial_prescription(), [], scanned(), trusted(at(0)))
    assert decision.allowed, failed(decision)
    assert decision.session_cap_ul == 1000  # cohort C2's session volume
    assert FIVE_RIGHTS_CODES | {"lot_expiry"} <= passed_codes(decision)


def test_a_scanner_s_trailing_blanks_are_not_part_of_the_label() -> None:
    request = scanned(subject_id=f" {SUBJECT}\r", lot_id=f"{GOOD_LOT}\t")
    assert decide(trial_prescription(), [], request, trusted(at(0))).allowed


# --- refusals, each with its reason ---------------------------------------------------------


def test_nothing_scanned_is_refused_when_the_protocol_requires_the_scans() -> None:
    decision = decide(trial_prescription(), [], scanned(None, None), trusted(at(0)))
    assert not decision.allowed
    reasons = failed(decision)
    assert set(reasons) == {"scan_subject", "lot_known"}
    assert "--subject ID" in reasons["scan_subject"]
    assert "--lot LOT" in reasons["lot_known"]


def test_wrong_patient_is_refused() -> None:
    decision = decide(trial_prescription(), [], scanned(subject_id="S-002"), trusted(at(0)))
    assert failed(decision) == {
        "scan_subject": "scan_subject: wristband 'S-002' is not this prescription's subject "
        "'S-001': check the patient and the bed"
    }


def test_a_lot_not_in_the_lot_table_is_refused() -> None:
    decision = decide(trial_prescription(), [], scanned(lot_id="L-FOREIGN"), trusted(at(0)))
    reasons = failed(decision)
    assert set(reasons) == {"lot_known"}
    assert "'L-FOREIGN' is not in the protocol's lot table" in reasons["lot_known"]


def test_another_arm_s_lot_is_refused() -> None:
    decision = decide(trial_prescription(), [], scanned(lot_id="L-C2-B"), trusted(at(0)))
    assert failed(decision) == {
        "lot_arm": "lot_arm: lot L-C2-B is for arm B, the subject is in arm A"
    }


def test_a_cohort_4_vial_for_a_cohort_2_patient_is_refused_though_the_volume_fits() -> None:
    decision = decide(trial_prescription(), [], scanned(lot_id="L-C4-A"), trusted(at(0)))
    reasons = failed(decision)
    assert set(reasons) == {"lot_cohort", "lot_strength"}
    assert reasons["lot_cohort"].endswith("is for cohort C4, the subject is in cohort C2")
    assert "4e+08 vesicles/mL" in reasons["lot_strength"]
    # Every volume limit would have allowed it: only the vial check refuses.
    assert {"session_ul", "session_dose", "ceiling_session_ul"} <= passed_codes(decision)


def test_another_cohort_s_vial_of_the_same_strength_is_refused_by_its_cohort() -> None:
    decision = decide(trial_prescription(), [], scanned(lot_id="L-C4V-A"), trusted(at(0)))
    assert set(failed(decision)) == {"lot_cohort"}


def test_a_vial_listed_for_the_cohort_but_of_another_strength_is_refused() -> None:
    decision = decide(trial_prescription(), [], scanned(lot_id="L-C2-X"), trusted(at(0)))
    reasons = failed(decision)
    assert set(reasons) == {"lot_strength"}
    assert "the dose was prescribed for 2e+08 vesicles/mL" in reasons["lot_strength"]


@pytest.mark.parametrize(
    ("today", "allowed"),
    [(date(2026, 11, 29), True), (date(2026, 11, 30), True), (date(2026, 12, 1), False)],
)
def test_an_expired_lot_is_refused_from_the_day_after_its_use_by_date(
    today: date, allowed: bool
) -> None:
    decision = decide(trial_prescription(), [], scanned(lot_id="L-C2-OLD"), on(today))
    assert set(failed(decision)) == (set() if allowed else {"lot_expiry"})
    if not allowed:
        reason = failed(decision)["lot_expiry"]
        assert (
            reason == "lot_expiry: lot L-C2-OLD EXPIRED: use by 2026-11-30, today 2026-12-01 (UTC)"
        )


def test_expiry_is_judged_on_the_ward_s_local_date() -> None:
    # 2026-11-30 13:00 UTC is already 1 December in Auckland (UTC+13): expired there.
    rx = trial_prescription(timezone="Pacific/Auckland")
    decision = decide(rx, [], scanned(lot_id="L-C2-OLD"), on(date(2026, 11, 30), hour=13))
    assert set(failed(decision)) == {"lot_expiry"}


def test_with_an_untrusted_clock_the_expiry_cannot_be_checked_and_the_start_is_refused() -> None:
    now = TrustedTime(instant=at(0), trusted=False, reason="NTP not synchronised")
    reasons = failed(decide(trial_prescription(), [], scanned(), now))
    assert set(reasons) == {"time_trusted", "lot_expiry"}
    assert "cannot be checked: the clock is not trusted" in reasons["lot_expiry"]


# --- blinding ---------------------------------------------------------------------------------


def test_blinded_a_wrong_vial_is_refused_without_saying_whether_arm_cohort_or_strength() -> None:
    rx = trial_prescription(blinded=True)
    sentences = set()
    for lot_id in ("L-C2-B", "L-C4-A", "L-C4V-A", "L-C2-X"):
        decision = decide(rx, [], scanned(lot_id=lot_id), trusted(at(0)))
        reasons = failed(decision)
        assert set(reasons) == {"lot_prescribed"}, lot_id
        codes = {c.code for c in decision.constraints}
        assert not {"lot_arm", "lot_cohort", "lot_strength"} & codes
        assert lot_id in reasons["lot_prescribed"]  # the nurse scanned it: she may see it
        sentences.add(reasons["lot_prescribed"].replace(lot_id, "<lot>"))
    # One sentence whatever the cause: it cannot tell the subject's arm or cohort.
    assert sentences == {
        "lot_prescribed: lot <lot> is not one of this subject's lots (blinded study: the "
        "pharmacy's lot table says why); fetch the subject's own vial"
    }


def test_blinded_the_right_vial_passes_one_neutral_constraint() -> None:
    decision = decide(trial_prescription(blinded=True), [], scanned(), trusted(at(0)))
    assert decision.allowed
    assert {"scan_subject", "lot_known", "lot_prescribed", "lot_expiry"} <= passed_codes(decision)


# --- what is required, what is checked anyway --------------------------------------------------


def test_scans_not_required_are_still_checked_when_given() -> None:
    rx = trial_prescription(scan_subject=False, scan_lot=False)
    assert decide(rx, [], scanned(None, None), trusted(at(0))).allowed
    decision = decide(rx, [], scanned(subject_id="S-002", lot_id="L-C4-A"), trusted(at(0)))
    assert {"scan_subject", "lot_cohort", "lot_strength"} <= set(failed(decision))


def test_without_a_lot_table_only_the_prescribed_lot_fits() -> None:
    document = trial_document(scan_lot=False)
    del document["lots"], document["cohorts"]
    document["limits"] = {"session_ul": 1000}
    rx = Prescription.model_validate(document)
    assert decide(rx, [], scanned(), trusted(at(0))).allowed
    assert set(failed(decide(rx, [], scanned(lot_id="L-C4-A"), trusted(at(0))))) == {"lot_known"}


# --- the model: lot table, cohorts, checks --------------------------------------------------------


def test_the_subject_s_cohort_fixes_the_session_dose() -> None:
    rx = trial_prescription(cohort="C4V", lot_id="L-C4V-A")
    assert (rx.limits.session_ul, rx.limits.session_dose) == (2000, 4.0e8)
    assert trial_prescription(limits={"session_ul": 1000}).limits.session_ul == 1000


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"limits": {"session_ul": 1500}}, "differs from cohort C2's session_ul = 1000"),
        ({"cohort": "C3"}, "arm.cohort = 'C3' is not one of the protocol's cohorts"),
        ({"lot_id": "L-C2-B"}, "lot L-C2-B is for arm B cohort C2, the subject is in arm A"),
        ({"lot_id": "L-C4-A"}, "lot L-C4-A is for arm A cohort C4"),
    ],
)
def test_a_prescription_contradicting_its_cohort_or_lot_table_is_refused(
    change: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        trial_prescription(**change)


def test_a_lot_scan_needs_a_lot_table() -> None:
    assert trial_prescription(lots={GOOD_LOT: LOTS[GOOD_LOT]}, cohorts=[]).checks.scan_lot
    document = trial_document()
    document["lots"] = []
    with pytest.raises(ValidationError, match=r"checks.scan_lot = true needs the protocol's lot"):
        Prescription.model_validate(document)


def test_a_lot_listed_twice_or_too_weak_for_its_cohort_is_refused() -> None:
    document = trial_document()
    document["lots"].append(dict(document["lots"][0]))
    with pytest.raises(ValidationError, match="lot_id L-C2-A listed more than once"):
        Prescription.model_validate(document)
    weak = {**LOTS, "L-C4-WEAK": {**LOTS["L-C4-A"], "amount": 1.0e8}}
    with pytest.raises(ValidationError, match=r"lots\[L-C4-WEAK\].*0\.25x its session_dose"):
        trial_prescription(lots=weak)


# --- property: admitted ⇔ every right holds ---------------------------------------------------


@given(
    subject=st.sampled_from([SUBJECT, "S-002", None]),
    lot_id=st.sampled_from([*LOTS, "L-FOREIGN", None]),
    days=st.integers(min_value=-400, max_value=400),
    blinded=st.booleans(),
)
def test_a_start_is_admitted_exactly_when_patient_vial_cohort_strength_and_date_are_right(
    subject: str | None, lot_id: str | None, days: int, blinded: bool
) -> None:
    rx = trial_prescription(blinded=blinded)
    today = date.fromordinal(date(2026, 12, 1).toordinal() + days)
    results = five_rights(rx, BedsideScan(subject_id=subject, lot_id=lot_id), on(today))
    row = LOTS.get(lot_id or "")
    expected = (
        subject == SUBJECT
        and row is not None
        and row["arm_id"] == "A"
        and row["cohort"] == "C2"
        and row["amount"] == LOTS[GOOD_LOT]["amount"]
        and today <= row["expires"]
    )
    assert all(r.passed for r in results) is expected, [r.reason for r in results]
    if blinded:
        assert {r.code for r in results} <= {
            "scan_subject",
            "lot_known",
            "lot_prescribed",
            "lot_expiry",
        }
