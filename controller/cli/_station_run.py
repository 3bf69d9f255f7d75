"""The body of `nebuliser station` (controller/cli/station.py parses the options;
this module is imported only when the command runs, with the web stack)."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys

from controller.cli.monitor import mqtt_settings
from controller.cli.station import parse_listen
from controller.config import ConfigError
from controller.security import KeyFileError
from controller.station._auth import UsersFile, UsersFileError
from controller.station._server import Station, StationConfigError, StationOptions
from controller.telemetry._ack_signer import AckSigningKey

__all__ = ["run_station_command"]

EXIT_USAGE = 2


def _add_user(args: argparse.Namespace) -> int:
    if args.users is None:
        raise ValueError("--add-user needs --users FILE (the accounts file to write)")
    password = os.environ.get("NEBULISER_STATION_PASSWORD")
    if password is None:
        password = getpass.getpass(f"password for {args.add_user}: ")
        if getpass.getpass("again: ") != password:
            raise ValueError("the two passwords differ; nothing was changed")
    users = UsersFile.load(args.users)
    users.set_password(args.add_user, password)
    print(f"{args.add_user} can now sign in to stations using {args.users}")
    return 0


def _signer(args: argparse.Namespace) -> AckSigningKey | None:
    signing = (args.key, args.sender, args.counter_file)
    if all(v is None for v in signing):
        return None
    if any(v is None for v in signing):
        raise ValueError("signed acknowledgements need all of --key, --sender, --counter-file")
    return AckSigningKey(key_file=args.key, sender_id=args.sender, counter_file=args.counter_file)


def run_station_command(args: argparse.Namespace) -> int:
    """Run the station until interrupted; 2 with a message for bad options."""
    try:
        if args.add_user:
            return _add_user(args)
        signer = _signer(args)
        host, port = parse_listen(args.listen)
        options = StationOptions(
            mqtt=mqtt_settings(args, client_id="station"),
            listen_host=host,
            listen_port=port,
            ward=args.ward,
            users_file=args.users,
            proxy_header=args.auth_header,
            tls_cert=args.https_cert,
            tls_key=args.https_key,
            signer=signer,
            title=args.title or f"Ward {args.ward or 'station'}",
        )
        station = Station(options)
        return asyncio.run(_serve(station))
    except (ValueError, ConfigError, KeyFileError, UsersFileError, StationConfigError) as exc:
        print(f"nebuliser station: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 0


async def _serve(station: Station) -> int:
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(station.run())
        await station.started.wait()
        ack = "on" if station.options.signer else "off (no --key)"
        print(f"ward station: {station.url}  (acknowledgement {ack})", flush=True)
    return 0
