"""One way to name an MQTT broker on the command line, and one set of TLS options.

Every command that talks to a broker (`serve`, `monitor`, `command send`, ...)
takes `--broker mqtt://HOST[:PORT]` or `--broker mqtts://HOST[:PORT]` (default
ports 1883 and 8883) and `--tls-ca`, `--tls-cert`, `--tls-key` for mqtts. No
aiomqtt or pydantic import here: parsing a flag must not slow the CLI down.
"""

from __future__ import annotations

import argparse
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

__all__ = [
    "BrokerAddress",
    "BrokerUrlError",
    "TlsFiles",
    "add_broker_options",
    "broker_from_args",
    "parse_broker_url",
]

MQTT_PORT = 1883
MQTTS_PORT = 8883


class BrokerUrlError(ValueError):
    """A --broker value or TLS option that cannot be used; the message says the fix."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """The CA that signed the broker's certificate, and an optional client certificate."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def ssl_context(self) -> ssl.SSLContext:
        """A TLS ≥ 1.2 client context that verifies the broker (system CAs without --tls-ca)."""
        context = ssl.create_default_context(
            cafile=None if self.ca_file is None else str(self.ca_file)
        )
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cert_file is not None:
            context.load_cert_chain(str(self.cert_file), str(self.key_file))
        return context


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """Where the broker is and whether (and with which files) to use TLS."""

    host: str
    port: int
    tls: TlsFiles | None = None

    @property
    def url(self) -> str:
        """The address as a URL again (for messages)."""
        return f"{'mqtts' if self.tls is not None else 'mqtt'}://{self.host}:{self.port}"


def parse_broker_url(url: str) -> BrokerAddress:
    """`mqtt://HOST[:PORT]` or `mqtts://HOST[:PORT]` → BrokerAddress (TLS files unset)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise BrokerUrlError(f"--broker {url!r}: {exc}; use mqtt://HOST:PORT") from None
    if parts.scheme not in {"mqtt", "mqtts"} or not parts.hostname:
        raise BrokerUrlError(
            f"--broker {url!r} is not a broker URL; use mqtt://HOST[:PORT] or "
            "mqtts://HOST[:PORT] (TLS), e.g. mqtts://broker.ward-a:8883"
        )
    if parts.path not in {"", "/"} or parts.query or parts.username:
        raise BrokerUrlError(
            f"--broker {url!r}: only scheme, host and port belong in the URL; "
            "user names and TLS files have their own options"
        )
    secure = parts.scheme == "mqtts"
    default_port = MQTTS_PORT if secure else MQTT_PORT
    return BrokerAddress(
        host=parts.hostname,
        port=port if port is not None else default_port,
        tls=TlsFiles() if secure else None,
    )


def add_broker_options(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    """--broker URL and --tls-ca/--tls-cert/--tls-key, the same on every command."""
    parser.add_argument(
        "--broker",
        metavar="URL",
        required=required,
        help="MQTT broker: mqtt://HOST[:PORT] (1883) or mqtts://HOST[:PORT] (TLS, 8883)",
    )
    parser.add_argument(
        "--tls-ca", type=Path, metavar="FILE", help="CA certificate that signed the broker's"
    )
    parser.add_argument(
        "--tls-cert", type=Path, metavar="FILE", help="client certificate (mutual TLS)"
    )
    parser.add_argument("--tls-key", type=Path, metavar="FILE", help="its private key")


def broker_from_args(args: argparse.Namespace) -> BrokerAddress | None:
    """The broker named by --broker with the --tls-* files (None without --broker)."""
    if args.broker is None:
        if args.tls_ca or args.tls_cert or args.tls_key:
            raise BrokerUrlError("--tls-ca/--tls-cert/--tls-key need --broker mqtts://...")
        return None
    address = parse_broker_url(args.broker)
    given = args.tls_ca or args.tls_cert or args.tls_key
    if address.tls is None:
        if given:
            raise BrokerUrlError(
                f"--tls-* options given but --broker {args.broker!r} is mqtt:// "
                "(no TLS); use mqtts://"
            )
        return address
    if (args.tls_cert is None) != (args.tls_key is None):
        raise BrokerUrlError("give --tls-cert and --tls-key together (mutual TLS) or neither")
    for option, path in (("--tls-ca", args.tls_ca), ("--tls-cert", args.tls_cert),
                         ("--tls-key", args.tls_key)):  # fmt: skip
        if path is not None and not Path(path).is_file():
            raise BrokerUrlError(f"{option} {path}: no such file")
    tls = TlsFiles(ca_file=args.tls_ca, cert_file=args.tls_cert, key_file=args.tls_key)
    return BrokerAddress(host=address.host, port=address.port, tls=tls)
