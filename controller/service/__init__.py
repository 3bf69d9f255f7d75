"""The running controller: supervisor, ledger writer thread, wiring of `nebuliser serve`."""

from ._confirm import confirm_at_bedside
from ._recorder import Recorder
from ._service import EXIT_LEDGER, EXIT_PORT, ServiceContext, run_service
from ._supervisor import TICK_MS, Publications, StartOutcome, Supervisor

__all__ = [
    "EXIT_LEDGER",
    "EXIT_PORT",
    "TICK_MS",
    "Publications",
    "Recorder",
    "ServiceContext",
    "StartOutcome",
    "Supervisor",
    "confirm_at_bedside",
    "run_service",
]
