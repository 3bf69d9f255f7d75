"""SerialLink over a real pty, against a fake device on the master side (real time)."""

from __future__ import annotations

import asyncio
import itertools
import os
import select
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from drivers.mn1 import (
    Ack,
    CommandAnswered,
    CommandFailed,
    Deframer,
    Frame,
    Heartbeat,
    Hello,
    Identified,
    LinkEvent,
    LinkLost,
    LinkPhase,
    LinkRestored,
    PortClosed,
    PortInUseError,
    SerialLink,
    Start,
    Stop,
    encode_frame,
)

from .fake_device import FakeDevice, Pty

START = Start(session_id=3, target_ul=400, max_duration_s=600, output_pct=70)


@pytest.fixture
async def device(tmp_path: Path) -> AsyncIterator[tuple[Pty, FakeDevice]]:
    pty = Pty.open(tmp_path / "ttyMN1")
    fake = FakeDevice()
    fake.attach(pty)
    try:
        yield pty, fake
    finally:
        fake.detach()
        pty.hang_up()


async def wait_for_event(link: SerialLink, kind: type[object], timeout_s: float = 2.0) -> LinkEvent:
    async with asyncio.timeout(timeout_s):
        while True:
            event = await link.next_event()
            if isinstance(event, kind):
                return event


def read_frames_blocking(fd: int, *, until: Frame, timeout_s: float) -> list[Frame]:
    """Read `fd` without the event loop until `until` arrives or `timeout_s` passes."""
    deframer = Deframer()
    frames: list[Frame] = []
    deadline = time.monotonic() + timeout_s
    while until not in frames:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        readable, _, _ = select.select([fd], [], [], remaining)
        if readable:
            frames += [f for f in deframer.feed(os.read(fd, 4096)) if isinstance(f, Frame)]
    return frames


async def test_handshake_command_ack_and_status(device: tuple[Pty, FakeDevice]) -> None:
    pty, fake = device
    async with SerialLink(url=str(pty.link_path)) as link:
        identified = await wait_for_event(link, Identified)
        assert isinstance(identified, Identified)
        assert identified.ident.serial == fake.serial
        assert fake.received[0].message == Hello()
        outcome = await link.command(START)
        assert isinstance(outcome, CommandAnswered)
        assert outcome.answer == Ack(ack_seq=outcome.seq)
        assert fake.frames_of(Start)[-1].seq == outcome.seq
        await wait_for_event(link, LinkRestored)
        assert link.link_up


async def test_stop_bytes_are_in_the_kernel_when_send_stop_now_returns(
    device: tuple[Pty, FakeDevice],
) -> None:
    pty, fake = device
    async with SerialLink(url=str(pty.link_path)) as link:
        await link.wait_identified()
        fake.detach()  # read the master ourselves, with no event-loop turn in between
        pending = link.send_stop_now(3)
        # No await from here on: the event loop cannot run, so whatever reaches the master
        # was written by send_stop_now itself. The pty moves bytes from the slave to the
        # master on a kernel work queue, so they may take a moment to become readable.
        wanted = Frame(pending.seq or 0, Stop(session_id=3))
        assert wanted in read_frames_blocking(pty.master_fd, until=wanted, timeout_s=2.0)
        fake.attach(pty)
        os.write(pty.master_fd, encode_frame(Ack(ack_seq=pending.seq or 0), seq=200))
        outcome = await asyncio.wait_for(pending.outcome(), 1)
        assert isinstance(outcome, CommandAnswered)


async def test_unanswered_command_fails_after_retransmissions(
    device: tuple[Pty, FakeDevice],
) -> None:
    pty, fake = device
    async with SerialLink(url=str(pty.link_path)) as link:
        await link.wait_identified()
        fake.answer_commands = False
        outcome = await asyncio.wait_for(link.command(START), 2)
        assert isinstance(outcome, CommandFailed)
        assert outcome.transmissions == 6
        assert {f.seq for f in fake.frames_of(Start)} == {outcome.seq}
        assert len(fake.frames_of(Start)) == 6


async def test_hang_up_is_link_loss_then_reopen_and_rehandshake(
    device: tuple[Pty, FakeDevice], tmp_path: Path
) -> None:
    pty, fake = device
    async with SerialLink(url=str(pty.link_path), reconnect_max_ms=200) as link:
        await link.wait_identified()
        await wait_for_event(link, LinkRestored)
        fake.detach()
        pty.hang_up()  # the USB head unplugged
        closed = await wait_for_event(link, PortClosed)
        lost = await wait_for_event(link, LinkLost)
        assert isinstance(closed, PortClosed)
        assert isinstance(lost, LinkLost)
        assert link.phase.value == "port_closed"  # (.value: keeps mypy from narrowing)
        outcome = link.send_stop_now(3)  # port gone: fails at once, never raises
        assert outcome.seq is None
        assert isinstance(await outcome.outcome(), CommandFailed)
        await asyncio.sleep(0.3)  # unplugged for a while: reopen attempts fail quietly
        replugged = Pty.open(tmp_path / "ttyMN1")
        fake.attach(replugged)
        try:
            identified = await wait_for_event(link, Identified, timeout_s=3)
            assert isinstance(identified, Identified)
            await wait_for_event(link, LinkRestored)
            assert link.phase is LinkPhase.IDENTIFIED
            assert isinstance(await link.command(START), CommandAnswered)
        finally:
            fake.detach()
            replugged.hang_up()


async def test_second_controller_on_same_port_is_refused(
    device: tuple[Pty, FakeDevice],
) -> None:
    pty, _ = device
    async with SerialLink(url=str(pty.link_path)) as link:
        await link.wait_identified()
        with pytest.raises(PortInUseError, match=r"already open exclusively") as caught:
            async with SerialLink(url=str(pty.link_path)):
                pass
        message = str(caught.value)
        assert str(pty.link_path) in message
        assert f"{os.getpid()} (" in message  # names the process holding it
        assert link.link_up or link.phase is LinkPhase.IDENTIFIED  # first one unharmed


async def test_absent_port_reported_then_opened_when_it_appears(tmp_path: Path) -> None:
    path = tmp_path / "ttyLATE"
    async with SerialLink(url=str(path), reconnect_max_ms=100) as link:
        absent = await link.next_event()
        assert isinstance(absent, PortClosed)
        assert str(path) in absent.reason
        await asyncio.sleep(0.2)
        pty = Pty.open(path)  # the head is plugged in after the controller started
        fake = FakeDevice()
        fake.attach(pty)
        try:
            identified = await wait_for_event(link, Identified)
            assert isinstance(identified, Identified)
        finally:
            fake.detach()
            pty.hang_up()


async def test_real_time_gaps_between_host_frames_stay_under_250ms(
    device: tuple[Pty, FakeDevice],
) -> None:
    pty, fake = device
    async with SerialLink(url=str(pty.link_path)) as link:
        await link.wait_identified()
        await asyncio.sleep(1.2)
    times = fake.received_at_s
    gaps_ms = [(b - a) * 1000 for a, b in itertools.pairwise(times)]
    assert len(times) >= 5
    assert max(gaps_ms) < 250, gaps_ms
    assert any(isinstance(f.message, Heartbeat) for f in fake.received)
