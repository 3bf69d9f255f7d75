"""`nebuliser station`: the ward station, a web page a nurse works from.

    nebuliser station --broker mqtt://127.0.0.1:1883 --listen 127.0.0.1:8080 \\
        --users /etc/nebuliser/station-users \\
        --key /etc/nebuliser/ward-3west.key --sender ward-3west \\
        --counter-file /var/lib/nebuliser/ward-3west.counter
    nebuliser station --add-user j.smith --users /etc/nebuliser/station-users

The page is served on loopback by default. Beyond loopback (`--listen 0.0.0.0:8443`)
it needs --https-cert/--https-key and --users (sign-in for everything). Acknowledging
an alarm needs a signed-in nurse and the station's signing key (--key, --sender,
--counter-file); unsigned acknowledgements are never sent. See docs/station.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .monitor import add_ward_broker_options

__all__ = ["parse_listen", "register"]


def register(subparsers: Any) -> None:
    """Add the `station` subcommand."""
    parser = subparsers.add_parser(
        "station",
        help="serve the ward station web page (live beds, alarms, acknowledgement)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--listen",
        default="127.0.0.1:8080",
        help="HOST:PORT to serve the page on (default 127.0.0.1:8080, loopback only)",
    )
    parser.add_argument(
        "--ward", help="only this ward, or W1,W2 for several (default: every ward under the root)"
    )
    parser.add_argument("--root", default=None, help="topic root (default nebuliser/v1)")
    add_ward_broker_options(parser)
    parser.add_argument("--config", type=Path, help="controller configuration file (TOML)")
    parser.add_argument("--title", default=None, help="page title (default: Ward <ward>)")
    signin = parser.add_argument_group("sign-in")
    signin.add_argument("--users", type=Path, help="nurse accounts file (station --add-user)")
    signin.add_argument(
        "--auth-header",
        help="trust this header from a reverse proxy on the same host (e.g. X-Remote-User)",
    )
    signin.add_argument(
        "--add-user",
        metavar="NAME",
        help="add or change an account in --users and exit (password from the prompt or "
        "NEBULISER_STATION_PASSWORD)",
    )
    tls = parser.add_argument_group("TLS for the page")
    tls.add_argument("--https-cert", type=Path, help="certificate (PEM) served to browsers")
    tls.add_argument("--https-key", type=Path, help="its private key (PEM)")
    # (--tls-ca/--tls-cert/--tls-key are the broker's, as on every command: docs/cli.md)
    signing = parser.add_argument_group("signed acknowledgements")
    signing.add_argument("--key", type=Path, help="the station's Ed25519 private key (NAME.key)")
    signing.add_argument("--sender", help="the station's sender id, as configured on the beds")
    signing.add_argument(
        "--counter-file", type=Path, help="file holding the station's last command counter"
    )
    parser.set_defaults(handler=handler)


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT` (or `[v6]:PORT`) -> (host, port); ValueError names the fix."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--listen {text!r}: use HOST:PORT, e.g. 127.0.0.1:8080")
    return host, int(port)


def handler(args: argparse.Namespace) -> int:
    """Run the station until interrupted (or add an account with --add-user)."""
    # The web stack (starlette, uvicorn) loads only for this command.
    from controller.cli._station_run import run_station_command  # noqa: PLC0415

    return run_station_command(args)
