"""The running controller: supervisor, ledger writer thread, wiring of `nebuliser serve`."""

from ._confirm import confirm_at_bedside
from ._recorder import Recorder
from ._service import EXIT_LEDGER, EXIT_PORT, ServiceContext, run_service
from ._supervisor import TICK_MS, Publications, StartOutcome, Supervisor
from ._systemd import SystemdNotifier, systemd_notify_task, watchdog_interval_s

__all__ = [
    "EXIT_LEDGER",
    "EXIT_PORT",
    "TICK_MS",
    "Publications",
    "Recorder",
    "ServiceContext",
    "StartOutcome",
    "Supervisor",
    "SystemdNotifier",
    "confirm_at_bedside",
    "run_service",
    "systemd_notify_task",
    "watchdog_interval_s",
]
