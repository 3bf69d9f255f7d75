"""`nebuliser keys generate`: an Ed25519 key pair for a command sender or a pharmacy."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from controller.exitcodes import ExitCode
from controller.security import KeyFileError, generate_key_files, load_public_key_file
from controller.security import public_key_to_text as _public_text

__all__ = ["register"]


def _generate(args: argparse.Namespace) -> int:
    try:
        private_path, public_path = generate_key_files(out_dir=Path(args.out), name=args.name)
        public_text = _public_text(load_public_key_file(public_path))
    except (KeyFileError, OSError) as exc:
        print(f"keys generate: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    print(f"private key: {private_path} (mode 0600; keep it on the sending station only)")
    print(f"public key:  {public_path}")
    print("\nAdd to the controller configuration (choose the role):\n")
    print("[[security.senders]]")
    print(f'id = "{args.name}"')
    print(f'public_key = "{public_text}"')
    print('role = "ward_station"  # or "clinician" or "pharmacy"')
    return ExitCode.OK


def register(subparsers: Any) -> None:
    """Add `keys generate`."""
    parser = subparsers.add_parser("keys", help="create Ed25519 signing keys")
    sub = parser.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    generate = sub.add_parser(
        "generate", help="write NAME.key (private, mode 0600) and NAME.pub into DIR"
    )
    generate.add_argument("--out", required=True, metavar="DIR", help="output directory")
    generate.add_argument(
        "--name", required=True, help="key name; use the sender id (e.g. ward-3west)"
    )
    generate.set_defaults(handler=_generate)
