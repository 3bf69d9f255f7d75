"""One status vocabulary: CSV, table, FHIR and the plot title say the same words.

A dose stopped by a fault at 712 of 3000 µL reads "partial (FAULT)" in all four; a
"fill 3000 µL, nebulise to dryness" dose that ran dry at 2900 µL reads "completed to
dryness"; one that ran dry at 1500 µL is "partial (RESERVOIR_EMPTY)". Doses have 3
significant figures; times are in the prescription's zone with the UTC offset.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle

from controller.cli import main
from controller.config import load_config
from controller.dosing import Instant
from controller.ledger import LEDGER_FILE_NAME, EndSource, Ledger
from controller.reports import (
    AdministrationStatus,
    plot_session,
    read_progress,
    read_sessions,
    report_context,
    session_title,
)

SUBJECT = "WARD-001"
T0 = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)  # 09:00 in Berlin (UTC+01:00)
EXPECTED = [
    "partial (FAULT)",  # the head stopped itself on a fault
    "partial (FAULT)",  # the host stopped it on the fault bit first
    "completed to dryness",
    "partial (RESERVOIR_EMPTY)",
]


def _instant(seconds: float) -> Instant:
    return Instant(
        utc=T0 + timedelta(seconds=seconds), boot_id="boot-v", monotonic_ns=int(seconds * 1e9)
    )


def _session(
    ledger: Ledger,
    day: float,
    delivered_ul: int,
    reason: str,
    *,
    administration_id: int | None = None,
    **ended: Any,
) -> int:
    start_s = day * 86_400
    sid = ledger.record_intent(
        administration_id=administration_id,
        subject_id=SUBJECT,
        planned_cap_ul=3000,
        device_target_ul=3000,
        device_max_duration_s=1200,
        output_pct=100,
        decision_trace={"allowed": True},
        at=_instant(start_s),
        drug="exosome vesicles (inhaled)",
        concentration_per_ml=2.0e8 / 3.0,
    )
    ledger.record_started(sid, at=_instant(start_s + 0.5))
    ledger.record_ended(
        sid, delivered_ul=delivered_ul, duration_ms=300_000, reason=reason,
        at=_instant(start_s + 300), **ended,
    )  # fmt: skip
    return sid


@pytest.fixture
def ward(tmp_path: Path) -> Path:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with Ledger.create(
        data_dir / LEDGER_FILE_NAME,
        device_id="neb-test",
        subject_id="S-001",
        progress_interval_ms=0,
    ) as ledger:
        _session(ledger, 0, 712, "FAULT", source=EndSource.DEVICE, device_reason="FAULT")
        _session(
            ledger, 1, 712, "device_fault", source=EndSource.HOST,
            host_reason="device_fault", device_reason="HOST_STOP",
        )  # fmt: skip
        _session(
            ledger, 2, 2900, "RESERVOIR_EMPTY", source=EndSource.DEVICE,
            device_reason="RESERVOIR_EMPTY",
        )  # fmt: skip
        _session(
            ledger, 3, 1500, "RESERVOIR_EMPTY", source=EndSource.DEVICE,
            device_reason="RESERVOIR_EMPTY",
        )  # fmt: skip
    return _ward_config(tmp_path, data_dir)


def _ward_config(tmp_path: Path, data_dir: Path) -> Path:
    config = tmp_path / "controller.toml"
    config.write_text(
        f"""
