"""The simulated MN-1's constants, its session record and its truth snapshot.

- ICD timing constants the firmware keeps (§5): STATUS period, watchdog,
  SESSION_END repeats, the answer cache of repeated commands.
- The names the control interface accepts: `FAULT_NAMES`, `DEFECTS`.
- `Session`: the running session inside the model (mutable, private to the device).
- `EndedSession` and `DeviceTruth`: what really happened, for tests to check the
  host's figures against (never what the device reported).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Final, Literal

from drivers.mn1 import FaultBits, StopReason

from ._breathing import BreathingModel, Gate

__all__ = [
    "ANSWER_CACHE_SIZE",
    "CRC_ERRORS_MAX",
    "DEFECTS",
    "FAULT_NAMES",
    "REASON_FOR_FAULT",
    "SERIAL_MAX_LEN",
    "SESSION_END_MAX_SENDS",
    "SESSION_END_REPEAT_MS",
    "STATUS_PERIOD_MS",
    "WATCHDOG_MS",
    "DeviceTruth",
    "EndedSession",
    "Session",
    "breathing_truth",
    "check_head_parameters",
    "fault_name",
]

STATUS_PERIOD_MS: Final = 100
WATCHDOG_MS: Final = 1000
SESSION_END_REPEAT_MS: Final = 200
SESSION_END_MAX_SENDS: Final = 50
CRC_ERRORS_MAX: Final = 0xFFFF
# Only the last answered command counts as "repeated": a host retransmits one
# unanswered command at a time (ICD §6), and a longer memory would wrongly swallow
# a new command from a restarted host that happens to reuse an old seq and body.
ANSWER_CACHE_SIZE: Final = 1
SERIAL_MAX_LEN: Final = 12

#: Fault names accepted by `set_condition`, the control socket and the CLI.
FAULT_NAMES: Final = (
    "reservoir_empty",
    "head_disconnected",
    "mesh_clogged",
    "over_temperature",
    "supply_low",
    "internal",
)
#: Firmware defect modes accepted by `set_defect`.
DEFECTS: Final = ("ignore_target_cap", "ignore_stop", "frozen_delivered")

Defect = Literal["ignore_target_cap", "ignore_stop", "frozen_delivered"]

#: The stop reason a fault bit gives a running session (any other bit: FAULT).
REASON_FOR_FAULT: Final = {
    FaultBits.RESERVOIR_EMPTY: StopReason.RESERVOIR_EMPTY,
    FaultBits.WATCHDOG: StopReason.WATCHDOG,
}


@dataclass(slots=True, kw_only=True)
class Session:
    """The session the head is running (mutated by the physics as it nebulises)."""

    session_id: int
    target_ul: int
    max_duration_ms: int
    output_pct: int
    started_ms: int
    delivered_ul: float = 0.0
    low_flow_since_ms: float | None = None
    #: The gating of a START_GATED session; None for a continuous one.
    gate: Gate | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class EndedSession:
    """A session as it really went (truth, not what the device reported)."""

    session_id: int
    target_ul: int
    output_pct: int
    started_ms: int
    ended_ms: int
    delivered_ul: float
    #: An ICD stop reason name, or "POWER_LOSS" when the device rebooted mid-session.
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceTruth:
    """The model's internal truth at one instant (what a test wants to check against)."""

    now_ms: int
    uptime_ms: int
    booting: bool
    state: str
    session_id: int
    nebulising: bool
    target_ul: int
    output_pct: int
    #: True volume nebulised in the current or last session (µL, not rounded).
    delivered_ul: float
    #: The `delivered_ul` that STATUS carries (may be frozen by a defect).
    reported_delivered_ul: int
    #: True volume nebulised since the model was created, across reboots.
    total_delivered_ul: float
    flow_ul_min: float
    reservoir_ul: float
    residual_ul: int
    capacity_ul: int
    mesh_temp_cC: int  # noqa: N815 - the ICD's field name; hundredths of °C
    drive_ma: int
    faults: list[str]
    fault_bits: int
    conditions: list[str]
    crc_errors: int
    last_stop: str
    confirm_count: int
    clog_factor: float
    clog_drift_pct_per_min: float
    pending_session_end_seqs: list[int]
    defects: list[str]
    link_faults: dict[str, Any]
    host_frames_received: int
    sessions: list[dict[str, Any]] = field(default_factory=list)
    #: Addendum 1.1 only: the patient and the sensor (None for a version-1 head).
    breathing: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return asdict(self)


def fault_name(bit: FaultBits) -> str:
    """A fault bit's name as the control interface spells it (`mesh_clogged`)."""
    return (bit.name or str(int(bit))).lower()


def breathing_truth(
    breathing: BreathingModel | None, *, gate: Gate | None, breath_gating: bool
) -> dict[str, Any] | None:
    """The patient and the sensor as they really are (None for a version-1 head)."""
    if breathing is None:
        return None
    return {
        "pattern": breathing.pattern.name,
        "trigger_ml_s": breathing.trigger_ml_s,
        "detect_latency_ms": breathing.detect_latency_ms,
        "breath_gating": breath_gating,
        "mask_off": breathing.mask_off,
        "sensor_stuck": breathing.sensor_stuck,
        "detections": breathing.detections,
        "last_detect_ms": breathing.last_detect_ms,
        "true_inspiring": breathing.true_inspiring,
        # Aerosol (µL, since the model was created) by what the patient really did.
        "aerosol_true_insp_ul": breathing.truth.insp_ul,
        "aerosol_true_exp_ul": breathing.truth.exp_ul,
        "aerosol_mask_off_ul": breathing.truth.mask_off_ul,
        "gated": gate is not None,
        "waiting_ms": gate.waiting_ms if gate is not None else 0.0,
    }


def check_head_parameters(
    *,
    serial: str,
    nominal_ul_min: int,
    capacity_ul: int,
    fill_ul: int,
    residual_ul: int,
    fw_version: tuple[int, int, int],
    hw_rev: int,
) -> None:
    """Raise ValueError naming the first head parameter outside the ICD's field ranges."""
    if not serial.isascii() or len(serial) > SERIAL_MAX_LEN:
        raise ValueError(f"serial {serial!r} must be at most 12 ASCII characters")
    if not 1 <= nominal_ul_min <= 0xFFFF:
        raise ValueError(f"nominal_ul_min must be 1..65535 µL/min, got {nominal_ul_min}")
    if not 1 <= capacity_ul <= 0xFFFF:
        raise ValueError(f"capacity_ul must be 1..65535 µL, got {capacity_ul}")
    if not 0 <= fill_ul <= capacity_ul:
        raise ValueError(f"fill_ul must be 0..capacity_ul ({capacity_ul}), got {fill_ul}")
    if not 0 <= residual_ul < capacity_ul:
        raise ValueError(f"residual_ul must be 0..{capacity_ul - 1} µL, got {residual_ul}")
    if len(fw_version) != 3 or not all(0 <= part <= 0xFF for part in fw_version):
        raise ValueError(f"fw_version must be three numbers 0..255, got {fw_version}")
    if not 0 <= hw_rev <= 0xFF:
        raise ValueError(f"hw_rev must be 0..255, got {hw_rev}")
