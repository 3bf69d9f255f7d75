"""Issue 20: a five-rights refusal is published as a decision, blinded like the rest.

For a blinded subject, a vial of the other arm, of another cohort or of another
strength gives the SAME published decision: code `lot_prescribed`, no sentence, no
lot, arm, cohort or figure in drug units. The ledger's trace keeps the sentence.
"""

from __future__ import annotations

import json
from typing import Any

from controller.dosing import decide
from controller.service import MqttPublications
from tests.dosing._factories import at, trusted
from tests.dosing._trial import scanned, trial_prescription

from .test_service_publications import IDENTITY, _payloads


def _published(lot_id: str, *, blinded: bool) -> dict[str, Any]:
    prescription = trial_prescription(blinded=blinded)
    decision = decide(prescription, [], scanned(lot_id=lot_id), trusted(at(0)))
    assert not decision.allowed
    publications = MqttPublications(
        identity=IDENTITY, root_topic="nebuliser/v1", prescription=prescription
    )
    [body] = _payloads(publications.decision(decision, {}))
    return body


def _content(body: dict[str, Any]) -> str:
    """What a subscriber learns, without ids, times and sequence numbers."""
    return json.dumps(
        {k: body[k] for k in ("decision", "request", "constraints", "reasons")}, sort_keys=True
    )


def test_blinded_wrong_vial_refusals_are_indistinguishable_on_the_ward_network() -> None:
    bodies = {lot: _published(lot, blinded=True) for lot in ("L-C2-B", "L-C4-A", "L-C4V-A")}
    assert len({_content(body) for body in bodies.values()}) == 1
    body = bodies["L-C4-A"]
    assert body["decision"] == "refuse"
    assert body["reasons"] == [{"code": "lot_prescribed", "text": ""}]
    text = json.dumps(body)
    for secret in ("L-C4-A", "arm", "C2", "C4", "vesicles", "4e8", "400000000"):
        assert secret not in text, secret


def test_unblinded_the_published_refusal_names_the_cohort() -> None:
    body = _published("L-C4-A", blinded=False)
    codes = [r["code"] for r in body["reasons"]]
    assert codes == ["lot_cohort", "lot_strength"]
    assert "is for cohort C4, the subject is in cohort C2" in body["reasons"][0]["text"]
