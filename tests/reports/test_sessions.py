"""`nebuliser report sessions`: the CSV, JSON and table agree with the ledger's totals."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from controller.cli import main
from controller.exitcodes import ExitCode
from controller.ledger import Ledger

from .conftest import OTHER, PER_ML, SUBJECT, Course


def _report(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["report", "sessions", *args]) == 0
    return capsys.readouterr().out


def test_csv_totals_match_the_ledger(course: Course, capsys: pytest.CaptureFixture[str]) -> None:
    text = _report(
        capsys, "--subject", SUBJECT, "--format", "csv", "--config", str(course.config_path)
    )
    rows = list(csv.DictReader(io.StringIO(text)))
    with Ledger.open(course.ledger_path, read_only=True) as ledger:
        totals = ledger.totals(SUBJECT)
        history = ledger.history(SUBJECT)
    assert len(rows) == len(history) == 5
    assert sum(int(r["delivered_ul"] or 0) for r in rows) == totals.delivered_ul
    assert sum(int(r["counted_ul"]) for r in rows) == totals.counted_ul
    assert [r["ledger_status"] for r in rows] == [h.status.value for h in history]
    assert [r["status"] for r in rows] == [
        "completed",
        "partial (operator_stop:nurse)",
        "refused (HEAD_DISCONNECTED)",
        "partial (controller_restart, reconciled from device_session_end)",
        "uncertain (controller_restart)",
    ]
    # Dose in the lot's unit: µL / 1000 × vesicles per mL.
    first = rows[0]
    assert first["dose_unit"] == "vesicles"
    assert float(first["dose"]) == float(f"{2990 / 1000 * PER_ML:.3g}")  # 3 significant figures
    assert first["start_local"] == "2026-11-20T09:00:00+00:00"  # Europe/London, with offset
    assert first["end_reason"] == "cap_predicted"
    assert first["start_utc"].startswith("2026-11-20T09:00:00.5")
    assert first["end_utc"] > first["start_utc"]
    assert rows[1]["alarms"] == "OUTPUT_LOW"
    assert rows[1]["end_reason"] == "operator_stop:nurse"
    assert rows[2]["start_utc"] == ""  # refused: never started
    assert rows[2]["end_reason"] == "START_NAK:HEAD_DISCONNECTED"
    # Recorded just after the refusal without a session id, reported with the session.
    assert rows[2]["alarms"] == "device_head_disconnected"
    assert "storage_low" not in text
    # The subject-level override is shown on the session it admitted.
    assert rows[3]["overrides"] == "investigator: protocol deviation approved (interval)"
    assert (rows[3]["uncertain"], rows[3]["reconciled"]) == ("True", "True")
    assert rows[3]["delivered_ul"] == "1000"
    assert (rows[4]["uncertain"], rows[4]["reconciled"]) == ("True", "False")
    assert rows[4]["counted_ul"] == "3000"  # the full planned cap while unknown


def test_json_and_since_filter(course: Course, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--format", "json", "--data-dir", str(course.data_dir)]
    everything = json.loads(_report(capsys, *args))
    assert {r["subject_id"] for r in everything} == {SUBJECT, OTHER}
    recent = json.loads(_report(capsys, *args, "--since", "2026-11-22"))
    assert [r["session_id"] for r in recent] == [4, 5, 6]
    assert recent[1]["delivered_ul"] == 400  # last progress before the restart
    assert recent[1]["counted_ul"] == 3000
    # Without --config the unit is unknown but the dose still follows from the ledger.
    assert recent[0]["dose_unit"] == "units"
    assert recent[0]["dose"] == pytest.approx(1000 / 1000 * PER_ML, rel=5e-3)


def test_table_shows_flags_and_totals(
    course: Course, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "sessions.txt"
    assert main(["report", "sessions", "--config", str(course.config_path), "-o", str(out)]) == 0
    table = out.read_text(encoding="utf-8")
    assert "UNCERTAIN unreconciled" in table
    assert "alarms OUTPUT_LOW" in table
    assert f"{SUBJECT}: 5 session(s), 5890 uL delivered" in table
    assert "8490 uL count against limits" in table


def test_missing_ledger_names_the_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["report", "sessions", "--data-dir", str(tmp_path / "nowhere")])
    assert code == ExitCode.LEDGER
    assert "--config FILE or --data-dir DIR" in capsys.readouterr().err
