"""The running controller: supervisor, ledger writer thread, wiring of `nebuliser serve`."""

from ._audit import load_audit_hmac_key
from ._confirm import confirm_at_bedside
from ._recorder import Recorder
from ._service import EXIT_LEDGER, EXIT_PORT, EXIT_STOP_UNCONFIRMED, ServiceContext, run_service
from ._supervisor import CONDITIONS_PERIOD_S, TICK_MS, Publications, StartOutcome, Supervisor
from ._systemd import SystemdNotifier, systemd_notify_task, watchdog_interval_s
from ._telemetry import (
    PROCESS_BOOT_ID,
    SENT_ARCHIVE_FILE_NAME,
    MqttPublications,
    device_identity,
    fault_codes,
    link_quality_pct,
    run_telemetry,
    telemetry_publications,
)

__all__ = [
    "CONDITIONS_PERIOD_S",
    "EXIT_LEDGER",
    "EXIT_PORT",
    "EXIT_STOP_UNCONFIRMED",
    "PROCESS_BOOT_ID",
    "SENT_ARCHIVE_FILE_NAME",
    "TICK_MS",
    "MqttPublications",
    "Publications",
    "Recorder",
    "ServiceContext",
    "StartOutcome",
    "Supervisor",
    "SystemdNotifier",
    "confirm_at_bedside",
    "device_identity",
    "fault_codes",
    "link_quality_pct",
    "load_audit_hmac_key",
    "run_service",
    "run_telemetry",
    "systemd_notify_task",
    "telemetry_publications",
    "watchdog_interval_s",
]
