"""Options shared by every command that talks to a running controller."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from controller.config import ConfigError, NebuliserConfig, load_config
from controller.exitcodes import ExitCode

__all__ = ["add_service_options", "config_from_args", "progress_bar"]


def add_service_options(parser: argparse.ArgumentParser) -> None:
    """--config FILE and --data-dir DIR, as accepted by `serve`."""
    parser.add_argument("--config", type=Path, help="controller configuration file (TOML)")
    parser.add_argument(
        "--data-dir", type=Path, help="data directory (ledger, control socket); overrides config"
    )


def config_from_args(args: argparse.Namespace, **extra: Any) -> NebuliserConfig:
    """Load the config named by --config with --data-dir (and `extra`) as overrides.

    Exits with ExitCode.USAGE (2) and every problem printed when the configuration is invalid.
    """
    overrides: dict[str, Any] = {}
    if getattr(args, "data_dir", None) is not None:
        overrides["storage"] = {"data_dir": str(args.data_dir)}
    for section, values in extra.items():
        overrides.setdefault(section, {}).update(values)
    try:
        return load_config(args.config, overrides=overrides)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(ExitCode.USAGE) from None


def progress_bar(
    delivered_ul: int, cap_ul: int, *, width: int = 30, fill: str = "#", empty: str = "."
) -> str:
    """A text bar of `width` cells for delivered/cap (never more than full)."""
    filled = 0 if cap_ul <= 0 else min(width, delivered_ul * width // cap_ul)
    return fill * filled + empty * (width - filled)
