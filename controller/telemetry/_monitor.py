"""The ward monitor's model: feed it MQTT messages, read a table of beds.

Pure and clock-free (the caller passes `now_s`, a monotonic time in seconds), so
it is tested without a terminal or a broker; the rich view is a thin layer on top.

Sequence tracking is per device (`seq` never repeats for a device, across boots).
The first live (non-retained) message of a device sets its baseline; a later seq
that jumps ahead opens a gap; a seq seen before is a duplicate (counted, then
ignored). Missing seqs are asked for again with a backfill request after
`gap_grace_s` (QoS 1 can reorder slightly) and again every `backfill_retry_s`;
seqs the controller reports unavailable are counted as unrecoverable.

One model serves every view: `nebuliser monitor` (terminal) and `nebuliser
station` (web page) both read `rows()`, sort with `urgency_key`, and push only the
beds whose `version` moved since they last drew (`WardModel.version`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from controller.telemetry._monitor_history import AlarmEvent, BedHistory
from controller.telemetry._monitor_row import (
    PRIORITY_RANK,
    BedRow,
    apply_breathing,
    apply_state,
)
from controller.telemetry._schemas import (
    DEVICE_SCHEMAS,
    ActiveAlarm,
    ActiveAlarmsMessage,
    AlarmMessage,
    AuditHeadMessage,
    BackfillReplyMessage,
    BreathingMessage,
    CourseMessage,
    LedgerAnchorMessage,
    PresenceMessage,
    SessionMessage,
    StateMessage,
    TelemetryMessage,
    _DeviceFields,
)
from controller.telemetry._topics import SCHEMA_ROUTES, parse_bed_topic

__all__ = ["BackfillAsk", "SeqTracker", "WardModel"]

# The schema each device topic carries (the publisher's routes), for the fast path.
_SCHEMA_BY_SUFFIX: dict[str, type[_DeviceFields]] = {
    route.suffix: DEVICE_SCHEMAS[schema]
    for schema, route in SCHEMA_ROUTES.items()
    if schema in DEVICE_SCHEMAS
}
# Topics under a bed that are not the device's own stream.
_NOT_DEVICE_STREAM = ("backfill/request", "cmd/ack", "command")


@dataclass(kw_only=True)
class SeqTracker:
    """Gap and duplicate bookkeeping for one device."""

    baseline_seq: int | None = None
    high_seq: int = 0
    seen: set[int] = field(default_factory=set)
    missing_since_s: dict[int, float] = field(default_factory=dict)
    duplicates: int = 0
    unrecoverable: int = 0
    last_ask_s: float | None = None

    def observe(self, seq: int, *, now_s: float, retained: bool) -> tuple[bool, list[int]]:
        """Record one seq; returns (is_duplicate, newly missing seqs)."""
        if seq in self.seen:
            self.duplicates += 1
            return True, []
        self.seen.add(seq)
        if seq in self.missing_since_s:
            del self.missing_since_s[seq]
            return False, []
        if retained and (self.baseline_seq is None or seq > self.high_seq):
            # A retained copy may be far older than the live stream: it sets nothing.
            return False, []
        if self.baseline_seq is None:
            self.baseline_seq = seq
            self.high_seq = seq
            return False, []
        if seq <= self.high_seq:
            return False, []  # older than the baseline, or a backfilled one
        newly_missing = list(range(self.high_seq + 1, seq))
        for missing in newly_missing:
            self.missing_since_s[missing] = now_s
        self.high_seq = seq
        return False, newly_missing

    def give_up(self, seqs: list[int]) -> None:
        """The controller cannot provide these seqs any more."""
        for seq in seqs:
            if self.missing_since_s.pop(seq, None) is not None:
                self.unrecoverable += 1
            self.seen.add(seq)

    def ranges_to_ask(self, *, now_s: float, grace_s: float) -> list[tuple[int, int]]:
        """Contiguous ranges of seqs missing for at least `grace_s`."""
        due = sorted(s for s, since in self.missing_since_s.items() if now_s - since >= grace_s)
        ranges: list[tuple[int, int]] = []
        for seq in due:
            if ranges and ranges[-1][1] == seq - 1:
                ranges[-1] = (ranges[-1][0], seq)
            else:
                ranges.append((seq, seq))
        return ranges


@dataclass(frozen=True, kw_only=True)
class BackfillAsk:
    """A backfill request the monitor should publish."""

    ward: str
    bed: str
    device_id: str
    from_seq: int
    to_seq: int


class WardModel:
    """Feed messages in, read `rows()` out. See the module docstring."""

    def __init__(
        self,
        *,
        root_topic: str,
        gap_grace_s: float = 1.0,
        backfill_retry_s: float = 5.0,
        stale_factor: float = 2.0,
        message_events: bool = True,
    ) -> None:
        """`message_events=False` makes `feed()` return only gap, duplicate, invalid
        and command-reply events (a view that reads `rows()` needs no per-message
        JSON, and building it is most of the cost at 1000 beds)."""
        self._root = root_topic
        self._gap_grace_s = gap_grace_s
        self._backfill_retry_s = backfill_retry_s
        self._stale_factor = stale_factor
        self._message_events = message_events
        self._beds: dict[tuple[str, str], BedRow] = {}
        self._trackers: dict[str, SeqTracker] = {}
        self._device_bed: dict[str, tuple[str, str]] = {}
        self._history: dict[tuple[str, str], BedHistory] = {}
        self.invalid = 0
        #: Bumped on every change to any row; see `BedRow.version`.
        self.version = 0

    def _touch(self, row: BedRow) -> None:
        self.version += 1
        row.version = self.version

    def history(self, ward: str, bed: str) -> BedHistory:
        """The alarm history and recent runs of one bed (empty if never seen)."""
        return self._history.setdefault((ward, bed), BedHistory())

    def row(self, ward: str, bed: str) -> BedRow | None:
        """One bed's row, if the bed has been seen."""
        return self._beds.get((ward, bed))

    def tracker(self, device_id: str) -> SeqTracker:
        """The sequence tracker of one device (created on first use)."""
        return self._trackers.setdefault(device_id, SeqTracker())

    def _bed(self, ward: str, bed: str) -> BedRow:
        return self._beds.setdefault((ward, bed), BedRow(ward=ward, bed=bed))

    def feed(
        self, topic: str, payload: bytes, *, now_s: float, retained: bool = False
    ) -> list[dict[str, Any]]:
        """Apply one MQTT message; returns normalised events (one JSON object each)."""
        where = parse_bed_topic(self._root, topic)
        if where is None or where[2] in _NOT_DEVICE_STREAM:
            return []  # not ours, or monitor -> controller traffic (not the device stream)
        ward, bed, suffix = where
        special = self._feed_special(suffix, ward, bed, topic, payload)
        if special is not None:
            return special
        fast = _parse_by_topic(suffix, payload)
        if fast is not None:
            return self._apply_device(fast, topic=topic, now_s=now_s, retained=retained)
        try:
            body = json.loads(payload)
            schema = body.get("schema") if isinstance(body, dict) else None
            if schema == PresenceMessage.SCHEMA:
                presence = PresenceMessage.model_validate(body)
                return [self._apply_presence(presence, now_s=now_s, topic=topic)]
            model = DEVICE_SCHEMAS[str(schema)]
            message = model.model_validate(body)
        except (ValueError, KeyError, ValidationError) as exc:
            self.invalid += 1
            return [{"event": "invalid", "topic": topic, "error": str(exc)[:200]}]
        return self._apply_device(message, topic=topic, now_s=now_s, retained=retained)

    def _feed_special(
        self, suffix: str, ward: str, bed: str, topic: str, payload: bytes
    ) -> list[dict[str, Any]] | None:
        """Audit anchors and command replies (not the device's message stream)."""
        if suffix == "audit/head":
            return [self._audit_head(topic, payload)]
        if suffix == "command/reply":
            return self._apply_reply(ward, bed, payload)
        return None

    def _audit_head(self, topic: str, payload: bytes) -> dict[str, Any]:
        """A bed's audit anchor (issue 13): an `audit_head` event; the caller may keep
        it with `controller.security.AnchorStore.add(**fields except "event")`."""
        try:
            head = AuditHeadMessage.model_validate_json(payload)
        except ValidationError as exc:
            self.invalid += 1
            return {"event": "invalid", "topic": topic, "error": str(exc)[:200]}
        return {
            "event": "audit_head",
            "device_id": head.device_id,
            "ward": head.ward,
            "bed": head.bed,
            "head": head.head,
            "utc": head.utc.isoformat(),
            "reason": head.reason,
        }

    def _apply_presence(
        self, presence: PresenceMessage, *, now_s: float, topic: str
    ) -> dict[str, Any]:
        row = self._bed(presence.ward, presence.bed)
        if presence.online:
            row.offline_since_s = None
        elif row.online is not False:
            row.offline_since_s = now_s
        row.online = presence.online
        row.device_id = presence.device_id
        row.telemetry_hz = presence.telemetry_hz
        row.last_seen_s = now_s
        self._touch(row)
        if not self._message_events:
            return {"event": "presence"}
        return {
            "event": "presence",
            "topic": topic,
            **presence.model_dump(mode="json", by_alias=True),
        }

    @staticmethod
    def _apply_reply(ward: str, bed: str, payload: bytes) -> list[dict[str, Any]]:
        try:
            body = json.loads(payload)
        except ValueError:
            return []
        if not isinstance(body, dict) or not isinstance(body.get("command_id"), str):
            return []
        return [{"event": "command_reply", "ward": ward, "bed": bed, **body}]

    def _apply_device(
        self, message: Any, *, topic: str, now_s: float, retained: bool
    ) -> list[dict[str, Any]]:
        tracker = self.tracker(message.device_id)
        self._device_bed[message.device_id] = (message.ward, message.bed)
        row = self._bed(message.ward, message.bed)
        row.device_id = message.device_id
        if not retained and not message.historical:
            row.last_seen_s = now_s
            if row.data_utc is None or message.utc > row.data_utc:
                row.data_utc = message.utc
        duplicate, newly_missing = tracker.observe(message.seq, now_s=now_s, retained=retained)
        events: list[dict[str, Any]] = []
        base = {"ward": message.ward, "bed": message.bed, "device_id": message.device_id}
        if newly_missing:
            events.append(
                {
                    "event": "gap",
                    **base,
                    "from_seq": newly_missing[0],
                    "to_seq": newly_missing[-1],
                }
            )
        if duplicate:
            events.append({"event": "duplicate", **base, "seq": message.seq})
        else:
            if self._message_events or isinstance(message, BackfillReplyMessage):
                events.append(
                    {
                        "event": message.SCHEMA.removeprefix("nebuliser."),
                        "topic": topic,
                        "retained": retained,
                        **message.model_dump(mode="json", by_alias=True, exclude={"messages"}),
                    }
                )
            self._update_view(row, message, now_s=now_s)
            self._touch(row)
            if isinstance(message, BackfillReplyMessage):
                tracker.give_up(list(message.unavailable))
                for embedded in message.messages:
                    inner = json.dumps(embedded).encode()
                    events.extend(self.feed(self._topic_of(embedded), inner, now_s=now_s))
        row.gaps = len(tracker.missing_since_s)
        row.duplicates = tracker.duplicates
        row.unrecoverable = tracker.unrecoverable
        return events

    def _topic_of(self, embedded: dict[str, Any]) -> str:
        # Embedded messages are routed by their own envelope, not the reply topic.
        return f"{self._root}/{embedded.get('ward')}/{embedded.get('bed')}/backfilled"

    @staticmethod
    def _newer(row: BedRow, key: str, seq: int) -> bool:
        if seq <= row.applied_seq.get(key, 0):
            return False
        row.applied_seq[key] = seq
        return True

    def _update_view(self, row: BedRow, message: Any, *, now_s: float) -> None:
        # The curve takes every sample, backfilled ones too (it is drawn in time order).
        if (
            isinstance(message, TelemetryMessage)
            and message.session_id is not None
            and (message.running or message.delivered_ul)
        ):
            self.history(row.ward, row.bed).add_sample(
                session_id=message.session_id,
                cap_ul=message.cap_ul,
                utc=message.utc,
                delivered_ul=message.delivered_ul,
            )
        if isinstance(message, AlarmMessage):
            self.history(row.ward, row.bed).alarms.append(
                AlarmEvent(
                    utc=message.utc,
                    event=message.event,
                    alarm_code=message.alarm_code,
                    priority=message.priority,
                    text=message.text,
                    acknowledged_by=message.acknowledged_by,
                )
            )
        if isinstance(message, StateMessage) and self._newer(row, "state", message.seq):
            apply_state(row, message)
        elif isinstance(message, BreathingMessage) and self._newer(row, "breathing", message.seq):
            if not message.historical:  # a backfilled report is not the bed's breathing now
                apply_breathing(row, message, now_s=now_s)
        elif isinstance(message, CourseMessage) and self._newer(row, "course", message.seq):
            self.history(row.ward, row.bed).course = message
        elif isinstance(message, TelemetryMessage) and self._newer(row, "telemetry", message.seq):
            row.session_id = message.session_id
            row.running = message.running
            row.delivered_ul = message.delivered_ul
            row.cap_ul = message.cap_ul
            row.flow_ul_min = message.flow_ul_min
            row.reservoir_ul = message.reservoir_ul
            row.link_quality_pct = message.link_quality_pct
            row.faults = list(message.faults)
        elif isinstance(message, SessionMessage) and self._newer(row, "session", message.seq):
            row.running = message.event == "started"
            row.cap_ul = message.dose_cap_ul
        elif isinstance(message, ActiveAlarmsMessage) and self._newer(row, "alarms", message.seq):
            row.alarms = _sorted_alarms(message.alarms)
        elif isinstance(message, AlarmMessage) and self._newer(row, "alarms", message.seq):
            row.alarms = _sorted_alarms(_apply_alarm_event(row.alarms, message))
        elif isinstance(message, LedgerAnchorMessage) and self._newer(
            row, "ledger_anchor", message.seq
        ):
            row.ledger_anchor = message

    def rows(self, *, now_s: float) -> list[BedRow]:
        """Every bed, sorted by ward and bed, with staleness evaluated at `now_s`
        (a row whose staleness flips counts as changed: see `BedRow.version`)."""
        for row in self._beds.values():
            interval_s = 1.0 / max(1, row.telemetry_hz)
            stale = row.online is not False and (
                row.last_seen_s is None or now_s - row.last_seen_s > self._stale_factor * interval_s
            )
            if stale != row.stale:
                row.stale = stale
                self._touch(row)
        return [self._beds[key] for key in sorted(self._beds)]

    def backfill_asks(self, *, now_s: float) -> list[BackfillAsk]:
        """Backfill requests due now (each device asks at most every `backfill_retry_s`)."""
        asks: list[BackfillAsk] = []
        for device_id, tracker in self._trackers.items():
            if (
                tracker.last_ask_s is not None
                and now_s - tracker.last_ask_s < self._backfill_retry_s
            ):
                continue
            ranges = tracker.ranges_to_ask(now_s=now_s, grace_s=self._gap_grace_s)
            if not ranges:
                continue
            tracker.last_ask_s = now_s
            ward, bed = self._device_bed[device_id]
            asks.extend(
                BackfillAsk(ward=ward, bed=bed, device_id=device_id, from_seq=lo, to_seq=hi)
                for lo, hi in ranges
            )
        return asks


