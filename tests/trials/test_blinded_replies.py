"""The reply to a remote start request is published: for a blinded arm it carries the
refused constraints' codes, never a sentence naming the dose or the lot (issue 20)."""

from __future__ import annotations

from controller.dosing import ConstraintResult, Decision
from controller.service._command_replies import published_refusal_reasons

DOSE_SENTENCE = "rolling_24h_dose: 1.33e+07 + 1.33e+07 vesicles of lot LOT-2026-0042 > 2e+07"
DECISION = Decision(
    allowed=False,
    session_cap_ul=0,
    max_duration_s=60,
    output_pct=100,
    constraints=(
        ConstraintResult(code="open_session", passed=False, reason="open_session: 1 open"),
        ConstraintResult(
            code="rolling_24h_dose", passed=False, reason=DOSE_SENTENCE, unit="vesicles"
        ),
        ConstraintResult(code="storage", passed=True, reason="storage: ok"),
    ),
)
CONTROLLER_REFUSAL = "controller state is nebulising; a start needs idle"


def test_a_blinded_arms_published_refusal_names_codes_not_doses_or_lots() -> None:
    reasons = [CONTROLLER_REFUSAL, *DECISION.refusal_reasons]
    published = published_refusal_reasons(reasons, DECISION, blinded=True)
    assert published == (CONTROLLER_REFUSAL, "open_session", "rolling_24h_dose")
    assert not any("LOT-" in r or "vesicles" in r for r in published)


def test_an_open_arms_published_refusal_keeps_every_sentence() -> None:
    reasons = [CONTROLLER_REFUSAL, *DECISION.refusal_reasons]
    assert published_refusal_reasons(reasons, DECISION, blinded=False) == tuple(reasons)