[device]
port = "/dev/nebuliser"
device_id = "neb-ward"
[storage]
data_dir = "{data_dir}"
[prescription]
subject_id = "{SUBJECT}"
protocol_id = "EXO-PILOT-01"
drug = "exosome vesicles (inhaled)"
timezone = "Europe/Berlin"
[prescription.lot]
lot_id = "LOT-V"
amount = 2.0e8
unit = "vesicles"
per_volume_ml = 3.0
[prescription.arm]
arm_id = "active"
blinded = false
[prescription.limits]
session_ul = 3000
[prescription.delivery]
fill_ul = 3000
residual_ul = 100
""",
        encoding="utf-8",
    )
    return config


def _out(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(list(args)) == 0
    return capsys.readouterr().out


def test_csv_table_fhir_and_plot_use_the_same_words(
    ward: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    csv_text = _out(capsys, "report", "sessions", "--format", "csv", "--config", str(ward))
    rows = list(csv.DictReader(io.StringIO(csv_text)))
    assert [r["status"] for r in rows] == EXPECTED
    assert rows[0]["dose"] == "47500000.0"  # 712 µL × 2e8/3000 µL = 47466666.67 → 3 figures
    assert rows[0]["start_local"] == "2026-11-20T09:00:00+01:00"

    table = _out(capsys, "report", "sessions", "--config", str(ward))
    lines = [line for line in table.splitlines() if line.strip()[:1].isdigit()]
    for line, label in zip(lines, EXPECTED, strict=True):
        assert label in line, line
    assert "4.75e+07" in lines[0]
    assert "2026-11-20 09:00+01:00" in lines[0]
    assert "times in Europe/Berlin with their UTC offset" in table

    bundle_path = tmp_path / "bundle.json"
    fhir = ["report", "fhir", "--subject", SUBJECT, "--config", str(ward)]
    assert main([*fhir, "-o", str(bundle_path)]) == 0
    raw = json.loads(bundle_path.read_text(encoding="utf-8"))
    Bundle.model_validate(raw)
    administrations = [e["resource"] for e in raw["entry"][2:]]
    assert [a["status"] for a in administrations] == ["stopped", "stopped", "completed", "stopped"]
    texts = [
        a["statusReason"][0]["text"] if "statusReason" in a else a["note"][0]["text"]
        for a in administrations
    ]
    for text, label in zip(texts, EXPECTED, strict=True):
        assert text.startswith(label), text
    assert administrations[0]["dosage"]["dose"]["value"] == 4.75e7
    assert administrations[0]["effectivePeriod"]["start"] == "2026-11-20T09:00:00+01:00"

    config = load_config(ward)
    context = report_context(config)
    with Ledger.open(config.storage.data_dir / LEDGER_FILE_NAME, read_only=True) as ledger:
        sessions = read_sessions(ledger)
        progress = read_progress(ledger, 1)
    titles = [session_title(s, context) for s in sessions]
    for title, label in zip(titles, EXPECTED, strict=True):
        assert f": {label} (start" in title, title
    assert titles[0].endswith("(start 2026-11-20 09:00:00+01:00 Europe/Berlin)")
    pytest.importorskip("matplotlib")  # the plot itself needs the optional extra
    plot_session(sessions[0], progress, tmp_path / "s1.png", context=context)
    assert (tmp_path / "s1.png").stat().st_size > 0


def test_the_vocabulary_is_one_enum() -> None:
    assert [s.value for s in AdministrationStatus] == [
        "completed",
        "completed to dryness",
        "partial",
        "continued",
        "refused",
        "uncertain",
        "in progress",
    ]
    assert {s.fhir_status for s in AdministrationStatus} <= {
        "completed", "stopped", "not-done", "unknown", "in-progress",
    }  # fmt: skip


def test_a_continued_dose_is_one_administration_in_the_fhir_bundle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 15: run 1 stopped on a fault at 712 µL, run 2 (its continuation, 10 min
    later) gave the rest. FHIR shows run 2 `partOf` run 1; both say what happened."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with Ledger.create(
        data_dir / LEDGER_FILE_NAME, device_id="neb-test", subject_id="S-001"
    ) as ledger:
        first = _session(ledger, 0, 712, "FAULT", source=EndSource.DEVICE, device_reason="FAULT")
        second = _session(
            ledger, 600 / 86_400, 2288, "TARGET_REACHED", administration_id=first,
            source=EndSource.DEVICE, device_reason="TARGET_REACHED",
        )  # fmt: skip
    ward = _ward_config(tmp_path, data_dir)
    bundle_path = tmp_path / "bundle.json"
    fhir = ["report", "fhir", "--subject", SUBJECT, "--config", str(ward)]
    assert main([*fhir, "-o", str(bundle_path)]) == 0
    raw = json.loads(bundle_path.read_text(encoding="utf-8"))
    Bundle.model_validate(raw)
    urls = {e["resource"].get("id"): e["fullUrl"] for e in raw["entry"]}
    run1, run2 = (e["resource"] for e in raw["entry"][2:])
    assert run1["identifier"][0]["value"] == str(first)
    assert "partOf" not in run1
    assert run1["statusReason"][0]["text"].startswith("continued")
    assert run2["identifier"][0]["value"] == str(second)
    assert run2["partOf"] == [
        {"reference": urls[f"session-{first}"], "type": "MedicationAdministration"}
    ]
    # Exported alone, the continuation still names its first run (by ledger identifier).
    assert main([*fhir, "--since", "2026-11-20T08:05:00Z", "-o", str(bundle_path)]) == 0
    (alone,) = (e["resource"] for e in json.loads(bundle_path.read_text())["entry"][2:])
    assert alone["partOf"][0]["identifier"]["value"] == str(first)
    capsys.readouterr()
