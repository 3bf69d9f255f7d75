"""A complete simulated MN-1 device (ICD v1 and addendum 1.1, device side).

- `DeviceModel`: the device, sans-IO, in the caller's time; with a
  `BreathingModel` it is a breath-aware (ICD 1.1) head with a breathing patient.
- `SimulatedHost`: drives a model in simulated time (tests).
- `run_simulator` / `run_pty_simulator`: the model in real time on a pty and/or TCP,
  with an optional JSON-lines control socket (`SimulatorControlClient`).
"""

from ._breathing import PATTERN_NAMES, PATTERNS, BreathingModel, BreathingPattern
from ._control import (
    CONTROL_COMMANDS,
    ControlServer,
    SimulatorControlClient,
    SimulatorControlError,
    control_request_sync,
    execute_control,
)
from ._device_types import (
    DEFECTS,
    FAULT_NAMES,
    STATUS_PERIOD_MS,
    DeviceTruth,
    EndedSession,
)
from ._harness import Received, SimulatedHost
from ._link_faults import ChannelFaults, LinkFaults
from ._model import DeviceModel
from ._server import RunningSimulator, run_pty_simulator, run_simulator

__all__ = [
    "CONTROL_COMMANDS",
    "DEFECTS",
    "FAULT_NAMES",
    "PATTERNS",
    "PATTERN_NAMES",
    "STATUS_PERIOD_MS",
    "BreathingModel",
    "BreathingPattern",
    "ChannelFaults",
    "ControlServer",
    "DeviceModel",
    "DeviceTruth",
    "EndedSession",
    "LinkFaults",
    "Received",
    "RunningSimulator",
    "SimulatedHost",
    "SimulatorControlClient",
    "SimulatorControlError",
    "control_request_sync",
    "execute_control",
    "run_pty_simulator",
    "run_simulator",
]
