"""`nebuliser serve` runs only a pharmacy-signed prescription unless the bench opts out."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.cli import main
from controller.config import (
    ConfigError,
    PrescriptionSourceError,
    load_config,
    load_service_prescription,
)
from controller.security import (
    public_key_to_text,
    sign_prescription_bytes,
    write_prescription_signature,
)

from .conftest import Keys

REPO = Path(__file__).resolve().parents[2]


def _prescription_tables() -> str:
    """The pilot [prescription] tables of config/example.toml, as a stand-alone file."""
    text = (REPO / "config" / "example.toml").read_text("utf-8")
    return text[text.index("[prescription]\n") :]


def _senders(keys: Keys) -> str:
    return f"""[[security.senders]]
id = "pharmacy-1"
public_key = "{public_key_to_text(keys.pharmacy.public_key())}"
role = "pharmacy"
"""


def _signed_rx(tmp_path: Path, keys: Keys, *, key_id: str = "pharmacy-1") -> Path:
    rx = tmp_path / "rx.toml"
    rx.write_text(_prescription_tables(), encoding="utf-8")
    signature = sign_prescription_bytes(rx.read_bytes(), key=keys.pharmacy, key_id=key_id)
    write_prescription_signature(rx, signature)
    return rx


def _config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "controller.toml"
    # Top-level keys (prescription_file) must come before the first [table].
    top, tables = (body, "") if body.startswith("prescription_file") else ("", body)
    top, _, rest = top.partition("\n")
    storage = f'[storage]\ndata_dir = "{tmp_path / "data"}"\n'
    path.write_text(f"{top}\n{storage}{rest}{tables}", encoding="utf-8")
    return path


def test_signed_prescription_file_is_loaded_relative_to_the_config(
    tmp_path: Path, keys: Keys
) -> None:
    _signed_rx(tmp_path, keys)
    config = load_config(_config(tmp_path, f'prescription_file = "rx.toml"\n{_senders(keys)}'))
    assert config.prescription_file == tmp_path / "rx.toml"
    loaded = load_service_prescription(config)
    assert loaded.prescription.subject_id == "PILOT-001"
    assert loaded.signed_by == "pharmacy-1"
    assert loaded.source == str(tmp_path / "rx.toml")


def test_inline_prescription_is_refused_by_default_and_names_the_fix(tmp_path: Path) -> None:
    config = load_config(REPO / "config" / "example.toml")
    assert config.security is None
    with pytest.raises(PrescriptionSourceError, match="prescription_file") as caught:
        load_service_prescription(config)
    assert "require_signed_prescriptions = false" in str(caught.value)
    opted_out = load_config(
        REPO / "config" / "example.toml",
        overrides={"security": {"require_signed_prescriptions": False}},
    )
    loaded = load_service_prescription(opted_out)
    assert loaded.signed_by is None
    assert loaded.source.startswith("inline")


def test_unsigned_file_refused_when_required_and_tampered_file_always(
    tmp_path: Path, keys: Keys
) -> None:
    rx = _signed_rx(tmp_path, keys)
    senders = _senders(keys)
    # Changed after signing: refused even with signatures not required.
    rx.write_text(rx.read_text("utf-8").replace("3000", "6000", 1), encoding="utf-8")
    lax = load_config(
        _config(
            tmp_path,
            'prescription_file = "rx.toml"\n[security]\nrequire_signed_prescriptions = false\n'
            + senders,
        )
    )
    with pytest.raises(PrescriptionSourceError, match="changed after the pharmacy signed"):
        load_service_prescription(lax)
    # No signature file: refused when required (the default).
    (tmp_path / "rx.toml.sig").unlink()
    strict = load_config(_config(tmp_path, f'prescription_file = "rx.toml"\n{senders}'))
    with pytest.raises(PrescriptionSourceError, match="has no signature file"):
        load_service_prescription(strict)
    # Signed by a key that is not a configured pharmacy.
    _signed_rx(tmp_path, keys, key_id="somebody")
    with pytest.raises(PrescriptionSourceError, match="not a configured pharmacy key"):
        load_service_prescription(strict)


def test_prescription_inline_and_as_file_together_is_a_config_error(tmp_path: Path) -> None:
    path = _config(tmp_path, 'prescription_file = "rx.toml"\n' + _prescription_tables())
    with pytest.raises(ConfigError, match="not both"):
        load_config(path)


def test_a_prescription_file_holds_only_the_prescription(tmp_path: Path, keys: Keys) -> None:
    rx = tmp_path / "rx.toml"
    rx.write_text('[device]\nport = "/dev/x"\n' + _prescription_tables(), encoding="utf-8")
    write_prescription_signature(
        rx, sign_prescription_bytes(rx.read_bytes(), key=keys.pharmacy, key_id="pharmacy-1")
    )
    config = load_config(_config(tmp_path, f'prescription_file = "rx.toml"\n{_senders(keys)}'))
    with pytest.raises(PrescriptionSourceError, match="exactly one \\[prescription\\] table"):
        load_service_prescription(config)


def test_serve_exits_5_before_touching_the_device_for_an_unsigned_prescription(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, '[device]\nport = "/dev/does-not-exist"\n' + _prescription_tables())
    assert main(["serve", "--config", str(config)]) == 5
    out = capsys.readouterr().err  # the refusal is an error message: stderr
    assert "signed prescriptions are required" in out
    assert not (tmp_path / "data" / "ledger.sqlite3").exists()


def test_prescription_file_below_a_table_gets_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[storage]\nprescription_file = "rx.toml"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="above the first"):
        load_config(path)


def test_the_lot_table_is_covered_by_the_pharmacy_signature(tmp_path: Path, keys: Keys) -> None:
    """Issue 20: the lot table (arm, cohort, strength, expiry) is part of the signed file."""
    rx = _signed_rx(tmp_path, keys)
    config = load_config(_config(tmp_path, f'prescription_file = "rx.toml"\n{_senders(keys)}'))
    loaded = load_service_prescription(config).prescription
    (row,) = loaded.lots
    assert (row.lot_id, row.arm_id, row.cohort) == ("LOT-2026-0042", "active", "pilot")
    assert loaded.checks.scan_subject
    assert loaded.checks.scan_lot
    # Somebody extends an expired lot's date (or moves it to another cohort) after signing.
    signed = rx.read_text("utf-8")
    for edit in (
        ("expires = 2027-06-03", "expires = 2029-06-03"),
        ('cohort = "pilot"\namount', 'cohort = "c4"\namount'),
    ):
        assert edit[0] in signed
        rx.write_text(signed.replace(*edit), encoding="utf-8")
        with pytest.raises(PrescriptionSourceError, match="changed after the pharmacy signed"):
            load_service_prescription(config)
