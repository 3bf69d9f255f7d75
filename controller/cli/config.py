"""`nebuliser config check FILE` and `nebuliser config example`."""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from controller.config import ConfigError, load_config
from controller.security import security_warnings

__all__ = ["example_config_text", "register"]

EXIT_INVALID = 2


def example_config_text() -> str:
    """The commented example configuration (the pilot protocol).

    In a wheel it is packaged as `controller/_data/example.toml`; in a source checkout
    it is read from `config/example.toml` at the repository root.
    """
    packaged = resources.files("controller").joinpath("_data/example.toml")
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    repo_copy = Path(__file__).resolve().parents[2] / "config" / "example.toml"
    return repo_copy.read_text(encoding="utf-8")


def _check(args: argparse.Namespace) -> int:
    try:
        config = load_config(Path(args.file))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_INVALID
    for warning in security_warnings(
        config.effective_security, remote_commands=config.mqtt is not None
    ):
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{args.file}: OK (device {config.device.device_id}, {config.device.ward}/"
          f"{config.device.bed}, port {config.device.port})")  # fmt: skip
    return 0


def _example(_args: argparse.Namespace) -> int:
    sys.stdout.write(example_config_text())
    return 0


def register(subparsers: Any) -> None:
    """Add `config check` and `config example`."""
    parser = subparsers.add_parser("config", help="validate or print a configuration")
    sub = parser.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = sub.add_parser(
        "check",
        help="validate a config file; print every error with its key, value and what is "
        "allowed (exit 2 if invalid)",
    )
    check.add_argument("file", help="TOML configuration file")
    check.set_defaults(handler=_check)
    example = sub.add_parser("example", help="print a complete commented example (pilot protocol)")
    example.set_defaults(handler=_example)
