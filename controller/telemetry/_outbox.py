"""The small outbox contract the publisher depends on.

The only implementation is the ledger's own outbox (`controller.ledger.Outbox`, in
the same database as the dose records); the controller passes `Ledger.outbox` (or a
view of it), and, for backfill replies, `append_reply` built with `ledger_appender`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Protocol

from controller.telemetry._builders import OutboxEntry

__all__ = ["OutboxReader", "OutboxRowLike", "ReplyAppender", "Settler", "utc_text"]


def utc_text(moment: datetime) -> str:
    """`2026-11-25T12:00:00.000Z`: the one spelling of a UTC time in this package."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class OutboxRowLike(Protocol):
    """What the publisher reads from one outbox row (the ledger's `OutboxRow` fits)."""

    @property
    def seq(self) -> int: ...
    @property
    def kind(self) -> str: ...
    @property
    def topic(self) -> str: ...
    @property
    def payload(self) -> bytes: ...
    @property
    def retain(self) -> bool: ...
    @property
    def created_utc(self) -> datetime: ...


class OutboxReader(Protocol):
    """What the publisher needs from the outbox (the ledger's `Outbox` fits)."""

    def pending(self, *, limit: int = 100, after_seq: int = 0) -> Sequence[OutboxRowLike]:
        """Up to `limit` rows with seq > `after_seq`, in seq order."""
        ...

    def high_seq(self) -> int:
        """The highest seq waiting (0 when empty); must not scan the backlog."""
        ...

    def newest_retained(self) -> Sequence[OutboxRowLike]:
        """The newest waiting row of each retained topic; must not scan telemetry."""
        ...

    def delete(self, seqs: Iterable[int]) -> object:
        """Delete rows (called only after their PUBACK)."""
        ...


# Commits one backfill reply to the outbox and returns its seq.
ReplyAppender = Callable[[OutboxEntry], int]


# Takes over rows the broker acknowledged (PUBACK) at `sent` (UTC): archive them for
# backfill, then delete them from the outbox. The controller's settler queues this on
# the ledger's writer thread (controller/service/_telemetry.py); it must not block.
Settler = Callable[[Sequence[OutboxRowLike], datetime], None]
