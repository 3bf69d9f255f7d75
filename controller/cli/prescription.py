"""`nebuliser prescription sign|verify`: detached pharmacy signatures (FILE.sig)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from controller.exitcodes import ExitCode
from controller.security import (
    MAX_PRESCRIPTION_BYTES,
    KeyFileError,
    PrescriptionSignatureError,
    load_private_key,
    load_public_key_file,
    load_verified_prescription_bytes,
    sign_prescription_bytes,
    write_prescription_signature,
)

__all__ = ["register"]


def _sign(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        key = load_private_key(Path(args.key))
        data = path.read_bytes()
    except (KeyFileError, OSError) as exc:
        print(f"prescription sign: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    if len(data) > MAX_PRESCRIPTION_BYTES:
        print(f"prescription sign: {path} exceeds {MAX_PRESCRIPTION_BYTES} bytes", file=sys.stderr)
        return ExitCode.USAGE
    signature = sign_prescription_bytes(data, key=key, key_id=args.key_id)
    sig_path = write_prescription_signature(path, signature)
    print(f"signed {path} (sha256 {signature.sha256}) as {args.key_id}: {sig_path}")
    return 0


def _parse_pharmacy_keys(entries: list[str]) -> dict[str, Ed25519PublicKey]:
    keys: dict[str, Ed25519PublicKey] = {}
    for entry in entries:
        key_id, sep, file_name = entry.partition("=")
        if not sep or not key_id or not file_name:
            raise KeyFileError(f"--pharmacy-key {entry!r}: expected ID=PUBFILE")
        keys[key_id] = load_public_key_file(Path(file_name))
    return keys


def _verify(args: argparse.Namespace) -> int:
    try:
        keys = _parse_pharmacy_keys(args.pharmacy_key)
        data = load_verified_prescription_bytes(
            Path(args.file), pharmacy_keys=keys, require_signed=True
        )
    except (KeyFileError, PrescriptionSignatureError) as exc:
        print(f"REFUSED: {exc}", file=sys.stderr)
        return ExitCode.REFUSED
    print(f"OK: {args.file} ({len(data)} bytes) carries a valid pharmacy signature")
    return 0


def register(subparsers: Any) -> None:
    """Add `prescription sign` and `prescription verify`."""
    parser = subparsers.add_parser("prescription", help="sign or verify prescription files")
    sub = parser.add_subparsers(dest="prescription_command", metavar="ACTION", required=True)
    sign = sub.add_parser("sign", help="write FILE.sig, a detached pharmacy signature")
    sign.add_argument("--key", required=True, help="pharmacy private key file (NAME.key)")
    sign.add_argument("--key-id", required=True, help="pharmacy sender id the controller knows")
    sign.add_argument("file", help="prescription TOML file")
    sign.set_defaults(handler=_sign)
    verify = sub.add_parser("verify", help="check FILE against FILE.sig (exit 1 if refused)")
    verify.add_argument(
        "--pharmacy-key",
        action="append",
        default=[],
        metavar="ID=PUBFILE",
        help="a trusted pharmacy public key (repeatable)",
    )
    verify.add_argument("file", help="prescription TOML file")
    verify.set_defaults(handler=_verify)
