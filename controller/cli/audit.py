"""`nebuliser audit verify|head`: check the hash-chained audit log."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from controller.config import ConfigError, load_config
from controller.exitcodes import ExitCode
from controller.security import (
    AUDIT_DB_NAME,
    AuditHead,
    audit_device_id,
    load_anchors,
    read_hmac_key_file,
    verify_audit_log,
)

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
    return read_hmac_key_file(Path(args.hmac_key_file))


def _anchors(args: argparse.Namespace, path: Path) -> list[AuditHead]:
    """The stored anchors of this log's device (--device-id, else the id the log's
    own configuration records name)."""
    if args.anchors is None:
        return []
    device_id = args.device_id or audit_device_id(path)
    if device_id is None:
        raise ValueError(f"{path} names no device id (no config record); give --device-id ID")
    anchors = [a.head for a in load_anchors(Path(args.anchors), device_id=device_id)]
    if not anchors:
        raise ValueError(
            f"{args.anchors} holds no anchor of device {device_id!r}; check the file and "
            "--device-id"
        )
    return anchors


def _verify(args: argparse.Namespace) -> int:
    try:
        path = _audit_path(args)
        expected = None if args.expect_head is None else AuditHead.parse(args.expect_head)
        key = _hmac_key(args)
        anchors = _anchors(args, path)
    except (ConfigError, ValueError, OSError) as exc:
        print(f"audit verify: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    result = verify_audit_log(path, hmac_key=key, expected_head=expected, anchors=anchors)
    if result.ok:
        checked = f"; {len(anchors)} anchors match" if args.anchors is not None else ""
        print(
            f"OK: {path}: {result.records_checked} records, chain intact; "
            f"head {result.head}{checked}"
        )
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
    verify.add_argument(
        "--anchors",
        metavar="FILE",
        help="anchors stored by the ward station/monitor (JSON lines); every one of this "
        "device must still be in the log with its hash (detects truncation and rewrite)",
    )
    verify.add_argument(
        "--device-id", help="whose anchors to use (default: the device id the log records)"
    )
    verify.set_defaults(handler=_verify)
    head.set_defaults(handler=_head)
