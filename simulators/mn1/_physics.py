"""The simulated MN-1 head's physics: cup, mesh output, temperature, clog, drive current.

`HeadPhysics` is the part of the device that firmware cannot reset: the liquid in
the cup, the mesh temperature, a clog and its drift, and the physical causes of
faults (head unplugged, supply low, internal failure, cooling failure). It
survives a reboot; only the measured flow and the output noise restart at power-up.

It raises no fault itself: `nebulise` and `heat` say what the firmware would
detect (target reached, cup dry, mesh clogged, over temperature) and when, and
the device model acts on it. The target cap and a dry cup are found inside a step
by interpolation, so the cap is exact.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Final, Literal

from drivers.mn1 import FaultBits

from ._breathing import BreathingModel
from ._device_types import Session

__all__ = [
    "CLOG_DETECT_FRACTION",
    "CLOG_DETECT_MS",
    "OVER_TEMPERATURE_CC",
    "PHYSICS_STEP_MS",
    "HeadPhysics",
    "StepEnd",
    "draw_noise",
]

PHYSICS_STEP_MS: Final = 10
CLOG_DETECT_MS: Final = 3000
CLOG_DETECT_FRACTION: Final = 0.5
OVER_TEMPERATURE_CC: Final = 4500
_AMBIENT_CC: Final = 2500
_HEATING_AT_FULL_OUTPUT_CC: Final = 1500  # equilibrium 40.00 °C at 100 % output
_COOLING_FAILURE_CC: Final = 3000  # an injected cooling failure settles near 55 °C
_THERMAL_TAU_MS: Final = 20_000.0
_INJECTED_OVER_TEMPERATURE_CC: Final = 4550
_SEVERE_CLOG_FACTOR: Final = 0.3
_MIN_CLOG_FACTOR: Final = 0.05
_NOISE_SD: Final = 0.02
_NOISE_LIMIT: Final = 0.05
_DRIVE_IDLE_MA: Final = 60
_DRIVE_FULL_MA: Final = 120

# Fault name → the attribute that holds its physical cause (simple on/off causes).
_CAUSE_ATTRIBUTE: Final = {
    "head_disconnected": "head_disconnected",
    "supply_low": "supply_low",
    "internal": "internal_failure",
    "over_temperature": "cooling_failed",
}


def draw_noise(rng: random.Random) -> float:
    """The output's multiplicative noise until the next STATUS (1 ± at most 5 %)."""
    return 1.0 + max(-_NOISE_LIMIT, min(_NOISE_LIMIT, rng.gauss(0.0, _NOISE_SD)))


@dataclass(frozen=True, slots=True)
class StepEnd:
    """What ends a nebulising step early: the firmware acts on it at `at_ms`."""

    cause: Literal["target_reached", "cup_dry", "mesh_clogged"]
    at_ms: float


