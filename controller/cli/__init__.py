"""The `nebuliser` command. Each subcommand lives in its own module in this package
and exposes `register(subparsers)`; add the module to `_COMMAND_MODULES`."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from controller import __version__
from controller.logging import configure_logging

__all__ = ["main"]

# Module names (in this package) that register subcommands, in --help order.
_COMMAND_MODULES: tuple[str, ...] = (
    "demo",
    "serve",
    "session",
    "config",
    "simulate",
    "ledger",
    "keys",
    "command",
    "prescription",
    "audit",
    "monitor",
    "station",
    "report",
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="nebuliser",
        description="Bedside mesh-nebuliser controller, MN-1 simulator and ward tools.",
    )
    parser.add_argument("--version", action="version", version=f"nebuliser {__version__}")
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log verbosity (logs go to stderr; JSON when not on a terminal)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMAND_MODULES:
        module = importlib.import_module(f"controller.cli.{name}")
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `nebuliser` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(level=args.log_level)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
