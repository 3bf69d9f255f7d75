"""`nebuliser serve`: run the bedside controller.

Before the ledger or the serial port is touched, the configuration goes through
`controller.preflight.preflight()`, the same function `nebuliser config check`
runs, so both refuse the same files with the same exit code.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from controller.brokerurl import BrokerUrlError, add_broker_options, broker_from_args
from controller.exitcodes import ExitCode
from controller.preflight import preflight
from controller.security import restrict_umask
from controller.service import run_service

from ._common import add_service_options, config_from_args, fail
from .config import print_findings

__all__ = ["register"]


def _serve(args: argparse.Namespace) -> int:
    extra: dict[str, Any] = {}
    if args.port:
        extra["device"] = {"port": args.port}
    try:
        broker = broker_from_args(args)
    except BrokerUrlError as exc:
        return fail("serve", str(exc), ExitCode.USAGE)
    if broker is not None:
        extra["mqtt"] = {"host": broker.host, "port": broker.port}
        if broker.tls is None:
            extra["mqtt"]["tls"] = None
        elif broker.tls.ca_file is not None:
            extra["mqtt"]["tls"] = {
                "ca_file": str(broker.tls.ca_file),
                "cert_file": None if broker.tls.cert_file is None else str(broker.tls.cert_file),
                "key_file": None if broker.tls.key_file is None else str(broker.tls.key_file),
            }
    config = config_from_args(args, **extra)
    if broker is not None and broker.tls is not None and config.mqtt and config.mqtt.tls is None:
        message = f"--broker {args.broker} needs --tls-ca FILE (or [mqtt.tls] ca_file)"
        return fail("serve", message, ExitCode.USAGE)
    result = preflight(config)
    print_findings(result.findings, prefix="nebuliser serve: ")
    if result.exit_code is not ExitCode.OK:
        return result.exit_code
    restrict_umask()  # data files 0640 at most, whatever the shell's umask (issue 13)
    return asyncio.run(run_service(config, loaded=result.loaded))


def register(subparsers: Any) -> None:
    """Add `serve`."""
    parser = subparsers.add_parser(
        "serve", help="run the bedside controller (serial link, dose limits, ledger, control)"
    )
    add_service_options(parser)
    parser.add_argument("--port", help="serial port URL (device path, pty or socket://host:port)")
    # Override [mqtt] host, port and TLS; mqtts:// without --tls-ca keeps [mqtt.tls].
    add_broker_options(parser)
    parser.set_defaults(handler=_serve)
