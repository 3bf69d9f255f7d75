"""SerialLink against the real simulator (`simulators/mn1`): pty and socket:// URLs."""

from __future__ import annotations

import asyncio
from pathlib import Path

from drivers.mn1 import (
    Ack,
    CommandAnswered,
    Identified,
    LinkEvent,
    SerialLink,
    SessionEndReceived,
    Start,
    StopReason,
)
from simulators.mn1 import DeviceModel, run_pty_simulator, run_simulator


async def wait_for_event(link: SerialLink, kind: type[object], timeout_s: float) -> LinkEvent:
    async with asyncio.timeout(timeout_s):
        while True:
            event = await link.next_event()
            if isinstance(event, kind):
                return event


async def test_session_to_its_end_and_ack_end_stops_the_repeats(tmp_path: Path) -> None:
    model = DeviceModel(serial="SIM-0042")
    async with (
        run_pty_simulator(model, link=tmp_path / "ttySIM") as sim,
        SerialLink(url=sim.device_path) as link,
    ):
        identified = await wait_for_event(link, Identified, 3)
        assert isinstance(identified, Identified)
        assert identified.ident.serial == "SIM-0042"
        start = Start(session_id=11, target_ul=2, max_duration_s=60, output_pct=100)
        outcome = await link.command(start)
        assert isinstance(outcome, CommandAnswered)
        assert isinstance(outcome.answer, Ack)
        ended = await wait_for_event(link, SessionEndReceived, 5)
        assert isinstance(ended, SessionEndReceived)
        assert ended.session_end.session_id == 11
        assert ended.session_end.reason is StopReason.TARGET_REACHED
        await asyncio.sleep(0.3)  # one repeat period: our ACK_END has arrived by now
        assert model.truth().pending_session_end_seqs == []


async def test_socket_url_handshake_and_stop() -> None:
    model = DeviceModel(serial="SIM-TCP")
    async with (
        run_simulator(model, pty=False, tcp=("127.0.0.1", 0)) as sim,
        SerialLink(url=sim.tcp_url) as link,
    ):
        ident = await asyncio.wait_for(link.wait_identified(), 3)
        assert ident.serial == "SIM-TCP"
        outcome = await asyncio.wait_for(link.send_stop_now(0).outcome(), 1)
        assert isinstance(outcome, CommandAnswered)
        assert outcome.answer == Ack(ack_seq=outcome.seq or 0)