class HeadPhysics:
    """The cup, the mesh and the physical causes of faults; survives a reboot."""

    def __init__(
        self, *, nominal_ul_min: int, fill_ul: int, capacity_ul: int, residual_ul: int
    ) -> None:
        """A head with `fill_ul` in its cup, at ambient temperature, clean mesh."""
        self.nominal_ul_min = nominal_ul_min
        self.capacity_ul = capacity_ul
        self.fill_ul = fill_ul
        self.residual_ul = residual_ul
        self.reservoir_ul = float(fill_ul)
        self.mesh_temp_cC = float(_AMBIENT_CC)
        self.clog_factor = 1.0
        self.clog_drift_pct_per_min = 0.0
        self.head_disconnected = False
        self.supply_low = False
        self.internal_failure = False
        self.cooling_failed = False
        self.total_delivered_ul = 0.0
        self.flow_ul_min = 0.0
        self.noise = 1.0

    def power_up(self) -> None:
        """The measured flow and the noise restart; everything else is physical."""
        self.flow_ul_min = 0.0
        self.noise = 1.0

    # --- causes ------------------------------------------------------------------------

    def condition_present(self, bit: FaultBits) -> bool:
        """True while the physical cause of fault `bit` is there."""
        present = {
            FaultBits.RESERVOIR_EMPTY: self.reservoir_ul <= self.residual_ul + 1e-9,
            FaultBits.HEAD_DISCONNECTED: self.head_disconnected,
            FaultBits.MESH_CLOGGED: self.clog_factor < CLOG_DETECT_FRACTION,
            FaultBits.OVER_TEMPERATURE: self.mesh_temp_cC > OVER_TEMPERATURE_CC,
            FaultBits.SUPPLY_LOW: self.supply_low,
            FaultBits.INTERNAL: self.internal_failure,
        }
        # WATCHDOG's cause (host silence) is over once the host talks again.
        return present.get(bit, False)

    def self_test_faults(self) -> FaultBits:
        """The faults a self-test at boot finds."""
        faults = FaultBits(0)
        for bit, present in (
            (FaultBits.HEAD_DISCONNECTED, self.head_disconnected),
            (FaultBits.SUPPLY_LOW, self.supply_low),
            (FaultBits.INTERNAL, self.internal_failure),
            (FaultBits.OVER_TEMPERATURE, self.mesh_temp_cC > OVER_TEMPERATURE_CC),
        ):
            if present:
                faults |= bit
        return faults

    def set_cause(self, name: str, active: bool) -> None:
        """An on/off cause: head_disconnected, supply_low, internal, over_temperature.

        A cooling failure puts the mesh at 45.50 °C at once; gone, it cools by itself.
        """
        if name == "over_temperature" and active:
            self.mesh_temp_cC = max(self.mesh_temp_cC, float(_INJECTED_OVER_TEMPERATURE_CC))
        setattr(self, _CAUSE_ATTRIBUTE[name], active)

    def set_severe_clog(self, active: bool) -> None:
        """A severe clog (30 % of expected output); gone, the mesh is clean again."""
        self.clog_factor = _SEVERE_CLOG_FACTOR if active else 1.0
        if not active:
            self.clog_drift_pct_per_min = 0.0

    def drain_to_residual(self) -> None:
        """The cup runs dry: only the residual volume is left."""
        self.reservoir_ul = min(self.reservoir_ul, float(self.residual_ul))

    def add_liquid(self, volume_ul: float) -> None:
        """Pour `volume_ul` into the cup (the excess over capacity spills)."""
        self.reservoir_ul = min(float(self.capacity_ul), self.reservoir_ul + volume_ul)

    # --- integration -------------------------------------------------------------------

    def heat(self, dt_ms: int, *, output_pct: int | None) -> bool:
        """The mesh temperature after `dt_ms` at `output_pct` (None: idle); True if too hot."""
        heating = 0.0 if output_pct is None else _HEATING_AT_FULL_OUTPUT_CC * output_pct / 100
        equilibrium = _AMBIENT_CC + heating + (_COOLING_FAILURE_CC if self.cooling_failed else 0)
        decay = math.exp(-dt_ms / _THERMAL_TAU_MS)
        self.mesh_temp_cC = equilibrium + (self.mesh_temp_cC - equilibrium) * decay
        return self.mesh_temp_cC > OVER_TEMPERATURE_CC

    def nebulise(
        self,
        session: Session,
        start_ms: int,
        end_ms: int,
        *,
        honour_cap: bool,
        breathing: BreathingModel | None,
    ) -> StepEnd | None:
        """Nebulise `session` from `start_ms` to `end_ms`; what ends it early, if anything.

        `honour_cap=False` is the `ignore_target_cap` firmware defect.
        """
        dt_ms = end_ms - start_ms
        if session.gate is not None and not session.gate.mesh_on(start_ms):
            self.flow_ul_min = 0.0  # between pulses (a step never straddles a gate edge)
            return None
        if self.clog_drift_pct_per_min:
            drop = self.clog_drift_pct_per_min / 100 * dt_ms / 60_000
            self.clog_factor = max(_MIN_CLOG_FACTOR, self.clog_factor - drop)
        expected = self.nominal_ul_min * session.output_pct / 100
        flow = expected * self.clog_factor * self.noise
        self.flow_ul_min = flow
        volume = flow * dt_ms / 60_000
        to_target = session.target_ul - session.delivered_ul
        available = max(0.0, self.reservoir_ul - self.residual_ul)
        if honour_cap and volume >= to_target:
            self._deliver(session, to_target, breathing)
            session.delivered_ul = float(session.target_ul)  # exact, not a float sum
            return StepEnd(
                "target_reached", start_ms + dt_ms * (to_target / volume if volume else 0)
            )
        if volume >= available:
            self._deliver(session, available, breathing)
            return StepEnd("cup_dry", start_ms + dt_ms * (available / volume if volume else 0))
        self._deliver(session, volume, breathing)
        if flow < CLOG_DETECT_FRACTION * expected:
            if session.low_flow_since_ms is None:
                session.low_flow_since_ms = float(start_ms)
            elif end_ms - session.low_flow_since_ms >= CLOG_DETECT_MS:
                return StepEnd("mesh_clogged", float(end_ms))
        else:
            session.low_flow_since_ms = None
        return None

    def _deliver(
        self, session: Session, volume_ul: float, breathing: BreathingModel | None
    ) -> None:
        if breathing is not None:
            breathing.add_aerosol(volume_ul, session_id=session.session_id)
        session.delivered_ul += volume_ul
        self.reservoir_ul -= volume_ul
        self.total_delivered_ul += volume_ul

    def drive_ma(self, output_pct: int | None) -> int:
        """The drive current: 0 when not nebulising (`output_pct` None) or unplugged."""
        if output_pct is None or self.head_disconnected:
            return 0
        return round(_DRIVE_IDLE_MA + _DRIVE_FULL_MA * output_pct / 100)
