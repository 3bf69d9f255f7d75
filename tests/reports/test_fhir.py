"""`nebuliser report fhir`: the bundle is valid FHIR (checked with fhir.resources' R4B
models, whose MedicationAdministration, Medication, Device and Bundle match R4) and
says what the ledger says."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.device import Device
from fhir.resources.R4B.medication import Medication
from fhir.resources.R4B.medicationadministration import MedicationAdministration

from controller.cli import main
from controller.exitcodes import ExitCode
from controller.ledger import Ledger

from .conftest import PER_ML, SUBJECT, Course


def _bundle(course: Course, tmp_path: Path, *extra: str) -> dict[str, Any]:
    out = tmp_path / "bundle.json"
    args = ["report", "fhir", "--subject", SUBJECT, "--config", str(course.config_path)]
    assert main([*args, "-o", str(out), *extra]) == 0
    bundle: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    return bundle


def test_bundle_validates_against_the_fhir_models(course: Course, tmp_path: Path) -> None:
    raw = _bundle(course, tmp_path)
    bundle = Bundle.model_validate(raw)
    assert bundle.type == "collection"
    assert bundle.entry is not None
    kinds = [e.resource.get_resource_type() for e in bundle.entry if e.resource is not None]
    assert kinds == ["Device", "Medication"] + ["MedicationAdministration"] * 5
    # Each resource also validates on its own model.
    Device.model_validate(raw["entry"][0]["resource"])
    medication = Medication.model_validate(raw["entry"][1]["resource"])
    assert medication.batch is not None
    assert medication.batch.lotNumber == "LOT-2026-0042"
    for entry in raw["entry"][2:]:
        MedicationAdministration.model_validate(entry["resource"])


def test_bundle_says_what_the_ledger_says(course: Course, tmp_path: Path) -> None:
    raw = _bundle(course, tmp_path)
    urls = {e["fullUrl"] for e in raw["entry"]}
    administrations = [e["resource"] for e in raw["entry"][2:]]
    assert [a["status"] for a in administrations] == [
        "completed",
        "stopped",
        "not-done",
        "stopped",
        "unknown",
    ]
    assert administrations[1]["statusReason"][0]["text"] == "partial (operator_stop:nurse)"
    assert administrations[2]["statusReason"][0]["text"] == "refused (HEAD_DISCONNECTED)"
    assert administrations[4]["statusReason"][0]["text"] == "uncertain (controller_restart)"
    assert any("not reconciled" in n["text"] for n in administrations[4]["note"])
    with Ledger.open(course.ledger_path, read_only=True) as ledger:
        history = ledger.history(SUBJECT)
    for administration, record in zip(administrations, history, strict=True):
        assert administration["subject"]["identifier"]["value"] == SUBJECT
        assert administration["identifier"][0]["value"] == str(record.session_id)
        dosage = administration["dosage"]
        assert dosage["route"]["coding"][0] == {
            "system": "http://snomed.info/sct",
            "code": "447694001",
            "display": "Respiratory tract route",
        }
        assert dosage["method"]["coding"][0]["code"] == "738995006"
        assert administration["medicationReference"]["reference"] in urls
        assert administration["device"][0]["reference"] in urls
        if record.delivered_ul is not None:
            # 3 significant figures: 2990 µL is 1.99e8 vesicles, not 199333333.33333334.
            exact = record.delivered_ul / 1000 * PER_ML
            assert dosage["dose"]["value"] == pytest.approx(exact, rel=5e-3)
            assert dosage["dose"]["value"] == float(f"{exact:.3g}")
            assert dosage["dose"]["code"] == "{vesicles}"
    completed = administrations[0]
    assert completed["effectivePeriod"]["start"] < completed["effectivePeriod"]["end"]
    # Europe/London in November is UTC+00:00: the offset is always written.
    assert completed["effectivePeriod"]["start"] == "2026-11-20T09:00:00+00:00"
    assert any("OUTPUT_LOW raised" in n["text"] for n in administrations[1]["note"])
    assert any("investigator" in n["text"] for n in administrations[3]["note"])


def test_references_are_stable_across_exports(course: Course, tmp_path: Path) -> None:
    first = _bundle(course, tmp_path)
    second = _bundle(course, tmp_path)
    assert [e["fullUrl"] for e in first["entry"]] == [e["fullUrl"] for e in second["entry"]]


def test_unknown_subject_is_an_error(course: Course, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["report", "fhir", "--subject", "NOBODY", "--config", str(course.config_path)])
    assert code == ExitCode.LEDGER
    assert "no sessions of subject 'NOBODY'" in capsys.readouterr().err
