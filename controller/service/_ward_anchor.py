"""At `serve` start-up: fetch this bed's retained `ledger/anchor` from the broker (issue 12).

The ward station keeps the bed's newest ledger anchor as a retained message. Before the
ledger is opened, `fetch_ward_anchor` subscribes to `<root>/<ward>/<bed>/ledger/anchor`
on one short-lived connection and takes the retained message, all within
`[mqtt] ward_anchor_timeout_s` (3 s by default). `open_checked` then judges the ledger
against it as a third source (controller.ledger._ward_check).

Knowing "the broker has no anchor" without waiting: after the subscription, a second
SUBSCRIBE to the same topic with "do not send retained messages" is sent; the broker
handles a client's packets in order, so by the time its SUBACK arrives the retained
message of the first (if any) has arrived too. No fixed wait.

A broker that is down, slow, refuses the subscription or holds something unreadable
never refuses the start-up and never holds it up beyond the bound: the local anchors
(audit log, anchor file) still apply. The log line says which it was; no alarm is
raised for it (the station already shows a bed whose broker connection is down, and
the ledger is still checked against its local anchors) - docs/ledger.md, "Continuity".
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from enum import StrEnum

import aiomqtt
from paho.mqtt.subscribeoptions import SubscribeOptions
from pydantic import ValidationError

from controller.config import NebuliserConfig
from controller.ledger import LedgerAnchor
from controller.logging import get_logger
from controller.telemetry import (
    BedTopics,
    LedgerAnchorMessage,
    ledger_anchor_from_message,
    mqtt_client,
)

__all__ = ["WardAnchorFetch", "WardAnchorOutcome", "fetch_ward_anchor"]

_log = get_logger(__name__)


class WardAnchorOutcome(StrEnum):
    """What the broker said about the bed's retained anchor."""

    ANCHOR = "anchor"
    NO_ANCHOR = "no_anchor"
    UNREACHABLE = "unreachable"
    DENIED = "denied"
    UNREADABLE = "unreadable"
    NOT_CONFIGURED = "not_configured"


@dataclass(frozen=True, slots=True, kw_only=True)
class WardAnchorFetch:
    """The outcome, the anchor (only for ANCHOR), the topic asked and a sentence for the log."""

    outcome: WardAnchorOutcome
    topic: str = ""
    anchor: LedgerAnchor | None = None
    detail: str = ""


async def _ask(client: aiomqtt.Client, topic: str) -> WardAnchorFetch:
    granted = await client.subscribe(topic, qos=1)
    if any(getattr(code, "is_failure", False) for code in granted):
        return WardAnchorFetch(
            outcome=WardAnchorOutcome.DENIED,
            topic=topic,
            detail=f"the broker refused the subscription ({granted[0]}); check the ACL "
            "grants the bed `read` on its own ledger/anchor topic",
        )
    # Its SUBACK comes after the first subscription's retained message (if any).
    no_retained = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
    await client.subscribe(topic, options=no_retained)
    if len(client.messages) == 0:
        return WardAnchorFetch(
            outcome=WardAnchorOutcome.NO_ANCHOR, topic=topic, detail="the broker has none"
        )
    message = await anext(client.messages)
    payload = message.payload if isinstance(message.payload, bytes | str) else b""
    try:
        anchor = ledger_anchor_from_message(LedgerAnchorMessage.model_validate_json(payload))
    except ValidationError as exc:
        return WardAnchorFetch(
            outcome=WardAnchorOutcome.UNREADABLE,
            topic=topic,
            detail=f"the retained message is not a nebuliser.ledger_anchor ({exc.errors()[0]})",
        )
    return WardAnchorFetch(
        outcome=WardAnchorOutcome.ANCHOR,
        topic=topic,
        anchor=anchor,
        detail=f"ledger {anchor.ledger_id} event {anchor.last_event_seq} "
        f"(session {anchor.last_session_id}, {anchor.written_utc})",
    )


async def fetch_ward_anchor(config: NebuliserConfig) -> WardAnchorFetch:
    """This bed's retained ledger anchor, within `[mqtt] ward_anchor_timeout_s`.

    Never raises for a broker problem; logs one line saying what the broker answered.
    """
    settings = config.mqtt
    if settings is None:
        return WardAnchorFetch(outcome=WardAnchorOutcome.NOT_CONFIGURED)
    topic = BedTopics(
        root=settings.root_topic, ward=config.device.ward, bed=config.device.bed
    ).ledger_anchor
    bound = settings.ward_anchor_timeout_s
    # Its own client id: the publisher's persistent session must not gain this subscription.
    client_id = f"{settings.client_id}-anchor-check"[:64]
    try:
        async with asyncio.timeout(bound):
            async with mqtt_client(settings, client_id=client_id) as client:
                result = await _ask(client, topic)
    except (TimeoutError, aiomqtt.MqttError, OSError) as exc:
        why = "no answer" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
        result = WardAnchorFetch(
            outcome=WardAnchorOutcome.UNREACHABLE,
            topic=topic,
            detail=f"broker {settings.host}:{settings.port} not reachable within {bound:g} s "
            f"({why})",
        )
    line = f"ward ledger anchor ({topic}): {result.outcome}: {result.detail}"
    if result.outcome in (WardAnchorOutcome.ANCHOR, WardAnchorOutcome.NO_ANCHOR):
        _log.info(line)
    else:
        _log.warning(line + "; start-up checks the local anchors only")
    return result
