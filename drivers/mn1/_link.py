"""Host side of the MN-1 link (ICD §5–§6), sans-IO: no asyncio, no clock, no port.

Physical failure modes this layer turns into events (the codec already drops
corrupted frames):

- a lost command or a lost answer → the command is retransmitted after 50 ms with
  the SAME seq (the device answers a repeat without acting twice, ICD §5.6), up to
  5 times, then `CommandFailed`;
- a silent device (cable pulled, firmware hung) → 300 ms without a valid STATUS
  is `LinkLost`; the next valid STATUS is `LinkRestored`;
- the port vanishing (USB unplug, pty hang-up) → `PortClosed`, every outstanding
  command fails, and after the transport reopens the port, a new handshake;
- a device that rebooted (its `uptime_ms` dropped) → `DeviceRebooted`; a different
  device on the same port (IDENT serial changed) → `DeviceSwapped`;
- a device that speaks another protocol version → its frames fail to decode
  (`VersionError`), HELLO gets no IDENT, and `HandshakeFailed` says why.

The ICD's timing constants live in `_timing.py`.

Time is passed in as `now_ms` (any monotonic millisecond counter). Timers are
data: the caller asks `next_deadline_ms()` and calls `handle_timers(now_ms)` then.
Every input method queues bytes to write (`take_writes()`) and events
(`take_events()`); the caller writes the bytes, in order, as soon as it can.

Host obligations implemented (ICD §6 and §5.5, §5.7):

| obligation | where |
|---|---|
| HELLO first, IDENT before any START or CLEAR_FAULTS | `connection_made`, `send_command` |
| seq +1 per new frame, wraps 255 → 0 | `_new_seq` |
| retransmit after 50 ms, same seq, ≤ 5 times, then failed | `handle_timers` (`_retransmit.py`) |
| answers matched by `ack_seq` | `_on_answer` (`_retransmit.py`) |
| a frame at least every 250 ms (HEARTBEAT if nothing else) | `handle_timers` |
| ACK_END for every SESSION_END (each repeat, with its seq) | `_on_session_end` |
| 300 ms without STATUS → link lost; next STATUS → restored | `handle_timers`, `_on_status` |

Addendum 1.1 (breath-aware heads) obligations (discovery state: `_caps_discovery.py`):

| obligation | where |
|---|---|
| QUERY_CAPS after every IDENT (every (re)connect) and after a reboot | `_on_ident`, `_on_status` |
| repeat it every 50 ms, same seq; 3 unanswered → version 1, not link loss | `_caps_timer` |
| never START_GATED to a head whose CAPS lacked BREATH_GATED | `send_command` |
| BREATH reports passed on as events, never acknowledged | `_on_frame` |
"""

from __future__ import annotations

from typing import Final

from ._caps_discovery import CapsDiscoverer
from ._codec import FrameError, VersionError, encode_frame
from ._deframer import Deframer
from ._events import (
    BreathReceived,
    CapsDiscovery,
    Command,
    CommandAnswered,
    DeviceRebooted,
    DeviceSwapped,
    HandshakeFailed,
    Identified,
    LinkEvent,
    LinkLost,
    LinkNotReadyError,
    LinkPhase,
    LinkRestored,
    PortClosed,
    PortOpened,
    SessionEndReceived,
    StatusReceived,
)
from ._messages import (
    Ack,
    AckEnd,
    Breath,
    Caps,
    ClearFaults,
    Frame,
    Heartbeat,
    Hello,
    Ident,
    Nak,
    QueryCaps,
    SessionEnd,
    Start,
    StartGated,
    Status,
)
from ._retransmit import Outstanding, OutstandingCommands
from ._timing import (
    HEARTBEAT_INTERVAL_MAX_MS,
    MAX_RETRANSMITS,
    RETRANSMIT_AFTER_MS,
    STATUS_TIMEOUT_MS,
    uptime_shows_reboot,
)

__all__ = ["HostLink"]

# Remember this many (seq, session_id) SESSION_ENDs to drop repeats (a device sends
# at most 50 repeats of one, and sessions are minutes apart).
_SESSION_END_MEMORY: Final = 16


