"""Reports from a real controller run: `run_service` on the simulator over a real pty."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.medicationadministration import MedicationAdministration

from controller.cli import main
from controller.ledger import LEDGER_FILE_NAME, Ledger
from simulators.mn1 import DeviceModel
from tests.controller.test_service_pty import FAST_UL_MIN, bed, start_confirmed, wait_status

from .test_plots import png_size


@pytest.mark.slow
async def test_reports_from_a_simulated_session(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = DeviceModel(nominal_ul_min=FAST_UL_MIN, fill_ul=3000, serial="SIM-REP", seed=5)
    async with bed(tmp_path, model, session_ul=200) as (config, _sim):
        reply = await start_confirmed(config)
        assert reply["started"], reply
        await wait_status(config, lambda s: s["session"] is None and s["last_session"], 20)
    config_path = str(tmp_path / "controller.toml")
    with Ledger.open(config.storage.data_dir / LEDGER_FILE_NAME, read_only=True) as ledger:
        totals = ledger.totals("TEST-001")
    assert totals.sessions == 1
    assert 0 < totals.delivered_ul <= 200

    assert main(["report", "sessions", "--format", "csv", "--config", config_path]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert sum(int(r["delivered_ul"]) for r in rows) == totals.delivered_ul
    assert rows[0]["dose_unit"] == "vesicles"
    assert rows[0]["end_reason"] in ("cap_predicted", "cap_reached", "TARGET_REACHED")

    assert main(["report", "fhir", "--subject", "TEST-001", "--config", config_path]) == 0
    bundle = Bundle.model_validate(json.loads(capsys.readouterr().out))
    assert bundle.entry is not None
    administration = MedicationAdministration.model_validate(bundle.entry[-1].resource)
    assert administration.status == "completed"

    out = tmp_path / "session.png"
    assert main(["report", "plot", "--session", "1", "-o", str(out), "--config", config_path]) == 0
    assert png_size(out) == (1200, 700)
