"""Answering a monitor's backfill request from the sent-message archive."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from controller.telemetry._archive import SentArchive
from controller.telemetry._builders import DeviceIdentity, OutboxEntry, outbox_entry
from controller.telemetry._schemas import BackfillRequest

__all__ = ["MAX_BACKFILL_MESSAGES", "MAX_BACKFILL_SPAN", "build_backfill_reply"]

# One reply carries at most this many messages and covers at most this many seqs;
# a monitor asks again for the rest (the reply says `truncated`).
MAX_BACKFILL_MESSAGES = 200
MAX_BACKFILL_SPAN = 1000


def build_backfill_reply(
    request: BackfillRequest,
    *,
    identity: DeviceIdentity,
    root_topic: str,
    archive: SentArchive,
    utc: datetime,
    max_messages: int = MAX_BACKFILL_MESSAGES,
) -> OutboxEntry | None:
    """The outbox entry answering `request`, or None if the request is not for this
    device or asks for nothing that was ever sent.

    Seqs in the covered range that are not archived (aged out, or themselves
    backfill replies) are listed as `unavailable`, so the monitor can stop asking.
    """
    if request.device_id != identity.device_id or request.to_seq < request.from_seq:
        return None
    newest_sent = archive.max_seq()
    covered_to = min(request.to_seq, request.from_seq + MAX_BACKFILL_SPAN - 1, newest_sent)
    if covered_to < request.from_seq:
        return None
    found = archive.fetch(from_seq=request.from_seq, to_seq=covered_to, limit=max_messages)
    if len(found) == max_messages:
        covered_to = found[-1].seq
    have = {m.seq for m in found}
    messages: list[dict[str, Any]] = []
    for archived in found:
        body = json.loads(archived.payload)
        body["historical"] = True
        messages.append(body)
    return outbox_entry(
        identity,
        root_topic=root_topic,
        schema="nebuliser.backfill_reply",
        utc=utc,
        request_id=request.request_id,
        from_seq=request.from_seq,
        to_seq=covered_to,
        messages=messages,
        unavailable=[s for s in range(request.from_seq, covered_to + 1) if s not in have],
        truncated=covered_to < request.to_seq,
    )
