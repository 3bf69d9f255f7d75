"""`nebuliser config check|show|example`.

`config check` runs exactly the checks `serve` runs before it touches the device
(`controller.preflight`) and exits with the code `serve` would exit with.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import UTC, date, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

from controller.exitcodes import EXIT_CODE_MEANINGS, ExitCode

__all__ = ["example_config_text", "print_findings", "register"]

_COURSE_DAYS = 5
_COURSE_START = re.compile(r"^course_start = \S+", re.MULTILINE)
_COURSE_END = re.compile(r"^course_end = \S+", re.MULTILINE)
_LOT_EXPIRES = re.compile(r"^expires = \S+", re.MULTILINE)
#: The template lot expires this long after the course ends.
_LOT_SHELF_DAYS = 180


def example_config_text(*, start: date | None = None) -> str:
    """The commented example configuration (the pilot protocol), its 5-day course
    starting on `start` (default: today, UTC) and its lot in date until 180 days after.

    In a wheel it is packaged as `controller/_data/example.toml`; in a source checkout
    it is read from `config/example.toml` at the repository root.
    """
    packaged = resources.files("controller").joinpath("_data/example.toml")
    if packaged.is_file():
        text = packaged.read_text(encoding="utf-8")
    else:
        repo_copy = Path(__file__).resolve().parents[2] / "config" / "example.toml"
        text = repo_copy.read_text(encoding="utf-8")
    first = start if start is not None else datetime.now(UTC).date()
    last = first + timedelta(days=_COURSE_DAYS - 1)
    text = _COURSE_START.sub(f"course_start = {first.isoformat()}", text)
    expires = last + timedelta(days=_LOT_SHELF_DAYS)
    text = _LOT_EXPIRES.sub(f"expires = {expires.isoformat()}", text)
    return _COURSE_END.sub(f"course_end = {last.isoformat()}", text)


def _start_date(text: str) -> date:
    if text == "today":
        return datetime.now(UTC).date()
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--start {text!r} is not 'today' or a date YYYY-MM-DD"
        ) from None


def print_findings(findings: list[Any], *, prefix: str) -> None:
    """Errors and warnings of a pre-flight, one per line, on stderr."""
    for finding in findings:
        print(f"{prefix}{finding}", file=sys.stderr)


def _check(args: argparse.Namespace) -> int:
    from controller.config import ConfigError, load_config  # noqa: PLC0415 - pydantic: slow
    from controller.preflight import preflight  # noqa: PLC0415 - same

    try:
        config = load_config(Path(args.file))
    except ConfigError as exc:
        if args.json:
            issues = [{"key": i.key, "message": i.message} for i in exc.issues]
            print(json.dumps({"exit_code": int(ExitCode.USAGE), "problems": issues}, indent=2))
        else:
            print(exc, file=sys.stderr)
            print(f"serve would exit {int(ExitCode.USAGE)}", file=sys.stderr)
        return ExitCode.USAGE
    result = preflight(config)
    code = result.exit_code
    if args.json:
        findings = [
            {"severity": f.severity.value, "key": f.key, "message": f.message}
            for f in result.findings
        ]
        print(json.dumps({"exit_code": int(code), "findings": findings}, indent=2))
        return code
    print_findings(result.findings, prefix=f"{args.file}: ")
    if code is not ExitCode.OK:
        print(
            f"{args.file}: serve would refuse to start: exit {int(code)} "
            f"({EXIT_CODE_MEANINGS[code]})",
            file=sys.stderr,
        )
        return code
    loaded = result.loaded
    source = "" if loaded is None else f", prescription {loaded.source}"
    signer = "" if loaded is None or loaded.signed_by is None else f" signed by {loaded.signed_by}"
    print(
        f"{args.file}: OK, serve would start (device {config.device.device_id}, "
        f"{config.device.ward}/{config.device.bed}, port {config.device.port}{source}{signer}; "
        f"{len(result.warnings)} warning(s))"
    )
    return ExitCode.OK


def _flatten(value: Any, prefix: str) -> list[tuple[str, Any]]:
    if isinstance(value, dict) and value:
        rows: list[tuple[str, Any]] = []
        for key, child in value.items():
            rows += _flatten(child, f"{prefix}.{key}" if prefix else key)
        return rows
    return [(prefix, value)]


def _show(args: argparse.Namespace) -> int:
    from controller.config import ConfigError, load_config_layers  # noqa: PLC0415 - slow

    try:
        config, layers = load_config_layers(None if args.file is None else Path(args.file))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return ExitCode.USAGE
    rows = [
        (key, value, layers.source_of(key))
        for key, value in _flatten(config.model_dump(mode="json"), "")
    ]
    if args.json:
        listing = [{"key": k, "value": v, "source": s} for k, v, s in rows]
        print(json.dumps(listing, indent=2, ensure_ascii=False))
        return ExitCode.OK
    width = max(len(key) for key, _, _ in rows)
    for key, value, source in rows:
        print(f"{key:<{width}} = {json.dumps(value, ensure_ascii=False)}  # {source}")
    return ExitCode.OK


def _example(args: argparse.Namespace) -> int:
    sys.stdout.write(example_config_text(start=args.start))
    return ExitCode.OK


def register(subparsers: Any) -> None:
    """Add `config check`, `config show` and `config example`."""
    parser = subparsers.add_parser("config", help="check, show or print an example configuration")
    sub = parser.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = sub.add_parser(
        "check",
        help="run the checks serve runs before touching the device; exit with serve's code",
        description="Validate FILE exactly as `nebuliser serve` does before it opens the "
        "ledger and the serial port: every key, NEBULISER_ variables, the prescription and "
        "its signature, limits against each other, paths and the socket mode. Errors exit "
        "with the code serve would exit with; warnings name legal but unusual settings.",
    )
    check.add_argument("file", help="TOML configuration file")
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.set_defaults(handler=_check)
    show = sub.add_parser(
        "show",
        help="print the effective configuration, each value with its source "
        "(file, env NEBULISER_…, default)",
    )
    show.add_argument("file", nargs="?", help="TOML configuration file (default: none)")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(handler=_show)
    example = sub.add_parser(
        "example", help="print a complete commented example (pilot protocol, 5-day course)"
    )
    example.add_argument(
        "--start",
        type=_start_date,
        metavar="DATE",
        help="first day of the example course: 'today' (the default) or YYYY-MM-DD",
    )
    example.set_defaults(handler=_example)
