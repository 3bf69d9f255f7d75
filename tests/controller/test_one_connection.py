"""One MQTT connection per bed (docs/decisions/0013): the command intake rides on the
telemetry publisher's connection, and subscribes again on every new one — after a
broker crash and restart a signed command is answered again — while the broker only
ever sees the bed's one client id (no second `-cmd` connection, no self-takeover)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from controller.security import CommandName, StopBody

from .test_remote_commands import (
    Counter,
    Keys,
    Station,
    bed,
    command_id_of,
    signed,
    station,
)

CLIENT_ID = "ctl-neb-test"  # test_remote_commands.mqtt_section


async def _answered_stop(ward: Station, keys: Keys, counter: Counter) -> dict[str, Any]:
    """A signed STOP, sent again (fresh counter) until the bed answers: the bed is
    reconnecting with its back-off, and a command sent before it subscribed is gone."""
    for _ in range(100):
        stop = signed(keys.ward, CommandName.STOP, StopBody(), counter=counter.next())
        await ward.send(stop)
        with contextlib.suppress(TimeoutError):
            return await ward.reply(command_id_of(stop), timeout_s=0.2)
    raise AssertionError("the bed never answered a signed STOP after the broker restart")


def _connections_as(log: Path, client_id: str) -> int:
    return sum(line.rstrip().endswith(f" as {client_id}") or f" as {client_id} (" in line
               for line in log.read_text(errors="replace").splitlines())  # fmt: skip


async def test_the_intake_shares_the_one_connection_and_resubscribes_after_a_broker_restart(
    tmp_path: Path,
) -> None:
    keys, counter = Keys(), Counter()
    async with bed(tmp_path, keys) as b:
        first = await _answered_stop(b.station, keys, counter)
        assert first["status"] == "accepted", first
        b.broker.kill()  # SIGKILL: the bed's one connection is lost
        b.broker.restart()
        async with station(b.broker) as again:
            after = await _answered_stop(again, keys, counter)
        assert after["status"] == "accepted", after
        log = b.broker.log_path
        # One client id for the bed, connected once before and once after the restart
        # (more only if a reconnect failed midway); never a second, parallel one.
        assert _connections_as(log, f"{CLIENT_ID}-cmd") == 0, log.read_text()
        assert _connections_as(log, CLIENT_ID) >= 2, log.read_text()
        assert f"Client {CLIENT_ID} already connected" not in log.read_text()
