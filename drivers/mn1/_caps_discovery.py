"""Capability discovery on an addendum-1.1 head (QUERY_CAPS → CAPS), sans-IO.

After every IDENT (every (re)connect) and after a reboot the host asks QUERY_CAPS
with a new seq and repeats the same frame every 50 ms; three unanswered
transmissions mean a version-1 head — NOT link loss. A late CAPS after that
verdict still upgrades (capabilities only add). START_GATED goes only to a head
whose CAPS carried BREATH_GATED.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._events import (
    CapabilitiesDiscovered,
    CapabilityMissingError,
    CapsDiscovery,
    LinkNotReadyError,
    NoCapabilities,
)
from ._messages import Caps
from ._timing import CAPS_QUERY_INTERVAL_MS, CAPS_QUERY_TRIES

__all__ = ["CapsDiscoverer"]


@dataclass(slots=True, kw_only=True)
class _CapsQuery:
    seq: int
    frame: bytes
    transmissions: int
    due_ms: int  # next repeat, or the version-1 verdict once transmissions == CAPS_QUERY_TRIES


class CapsDiscoverer:
    """What the host knows of the head's capabilities, and the query in flight."""

    def __init__(self) -> None:
        """Discovery PENDING, nothing asked yet."""
        self.discovery = CapsDiscovery.PENDING
        self.caps: Caps | None = None
        self._query: _CapsQuery | None = None
        self._query_seq: int | None = None  # last QUERY_CAPS seq (a late CAPS still counts)

    def reset(self) -> None:
        """Forget the capabilities (another head may be on the port): PENDING again."""
        self.discovery = CapsDiscovery.PENDING
        self.caps = None
        self._query = None

    def asked(self, *, seq: int, frame: bytes, now_ms: int) -> None:
        """QUERY_CAPS `frame` (a new `seq`; repeats reuse it) was written at `now_ms`."""
        self.reset()
        self._query_seq = seq
        self._query = _CapsQuery(
            seq=seq, frame=frame, transmissions=1, due_ms=now_ms + CAPS_QUERY_INTERVAL_MS
        )

    def deadline_ms(self) -> int | None:
        """When the query is next due (repeat or verdict); None if none is in flight."""
        return self._query.due_ms if self._query is not None else None

    def due(self, now_ms: int) -> bytes | NoCapabilities | None:
        """The frame to write again now, or the version-1 verdict, or nothing."""
        query = self._query
        if query is None or query.due_ms > now_ms:
            return None
        if query.transmissions >= CAPS_QUERY_TRIES:
            # Addendum 1.1 §1: a version-1 head drops QUERY_CAPS. Not link loss.
            self._query = None
            self.discovery = CapsDiscovery.VERSION_1
            return NoCapabilities(at_ms=now_ms, tries=query.transmissions)
        query.transmissions += 1
        query.due_ms = now_ms + CAPS_QUERY_INTERVAL_MS
        return query.frame

    def answered(
        self, caps: Caps, *, identified: bool, now_ms: int
    ) -> CapabilitiesDiscovered | None:
        """CAPS arrived; the event if it tells the host something new."""
        if caps.ack_seq != self._query_seq or not identified:
            return None  # not an answer to our latest query (noise, or from before a reconnect)
        if self.discovery is CapsDiscovery.DISCOVERED and self.caps == caps:
            return None  # the answer to a repeat we already have
        # A late CAPS after the version-1 verdict still upgrades: capabilities only add.
        self._query = None
        self.caps = caps
        self.discovery = CapsDiscovery.DISCOVERED
        return CapabilitiesDiscovered(at_ms=now_ms, caps=caps)

    def check_gating(self) -> None:
        """Raise unless START_GATED may go to this head (addendum 1.1 §1)."""
        if self.discovery is CapsDiscovery.PENDING:
            raise LinkNotReadyError(
                "cannot send StartGated before the head's capabilities are known "
                "(addendum 1.1 §1); wait for CapabilitiesDiscovered or NoCapabilities"
            )
        if self.caps is None:
            raise CapabilityMissingError(
                "cannot send StartGated: the head did not answer QUERY_CAPS, so it is a "
                "version-1 head without breath-gated delivery; use a continuous prescription "
                "or a breath-aware (ICD 1.1) head"
            )
        if not self.caps.breath_gated:
            raise CapabilityMissingError(
                f"cannot send StartGated: the head's CAPS (caps=0x{int(self.caps.caps):04x}) "
                "lack BREATH_GATED; use a continuous prescription or another head"
            )
