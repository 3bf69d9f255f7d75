"""Glue to the ledger: turn an `OutboxEntry` into the ledger's `OutboxMessage`, make
the `append_reply` the publisher needs for backfill replies, and build the retained
`ledger/anchor` message from a ledger anchor."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from controller.dosing import Instant
from controller.ledger import (
    AnchoredSession,
    LedgerAnchor,
    Outbox,
    OutboxKind,
    OutboxMessage,
    OutboxStamp,
)
from controller.telemetry._builders import DeviceIdentity, OutboxEntry, outbox_entry
from controller.telemetry._outbox import ReplyAppender
from controller.telemetry._schemas import LedgerAnchorMessage

__all__ = [
    "ledger_anchor_entry",
    "ledger_anchor_from_message",
    "ledger_appender",
    "ledger_message",
]


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


def ledger_anchor_entry(
    identity: DeviceIdentity, *, root_topic: str, anchor: LedgerAnchor
) -> OutboxEntry:
    """The retained `nebuliser.ledger_anchor` message (QoS 1) of one ledger anchor.

    The subject id of the anchored session is left out: it is not needed to judge
    continuity, and nothing the controller publishes names the patient.
    """
    session = anchor.session
    return outbox_entry(
        identity,
        root_topic=root_topic,
        schema=LedgerAnchorMessage.SCHEMA,
        utc=datetime.fromisoformat(anchor.written_utc),
        ledger_id=anchor.ledger_id,
        last_event_seq=anchor.last_event_seq,
        last_event_hash=anchor.last_event_hash,
        last_session_id=anchor.last_session_id,
        reason=anchor.reason,
        session=None
        if session is None
        else {
            "session_id": session.session_id,
            "planned_cap_ul": session.planned_cap_ul,
            "status": session.status,
            "delivered_ul": session.delivered_ul,
            "intent_utc": session.intent_utc,
        },
    )


def ledger_anchor_from_message(message: LedgerAnchorMessage) -> LedgerAnchor:
    """The ledger anchor a ward station kept (for `nebuliser ledger restore --ward-anchor`).

    The message carries no subject id: the session's `subject_id` is left empty and
    the restore fills in the ledger's own.
    """
    session = message.session
    return LedgerAnchor(
        ledger_id=message.ledger_id,
        device_id=message.device_id,
        last_event_seq=message.last_event_seq,
        last_event_hash=message.last_event_hash,
        last_session_id=message.last_session_id,
        reason=message.reason,
        written_utc=message.utc.isoformat(),
        session=None
        if session is None
        else AnchoredSession(
            session_id=session.session_id,
            subject_id="",
            planned_cap_ul=session.planned_cap_ul,
            status=session.status,
            delivered_ul=session.delivered_ul,
            intent_utc=session.intent_utc,
        ),
    )
