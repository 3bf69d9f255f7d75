"""Glue to the ledger: turn an `OutboxEntry` into the ledger's `OutboxMessage`, and
make the `append_reply` the publisher needs for backfill replies."""

from __future__ import annotations

from collections.abc import Callable

from controller.dosing import Instant
from controller.ledger import Outbox, OutboxKind, OutboxMessage, OutboxStamp
from controller.telemetry._builders import OutboxEntry
from controller.telemetry._outbox import ReplyAppender

__all__ = ["ledger_appender", "ledger_message"]


def ledger_message(entry: OutboxEntry) -> OutboxMessage:
    """The ledger message for an entry; the ledger calls the builder with the seq it
    allocates inside its write transaction (so the payload carries that seq)."""

    def build(stamp: OutboxStamp) -> bytes:
        return entry.build(stamp.seq)

    return OutboxMessage(
        kind=OutboxKind(entry.kind),
        topic=entry.topic,
        payload=build,
        qos=entry.qos,
        retain=entry.retain,
    )


def ledger_appender(outbox: Outbox, *, now: Callable[[], Instant]) -> ReplyAppender:
    """An `append_reply` for `OutboxPublisher` that commits to the ledger's outbox."""

    def append(entry: OutboxEntry) -> int:
        return outbox.append(ledger_message(entry), at=now())

    return append
