"""Bookkeeping of the command intake under a flood, as pure data (time is an argument).

The MQTT client hands every message on a command topic to the intake as it arrives.
`IntakeGate` answers the questions the intake asks about each one, without I/O:

- *Is it new?* `claim_counter` keeps, per sender, the highest counter screened in
  this run (seeded from the durable store), so a replayed envelope is refused
  before anything acts on it, also while its durable commit is still queued.
- *May it be recorded on its own?* A refused message gets its own ledger row,
  audit record and reply only while its sender's token bucket (known senders; all
  unknown claimed ids share one bucket) and the global bucket have tokens. Buckets
  bound the disk and network work a flood can cause; an authenticated STOP or
  alarm acknowledgement never asks (it pre-empts everything).
- *Is the routine lane full?* Authenticated commands other than STOP and
  alarm.ack wait in a bounded lane (`routine_capacity`).
- *What was not accepted?* Every refused or dropped message is tallied by
  (topic, sender, reason) with first/last time; `take_tallies` hands the tallies
  to the audit log once a second, so the audit accounts for every message.
- *Is there a flood?* Messages refused or dropped without an individual record
  for longer than `flood_after_s` (gaps shorter than `flood_quiet_s`) make
  `flood_active` true; the service raises the COMMAND_FLOOD alarm from it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

__all__ = [
    "UNKNOWN_SENDER_KEY",
    "DropTally",
    "IntakeGate",
    "IntakeLimits",
    "TallyDisposition",
    "TokenBucket",
]

#: Bucket (and tally) key shared by every claimed sender id that is not configured.
UNKNOWN_SENDER_KEY: Final = "(unknown)"
#: Tally sender when more distinct senders were seen in one period than are tallied.
_MANY_SENDERS: Final = "(many)"
_MAX_TALLY_KEYS: Final = 64


class TallyDisposition(StrEnum):
    """What happened to a message that was not accepted."""

    RECORDED = "refused_recorded"  # refused; its own audit record, ledger row and reply
    AGGREGATED = "refused_aggregated"  # refused; over the record rate, counted only
    DROPPED = "dropped"  # authenticated, but the routine lane was full or over rate


@dataclass(kw_only=True)
class TokenBucket:
    """Classic token bucket: `rate_per_s` tokens a second, at most `burst` saved."""

    rate_per_s: float
    burst: float
    tokens: float = -1.0
    last_s: float | None = None

    def take(self, now_s: float) -> bool:
        """Take one token if there is one (refill first, by the time since last call)."""
        if self.last_s is None:
            self.tokens = self.burst
        else:
            elapsed_s = max(0.0, now_s - self.last_s)
            self.tokens = min(self.burst, self.tokens + elapsed_s * self.rate_per_s)
        self.last_s = now_s
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass(frozen=True, kw_only=True)
class IntakeLimits:
    """Rates and bounds of the command intake (defaults suit one bed)."""

    #: Individually recorded refusals per sender bucket: rate and burst.
    record_rate_per_s: float = 5.0
    record_burst: int = 20
    #: Individually recorded refusals over all senders together.
    global_record_rate_per_s: float = 20.0
    global_record_burst: int = 60
    #: Authenticated routine commands (start requests, prescriptions) per sender.
    routine_rate_per_s: float = 2.0
    routine_burst: int = 10
    #: Authenticated routine commands waiting to be handled.
    routine_capacity: int = 32
    #: A flood is alarmed once unrecorded refusals/drops go on this long ...
    flood_after_s: float = 1.5
    #: ... with no quiet gap longer than this (which also ends the flood).
    flood_quiet_s: float = 5.0


@dataclass(kw_only=True)
class DropTally:
    """Messages not accepted, of one topic, sender and reason, in one period."""

    topic: str
    sender: str
    reason: str
    count: int = 0
    recorded: int = 0
    aggregated: int = 0
    dropped: int = 0
    first_utc: str = ""
    last_utc: str = ""

    def audit_body(self) -> dict[str, object]:
        """JSON body of the aggregate audit record (`command_tally`)."""
        return {
            "topic": self.topic,
            "sender": self.sender,
            "reason": self.reason,
            "count": self.count,
            "recorded_individually": self.recorded,
            "refused_not_recorded": self.aggregated,
            "dropped": self.dropped,
            "first_utc": self.first_utc,
            "last_utc": self.last_utc,
        }


@dataclass(kw_only=True)
class _Flood:
    started_s: float | None = None
    last_s: float | None = None


@dataclass(kw_only=True)
class IntakeGate:
    """The intake's rate limits, freshness check, tallies and flood detector."""

    limits: IntakeLimits = field(default_factory=IntakeLimits)
    #: Senders configured in `[security]` (each gets its own buckets).
    known_senders: frozenset[str] = frozenset()
    unrecorded_total: int = 0
    _record_buckets: dict[str, TokenBucket] = field(default_factory=dict)
    _routine_buckets: dict[str, TokenBucket] = field(default_factory=dict)
    _global: TokenBucket | None = None
    _highest: dict[str, int] = field(default_factory=dict)
    _tallies: dict[tuple[str, str, str], DropTally] = field(default_factory=dict)
    _flood: _Flood = field(default_factory=_Flood)

    def sender_key(self, claimed_sender_id: str | None) -> str:
        """The bucket/tally key: a configured sender's id, else one shared key."""
        if claimed_sender_id is not None and claimed_sender_id in self.known_senders:
            return claimed_sender_id
        return UNKNOWN_SENDER_KEY

    def may_record(self, sender_key: str, now_s: float) -> bool:
        """Whether a refused message of `sender_key` gets its own record and reply."""
        limits = self.limits
        bucket = self._record_buckets.setdefault(
            sender_key,
            TokenBucket(rate_per_s=limits.record_rate_per_s, burst=limits.record_burst),
        )
        if self._global is None:
            self._global = TokenBucket(
                rate_per_s=limits.global_record_rate_per_s, burst=limits.global_record_burst
            )
        return bucket.take(now_s) and self._global.take(now_s)

    def may_queue_routine(self, sender_id: str, queued: int, now_s: float) -> bool:
        """Whether an authenticated routine command may wait in the routine lane."""
        limits = self.limits
        bucket = self._routine_buckets.setdefault(
            sender_id,
            TokenBucket(rate_per_s=limits.routine_rate_per_s, burst=limits.routine_burst),
        )
        return queued < limits.routine_capacity and bucket.take(now_s)

    def claim_counter(
        self, sender_id: str, counter: int, durable_last: Callable[[str], int | None]
    ) -> bool:
        """True (and remembered) when `counter` is above every counter of this sender
        screened in this run and the last durably committed one; False for a replay."""
        if sender_id not in self._highest:
            self._highest[sender_id] = durable_last(sender_id) or 0
        if counter <= self._highest[sender_id]:
            return False
        self._highest[sender_id] = counter
        return True

    def tally(
        self,
        *,
        topic: str,
        sender: str,
        reason: str,
        disposition: TallyDisposition,
        now_s: float,
        now_utc: str,
    ) -> None:
        """Count one message that was not accepted."""
        key = (topic, sender, reason)
        if key not in self._tallies and len(self._tallies) >= _MAX_TALLY_KEYS:
            key = (topic, _MANY_SENDERS, reason)
        entry = self._tallies.get(key)
        if entry is None:
            entry = DropTally(topic=key[0], sender=key[1], reason=key[2], first_utc=now_utc)
            self._tallies[key] = entry
        entry.count += 1
        entry.last_utc = now_utc
        if disposition is TallyDisposition.RECORDED:
            entry.recorded += 1
            return
        if disposition is TallyDisposition.AGGREGATED:
            entry.aggregated += 1
        else:
            entry.dropped += 1
        self.unrecorded_total += 1
        flood = self._flood
        if flood.last_s is None or now_s - flood.last_s > self.limits.flood_quiet_s:
            flood.started_s = now_s
        flood.last_s = now_s

    def take_tallies(self) -> list[DropTally]:
        """The tallies since the last call (oldest first), and start a new period."""
        tallies = sorted(self._tallies.values(), key=lambda t: t.first_utc)
        self._tallies = {}
        return tallies

    def flood_active(self, now_s: float) -> bool:
        """Unrecorded refusals/drops have gone on for `flood_after_s` without a quiet gap."""
        flood = self._flood
        if flood.started_s is None or flood.last_s is None:
            return False
        if now_s - flood.last_s > self.limits.flood_quiet_s:
            return False
        return flood.last_s - flood.started_s >= self.limits.flood_after_s