def _parse_by_topic(suffix: str, payload: bytes) -> _DeviceFields | None:
    """The usual case, where the topic says the schema: pydantic parses the JSON
    itself (several times faster than json.loads + model_validate). None for
    anything unexpected: the general path then names the error."""
    model = _SCHEMA_BY_SUFFIX.get(suffix)
    if model is None:
        return None
    try:
        return model.model_validate_json(payload)
    except ValidationError:
        return None


def _apply_alarm_event(alarms: list[ActiveAlarm], event: AlarmMessage) -> list[ActiveAlarm]:
    others = [a for a in alarms if a.alarm_code != event.alarm_code]
    if event.event == "cleared":
        return others
    previous = next((a for a in alarms if a.alarm_code == event.alarm_code), None)
    return [
        *others,
        ActiveAlarm(
            alarm_code=event.alarm_code,
            priority=event.priority,
            text=event.text,
            raised_utc=previous.raised_utc if previous else event.utc,
            acknowledged=event.event == "acknowledged",
            acknowledged_by=event.acknowledged_by,
        ),
    ]


def _sorted_alarms(alarms: list[ActiveAlarm]) -> list[ActiveAlarm]:
    return sorted(alarms, key=lambda a: (PRIORITY_RANK[a.priority], a.raised_utc))
