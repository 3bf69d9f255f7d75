"""`nebuliser serve`: run the bedside controller."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from controller.security import restrict_umask
from controller.service import run_service

from ._common import EXIT_CONFIG, add_service_options, config_from_args

__all__ = ["register"]


def _serve(args: argparse.Namespace) -> int:
    extra: dict[str, Any] = {}
    if args.port:
        extra["device"] = {"port": args.port}
    if args.broker:
        host, _, port = args.broker.removeprefix("mqtt://").partition(":")
        extra["mqtt"] = {"host": host, **({"port": int(port)} if port else {})}
    config = config_from_args(args, **extra)
    if config.prescription is None and config.prescription_file is None:
        print(
            "nebuliser serve: the configuration has no prescription (prescription_file or "
            "[prescription]); a controller cannot admit any dose without one "
            "(see `nebuliser config example`)",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    restrict_umask()  # data files 0640 at most, whatever the shell's umask (issue 13)
    return asyncio.run(run_service(config))


def register(subparsers: Any) -> None:
    """Add `serve`."""
    parser = subparsers.add_parser(
        "serve", help="run the bedside controller (serial link, dose limits, ledger, control)"
    )
    add_service_options(parser)
    parser.add_argument("--port", help="serial port URL (device path, pty or socket://host:port)")
    parser.add_argument("--broker", help="MQTT broker host[:port] (overrides [mqtt])")
    parser.set_defaults(handler=_serve)
