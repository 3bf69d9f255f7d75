"""Options and helpers shared by the commands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller.configfile import ConfigError, control_socket_path, read_layers
from controller.exitcodes import ExitCode

if TYPE_CHECKING:
    from controller.config import NebuliserConfig

__all__ = [
    "add_service_options",
    "config_from_args",
    "control_socket_from_args",
    "fail",
    "progress_bar",
]


def fail(command: str, message: str, code: ExitCode) -> ExitCode:
    """Print `nebuliser COMMAND: message` on stderr and return `code`."""
    print(f"nebuliser {command}: {message}", file=sys.stderr)
    return code


def add_service_options(parser: argparse.ArgumentParser) -> None:
    """--config FILE and --data-dir DIR, as accepted by `serve`."""
    parser.add_argument("--config", type=Path, help="controller configuration file (TOML)")
    parser.add_argument(
        "--data-dir", type=Path, help="data directory (ledger, control socket); overrides config"
    )


def _overrides(args: argparse.Namespace, extra: dict[str, Any]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    if getattr(args, "data_dir", None) is not None:
        overrides["storage"] = {"data_dir": str(args.data_dir)}
    for section, values in extra.items():
        overrides.setdefault(section, {}).update(values)
    return overrides


def config_from_args(args: argparse.Namespace, **extra: Any) -> NebuliserConfig:
    """Load the config named by --config with --data-dir (and `extra`) as overrides.

    Exits with ExitCode.USAGE (2) and every problem printed when the configuration
    is invalid.
    """
    from controller.config import load_config  # noqa: PLC0415 - pydantic: only when needed

    try:
        return load_config(args.config, overrides=_overrides(args, extra))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(ExitCode.USAGE) from None


def control_socket_from_args(args: argparse.Namespace) -> Path:
    """The control socket of the controller named by --config/--data-dir.

    Reads only what is needed to find the socket (no full validation: `serve` has
    done that), so that `nebuliser session status` answers quickly. Exits with
    ExitCode.USAGE when the file cannot be read.
    """
    try:
        return control_socket_path(read_layers(args.config, overrides=_overrides(args, {})))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(ExitCode.USAGE) from None


def progress_bar(
    delivered_ul: int, cap_ul: int, *, width: int = 30, fill: str = "#", empty: str = "."
) -> str:
    """A text bar of `width` cells for delivered/cap (never more than full)."""
    filled = 0 if cap_ul <= 0 else min(width, delivered_ul * width // cap_ul)
    return fill * filled + empty * (width - filled)
