"""What a service task (telemetry, remote commands, systemd notify) may use.

Its own module so that the tasks import it without importing `_service`, which
imports them (no import cycle inside `controller.service`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from controller.clock import Clock
from controller.config import LoadedPrescription, NebuliserConfig
from controller.ledger import Ledger
from controller.telemetry import BedConnection
from drivers.mn1 import SerialLink

from ._pending_starts import PendingStarts
from ._recorder import Recorder
from ._supervisor import Supervisor

__all__ = ["ServiceContext"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceContext:
    """What a service task (telemetry, remote commands, systemd notify) may use."""

    config: NebuliserConfig
    supervisor: Supervisor
    link: SerialLink
    recorder: Recorder[Ledger]
    clock: Clock
    stop_requested: asyncio.Event
    prescription_source: LoadedPrescription | None = None
    pending_starts: PendingStarts = field(default_factory=PendingStarts)
    """Starts waiting for the bedside CONFIRM (local and remote): status shows, stop cancels."""
    mqtt_connection: BedConnection = field(default_factory=BedConnection)
    """The bed's one MQTT connection: the telemetry publisher owns it, the command
    intake rides on it (one certificate = one client id on the hardened broker)."""
