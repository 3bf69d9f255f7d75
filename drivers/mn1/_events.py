"""Typed events and commands of the host link (`HostLink` emits these; see `_link.py`)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from ._messages import (
    Ack,
    Breath,
    Caps,
    ClearFaults,
    Hello,
    Ident,
    Nak,
    SessionEnd,
    Start,
    StartGated,
    Status,
    Stop,
)

__all__ = [
    "BreathReceived",
    "CapabilitiesDiscovered",
    "CapabilityMissingError",
    "CapsDiscovery",
    "Command",
    "CommandAnswered",
    "CommandFailed",
    "CommandOutcome",
    "DeviceRebooted",
    "DeviceSwapped",
    "HandshakeFailed",
    "Identified",
    "LinkEvent",
    "LinkLost",
    "LinkNotReadyError",
    "LinkPhase",
    "LinkRestored",
    "NoCapabilities",
    "PortClosed",
    "PortOpened",
    "SessionEndReceived",
    "StatusReceived",
]

#: Commands that expect an answer and are retransmitted until they get one.
Command = Hello | Start | StartGated | Stop | ClearFaults


class LinkNotReadyError(RuntimeError):
    """A command cannot be sent now (port closed, or device not identified yet)."""


class CapabilityMissingError(LinkNotReadyError):
    """START_GATED to a head whose CAPS did not advertise BREATH_GATED (or a version-1 head)."""


class CapsDiscovery(Enum):
    """What the host knows of the head's addendum-1.1 capabilities."""

    #: Not asked yet, or QUERY_CAPS is still unanswered (port closed, handshaking, querying).
    PENDING = "pending"
    #: No CAPS after `CAPS_QUERY_TRIES` queries: a version-1 head, no capabilities.
    VERSION_1 = "version_1"
    #: CAPS received (`HostLink.capabilities`).
    DISCOVERED = "discovered"


class LinkPhase(Enum):
    """Where the host link is in its life cycle."""

    PORT_CLOSED = "port_closed"
    HANDSHAKING = "handshaking"
    IDENTIFIED = "identified"


# --- events --------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class PortOpened:
    """The transport opened the port; a handshake (HELLO) has been queued."""

    at_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PortClosed:
    """The port closed or failed (unplug, hang-up, I/O error); the transport reopens it."""

    at_ms: int
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Identified:
    """IDENT answered our HELLO: commands other than STOP may now be sent."""

    at_ms: int
    ident: Ident


@dataclass(frozen=True, slots=True, kw_only=True)
class HandshakeFailed:
    """HELLO got no IDENT after all retransmissions; another HELLO follows later."""

    at_ms: int
    reason: str
    version_errors: int


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceSwapped:
    """The device on the port now reports a different serial than before."""

    at_ms: int
    previous: Ident
    current: Ident


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceRebooted:
    """STATUS `uptime_ms` dropped: the device restarted and kept nothing (ICD §5.8)."""

    at_ms: int
    previous_uptime_ms: int
    uptime_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusReceived:
    """A valid STATUS frame."""

    at_ms: int
    seq: int
    status: Status


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionEndReceived:
    """A SESSION_END (repeats of the same seq and session are reported once)."""

    at_ms: int
    seq: int
    session_end: SessionEnd


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandAnswered:
    """The device answered a command (ACK, NAK or, for HELLO, IDENT)."""

    at_ms: int
    seq: int
    command: Command
    answer: Ack | Nak | Ident
    transmissions: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandFailed:
    """A command got no answer: outcome unknown (ICD §6; resolve by reading STATUS)."""

    at_ms: int
    seq: int | None
    command: Command
    reason: str
    transmissions: int


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkLost:
    """No valid STATUS for `STATUS_TIMEOUT_MS`, or the port closed: device state is unknown."""

    at_ms: int
    reason: str
    last_status_ms: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkRestored:
    """A valid STATUS arrived while the link was down (also the first one after opening)."""

    at_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CapabilitiesDiscovered:
    """CAPS answered QUERY_CAPS: an addendum-1.1 head (see `caps.breath_gated`)."""

    at_ms: int
    caps: Caps


@dataclass(frozen=True, slots=True, kw_only=True)
class NoCapabilities:
    """QUERY_CAPS went unanswered `tries` times: a version-1 head. This is not link loss."""

    at_ms: int
    tries: int


@dataclass(frozen=True, slots=True, kw_only=True)
class BreathReceived:
    """A BREATH report (addendum 1.1 §3). Never for limits: an estimate beside delivered_ul."""

    at_ms: int
    seq: int
    breath: Breath


CommandOutcome = CommandAnswered | CommandFailed
LinkEvent = (
    PortOpened
    | PortClosed
    | Identified
    | HandshakeFailed
    | DeviceSwapped
    | DeviceRebooted
    | StatusReceived
    | SessionEndReceived
    | CommandAnswered
    | CommandFailed
    | LinkLost
    | LinkRestored
    | CapabilitiesDiscovered
    | NoCapabilities
    | BreathReceived
)
