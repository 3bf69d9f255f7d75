"""Coordinators' reports of a blinded arm (issue 20): blinded by default; unblinded
only with a coordinator's signed credential (the envelope of remote commands, a key
listed in the signed prescription); every attempt, granted or refused, audited."""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from controller.cli import main
from controller.config import load_config
from controller.dosing import Instant
from controller.exitcodes import ExitCode
from controller.ledger import LEDGER_FILE_NAME, EndSource, Ledger
from controller.reports import CoursePlotData, read_sessions, report_context
from controller.security import (
    AUDIT_DB_NAME,
    SecuritySettings,
    generate_key_files,
    load_private_key,
    public_key_to_text,
    sign_prescription_bytes,
    sign_unblinding,
    verify_audit_log,
    write_prescription_signature,
)

SUBJECT: Final = "TRIAL-007"
DEVICE: Final = "neb-ward3-bed12"
DRUG: Final = "exosome vesicles (inhaled)"
LOT: Final = "LOT-2026-0042"
ARM: Final = "arm-A-exo"
COHORT: Final = "cohort-2"
PER_ML: Final = 2.0e8 / 3.0
#: What a blinded report must never contain: names, unit, concentration, and the dose
#: of each session (2990 µL x 6.67e7/mL = 1.99e8), in every way a report prints them.
SECRETS: Final = (
    DRUG, LOT, ARM, COHORT, "vesicles", "6.67e+07", "6.67e7", "66666666",
    "1.99e+08", "1.99e8", "199000000", "199333333", "3.99e+08", "3.99e8", "398000000",
)  # fmt: skip
COORDINATOR: Final = Ed25519PrivateKey.generate()
COORDINATOR_ID: Final = "coord-lee"
COORDINATOR_NAME: Final = "Dr Sam Lee"


@dataclass
class Bed:
    config_path: Path
    data_dir: Path


PHARMACY: Final = Ed25519PrivateKey.generate()


def _prescription_text(unblinding_keys: str) -> str:
    return f"""[prescription]
subject_id = "{SUBJECT}"
protocol_id = "EXO-RCT-02"
drug = "{DRUG}"
timezone = "UTC"
[prescription.lot]
lot_id = "{LOT}"
amount = 2.0e8
unit = "vesicles"
per_volume_ml = 3.0
[prescription.arm]
arm_id = "{ARM}"
cohort = "{COHORT}"
blinded = true
[prescription.limits]
session_ul = 3000
session_dose = 2.0e8
rolling_24h_max_ul = 3000
course_max_dose = 1.0e9
{unblinding_keys}
"""


def _write_ward_config(directory: Path, data_dir: Path, *, unblinding_keys: str) -> Path:
    """As on a ward: the prescription in its own file, signed by the pharmacy."""
    rx = directory / "rx.toml"
    rx.write_text(_prescription_text(unblinding_keys), encoding="utf-8")
    write_prescription_signature(
        rx, sign_prescription_bytes(rx.read_bytes(), key=PHARMACY, key_id="pharmacy-1")
    )
    config_path = directory / "controller.toml"
    config_path.write_text(
        f"""prescription_file = "{rx}"
[device]
port = "/dev/nebuliser"
device_id = "{DEVICE}"
[storage]
data_dir = "{data_dir}"
[security]
[[security.senders]]
id = "pharmacy-1"
public_key = "{public_key_to_text(PHARMACY.public_key())}"
role = "pharmacy"
""",
        encoding="utf-8",
    )
    return config_path


def _keys_toml(key: Ed25519PrivateKey = COORDINATOR) -> str:
    return f"""
[[prescription.unblinding_keys]]
id = "{COORDINATOR_ID}"
public_key = "{public_key_to_text(key.public_key())}"
name = "{COORDINATOR_NAME}"
"""


