"""`nebuliser audit verify|head`: check the hash-chained audit log."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from controller.config import ConfigError, load_config
from controller.exitcodes import ExitCode
from controller.security import AUDIT_DB_NAME, AuditHead, verify_audit_log

__all__ = ["register"]


def _audit_path(args: argparse.Namespace) -> Path:
    """--data-dir wins, then the config file's storage.data_dir, then the default."""
    if args.data_dir is not None:
        return Path(args.data_dir) / AUDIT_DB_NAME
    config = load_config(None if args.config is None else Path(args.config))
    return config.storage.data_dir / AUDIT_DB_NAME


def _hmac_key(args: argparse.Namespace) -> bytes | None:
    if args.hmac_key_file is None:
        return None
    return Path(args.hmac_key_file).read_bytes().strip()


def _verify(args: argparse.Namespace) -> int:
    try:
        path = _audit_path(args)
        expected = None if args.expect_head is None else AuditHead.parse(args.expect_head)
        key = _hmac_key(args)
    except (ConfigError, ValueError, OSError) as exc:
        print(f"audit verify: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    result = verify_audit_log(path, hmac_key=key, expected_head=expected)
    if result.ok:
        print(f"OK: {path}: {result.records_checked} records, chain intact; head {result.head}")
        return ExitCode.OK
    where = "" if result.first_bad_index is None else f" at record {result.first_bad_index}"
    print(f"BROKEN: {path}{where}: {result.problem}", file=sys.stderr)
    print(f"{result.records_checked} records before it verified", file=sys.stderr)
    return ExitCode.REFUSED


def _head(args: argparse.Namespace) -> int:
    try:
        path = _audit_path(args)
    except (ConfigError, OSError) as exc:
        print(f"audit head: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    result = verify_audit_log(path)
    if result.head is None:
        print(f"audit head: {path} has no verified records ({result.problem})", file=sys.stderr)
        return ExitCode.REFUSED
    print(result.head)
    return ExitCode.OK if result.ok else ExitCode.REFUSED


def register(subparsers: Any) -> None:
    """Add `audit verify` and `audit head`."""
    parser = subparsers.add_parser("audit", help="verify the tamper-evident audit log")
    sub = parser.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    verify = sub.add_parser(
        "verify", help="recompute the hash chain; exit 0 if intact, 1 if broken (names the record)"
    )
    head = sub.add_parser("head", help="print INDEX:HASH of the newest record (an anchor)")
    for each in (verify, head):
        each.add_argument("--data-dir", help="directory holding audit.sqlite3 (overrides --config)")
        each.add_argument("--config", help="controller config file (its storage.data_dir is used)")
    verify.add_argument(
        "--expect-head",
        metavar="INDEX:HASH",
        help="a head recorded earlier; detects removal of the newest records",
    )
    verify.add_argument("--hmac-key-file", help="file with the audit HMAC key, if one is used")
    verify.set_defaults(handler=_verify)
    head.set_defaults(handler=_head)
