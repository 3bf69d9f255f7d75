"""Breath summaries in every report, from a ledger written by a real gated session.

The session runtime, the sans-IO host link and a breath-aware (ICD 1.1) head model
run a breath-gated pilot session to its cap in simulated time (`tests/session/_bed.py`),
writing a real ledger file through the runtime's own effects. `ledger show`, `report
sessions` (table, CSV), `report fhir` and `report plot` then read that file through the
CLI, as a coordinator would; a blinded prescription shows no figure in the drug's unit.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.medicationadministration import MedicationAdministration
from fhir.resources.R4B.observation import Observation

from controller.cli import main
from controller.ledger import LEDGER_FILE_NAME, Ledger
from controller.session import WriteBreathSummary
from tests.dosing._factories import SUBJECT, make_prescription
from tests.session._bed import Bed
from tests.session.test_runtime_breath import CAP_UL, gated, head_11, ready, run_to_end

from .conftest import Course
from .test_plots import png_size

PER_ML = 2.0e8 / 3.0  # the pilot lot: 2.0×10⁸ vesicles in 3 mL
# A number in the lot's unit as the reports print it: 3 significant figures in
# exponent form (1.99e+07) or a long plain float (19933333.3) in CSV/JSON.
_DRUG_UNIT_FIGURE = re.compile(r"\d\.\d+e\+0[5-9]|\d{6,}")


@dataclass(frozen=True)
class GatedLedger:
    data_dir: Path
    session_id: int
    delivered_ul: int
    figures: dict[str, Any]


@pytest.fixture(scope="module")
def gated_ledger(tmp_path_factory: pytest.TempPathFactory) -> GatedLedger:
    """One breath-gated pilot run to its cap (iso27427 breathing), recorded for real."""
    data_dir = tmp_path_factory.mktemp("gated")
    ledger = Ledger.create(data_dir / LEDGER_FILE_NAME, device_id="neb-test", subject_id=SUBJECT)
    with ledger:
        bed = ready(Bed(prescription=gated(), model=head_11("iso27427"), ledger=ledger))
        assert bed.start().started
        ended = run_to_end(bed)
        bed.run_until_true(lambda: bool(bed.of_type(WriteBreathSummary)), timeout_ms=10_000)
        figures = ledger.breath_summary(ended.session_id)
    assert figures is not None
    assert figures["gated"] is True
    assert figures["breaths"] > 0
    return GatedLedger(
        data_dir=data_dir,
        session_id=ended.session_id,
        delivered_ul=ended.delivered_ul,
        figures=figures,
    )


def write_config(directory: Path, data_dir: Path, *, blinded: bool) -> Path:
    """The gated pilot prescription of the session above, blinded or not."""
    path = directory / f"controller-{'blinded' if blinded else 'open'}.toml"
    path.write_text(
        f"""