@pytest.fixture
def bed(tmp_path: Path) -> Bed:
    """A blinded subject's bed with two recorded sessions (drug and concentration in
    the ledger, as the controller records them at each intent)."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    start = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    with Ledger.create(
        data_dir / LEDGER_FILE_NAME, device_id=DEVICE, subject_id=SUBJECT, progress_interval_ms=0
    ) as ledger:
        for day in range(2):
            at = start + timedelta(days=day)
            sid = ledger.record_intent(
                subject_id=SUBJECT,
                planned_cap_ul=3000,
                device_target_ul=3000,
                device_max_duration_s=1200,
                output_pct=100,
                decision_trace={"allowed": True},
                at=Instant(utc=at, boot_id="b", monotonic_ns=day * 10**12 + 1),
                drug=DRUG,
                concentration_per_ml=PER_ML,
            )
            ledger.record_started(
                sid, at=Instant(utc=at, boot_id="b", monotonic_ns=day * 10**12 + 2)
            )
            ledger.record_ended(
                sid,
                delivered_ul=2990,
                duration_ms=450_000,
                reason="cap_predicted",
                source=EndSource.HOST,
                at=Instant(
                    utc=at + timedelta(minutes=8), boot_id="b", monotonic_ns=day * 10**12 + 3
                ),
            )
    config_path = _write_ward_config(tmp_path, data_dir, unblinding_keys=_keys_toml())
    return Bed(config_path=config_path, data_dir=data_dir)


def _report(bed: Bed, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["report", *args, "--config", str(bed.config_path)])
    out = capsys.readouterr()
    return code, out.out, out.err


def _credential(
    tmp_path: Path,
    *,
    key: Ed25519PrivateKey = COORDINATOR,
    report: str = "sessions",
    subject: str = SUBJECT,
    issued_at_ms: int | None = None,
    validity_s: int = 60,
) -> Path:
    now_ms = int(time.time() * 1000) if issued_at_ms is None else issued_at_ms
    raw = sign_unblinding(
        key=key,
        key_id=COORDINATOR_ID,
        device_id=DEVICE,
        subject_id=subject,
        report=report,  # type: ignore[arg-type] # the tests also pass the literal names
        reason="DSMB safety review 3",
        issued_at_ms=now_ms,
        validity_s=validity_s,
    )
    path = tmp_path / f"unblind-{now_ms}-{report}.json"
    path.write_bytes(raw)
    return path


def _audit_rows(bed: Bed) -> list[dict[str, Any]]:
    path = bed.data_dir / AUDIT_DB_NAME
    if not path.exists():
        return []
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT time_utc, body_json FROM audit_log WHERE kind = 'unblinding' ORDER BY idx"
        ).fetchall()
    return [json.loads(body) | {"time_utc": time_utc} for time_utc, body in rows]


def _no_secret(text: str) -> None:
    found = [s for s in SECRETS if s in text]
    assert not found, f"blinded report names {found}:\n{text}"


@pytest.mark.parametrize(
    "args",
    [
        ("sessions",),
        ("sessions", "--format", "csv"),
        ("sessions", "--format", "json"),
        ("fhir", "--subject", SUBJECT),
    ],
)
def test_a_blinded_arms_report_names_no_drug_lot_arm_or_dose_by_default(
    bed: Bed, capsys: pytest.CaptureFixture[str], args: tuple[str, ...]
) -> None:
    code, out, err = _report(bed, capsys, *args)
    assert code == ExitCode.OK, err
    _no_secret(out)
    assert "study medication" in out
    assert "2990" in out  # volumes are the same on every arm and stay
    assert _audit_rows(bed) == []  # nothing was unblinded, nothing to audit


def test_the_blinded_course_plot_is_in_volume_against_the_volume_limits(bed: Bed) -> None:
    config = load_config(bed.config_path)
    context = report_context(config)
    with Ledger.open(bed.data_dir / LEDGER_FILE_NAME, read_only=True) as ledger:
        sessions = read_sessions(ledger)
    data = CoursePlotData.from_sessions(sessions, context)
    assert data.delivered_dose == (2990.0, 2990.0)  # µL, not vesicles
    assert (context.dose_unit, context.daily_dose_limit, context.course_dose_limit) == (
        "µL",
        3000.0,
        None,
    )


def test_unblinded_without_a_credential_is_refused_and_audited(
    bed: Bed, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _report(bed, capsys, "sessions", "--unblinded")
    assert code == ExitCode.REFUSED
    assert out == ""
    assert "unblinded report refused" in err
    assert "sign-unblinding" in err  # how to get one
    [row] = _audit_rows(bed)
    assert row["outcome"] == "refused"
    assert row["code"] == "no_credential"
    assert row["report"] == "sessions"
    assert row["subject_id"] == SUBJECT
    assert row["peer"]["pid"] > 0
    assert "uid" in row["peer"]


def test_a_valid_credential_unblinds_one_report_and_the_audit_names_who(
    bed: Bed, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    credential = _credential(tmp_path)
    code, out, err = _report(
        bed, capsys, "sessions", "--unblinded", "--unblind-credential", str(credential)
    )
    assert code == ExitCode.OK, err
    for shown in (DRUG, LOT, ARM, COHORT):
        assert shown in out
    [row] = _audit_rows(bed)
    assert row["outcome"] == "granted"
    assert row["signed_by"] == f"{COORDINATOR_NAME} (key {COORDINATOR_ID})"
    assert row["purpose"] == "DSMB safety review 3"
    assert row["report"] == "sessions"
    assert row["peer"]["pid"] > 0
    assert verify_audit_log(bed.data_dir / AUDIT_DB_NAME).ok
    # One credential, one report: the same file again is a replay.
    code, out, err = _report(
        bed, capsys, "sessions", "--unblinded", "--unblind-credential", str(credential)
    )
    assert code == ExitCode.REFUSED
    _no_secret(out + err)
    assert [r["outcome"] for r in _audit_rows(bed)] == ["granted", "refused"]


def test_the_unblinded_fhir_export_names_the_lot_and_the_arm(
    bed: Bed, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    credential = _credential(tmp_path, report="fhir")
    code, out, err = _report(
        bed,
        capsys,
        "fhir",
        "--subject",
        SUBJECT,
        "--unblinded",
        "--unblind-credential",
        str(credential),
    )
    assert code == ExitCode.OK, err
    bundle = json.loads(out)
    medication = bundle["entry"][1]["resource"]
    assert medication["batch"] == {"lotNumber": LOT}
    assert DRUG in medication["code"]["text"]
    assert ARM in medication["code"]["text"]


@pytest.mark.parametrize(
    ("make", "code_expected"),
    [
        # Signed by a key the prescription does not list, under a listed id: a forgery.
        (lambda p: _credential(p, key=Ed25519PrivateKey.generate()), "bad_signature"),
        # Issued 5 minutes ago, valid 60 s.
        (
            lambda p: _credential(p, issued_at_ms=int(time.time() * 1000) - 300_000),
            "expired",
        ),
        (lambda p: _credential(p, report="fhir"), "wrong_report"),
        (lambda p: _credential(p, subject="TRIAL-999"), "wrong_subject"),
    ],
    ids=["forged", "expired", "other_report", "other_subject"],
)
def test_a_forged_expired_or_mismatched_credential_is_refused_and_audited(
    bed: Bed,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    make: Any,
    code_expected: str,
) -> None:
    credential = make(tmp_path)
    code, out, err = _report(
        bed, capsys, "sessions", "--unblinded", "--unblind-credential", str(credential)
    )
    assert code == ExitCode.REFUSED
    assert out == ""
    _no_secret(err)
    assert code_expected in err
    [row] = _audit_rows(bed)
    assert (row["outcome"], row["code"]) == ("refused", code_expected)
    assert verify_audit_log(bed.data_dir / AUDIT_DB_NAME).ok


def test_the_coordinator_signs_with_the_cli_and_the_key_file(
    bed: Bed, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    private_path, _public = generate_key_files(out_dir=tmp_path / "keys", name=COORDINATOR_ID)
    key = load_private_key(private_path)
    _write_ward_config(bed.config_path.parent, bed.data_dir, unblinding_keys=_keys_toml(key))
    credential = tmp_path / "unblind.json"
    code = main(
        [
            "report",
            "sign-unblinding",
            "--key",
            str(private_path),
            "--key-id",
            COORDINATOR_ID,
            "--device",
            DEVICE,
            "--subject",
            SUBJECT,
            "--report",
            "sessions",
            "--reason",
            "final analysis",
            "-o",
            str(credential),
        ]
    )
    assert code == ExitCode.OK
    code, out, err = _report(
        bed, capsys, "sessions", "--format", "csv", "--unblinded", "--unblind-credential",
        str(credential),
    )  # fmt: skip
    assert code == ExitCode.OK, err
    assert LOT in out


def test_a_prescription_without_unblinding_keys_cannot_be_unblinded(
    bed: Bed, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    _write_ward_config(bed.config_path.parent, bed.data_dir, unblinding_keys="")
    code, out, err = _report(
        bed, capsys, "sessions", "--unblinded", "--unblind-credential", str(_credential(tmp_path))
    )
    assert code == ExitCode.REFUSED
    assert out == ""
    assert "lists no unblinding_keys" in err
    assert _audit_rows(bed)[0]["code"] == "no_unblinding_keys"


def test_an_unblinding_key_cannot_be_added_in_the_controllers_configuration() -> None:
    with pytest.raises(ValidationError, match="signed prescription"):
        SecuritySettings.model_validate(
            {
                "senders": [
                    {
                        "id": COORDINATOR_ID,
                        "public_key": public_key_to_text(COORDINATOR.public_key()),
                        "role": "unblinding",
                        "name": COORDINATOR_NAME,
                    }
                ]
            }
        )


def test_an_unblinding_that_cannot_be_audited_shows_nothing(
    bed: Bed, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (bed.data_dir / AUDIT_DB_NAME).mkdir()  # the audit log cannot be opened
    credential = _credential(tmp_path)
    code, out, err = _report(
        bed, capsys, "sessions", "--unblinded", "--unblind-credential", str(credential)
    )
    assert code == ExitCode.REFUSED
    assert out == ""
    assert "audit_failed" in err
    assert "nothing is unblinded" in err


def test_the_course_plot_is_drawn_blinded_and_unblinded_with_a_credential(
    bed: Bed, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    blinded_png, unblinded_png = tmp_path / "blinded.png", tmp_path / "unblinded.png"
    code, _out, err = _report(bed, capsys, "plot", "--subject", SUBJECT, "-o", str(blinded_png))
    assert code == ExitCode.OK, err
    credential = _credential(tmp_path, report="plot")
    code, _out, err = _report(
        bed, capsys, "plot", "--subject", SUBJECT, "-o", str(unblinded_png),
        "--unblinded", "--unblind-credential", str(credential),
    )  # fmt: skip
    assert code == ExitCode.OK, err
    assert blinded_png.stat().st_size > 0
    assert unblinded_png.read_bytes() != blinded_png.read_bytes()  # µL versus vesicles
    assert [r["report"] for r in _audit_rows(bed)] == ["plot"]


def test_a_prescription_file_edited_after_signing_blinds_the_report_and_unblinds_nothing(
    bed: Bed, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    rx = bed.config_path.parent / "rx.toml"
    rx.write_text(rx.read_text(encoding="utf-8").replace("blinded = true", "blinded = false"))
    code, out, err = _report(bed, capsys, "sessions", "--format", "csv")
    assert code == ExitCode.OK, err
    _no_secret(out)  # it might be a blinded study: fail closed
    code, out, err = _report(
        bed, capsys, "sessions", "--unblinded", "--unblind-credential", str(_credential(tmp_path))
    )
    assert code == ExitCode.REFUSED
    assert out == ""
    assert "no_prescription" in err
    assert _audit_rows(bed)[0]["code"] == "no_prescription"


def test_unblinding_keys_of_an_unsigned_inline_prescription_are_not_believed(
    bed: Bed, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = bed.config_path.read_text(encoding="utf-8").split("\n", 1)[1]  # no file
    rx = (bed.config_path.parent / "rx.toml").read_text(encoding="utf-8")
    bed.config_path.write_text(config + rx, encoding="utf-8")  # inline, unsigned
    code, out, err = _report(
        bed, capsys, "sessions", "--unblinded", "--unblind-credential", str(_credential(tmp_path))
    )
    assert code == ExitCode.REFUSED
    assert out == ""
    assert "no_prescription" in err
    code, out, err = _report(bed, capsys, "sessions")
    assert code == ExitCode.OK, err
    _no_secret(out)  # the inline table says blinded: the report is blinded
