"""The running controller: supervisor, ledger writer thread, wiring of `nebuliser serve`."""

from ._recorder import Recorder
from ._service import EXIT_LEDGER, EXIT_PORT, run_service
from ._supervisor import TICK_MS, Publications, StartOutcome, Supervisor

__all__ = [
    "EXIT_LEDGER",
    "EXIT_PORT",
    "TICK_MS",
    "Publications",
    "Recorder",
    "StartOutcome",
    "Supervisor",
    "run_service",
]
