"""The retained MQTT ledger anchor: what `open_checked` queues after every anchor.

The ledger writes its high-water mark (controller.ledger, "anchors") to the sidecar
file and the audit log itself; with `[mqtt]` it also queues this message in its own
outbox, so it gets a device seq and goes out through the publisher like every other
message (retained, QoS 1, republished after a reconnect).
"""

from __future__ import annotations

from collections.abc import Callable

from controller.config import NebuliserConfig
from controller.ledger import LedgerAnchor, OutboxMessage
from controller.telemetry import ledger_anchor_entry, ledger_message

from ._telemetry import device_identity

__all__ = ["anchor_publication"]


def anchor_publication(
    config: NebuliserConfig,
) -> Callable[[LedgerAnchor], OutboxMessage] | None:
    """The `anchor_message` builder for `open_checked` (None without `[mqtt]`)."""
    if config.mqtt is None:
        return None
    identity = device_identity(config)
    root_topic = config.mqtt.root_topic

    def build(anchor: LedgerAnchor) -> OutboxMessage:
        return ledger_message(ledger_anchor_entry(identity, root_topic=root_topic, anchor=anchor))

    return build
