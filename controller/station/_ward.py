"""The station's live ward: the shared `WardModel` fed by a `WardMonitor`, the
acknowledgements this station signed, and the pushes to every open page.

Pushes are built at a bounded rate (`push_interval_s`), never per MQTT message:
each tick takes the rows whose `version` moved since the last tick, turns them
into tiles once, and hands the same JSON text to every page. A page that falls
behind (its queue is full) is sent a full snapshot instead of the backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from controller.station._view import AckStatus, bed_detail, bed_key, tile
from controller.telemetry import (
    AckRequest,
    BedRow,
    EventSink,
    WardModel,
    WardMonitor,
    urgency_key,
)
from controller.telemetry._ack_signer import AckSigningKey

__all__ = ["AckError", "StationWard"]

_PAGE_QUEUE = 16
_MAX_ACKS_PER_BED = 8


class AckError(ValueError):
    """An acknowledgement the station will not send; the message says why."""


@dataclass(kw_only=True, eq=False)  # hashed by identity: pages live in a set
class _Page:
    queue: asyncio.Queue[str] = field(default_factory=lambda: asyncio.Queue(_PAGE_QUEUE))
    needs_snapshot: bool = True


class StationWard:
    """The model, the MQTT monitor and the page pushes of one station."""

    def __init__(
        self,
        *,
        monitor_factory: Callable[[WardModel, EventSink], WardMonitor],
        root_topic: str,
        signer: AckSigningKey | None,
        push_interval_s: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model = WardModel(root_topic=root_topic, message_events=False)
        self.monitor = monitor_factory(self.model, self.on_events)
        self.signer = signer
        self._push_interval_s = push_interval_s
        self._clock = clock
        self._pages: set[_Page] = set()
        self._acks: dict[str, list[AckStatus]] = {}
        self._acks_by_id: dict[str, tuple[str, AckStatus]] = {}
        self._dirty: set[str] = set()
        self._pushed_version = 0
        self._order: list[str] = []
        self._stop = asyncio.Event()

    @property
    def sender_id(self) -> str | None:
        """The station's sender id (None when it cannot acknowledge)."""
        return self.signer.sender_id if self.signer is not None else None

    def on_events(self, events: list[dict[str, Any]]) -> None:
        """Monitor callback: match the beds' command replies to our acknowledgements."""
        for event in events:
            if event.get("event") != "command_reply":
                continue
            found = self._acks_by_id.get(str(event.get("command_id")))
            if found is None:
                continue  # another station's command
            key, ack = found
            ack.status = "accepted" if event.get("status") == "accepted" else "refused"
            ack.reason = str(event.get("reason") or event.get("reason_code") or "")[:200]
            self._dirty.add(key)

    def acknowledge(self, *, ward: str, bed: str, alarm_code: str, nurse: str) -> AckStatus:
        """Sign and queue an acknowledgement of one alarm of one bed by `nurse`."""
        if self.signer is None:
            raise AckError(
                "this station has no signing key: start it with --key, --sender and "
                "--counter-file to acknowledge alarms (unsigned acknowledgements are never sent)"
            )
        row = self.model.row(ward, bed)
        if row is None or row.device_id is None:
            raise AckError(f"bed {ward}/{bed} is not known to this station")
        if not any(a.alarm_code == alarm_code and not a.acknowledged for a in row.alarms):
            raise AckError(f"bed {ward}/{bed} has no unacknowledged alarm {alarm_code!r}")
        command_id = uuid.uuid4().hex
        ack = AckStatus(
            command_id=command_id, alarm_code=alarm_code, nurse=nurse, sent_utc=datetime.now(UTC)
        )
        key = bed_key(ward, bed)
        history = self._acks.setdefault(key, [])
        history.append(ack)
        for forgotten in history[:-_MAX_ACKS_PER_BED]:
            self._acks_by_id.pop(forgotten.command_id, None)
        del history[:-_MAX_ACKS_PER_BED]
        self._acks_by_id[command_id] = (key, ack)
        self.monitor.acknowledge(
            AckRequest(
                ward=ward,
                bed=bed,
                device_id=row.device_id,
                alarm_code=alarm_code,
                operator=nurse,
                command_id=command_id,
            )
        )
        self._dirty.add(key)
        return ack

    def detail(self, ward: str, bed: str) -> dict[str, Any] | None:
        """The detail view of one bed, or None if unknown."""
        row = self.model.row(ward, bed)
        if row is None:
            return None
        return bed_detail(row, self.model.history(ward, bed), station_sender=self.sender_id)

    # ------------------------------------------------------------------ pushes

    def open_page(self) -> _Page:
        """Register a page; its first message will be a full snapshot."""
        page = _Page()
        self._pages.add(page)  # its snapshot goes out at the next tick
        return page

    def close_page(self, page: _Page) -> None:
        """Forget a page that went away."""
        self._pages.discard(page)

    def request_stop(self) -> None:
        """End `run()` and every page stream."""
        self._stop.set()
        self.monitor.request_stop()
        for page in self._pages:
            with contextlib.suppress(asyncio.QueueFull):
                page.queue.put_nowait("")  # ends the page's stream at once

    @property
    def stopping(self) -> asyncio.Event:
        """Set when the station shuts down."""
        return self._stop

    def _tiles(self, rows: list[BedRow], now_s: float) -> list[dict[str, Any]]:
        wall_now = datetime.now(UTC)
        sender = self.sender_id
        return [
            tile(
                row,
                now_s=now_s,
                wall_now=wall_now,
                acks=self._acks.get(bed_key(row.ward, row.bed), []),
                station_sender=sender,
            )
            for row in rows
        ]

    def tick(self) -> None:
        """Build this tick's push (changed tiles, new order) and queue it for every page."""
        now_s = self._clock()
        rows = self.model.rows(now_s=now_s)
        changed = [
            row
            for row in rows
            if row.version > self._pushed_version or bed_key(row.ward, row.bed) in self._dirty
        ]
        self._pushed_version = self.model.version
        self._dirty.clear()
        order = [bed_key(r.ward, r.bed) for r in sorted(rows, key=urgency_key)]
        order_changed = order != self._order
        self._order = order
        server_ms = int(time.time() * 1000)
        delta: str | None = None
        if changed or order_changed:
            delta = json.dumps(
                {
                    "server_ms": server_ms,
                    "tiles": self._tiles(changed, now_s),
                    "order": order if order_changed else None,
                    "connected": self.monitor.connected.is_set(),
                },
                separators=(",", ":"),
            )
        snapshot: str | None = None
        for page in self._pages:
            if page.needs_snapshot:
                if snapshot is None:
                    snapshot = json.dumps(
                        {
                            "server_ms": server_ms,
                            "tiles": self._tiles(rows, now_s),
                            "order": order,
                            "snapshot": True,
                            "connected": self.monitor.connected.is_set(),
                        },
                        separators=(",", ":"),
                    )
                message = snapshot
            elif delta is not None:
                message = delta
            else:
                continue
            try:
                page.queue.put_nowait(message)
                page.needs_snapshot = False
            except asyncio.QueueFull:
                # The page is behind: drop its backlog and send it the whole ward next.
                while not page.queue.empty():
                    page.queue.get_nowait()
                page.needs_snapshot = True

    async def run(self) -> None:
        """Run the monitor and the push ticks until `request_stop()`."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self.monitor.run())
            while not self._stop.is_set():
                self.tick()
                try:
                    await asyncio.wait_for(self._stop.wait(), timeout=self._push_interval_s)
                except TimeoutError:
                    continue