class HostLink:
    """The host's link state machine. Feed it bytes and time; take bytes and events."""

    def __init__(
        self,
        *,
        retransmit_after_ms: int = RETRANSMIT_AFTER_MS,
        max_retransmits: int = MAX_RETRANSMITS,
        heartbeat_interval_ms: int = 200,
        status_timeout_ms: int = STATUS_TIMEOUT_MS,
        handshake_retry_ms: int = 1000,
        first_seq: int = 0,
    ) -> None:
        """Create a link in phase PORT_CLOSED.

        `heartbeat_interval_ms` defaults to 200 so that a late event-loop timer
        still keeps the gap under the ICD's 250 ms; it may not exceed 250.
        """
        if not 0 < heartbeat_interval_ms <= HEARTBEAT_INTERVAL_MAX_MS:
            raise ValueError(
                f"heartbeat_interval_ms={heartbeat_interval_ms}: the ICD needs a frame at "
                f"least every {HEARTBEAT_INTERVAL_MAX_MS} ms; use 1..{HEARTBEAT_INTERVAL_MAX_MS}"
            )
        if not 0 <= first_seq <= 0xFF:
            raise ValueError(f"first_seq={first_seq} does not fit in u8; use 0..255")
        self._heartbeat_interval_ms = heartbeat_interval_ms
        self._status_timeout_ms = status_timeout_ms
        self._handshake_retry_ms = handshake_retry_ms
        self._next_seq = first_seq

        self.deframer = Deframer()
        self._phase = LinkPhase.PORT_CLOSED
        self._writes: list[bytes] = []
        self._events: list[LinkEvent] = []
        self._outstanding = OutstandingCommands(
            retransmit_after_ms=retransmit_after_ms, max_retransmits=max_retransmits
        )
        self._last_tx_ms: int | None = None
        self._hello_seq: int | None = None
        self._hello_due_ms: int | None = None  # handshake retry after a failed HELLO
        self._version_errors = 0
        self._link_up = False
        self._last_status_ms: int | None = None
        self._last_uptime_ms: int | None = None
        self._ident: Ident | None = None
        self._session_ends_seen: list[tuple[int, int]] = []
        self._caps = CapsDiscoverer()

    # --- read-only state ---------------------------------------------------------

    @property
    def phase(self) -> LinkPhase:
        """PORT_CLOSED, HANDSHAKING or IDENTIFIED."""
        return self._phase

    @property
    def link_up(self) -> bool:
        """True while valid STATUS frames arrive within `status_timeout_ms`."""
        return self._link_up

    @property
    def ident(self) -> Ident | None:
        """The last IDENT received (kept across port loss, to detect a swapped device)."""
        return self._ident

    @property
    def caps_discovery(self) -> CapsDiscovery:
        """PENDING until CAPS arrives (DISCOVERED) or the queries run out (VERSION_1)."""
        return self._caps.discovery

    @property
    def capabilities(self) -> Caps | None:
        """The head's CAPS, or None (version-1 head, or discovery still pending)."""
        return self._caps.caps

    @property
    def breath_gating_supported(self) -> bool:
        """True once CAPS with BREATH_GATED arrived from the head on the port now."""
        caps = self._caps.caps
        return caps is not None and caps.breath_gated

    @property
    def outstanding_seqs(self) -> tuple[int, ...]:
        """Seqs of commands still waiting for an answer."""
        return self._outstanding.seqs

    # --- outputs -----------------------------------------------------------------

    def take_writes(self) -> list[bytes]:
        """Frames to write to the port, oldest first; the queue is emptied."""
        writes, self._writes = self._writes, []
        return writes

    def take_events(self) -> list[LinkEvent]:
        """Events since the last call, oldest first; the queue is emptied."""
        events, self._events = self._events, []
        return events

    def next_deadline_ms(self) -> int | None:
        """The earliest time `handle_timers` has work to do, or None if none is pending."""
        deadlines = self._outstanding.deadlines()
        if self._phase is not LinkPhase.PORT_CLOSED:
            last_tx = self._last_tx_ms if self._last_tx_ms is not None else 0
            deadlines.append(last_tx + self._heartbeat_interval_ms)
            if self._hello_due_ms is not None:
                deadlines.append(self._hello_due_ms)
            caps_due_ms = self._caps.deadline_ms()
            if caps_due_ms is not None:
                deadlines.append(caps_due_ms)
        if self._link_up and self._last_status_ms is not None:
            deadlines.append(self._last_status_ms + self._status_timeout_ms)
        return min(deadlines, default=None)

    # --- inputs ------------------------------------------------------------------

    def connection_made(self, now_ms: int) -> None:
        """The port is open: start the handshake (HELLO)."""
        self.deframer = Deframer()
        self._phase = LinkPhase.HANDSHAKING
        self._events.append(PortOpened(at_ms=now_ms))
        self._send_hello(now_ms)

    def connection_lost(self, now_ms: int, *, reason: str) -> None:
        """The port closed or failed: fail what is outstanding, report link loss."""
        if self._phase is LinkPhase.PORT_CLOSED:
            return
        self._phase = LinkPhase.PORT_CLOSED
        self._writes.clear()  # nothing can be written to a closed port
        self._events.append(PortClosed(at_ms=now_ms, reason=reason))
        self._fail_all(now_ms, reason=f"port closed: {reason}")
        self._hello_seq = None
        self._hello_due_ms = None
        self._last_tx_ms = None
        # The next head on this port may be another one: ask again after its IDENT.
        self._caps.reset()
        if self._link_up:
            self._link_up = False
            self._events.append(
                LinkLost(
                    at_ms=now_ms,
                    reason=f"port closed: {reason}",
                    last_status_ms=self._last_status_ms,
                )
            )

    def send_command(self, command: Command, now_ms: int) -> int:
        """Queue `command` (HELLO, START, START_GATED, STOP, CLEAR_FAULTS); returns its seq.

        STOP may be sent as soon as the port is open (safe state first); START and
        CLEAR_FAULTS only after IDENT. Raises LinkNotReadyError otherwise.
        START_GATED also needs CAPS with BREATH_GATED from this head (addendum 1.1
        §1): LinkNotReadyError while discovery is pending, CapabilityMissingError
        for a version-1 head or one without the bit. Never sent as a plain START.
        """
        if self._phase is LinkPhase.PORT_CLOSED:
            raise LinkNotReadyError(
                f"cannot send {type(command).__name__}: the port is closed "
                "(the transport reopens it; wait for Identified)"
            )
        if (
            isinstance(command, Start | StartGated | ClearFaults)
            and self._phase is not LinkPhase.IDENTIFIED
        ):
            raise LinkNotReadyError(
                f"cannot send {type(command).__name__} before the device answered HELLO "
                "with IDENT (ICD §6); wait for Identified"
            )
        if isinstance(command, StartGated):
            self._caps.check_gating()
        if isinstance(command, Hello):
            return self._send_hello(now_ms)
        return self._send_tracked(command, now_ms)

    def receive_data(self, data: bytes, now_ms: int) -> None:
        """Bytes read from the port, in any chunking."""
        for item in self.deframer.feed(data):
            if isinstance(item, FrameError):
                if isinstance(item, VersionError):
                    self._version_errors += 1
                continue
            self._on_frame(item, now_ms)

    def handle_timers(self, now_ms: int) -> None:
        """Run every timer due at or before `now_ms` (retransmit, heartbeat, link loss)."""
        resend, failed = self._outstanding.due(now_ms)
        for frame in resend:
            self._write(frame, now_ms)
        for seq, entry, why in failed:
            self._on_command_failed(seq, entry, now_ms, reason=why)
        if self._hello_due_ms is not None and self._hello_due_ms <= now_ms:
            self._send_hello(now_ms)
        self._caps_timer(now_ms)
        if (
            self._link_up
            and self._last_status_ms is not None
            and now_ms - self._last_status_ms >= self._status_timeout_ms
        ):
            self._link_up = False
            self._events.append(
                LinkLost(
                    at_ms=now_ms,
                    reason=f"no valid STATUS for {now_ms - self._last_status_ms} ms",
                    last_status_ms=self._last_status_ms,
                )
            )
        if (
            self._phase is not LinkPhase.PORT_CLOSED
            and self._last_tx_ms is not None
            and now_ms - self._last_tx_ms >= self._heartbeat_interval_ms
        ):
            self._write(encode_frame(Heartbeat(), seq=self._new_seq()), now_ms)

    # --- internals ---------------------------------------------------------------

    def _query_caps(self, now_ms: int) -> None:
        """Start capability discovery (a new seq; repeats reuse it)."""
        seq = self._new_seq()
        frame = encode_frame(QueryCaps(), seq=seq)
        self._write(frame, now_ms)
        self._caps.asked(seq=seq, frame=frame, now_ms=now_ms)

    def _caps_timer(self, now_ms: int) -> None:
        due = self._caps.due(now_ms)
        if isinstance(due, bytes):
            self._write(due, now_ms)
        elif due is not None:
            self._events.append(due)

    def _new_seq(self) -> int:
        seq = self._next_seq
        self._next_seq = (seq + 1) & 0xFF
        return seq

    def _write(self, frame: bytes, now_ms: int) -> None:
        self._writes.append(frame)
        self._last_tx_ms = now_ms

    def _send_tracked(self, command: Command, now_ms: int) -> int:
        seq = self._new_seq()
        frame = encode_frame(command, seq=seq)
        self._write(frame, now_ms)
        self._outstanding.track(seq, command, frame, now_ms)
        return seq

    def _send_hello(self, now_ms: int) -> int:
        self._hello_due_ms = None
        self._version_errors = 0
        seq = self._send_tracked(Hello(), now_ms)
        self._hello_seq = seq
        return seq

    def _fail_all(self, now_ms: int, *, reason: str) -> None:
        for seq, entry in self._outstanding.take_all().items():
            self._events.append(entry.failed(seq, now_ms, reason=reason))

    def _on_command_failed(self, seq: int, entry: Outstanding, now_ms: int, *, reason: str) -> None:
        self._events.append(entry.failed(seq, now_ms, reason=reason))
        if seq == self._hello_seq and self._phase is LinkPhase.HANDSHAKING:
            self._hello_seq = None
            why = (
                f"{self._version_errors} frames carried another protocol version; "
                "this host speaks MN-1 ICD version 1"
                if self._version_errors
                else "no IDENT answered HELLO"
            )
            self._events.append(
                HandshakeFailed(at_ms=now_ms, reason=why, version_errors=self._version_errors)
            )
            self._hello_due_ms = now_ms + self._handshake_retry_ms

    def _on_frame(self, frame: Frame, now_ms: int) -> None:
        message = frame.message
        if isinstance(message, Status):
            self._on_status(frame.seq, message, now_ms)
        elif isinstance(message, SessionEnd):
            self._on_session_end(frame.seq, message, now_ms)
        elif isinstance(message, Ack | Nak | Ident):
            self._on_answer(message, now_ms)
        elif isinstance(message, Caps):
            identified = self._phase is LinkPhase.IDENTIFIED
            discovered = self._caps.answered(message, identified=identified, now_ms=now_ms)
            if discovered is not None:
                self._events.append(discovered)
        elif isinstance(message, Breath):
            self._events.append(BreathReceived(at_ms=now_ms, seq=frame.seq, breath=message))
        # Host-to-device types arriving here (a loopback or a crossed cable) are ignored.

    def _on_status(self, seq: int, status: Status, now_ms: int) -> None:
        previous = self._last_uptime_ms
        if previous is not None and uptime_shows_reboot(previous, status.uptime_ms):
            self._events.append(
                DeviceRebooted(
                    at_ms=now_ms, previous_uptime_ms=previous, uptime_ms=status.uptime_ms
                )
            )
            if self._phase is LinkPhase.IDENTIFIED:
                self._query_caps(now_ms)  # addendum 1.1 §4: the head kept nothing
        self._last_uptime_ms = status.uptime_ms
        self._last_status_ms = now_ms
        if not self._link_up:
            self._link_up = True
            self._events.append(LinkRestored(at_ms=now_ms))
        self._events.append(StatusReceived(at_ms=now_ms, seq=seq, status=status))

    def _on_session_end(self, seq: int, session_end: SessionEnd, now_ms: int) -> None:
        # Every repeat is answered: our previous ACK_END may have been lost.
        self._write(encode_frame(AckEnd(end_seq=seq), seq=self._new_seq()), now_ms)
        key = (seq, session_end.session_id)
        if key in self._session_ends_seen:
            return
        self._session_ends_seen.append(key)
        del self._session_ends_seen[:-_SESSION_END_MEMORY]
        self._events.append(SessionEndReceived(at_ms=now_ms, seq=seq, session_end=session_end))

    def _on_answer(self, answer: Ack | Nak | Ident, now_ms: int) -> None:
        entry = self._outstanding.match(answer)
        if entry is None:
            return
        self._events.append(
            CommandAnswered(
                at_ms=now_ms,
                seq=answer.ack_seq,
                command=entry.command,
                answer=answer,
                transmissions=entry.transmissions,
            )
        )
        if isinstance(answer, Ident):
            self._on_ident(answer, now_ms)

    def _on_ident(self, ident: Ident, now_ms: int) -> None:
        previous = self._ident
        self._ident = ident
        self._hello_seq = None
        self._hello_due_ms = None
        if self._phase is LinkPhase.HANDSHAKING:
            self._phase = LinkPhase.IDENTIFIED
        if previous is not None and previous.serial != ident.serial:
            # Another head: its uptime has nothing to do with the previous one's.
            self._last_uptime_ms = None
            self._events.append(DeviceSwapped(at_ms=now_ms, previous=previous, current=ident))
        self._events.append(Identified(at_ms=now_ms, ident=ident))
        self._query_caps(now_ms)
