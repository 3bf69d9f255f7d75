"""Pharmacy-signed prescription files.

A prescription file ``rx.toml`` is signed with a *detached* signature file
``rx.toml.sig`` next to it (the TOML stays byte-for-byte what the pharmacist
wrote). The .sig file is JSON::

    {"format": "nebuliser-prescription-signature", "v": 1,
     "key_id": "pharmacy-1", "sha256": "<hex of the TOML bytes>",
     "signature": "<base64 Ed25519 signature>"}

The signature is Ed25519 over ``b"nebuliser-prescription-v1\\x00" + <TOML bytes>``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # cryptography is imported only where a key is used (_keys.py)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from controller.security._canonical import PRESCRIPTION_DOMAIN, decode_signature_b64

__all__ = [
    "MAX_PRESCRIPTION_BYTES",
    "PrescriptionSignature",
    "PrescriptionSignatureError",
    "load_verified_prescription_bytes",
    "sign_prescription_bytes",
    "signature_path_for",
    "verify_prescription_signature",
    "write_prescription_signature",
]

MAX_PRESCRIPTION_BYTES = 32768
_MAX_SIG_FILE_BYTES = 4096
_SIG_FORMAT = "nebuliser-prescription-signature"


class PrescriptionSignatureError(ValueError):
    """A prescription is unsigned, wrongly signed or unreadable; the message says which."""


class PrescriptionSignature(BaseModel):
    """The content of a detached ``.sig`` file (also embedded in prescription.update)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    format: str = Field(default=_SIG_FORMAT, pattern=f"^{_SIG_FORMAT}$")
    v: int = Field(default=1, ge=1, le=1)
    key_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    signature: str = Field(min_length=86, max_length=88)


def signature_path_for(prescription_path: Path) -> Path:
    """``rx.toml`` → ``rx.toml.sig``."""
    return prescription_path.with_name(prescription_path.name + ".sig")


def sign_prescription_bytes(
    data: bytes, *, key: Ed25519PrivateKey, key_id: str
) -> PrescriptionSignature:
    """Sign the exact bytes of a prescription file."""
    signature = key.sign(PRESCRIPTION_DOMAIN + data)
    return PrescriptionSignature(
        key_id=key_id,
        sha256=hashlib.sha256(data).hexdigest(),
        signature=base64.b64encode(signature).decode("ascii"),
    )


def write_prescription_signature(prescription_path: Path, signature: PrescriptionSignature) -> Path:
    """Write the detached signature next to the prescription; returns its path."""
    sig_path = signature_path_for(prescription_path)
    sig_path.write_text(signature.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return sig_path


def verify_prescription_signature(
    data: bytes,
    signature: PrescriptionSignature,
    *,
    pharmacy_keys: Mapping[str, Ed25519PublicKey],
) -> None:
    """Raise PrescriptionSignatureError unless `signature` is a valid pharmacy signature."""
    key = pharmacy_keys.get(signature.key_id)
    if key is None:
        known = ", ".join(sorted(pharmacy_keys)) or "none configured"
        raise PrescriptionSignatureError(
            f"prescription signed by {signature.key_id!r}, which is not a configured pharmacy "
            f"key (known: {known}); add it to [security].senders with role pharmacy"
        )
    if hashlib.sha256(data).hexdigest() != signature.sha256:
        raise PrescriptionSignatureError(
            "prescription content does not match the signed SHA-256: the file was changed "
            "after the pharmacy signed it; have it signed again"
        )
    from cryptography.exceptions import InvalidSignature  # noqa: PLC0415 - see the imports

    try:
        raw_signature = decode_signature_b64(signature.signature)
        key.verify(raw_signature, PRESCRIPTION_DOMAIN + data)
    except (binascii.Error, InvalidSignature) as exc:
        raise PrescriptionSignatureError(
            f"prescription signature does not verify with pharmacy key {signature.key_id!r}; "
            "it was not signed by that key or was altered"
        ) from exc


def _read_capped(path: Path, limit: int, what: str) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise PrescriptionSignatureError(f"cannot read {what} {path}: {exc}") from exc
    if len(data) > limit:
        raise PrescriptionSignatureError(f"{what} {path} is larger than {limit} bytes")
    return data


def load_verified_prescription_bytes(
    path: Path,
    *,
    pharmacy_keys: Mapping[str, Ed25519PublicKey],
    require_signed: bool,
) -> bytes:
    """Read a prescription file once and return its bytes after checking its signature.

    The bytes returned are exactly the bytes verified (no second read, so the file
    cannot be swapped between check and use). A present but invalid signature is
    always refused; a missing one only when `require_signed` is true.
    """
    data = _read_capped(path, MAX_PRESCRIPTION_BYTES, "prescription file")
    sig_path = signature_path_for(path)
    if not sig_path.exists():
        if require_signed:
            raise PrescriptionSignatureError(
                f"prescription {path} has no signature file {sig_path.name}; signed "
                "prescriptions are required. Have the pharmacy run "
                f"`nebuliser prescription sign --key KEY --key-id ID {path.name}`"
            )
        return data
    sig_bytes = _read_capped(sig_path, _MAX_SIG_FILE_BYTES, "signature file")
    try:
        signature = PrescriptionSignature.model_validate(json.loads(sig_bytes))
    except (ValueError, ValidationError) as exc:
        raise PrescriptionSignatureError(
            f"signature file {sig_path} is not a valid prescription signature: {exc}"
        ) from exc
    verify_prescription_signature(data, signature, pharmacy_keys=pharmacy_keys)
    return data