[device]
port = "/dev/nebuliser"
device_id = "neb-test"
[storage]
data_dir = "{data_dir}"
[prescription]
subject_id = "{SUBJECT}"
protocol_id = "EXO-PILOT-01"
drug = "exosome vesicles (inhaled)"
[prescription.lot]
lot_id = "LOT-2026-0042"
amount = 2.0e8
unit = "vesicles"
per_volume_ml = 3.0
[prescription.arm]
arm_id = "active"
blinded = {"true" if blinded else "false"}
[prescription.limits]
session_ul = 600
[prescription.delivery]
mode = "breath_gated"
gate_pct = 80
lead_breaths = 1
apnoea_s = 5
""",
        encoding="utf-8",
    )
    return path


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    capsys.readouterr()
    assert main(list(args)) == 0
    return capsys.readouterr().out


def test_ledger_show_puts_emitted_and_inspiratory_phase_side_by_side(
    gated_ledger: GatedLedger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, gated_ledger.data_dir, blinded=False)
    out = run_cli(capsys, "ledger", "show", "--config", str(config))
    f = gated_ledger.figures
    breathing = next(line for line in out.splitlines() if "breathing breath-gated:" in line)
    assert f"{f['breaths']} breaths" in breathing
    assert f"rate {f['rate_mean_bpm']:.1f}/min" in breathing
    assert f"waiting {f['waiting_s']:.1f} s" in breathing
    assert f"lost BREATH reports {f['lost_reports']}" in breathing
    aerosol = next(line for line in out.splitlines() if " aerosol " in line)
    emitted_dose = gated_ledger.delivered_ul / 1000 * PER_ML
    assert f"emitted {gated_ledger.delivered_ul} uL = {emitted_dose:.3g} vesicles" in aerosol
    assert (
        f"inspiratory-phase estimate {f['aerosol_insp_ul']:g} uL = "
        f"{f['aerosol_insp_dose']:.3g} vesicles" in aerosol
    )
    assert f"expiratory-phase (to the room) {f['aerosol_exp_ul']:g} uL" in aerosol
    shown = json.loads(run_cli(capsys, "ledger", "show", "--json", "--config", str(config)))
    assert shown[0]["breathing"]["aerosol_insp_dose"] == pytest.approx(f["aerosol_insp_dose"])


def test_csv_appends_the_breath_columns_after_the_existing_ones(
    gated_ledger: GatedLedger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, gated_ledger.data_dir, blinded=False)
    text = run_cli(capsys, "report", "sessions", "--format", "csv", "--config", str(config))
    rows = list(csv.DictReader(io.StringIO(text)))
    header = next(csv.reader(io.StringIO(text)))
    # Existing columns keep their places; the breath columns follow `counted_ul`.
    last_existing = header.index("counted_ul")
    assert header[:3] == ["session_id", "subject_id", "status"]
    assert header[last_existing + 1 :] == [
        "breath_mode",
        "breaths",
        "breath_rate_mean_bpm",
        "breath_rate_min_bpm",
        "breath_rate_max_bpm",
        "tidal_mean_ml",
        "aerosol_insp_ul",
        "aerosol_exp_ul",
        "aerosol_insp_share_pct",
        "aerosol_insp_dose",
        "aerosol_exp_dose",
        "waiting_s",
        "lost_breath_reports",
    ]
    (row,) = rows
    f = gated_ledger.figures
    assert row["breath_mode"] == "breath-gated"
    assert int(row["breaths"]) == f["breaths"]
    assert float(row["breath_rate_min_bpm"]) <= float(row["breath_rate_mean_bpm"])
    assert float(row["breath_rate_mean_bpm"]) <= float(row["breath_rate_max_bpm"])
    assert float(row["tidal_mean_ml"]) == pytest.approx(f["tidal_mean_ml"], abs=0.5)
    assert float(row["aerosol_insp_ul"]) == f["aerosol_insp_ul"]
    assert float(row["aerosol_exp_ul"]) == f["aerosol_exp_ul"]
    assert float(row["aerosol_insp_share_pct"]) >= 95.0
    # Emitted dose and inspiratory-phase estimate side by side, in the lot's unit.
    assert float(row["dose"]) == pytest.approx(gated_ledger.delivered_ul / 1000 * PER_ML, 5e-3)
    assert float(row["aerosol_insp_dose"]) == pytest.approx(f["aerosol_insp_dose"], rel=5e-3)
    assert float(row["waiting_s"]) == pytest.approx(f["waiting_s"], abs=0.05)
    assert int(row["lost_breath_reports"]) == f["lost_reports"]
    table = run_cli(capsys, "report", "sessions", "--config", str(config))
    assert "inspiratory-phase estimate" in table
    assert f"{f['breaths']} breaths" in table


def test_fhir_observation_is_part_of_the_administration_and_validates(
    gated_ledger: GatedLedger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, gated_ledger.data_dir, blinded=False)
    raw = json.loads(
        run_cli(capsys, "report", "fhir", "--subject", SUBJECT, "--config", str(config))
    )
    bundle = Bundle.model_validate(raw)
    assert bundle.entry is not None
    kinds = [e.resource.get_resource_type() for e in bundle.entry if e.resource is not None]
    assert kinds == ["Device", "Medication", "MedicationAdministration", "Observation"]
    administration_entry, observation_entry = raw["entry"][2], raw["entry"][3]
    MedicationAdministration.model_validate(administration_entry["resource"])
    observation = Observation.model_validate(observation_entry["resource"])
    assert observation.partOf is not None
    assert observation.partOf[0].reference == administration_entry["fullUrl"]
    assert observation.status == "final"
    resource = observation_entry["resource"]
    assert resource["device"]["reference"] == raw["entry"][0]["fullUrl"]
    values = {c["code"]["coding"][0]["code"]: c["valueQuantity"] for c in resource["component"]}
    f = gated_ledger.figures
    assert values["breaths"]["value"] == f["breaths"]
    assert values["rate-mean"]["code"] == "/min"
    assert values["aerosol-inspiratory"] == {
        "value": f["aerosol_insp_ul"],
        "unit": "uL",
        "system": "http://unitsofmeasure.org",
        "code": "uL",
    }
    assert values["aerosol-expiratory"]["value"] == f["aerosol_exp_ul"]
    assert values["emitted"]["value"] == gated_ledger.delivered_ul
    assert values["emitted-dose"]["code"] == "{vesicles}"
    assert values["aerosol-inspiratory-dose"]["value"] == pytest.approx(
        f["aerosol_insp_dose"], rel=5e-3
    )
    assert values["waiting"]["value"] == f["waiting_s"]
    assert values["lost-reports"]["value"] == f["lost_reports"]
    rate = next(c for c in resource["component"] if c["code"]["coding"][0]["code"] == "rate-mean")
    assert {"system": "http://loinc.org", "code": "9279-1", "display": "Respiratory rate"} in (
        rate["code"]["coding"]
    )


def test_a_blinded_prescription_shows_no_drug_unit_breath_figure(
    gated_ledger: GatedLedger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(write_config(tmp_path, gated_ledger.data_dir, blinded=True))
    f = gated_ledger.figures
    dose_texts = {f"{d:.3g}" for d in (f["aerosol_insp_dose"], f["aerosol_exp_dose"]) if d}
    # ledger show: the breath lines carry volumes only.
    out = run_cli(capsys, "ledger", "show", "--config", config)
    breath_lines = [line for line in out.splitlines() if "breathing" in line or "aerosol" in line]
    assert len(breath_lines) == 2
    assert f"inspiratory-phase estimate {f['aerosol_insp_ul']:g} uL" in breath_lines[1]
    for line in breath_lines:
        assert "vesicles" not in line
        assert not _DRUG_UNIT_FIGURE.search(line), line
    shown = json.loads(run_cli(capsys, "ledger", "show", "--json", "--config", config))
    assert shown[0]["breathing"]["aerosol_insp_dose"] is None
    assert shown[0]["breathing"]["dose_unit"] is None
    # CSV: the breath dose columns are empty, the volumes are there.
    text = run_cli(capsys, "report", "sessions", "--format", "csv", "--config", config)
    (row,) = csv.DictReader(io.StringIO(text))
    assert row["aerosol_insp_dose"] == ""
    assert row["aerosol_exp_dose"] == ""
    assert float(row["aerosol_insp_ul"]) == f["aerosol_insp_ul"]
    table = run_cli(capsys, "report", "sessions", "--config", config)
    for line in table.splitlines():
        if "breathing" in line or "inspiratory-phase" in line:
            assert not _DRUG_UNIT_FIGURE.search(line), line
            assert not any(d in line for d in dose_texts), line
    # FHIR: the Observation has no component in the drug's unit.
    raw = json.loads(run_cli(capsys, "report", "fhir", "--subject", SUBJECT, "--config", config))
    observation = raw["entry"][3]["resource"]
    Observation.model_validate(observation)
    codes = {c["code"]["coding"][0]["code"] for c in observation["component"]}
    assert "aerosol-inspiratory" in codes
    assert not codes & {"emitted-dose", "aerosol-inspiratory-dose", "aerosol-expiratory-dose"}
    assert "vesicles" not in json.dumps(observation)


def test_session_plot_has_the_breath_strip(
    gated_ledger: GatedLedger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib", reason="plots are the optional extra 'plots'")
    config = write_config(tmp_path, gated_ledger.data_dir, blinded=False)
    out = tmp_path / "gated.png"
    args = ["report", "plot", "--session", str(gated_ledger.session_id), "-o", str(out)]
    run_cli(capsys, *args, "--config", str(config))
    assert png_size(out) == (1200, 700)


def test_a_continuous_run_on_a_breath_aware_head_reports_its_split_and_v1_runs_stay_empty(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], course: Course
) -> None:
    data_dir = tmp_path / "continuous"
    data_dir.mkdir()
    with Ledger.create(
        data_dir / LEDGER_FILE_NAME, device_id="neb-test", subject_id=SUBJECT
    ) as ledger:
        prescription = make_prescription(session_ul=CAP_UL)
        bed = ready(Bed(prescription=prescription, model=head_11(), ledger=ledger))
        assert bed.start().started
        ended = run_to_end(bed)
        bed.run_until_true(lambda: bool(bed.of_type(WriteBreathSummary)), timeout_ms=20_000)
    config = write_config(tmp_path, data_dir, blinded=False)
    text = run_cli(capsys, "report", "sessions", "--format", "csv", "--config", str(config))
    (row,) = csv.DictReader(io.StringIO(text))
    assert row["breath_mode"] == "continuous"
    # ISO 27427 (I:E 1:1): about half of a continuous run is released into the room.
    assert 0.3 * ended.delivered_ul <= float(row["aerosol_exp_ul"]) <= 0.7 * ended.delivered_ul
    assert float(row["aerosol_insp_share_pct"]) < 70
    # A course on a version-1 head has no breath summary: its breath columns are empty.
    text = run_cli(
        capsys, "report", "sessions", "--format", "csv", "--config", str(course.config_path)
    )
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows
    assert all(r["breath_mode"] == "" and r["aerosol_insp_ul"] == "" for r in rows)
    raw = json.loads(
        run_cli(
            capsys, "report", "fhir", "--subject", "PILOT-001", "--config", str(course.config_path)
        )
    )
    assert "Observation" not in {e["resource"]["resourceType"] for e in raw["entry"]}


def write_file_config(directory: Path, data_dir: Path, *, blinded: bool) -> Path:
    """The same prescription as a separate file (`prescription_file`, as on a ward)."""
    inline = write_config(directory, data_dir, blinded=blinded).read_text(encoding="utf-8")
    device, prescription = inline.split("[prescription]", 1)
    rx = directory / f"rx-{'blinded' if blinded else 'open'}.toml"
    rx.write_text("[prescription]" + prescription, encoding="utf-8")
    path = directory / f"ward-{'blinded' if blinded else 'open'}.toml"
    # Unsigned here (a report checks the file as `serve` does: an unsigned file where
    # signatures are required would blind the report, which another test shows).
    security = "[security]\nrequire_signed_prescriptions = false\n"
    path.write_text(f'prescription_file = "{rx}"\n{device}{security}', encoding="utf-8")
    return path


def test_drug_unit_breath_figures_need_a_prescription_known_to_be_unblinded(
    gated_ledger: GatedLedger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def breath_doses(*config: str) -> list[str]:
        text = run_cli(capsys, "report", "sessions", "--format", "csv", *config)
        (row,) = csv.DictReader(io.StringIO(text))
        return [row["aerosol_insp_dose"], row["aerosol_exp_dose"]]

    data_dir = gated_ledger.data_dir
    # The prescription in a separate file (a ward's signed prescription_file) is read too.
    opened = write_file_config(tmp_path, data_dir, blinded=False)
    assert breath_doses("--config", str(opened))[0] != ""
    blinded = write_file_config(tmp_path, data_dir, blinded=True)
    assert breath_doses("--config", str(blinded)) == ["", ""]
    # Without a configuration the report cannot know the study is open: withheld.
    assert breath_doses("--data-dir", str(data_dir)) == ["", ""]
    out = run_cli(capsys, "ledger", "show", "--data-dir", str(data_dir))
    assert "inspiratory-phase estimate" in out
    assert "vesicles" not in "".join(line for line in out.splitlines() if "aerosol" in line)
