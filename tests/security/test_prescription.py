"""Signed prescription files: detached .sig next to the TOML."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.security import (
    PrescriptionSignatureError,
    load_verified_prescription_bytes,
    sign_prescription_bytes,
    signature_path_for,
    write_prescription_signature,
)
from tests.security.conftest import Keys

RX = b'drug = "salbutamol"\nvolume_ul = 2500\n'


def _signed(tmp_path: Path, keys: Keys) -> Path:
    path = tmp_path / "rx.toml"
    path.write_bytes(RX)
    write_prescription_signature(
        path, sign_prescription_bytes(RX, key=keys.pharmacy, key_id="pharmacy-1")
    )
    return path


def test_signed_file_loads_its_exact_bytes(tmp_path: Path, keys: Keys) -> None:
    path = _signed(tmp_path, keys)
    assert signature_path_for(path).name == "rx.toml.sig"
    data = load_verified_prescription_bytes(
        path, pharmacy_keys={"pharmacy-1": keys.pharmacy.public_key()}, require_signed=True
    )
    assert data == RX


def test_unsigned_file_refused_when_required_and_loaded_when_not(
    tmp_path: Path, keys: Keys
) -> None:
    path = tmp_path / "rx.toml"
    path.write_bytes(RX)
    pharmacy = {"pharmacy-1": keys.pharmacy.public_key()}
    with pytest.raises(PrescriptionSignatureError, match=r"no signature file rx\.toml\.sig"):
        load_verified_prescription_bytes(path, pharmacy_keys=pharmacy, require_signed=True)
    assert (
        load_verified_prescription_bytes(path, pharmacy_keys=pharmacy, require_signed=False) == RX
    )


def test_edited_file_is_refused_even_when_not_required(tmp_path: Path, keys: Keys) -> None:
    path = _signed(tmp_path, keys)
    path.write_bytes(RX.replace(b"2500", b"9500"))
    pharmacy = {"pharmacy-1": keys.pharmacy.public_key()}
    for required in (True, False):
        with pytest.raises(PrescriptionSignatureError, match="changed after the pharmacy signed"):
            load_verified_prescription_bytes(path, pharmacy_keys=pharmacy, require_signed=required)


def test_signature_by_another_key_is_refused(tmp_path: Path, keys: Keys) -> None:
    path = tmp_path / "rx.toml"
    path.write_bytes(RX)
    write_prescription_signature(
        path, sign_prescription_bytes(RX, key=keys.ward, key_id="pharmacy-1")
    )
    with pytest.raises(PrescriptionSignatureError, match="does not verify"):
        load_verified_prescription_bytes(
            path, pharmacy_keys={"pharmacy-1": keys.pharmacy.public_key()}, require_signed=True
        )


def test_unknown_pharmacy_key_is_named(tmp_path: Path, keys: Keys) -> None:
    path = _signed(tmp_path, keys)
    with pytest.raises(PrescriptionSignatureError, match="'pharmacy-1', which is not a configured"):
        load_verified_prescription_bytes(path, pharmacy_keys={}, require_signed=True)


def test_garbage_signature_file_is_refused(tmp_path: Path, keys: Keys) -> None:
    path = _signed(tmp_path, keys)
    signature_path_for(path).write_text(json.dumps({"key_id": 5}))
    with pytest.raises(PrescriptionSignatureError, match="not a valid prescription signature"):
        load_verified_prescription_bytes(
            path, pharmacy_keys={"pharmacy-1": keys.pharmacy.public_key()}, require_signed=True
        )


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PrescriptionSignatureError, match="cannot read prescription file"):
        load_verified_prescription_bytes(
            tmp_path / "none.toml", pharmacy_keys={}, require_signed=False
        )
