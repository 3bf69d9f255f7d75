"""The topic tree: one subtree per bed under a configurable root.

<root>/<ward>/<bed>/presence          retained, Last Will (no seq)
<root>/<ward>/<bed>/state             retained
<root>/<ward>/<bed>/telemetry
<root>/<ward>/<bed>/session           retained (last one)
<root>/<ward>/<bed>/alarm
<root>/<ward>/<bed>/alarms/active     retained
<root>/<ward>/<bed>/decision
<root>/<ward>/<bed>/breathing
<root>/<ward>/<bed>/course            retained: 24 h and course usage (µL)
<root>/<ward>/<bed>/backfill/request  monitor -> controller
<root>/<ward>/<bed>/backfill/reply
<root>/<ward>/<bed>/cmd/ack           monitor -> controller (provisional, unsigned)
<root>/<ward>/<bed>/ledger/anchor     retained: the dose ledger's high-water mark
"""

from __future__ import annotations

from dataclasses import dataclass

from controller.telemetry._settings import require_safe_level

__all__ = ["SCHEMA_ROUTES", "BedTopics", "Route", "parse_bed_topic"]


@dataclass(frozen=True, kw_only=True)
class Route:
    """Where a device message goes: topic suffix, outbox kind, QoS and retain flag."""

    suffix: str
    kind: str
    qos: int
    retain: bool


# Every device message is QoS 1: the outbox row is deleted only after PUBACK.
SCHEMA_ROUTES: dict[str, Route] = {
    "nebuliser.state": Route(suffix="state", kind="state", qos=1, retain=True),
    "nebuliser.telemetry": Route(suffix="telemetry", kind="telemetry", qos=1, retain=False),
    "nebuliser.session": Route(suffix="session", kind="session", qos=1, retain=True),
    "nebuliser.alarm": Route(suffix="alarm", kind="alarm", qos=1, retain=False),
    "nebuliser.alarms_active": Route(suffix="alarms/active", kind="alarm", qos=1, retain=True),
    "nebuliser.decision": Route(suffix="decision", kind="decision", qos=1, retain=False),
    "nebuliser.backfill_reply": Route(suffix="backfill/reply", kind="reply", qos=1, retain=False),
    "nebuliser.breathing": Route(suffix="breathing", kind="telemetry", qos=1, retain=False),
    # A summary of ledger figures, republished on reconnect like `state`.
    "nebuliser.course": Route(suffix="course", kind="state", qos=1, retain=True),
    # Kind "state": never dropped by the outbox budget, republished after a reconnect.
    "nebuliser.ledger_anchor": Route(suffix="ledger/anchor", kind="state", qos=1, retain=True),
}


@dataclass(frozen=True, kw_only=True)
class BedTopics:
    """The topics of one bed."""

    root: str
    ward: str
    bed: str

    def __post_init__(self) -> None:
        require_safe_level("ward", self.ward)
        require_safe_level("bed", self.bed)

    @property
    def base(self) -> str:
        """`<root>/<ward>/<bed>`."""
        return f"{self.root}/{self.ward}/{self.bed}"

    def topic(self, suffix: str) -> str:
        """The full topic for a suffix such as `telemetry` or `alarms/active`."""
        return f"{self.base}/{suffix}"

    @property
    def presence(self) -> str:
        """Retained presence topic (also the Last Will topic)."""
        return self.topic("presence")

    @property
    def backfill_request(self) -> str:
        """Topic monitors publish backfill requests to."""
        return self.topic("backfill/request")

    @property
    def ledger_anchor(self) -> str:
        """Retained topic of the dose ledger's anchor (docs/ledger.md, "Continuity")."""
        return self.topic("ledger/anchor")

    @property
    def cmd_ack(self) -> str:
        """Topic monitors publish alarm acknowledgements to."""
        return self.topic("cmd/ack")


def parse_bed_topic(root: str, topic: str) -> tuple[str, str, str] | None:
    """Split `<root>/<ward>/<bed>/<suffix...>` into (ward, bed, suffix); None if the
    topic is not under `root` or has too few levels."""
    prefix = root + "/"
    if not topic.startswith(prefix):
        return None
    parts = topic[len(prefix) :].split("/", 2)
    if len(parts) < 3 or not all(parts):
        return None
    return parts[0], parts[1], parts[2]
