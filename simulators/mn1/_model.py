"""The MN-1 device, sans-IO, in the caller's time (ICD v1 and addendum 1.1, device side).

The model has no clock and does no I/O. The caller feeds it host bytes with
`receive(data, now_ms)`, lets time pass with `advance(now_ms)`, sends whatever
`take_output()` returns, and calls `advance` again no later than
`next_deadline_ms()`. Tests drive it in simulated time (a 10-minute session runs
in milliseconds); the real-time server drives it from the monotonic clock.

Timers (all from the ICD, §5):

- STATUS every 100 ms from boot, in every state.
- Answers (IDENT, ACK, NAK) inside the `receive` call that completed the command.
- Watchdog: 1000 ms without a valid host frame while nebulising → stop, WATCHDOG.
- SESSION_END resent every 200 ms with the same seq until ACK_END, 50 sends at most.
- Physics is integrated in steps of at most 10 ms while nebulising; the target cap
  and a dry cup are found inside a step by interpolation, so the cap is exact.

Choices the ICD leaves open (documented in docs/simulator.md):

- START checks in this order: BAD_VALUE, same session already nebulising → ACK,
  WRONG_STATE, FAULT_ACTIVE for any fault bit but RESERVOIR_EMPTY, NO_MEDICATION
  when no liquid above the residual volume, FAULT_ACTIVE for RESERVOIR_EMPTY.
- STOP with a session_id other than 0 or the running one is ACKed and stops nothing.
- CLEAR_FAULTS NAKs FAULT_PERSISTS while any bit stays set afterwards (including
  RESERVOIR_EMPTY with a dry cup).
- A host frame of a device type (0x81..0x87) is dropped and counted like a bad frame.

Addendum 1.1 (only with a `BreathingModel`; without one the device is a version-1
head that drops QUERY_CAPS and START_GATED as unknown types):

- QUERY_CAPS → CAPS (BREATH_SENSING, and BREATH_GATED unless `breath_gating=False`).
- START_GATED checks UNSUPPORTED first, then START's checks and the gated ranges.
- A gated session's mesh runs from each detected inspiration for `gate_pct` of the
  expected inspiratory time, or until expiration is seen; WAITING during the lead
  breaths and after `apnoea_s` without an inspiration; NO_BREATHING after 3 ×
  `apnoea_s` of apnoea WAITING (see docs/simulator.md for the choices made).
- One BREATH per detected breath, sent when the next inspiration is detected.
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Literal

from drivers.mn1 import (
    GATED_APNOEA_S,
    GATED_GATE_PCT,
    GATED_LEAD_BREATHS,
    ICD_MINOR_BREATH,
    START_MAX_DURATION_S,
    START_OUTPUT_PCT,
    START_TARGET_UL,
    Ack,
    AckEnd,
    Breath,
    CapBits,
    Caps,
    ClearFaults,
    Deframer,
    DeviceMessage,
    DeviceState,
    FaultBits,
    Frame,
    FrameError,
    Heartbeat,
    Hello,
    Ident,
    Nak,
    NakReason,
    QueryCaps,
    SessionEnd,
    Start,
    StartGated,
    Status,
    Stop,
    StopReason,
    encode_frame,
)

from ._breathing import BreathingModel, BreathReport, Gate
from ._link_faults import LinkFaults, _Channel

__all__ = [
    "DEFECTS",
    "FAULT_NAMES",
    "STATUS_PERIOD_MS",
    "DeviceModel",
    "DeviceTruth",
    "EndedSession",
]

STATUS_PERIOD_MS: Final = 100
WATCHDOG_MS: Final = 1000
SESSION_END_REPEAT_MS: Final = 200
SESSION_END_MAX_SENDS: Final = 50
PHYSICS_STEP_MS: Final = 10
CLOG_DETECT_MS: Final = 3000
CLOG_DETECT_FRACTION: Final = 0.5
OVER_TEMPERATURE_CC: Final = 4500
CRC_ERRORS_MAX: Final = 0xFFFF
# Only the last answered command counts as "repeated": a host retransmits one
# unanswered command at a time (ICD §6), and a longer memory would wrongly swallow
# a new command from a restarted host that happens to reuse an old seq and body.
_ANSWER_CACHE_SIZE: Final = 1
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
_SERIAL_MAX_LEN: Final = 12

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

# Fault name → the attribute that holds its physical cause (simple on/off causes).
_CAUSE_ATTRIBUTE: Final = {
    "head_disconnected": "_head_disconnected",
    "supply_low": "_supply_low",
    "internal": "_internal_failure",
    "over_temperature": "_cooling_failed",
}

_REASON_FOR_FAULT: Final = {
    FaultBits.RESERVOIR_EMPTY: StopReason.RESERVOIR_EMPTY,
    FaultBits.WATCHDOG: StopReason.WATCHDOG,
}


@dataclass(slots=True, kw_only=True)
class _Session:
    session_id: int
    target_ul: int
    max_duration_ms: int
    output_pct: int
    started_ms: int
    delivered_ul: float = 0.0
    low_flow_since_ms: float | None = None
    #: The gating of a START_GATED session; None for a continuous one.
    gate: Gate | None = None


@dataclass(slots=True, kw_only=True)
class _PendingEnd:
    seq: int
    frame: bytes
    sends: int
    next_ms: int


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


def _fault_name(bit: FaultBits) -> str:
    return (bit.name or str(int(bit))).lower()


class DeviceModel:
    """A complete MN-1 device without a clock: bytes and times in, bytes out."""

    def __init__(
        self,
        *,
        serial: str = "SIM-0001",
        nominal_ul_min: int = 400,
        fill_ul: int = 3000,
        capacity_ul: int = 6000,
        residual_ul: int = 100,
        seed: int = 0,
        start_ms: int = 0,
        fw_version: tuple[int, int, int] = (1, 0, 0),
        hw_rev: int = 1,
        breathing: BreathingModel | None = None,
        breath_gating: bool = True,
    ) -> None:
        """A device; with `breathing` it is an addendum-1.1 head (else version 1).

        `breath_gating=False` makes a 1.1 head that senses breaths but NAKs
        START_GATED with UNSUPPORTED.
        """
        if not serial.isascii() or len(serial) > _SERIAL_MAX_LEN:
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
        self.serial = serial
        self.nominal_ul_min = nominal_ul_min
        self.capacity_ul = capacity_ul
        self.fill_ul = fill_ul
        self.residual_ul = residual_ul
        self.fw_version = fw_version
        self.hw_rev = hw_rev
        # Seeded noise for a reproducible simulation, not for security.
        self._rng = random.Random(seed)  # noqa: S311
        self._now_ms = start_ms
        # Physical state: survives a reboot.
        self._reservoir_ul = float(fill_ul)
        self._mesh_temp_cC = float(_AMBIENT_CC)
        self._clog_factor = 1.0
        self._clog_drift_pct_per_min = 0.0
        self._head_disconnected = False
        self._supply_low = False
        self._internal_failure = False
        self._cooling_failed = False
        self._total_delivered_ul = 0.0
        self._ended: list[EndedSession] = []
        # Link and firmware defects: injected from outside, survive a reboot.
        self._link = LinkFaults()
        self._rx = _Channel(rng=random.Random(seed + 1))  # noqa: S311 - simulation noise
        self._tx = _Channel(rng=random.Random(seed + 2))  # noqa: S311 - simulation noise
        self._defects: set[str] = set()
        self._frozen_delivered_ul = 0
        #: The patient and the flow sensor (None: a version-1 head, no sensor).
        self.breathing = breathing
        self.breath_gating = breath_gating
        self._power_up(boot_done_ms=start_ms)

    # --- power ---------------------------------------------------------------------

    def _power_up(self, *, boot_done_ms: int) -> None:
        self._boot_ms = boot_done_ms
        self._booting = boot_done_ms > self._now_ms
        self._next_status_ms = boot_done_ms
        self._seq = 0
        self._session_id = 0
        self._session: _Session | None = None
        self._last_delivered_ul = 0.0
        self._last_target_ul = 0
        self._last_output_pct = 0
        self._faults = FaultBits(0)
        self._crc_errors = 0
        self._last_stop = StopReason.NONE
        self._confirm_count = 0
        self._flow_ul_min = 0.0
        self._noise = 1.0
        self._last_host_frame_ms = self._now_ms
        self._pending_ends: list[_PendingEnd] = []
        self._answers: OrderedDict[tuple[int, object], bytes] = OrderedDict()
        self._deframer = Deframer()
        self._host_frames = 0
        self._rx.clear()
        self._tx.clear()
        # BREATH aerosol reported so far (µL, true / tenths of µL, sent), by phase.
        self._aerosol_ul = [0.0, 0.0]
        self._aerosol_dul = [0, 0]
        if self.breathing is not None:
            self.breathing.reset_sensor()
        if not self._booting:
            self._self_test()

    def _self_test(self) -> None:
        """Faults whose condition is present at boot are raised at once."""
        for bit, present in (
            (FaultBits.HEAD_DISCONNECTED, self._head_disconnected),
            (FaultBits.SUPPLY_LOW, self._supply_low),
            (FaultBits.INTERNAL, self._internal_failure),
            (FaultBits.OVER_TEMPERATURE, self._mesh_temp_cC > OVER_TEMPERATURE_CC),
        ):
            if present:
                self._faults |= bit

    # --- the sans-IO surface -----------------------------------------------------

    @property
    def now_ms(self) -> int:
        """The latest time the model was given."""
        return self._now_ms

    def receive(self, data: bytes, now_ms: int) -> None:
        """Bytes from the host that arrived at `now_ms` (any chunking)."""
        self.advance(now_ms)
        self._rx.push(data, now_ms)
        self._handle_rx(self._rx.pop_due(now_ms))

    def advance(self, now_ms: int) -> None:
        """Run physics and timers up to `now_ms` (never backwards)."""
        if now_ms < self._now_ms:
            raise ValueError(
                f"time went backwards: advance({now_ms}) after {self._now_ms}; "
                "pass a monotonic clock"
            )
        while True:
            step_start, step_end = self._now_ms, min(self._next_event_ms(), now_ms)
            # What the step causes (a session end) is sent at its end, never before.
            self._now_ms = step_end
            self._integrate(step_start, step_end)
            self._fire_due()
            if step_end >= now_ms:
                return

    def take_output(self) -> bytes:
        """Wire bytes the device sends now (empty when it has nothing to say)."""
        return self._tx.pop_due(self._now_ms)

    def next_deadline_ms(self) -> int:
        """The latest time at which `advance` must next be called."""
        return self._next_event_ms()

    # --- injected events (the control interface calls these) -------------------------

    def press_stop_button(self, *, now_ms: int) -> None:
        """The head's STOP button: aerosol off now, session ends with BUTTON_STOP."""
        self.advance(now_ms)
        if self._session is not None and not self._booting:
            self._end_session(StopReason.BUTTON_STOP, self._now_ms)

    def press_confirm_button(self, *, now_ms: int) -> None:
        """The head's CONFIRM button: `confirm_count` goes up by one (wraps 255 → 0)."""
        self.advance(now_ms)
        if not self._booting:
            self._confirm_count = (self._confirm_count + 1) & 0xFF

    def set_condition(self, name: str, active: bool, *, now_ms: int) -> None:
        """Make a fault's physical cause present (`active`) or gone.

        `reservoir_empty` drains the cup to its residual volume (inactive: pours in
        the power-up fill volume). `over_temperature` is a cooling failure that puts
        the mesh at 45.50 °C at once; gone, the mesh cools by itself.
        `mesh_clogged` is a severe clog (30 % of expected output), detected after
        3 s of nebulising; gone, the mesh is clean again.
        """
        if name not in FAULT_NAMES:
            raise ValueError(f"unknown fault {name!r}; use one of {', '.join(FAULT_NAMES)}")
        self.advance(now_ms)
        if name == "reservoir_empty":
            if active:
                self._reservoir_ul = min(self._reservoir_ul, float(self.residual_ul))
            else:
                self._add_liquid(self.fill_ul)
        elif name == "mesh_clogged":
            self._clog_factor = _SEVERE_CLOG_FACTOR if active else 1.0
            if not active:
                self._clog_drift_pct_per_min = 0.0
        else:
            if name == "over_temperature" and active:
                self._mesh_temp_cC = max(self._mesh_temp_cC, float(_INJECTED_OVER_TEMPERATURE_CC))
            setattr(self, _CAUSE_ATTRIBUTE[name], active)
            if active:
                self._raise_fault(FaultBits[name.upper()])

    def set_clog_drift(self, pct_per_min: float, *, now_ms: int) -> None:
        """Output falls by `pct_per_min` % of nominal per minute of nebulising (0 stops it)."""
        if not 0.0 <= pct_per_min <= 100.0:
            raise ValueError(f"clog drift must be 0..100 % per minute, got {pct_per_min}")
        self.advance(now_ms)
        self._clog_drift_pct_per_min = pct_per_min

    def refill(self, volume_ul: float, *, now_ms: int) -> None:
        """Pour `volume_ul` into the cup (the excess over capacity spills)."""
        if volume_ul < 0:
            raise ValueError(f"refill volume must be ≥ 0 µL, got {volume_ul}")
        self.advance(now_ms)
        self._add_liquid(volume_ul)

    def set_reservoir(self, volume_ul: float, *, now_ms: int) -> None:
        """Set the liquid in the cup to exactly `volume_ul` (0..capacity)."""
        if not 0 <= volume_ul <= self.capacity_ul:
            raise ValueError(f"reservoir volume must be 0..{self.capacity_ul} µL, got {volume_ul}")
        self.advance(now_ms)
        self._reservoir_ul = float(volume_ul)
        self._clear_dry_cup()

    def reboot(self, *, now_ms: int, boot_ms: int = 0) -> None:
        """Power cycle: the session is lost, uptime restarts; silent for `boot_ms`."""
        if not 0 <= boot_ms <= 60_000:
            raise ValueError(f"boot_ms must be 0..60000, got {boot_ms}")
        self.advance(now_ms)
        if self._session is not None:
            self._record_end(self._session, "POWER_LOSS", float(self._now_ms))
        self._power_up(boot_done_ms=self._now_ms + boot_ms)

    # --- the patient (addendum 1.1 heads only) ---------------------------------------

    def _require_breathing(self) -> BreathingModel:
        if self.breathing is None:
            raise ValueError(
                "this simulated head is ICD version 1 and has no breath sensor; "
                "start it with --icd 1.1"
            )
        return self.breathing

    def breathing_apnoea(self, seconds: float, *, now_ms: int) -> None:
        """The patient stops breathing for `seconds` (the breath in progress finishes)."""
        breathing = self._require_breathing()
        self.advance(now_ms)
        breathing.apnoea(round(seconds * 1000), now_ms=self._now_ms)

    def set_mask_off(self, off: bool, *, now_ms: int) -> None:
        """Mask or mouthpiece off (no flow reaches the sensor; aerosol goes into the room)."""
        breathing = self._require_breathing()
        self.advance(now_ms)
        breathing.mask_off = off

    def set_sensor_stuck(self, stuck: bool, *, now_ms: int) -> None:
        """The flow sensor reads a constant: no inspiration is detected while stuck."""
        breathing = self._require_breathing()
        self.advance(now_ms)
        breathing.sensor_stuck = stuck

    def set_breathing_pattern(self, name: str, *, now_ms: int) -> None:
        """The patient breathes with pattern `name` from the next breath on."""
        breathing = self._require_breathing()
        self.advance(now_ms)
        breathing.set_pattern(name)

    def set_link_faults(self, faults: LinkFaults, *, now_ms: int) -> None:
        """Replace every link fault (pass `LinkFaults()` to heal the link)."""
        self.advance(now_ms)
        self._link = faults
        self._rx.faults = faults.rx
        self._tx.faults = faults.tx

    @property
    def link_faults(self) -> LinkFaults:
        """The link faults in force."""
        return self._link

    def set_defect(self, name: str, enabled: bool, *, now_ms: int) -> None:
        """Turn a firmware defect on or off: one of `DEFECTS`."""
        if name not in DEFECTS:
            raise ValueError(f"unknown defect {name!r}; use one of {', '.join(DEFECTS)}")
        self.advance(now_ms)
        if enabled:
            if name == "frozen_delivered" and name not in self._defects:
                self._frozen_delivered_ul = self._reported_delivered_now()
            self._defects.add(name)
        else:
            self._defects.discard(name)

    # --- truth -----------------------------------------------------------------------

    def truth(self) -> DeviceTruth:
        """Everything the model knows, including what the device does not report."""
        session = self._session
        return DeviceTruth(
            now_ms=self._now_ms,
            uptime_ms=max(0, self._now_ms - self._boot_ms),
            booting=self._booting,
            state=self._state().name,
            session_id=self._session_id,
            nebulising=session is not None,
            target_ul=session.target_ul if session else self._last_target_ul,
            output_pct=session.output_pct if session else self._last_output_pct,
            delivered_ul=session.delivered_ul if session else self._last_delivered_ul,
            reported_delivered_ul=self._reported_delivered(),
            total_delivered_ul=self._total_delivered_ul,
            flow_ul_min=self._flow_ul_min,
            reservoir_ul=self._reservoir_ul,
            residual_ul=self.residual_ul,
            capacity_ul=self.capacity_ul,
            mesh_temp_cC=round(self._mesh_temp_cC),
            drive_ma=self._drive_ma(),
            faults=[_fault_name(bit) for bit in FaultBits if bit in self._faults],
            fault_bits=int(self._faults),
            conditions=[_fault_name(bit) for bit in FaultBits if self._condition_present(bit)],
            crc_errors=self._crc_errors,
            last_stop=self._last_stop.name,
            confirm_count=self._confirm_count,
            clog_factor=self._clog_factor,
            clog_drift_pct_per_min=self._clog_drift_pct_per_min,
            pending_session_end_seqs=[pending.seq for pending in self._pending_ends],
            defects=sorted(self._defects),
            link_faults=asdict(self._link),
            host_frames_received=self._host_frames,
            sessions=[asdict(ended) for ended in self._ended],
            breathing=self._breathing_truth(),
        )

    def _breathing_truth(self) -> dict[str, Any] | None:
        breathing = self.breathing
        if breathing is None:
            return None
        gate = self._session.gate if self._session is not None else None
        return {
            "pattern": breathing.pattern.name,
            "trigger_ml_s": breathing.trigger_ml_s,
            "detect_latency_ms": breathing.detect_latency_ms,
            "breath_gating": self.breath_gating,
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

    @property
    def ended_sessions(self) -> list[EndedSession]:
        """Every session that ended since the model was created (truth), oldest first."""
        return list(self._ended)

    # --- timers ----------------------------------------------------------------------

    def _next_event_ms(self) -> int:
        if self._booting:
            return self._boot_ms
        candidates = [self._next_status_ms]
        session = self._session
        if session is not None:
            candidates.append(self._now_ms + PHYSICS_STEP_MS)
            candidates.append(session.started_ms + session.max_duration_ms)
            candidates.append(self._last_host_frame_ms + WATCHDOG_MS)
        if self.breathing is not None:
            candidates.append(self.breathing.next_event_ms())
            if session is not None and session.gate is not None:
                candidates.extend(session.gate.deadlines(self._now_ms, self.breathing))
        candidates.extend(pending.next_ms for pending in self._pending_ends)
        rx_release = self._rx.next_release_ms()
        if rx_release is not None:
            candidates.append(rx_release)
        tx_release = self._tx.next_release_ms()
        if tx_release is not None and tx_release > self._now_ms:
            # A due chunk waits for take_output; only a future one is a timer.
            candidates.append(tx_release)
        return max(self._now_ms, min(candidates))

    def _fire_due(self) -> None:
        now = self._now_ms
        if self._booting:
            if now < self._boot_ms:
                return
            self._booting = False
            self._last_host_frame_ms = now
            self._self_test()
        rx_due = self._rx.pop_due(now)
        if rx_due:
            self._handle_rx(rx_due)
        session = self._session
        if session is not None and now >= session.started_ms + session.max_duration_ms:
            self._end_session(StopReason.MAX_DURATION, float(now))
        if self._session is not None and now >= self._last_host_frame_ms + WATCHDOG_MS:
            self._raise_fault(FaultBits.WATCHDOG)
        self._fire_breathing(now)
        for pending in list(self._pending_ends):
            if now >= pending.next_ms:
                self._resend_end(pending)
        if now >= self._next_status_ms:
            self._noise = 1.0 + max(
                -_NOISE_LIMIT, min(_NOISE_LIMIT, self._rng.gauss(0.0, _NOISE_SD))
            )
            self._send(self._status())
            # Keep the 100 ms grid when a real-time caller is a little late.
            self._next_status_ms += STATUS_PERIOD_MS
            if self._next_status_ms <= now:
                self._next_status_ms = now + STATUS_PERIOD_MS

    def _fire_breathing(self, now: int) -> None:
        breathing = self.breathing
        if breathing is None:
            return
        session = self._session
        detections_before = breathing.detections
        reports = breathing.fire(now, session_id=session.session_id if session else 0)
        for report in reports:
            self._send(self._breath_message(report))
        gate = session.gate if session is not None else None
        if session is None or gate is None:
            return
        gate.follow(breathing, detections_before=detections_before, now_ms=now)
        if now >= gate.no_breathing_at_ms(breathing):
            self._end_session(StopReason.NO_BREATHING, float(now))

    def _dul(self, phase: int, volume_ul: float) -> int:
        """µL → tenths of a µL, carrying the rounding remainder to the next breath.

        Rounding each breath on its own would drift by up to 0.05 µL per breath
        (40 µL over 800 breaths); carrying it keeps the sum of the reports within
        0.05 µL of the truth, as addendum 1.1 §3 promises (within 1 µL).
        """
        self._aerosol_ul[phase] += volume_ul
        due = round(self._aerosol_ul[phase] * 10) - self._aerosol_dul[phase]
        dul = min(0xFFFF, max(0, due))
        self._aerosol_dul[phase] += dul
        return dul

    def _breath_message(self, report: BreathReport) -> Breath:
        return Breath(
            session_id=report.session_id,
            breath_no=report.breath_no,
            insp_ms=report.insp_ms,
            exp_ms=report.exp_ms,
            tidal_ml=report.tidal_ml,
            peak_flow_ml_s=report.peak_flow_ml_s,
            aerosol_insp_dul=self._dul(0, report.aerosol_insp_ul),
            aerosol_exp_dul=self._dul(1, report.aerosol_exp_ul),
        )

    def _resend_end(self, pending: _PendingEnd) -> None:
        self._transmit(pending.frame)
        pending.sends += 1
        pending.next_ms = self._now_ms + SESSION_END_REPEAT_MS
        if pending.sends >= SESSION_END_MAX_SENDS:
            self._pending_ends.remove(pending)

    # --- physics -----------------------------------------------------------------------

    def _integrate(self, start_ms: int, end_ms: int) -> None:
        dt_ms = end_ms - start_ms
        if dt_ms <= 0:
            return
        session = self._session
        heating = 0.0
        gate = session.gate if session is not None else None
        if (
            gate is not None
            and self.breathing is not None
            and gate.waiting(start_ms, self.breathing)
        ):
            gate.waiting_ms += dt_ms
        if session is not None:
            heating = _HEATING_AT_FULL_OUTPUT_CC * session.output_pct / 100
            self._nebulise(session, start_ms, end_ms)
        equilibrium = _AMBIENT_CC + heating + (_COOLING_FAILURE_CC if self._cooling_failed else 0)
        decay = math.exp(-dt_ms / _THERMAL_TAU_MS)
        self._mesh_temp_cC = equilibrium + (self._mesh_temp_cC - equilibrium) * decay
        if self._mesh_temp_cC > OVER_TEMPERATURE_CC:
            self._raise_fault(FaultBits.OVER_TEMPERATURE, at_ms=float(end_ms))

    def _expected_flow(self, session: _Session) -> float:
        return self.nominal_ul_min * session.output_pct / 100

    def _nebulise(self, session: _Session, start_ms: int, end_ms: int) -> None:
        dt_ms = end_ms - start_ms
        if session.gate is not None and not session.gate.mesh_on(start_ms):
            self._flow_ul_min = 0.0  # between pulses (a step never straddles a gate edge)
            return
        if self._clog_drift_pct_per_min:
            drop = self._clog_drift_pct_per_min / 100 * dt_ms / 60_000
            self._clog_factor = max(_MIN_CLOG_FACTOR, self._clog_factor - drop)
        expected = self._expected_flow(session)
        flow = expected * self._clog_factor * self._noise
        self._flow_ul_min = flow
        volume = flow * dt_ms / 60_000
        to_target = session.target_ul - session.delivered_ul
        available = max(0.0, self._reservoir_ul - self.residual_ul)
        cap = "ignore_target_cap" not in self._defects
        if cap and volume >= to_target:
            self._deliver(session, to_target)
            session.delivered_ul = float(session.target_ul)  # exact, not a float sum
            self._end_session(
                StopReason.TARGET_REACHED, start_ms + dt_ms * (to_target / volume if volume else 0)
            )
            return
        if volume >= available:
            self._deliver(session, available)
            end_at = start_ms + dt_ms * (available / volume if volume else 0)
            self._raise_fault(FaultBits.RESERVOIR_EMPTY, at_ms=end_at)
            return
        self._deliver(session, volume)
        if flow < CLOG_DETECT_FRACTION * expected:
            if session.low_flow_since_ms is None:
                session.low_flow_since_ms = float(start_ms)
            elif end_ms - session.low_flow_since_ms >= CLOG_DETECT_MS:
                self._raise_fault(FaultBits.MESH_CLOGGED, at_ms=float(end_ms))
        else:
            session.low_flow_since_ms = None

    def _deliver(self, session: _Session, volume_ul: float) -> None:
        if self.breathing is not None:
            self.breathing.add_aerosol(volume_ul, session_id=session.session_id)
        session.delivered_ul += volume_ul
        self._reservoir_ul -= volume_ul
        self._total_delivered_ul += volume_ul

    def _add_liquid(self, volume_ul: float) -> None:
        self._reservoir_ul = min(float(self.capacity_ul), self._reservoir_ul + volume_ul)
        self._clear_dry_cup()

    def _clear_dry_cup(self) -> None:
        if not self._condition_present(FaultBits.RESERVOIR_EMPTY):
            self._faults &= ~FaultBits.RESERVOIR_EMPTY

    def _drive_ma(self) -> int:
        session = self._session
        if session is None or self._head_disconnected:
            return 0
        return round(_DRIVE_IDLE_MA + _DRIVE_FULL_MA * session.output_pct / 100)

    # --- faults --------------------------------------------------------------------------

    def _condition_present(self, bit: FaultBits) -> bool:
        present = {
            FaultBits.RESERVOIR_EMPTY: self._reservoir_ul <= self.residual_ul + 1e-9,
            FaultBits.HEAD_DISCONNECTED: self._head_disconnected,
            FaultBits.MESH_CLOGGED: self._clog_factor < CLOG_DETECT_FRACTION,
            FaultBits.OVER_TEMPERATURE: self._mesh_temp_cC > OVER_TEMPERATURE_CC,
            FaultBits.SUPPLY_LOW: self._supply_low,
            FaultBits.INTERNAL: self._internal_failure,
        }
        # WATCHDOG's cause (host silence) is over once the host talks again.
        return present.get(bit, False)

    def _raise_fault(self, bit: FaultBits, *, at_ms: float | None = None) -> None:
        if self._booting:
            return
        self._faults |= bit
        if self._session is not None:
            reason = _REASON_FOR_FAULT.get(bit, StopReason.FAULT)
            self._end_session(reason, float(self._now_ms) if at_ms is None else at_ms)

    def _clear_faults(self) -> bool:
        """CLEAR_FAULTS: drop latched bits whose cause is gone; True if none remain."""
        for bit in FaultBits:
            if bit in self._faults and not self._condition_present(bit):
                self._faults &= ~bit
        return not self._faults

    def _state(self) -> DeviceState:
        session = self._session
        if session is not None:
            gate, breathing = session.gate, self.breathing
            if gate is not None and breathing is not None and gate.waiting(self._now_ms, breathing):
                return DeviceState.WAITING
            return DeviceState.NEBULISING
        return DeviceState.FAULT if self._faults else DeviceState.IDLE

    # --- sessions ------------------------------------------------------------------------

    def _start_session(self, start: Start | StartGated) -> None:
        self._session_id = start.session_id
        self._session = _Session(
            session_id=start.session_id,
            target_ul=start.target_ul,
            max_duration_ms=start.max_duration_s * 1000,
            output_pct=start.output_pct,
            started_ms=self._now_ms,
            gate=Gate(
                gate_pct=start.gate_pct,
                lead_breaths=start.lead_breaths,
                apnoea_ms=start.apnoea_s * 1000,
                started_ms=self._now_ms,
            )
            if isinstance(start, StartGated)
            else None,
        )
        self._last_host_frame_ms = self._now_ms
        if "frozen_delivered" in self._defects:
            self._frozen_delivered_ul = 0

    def _record_end(self, session: _Session, reason: str, ended_at_ms: float) -> None:
        self._ended.append(
            EndedSession(
                session_id=session.session_id,
                target_ul=session.target_ul,
                output_pct=session.output_pct,
                started_ms=session.started_ms,
                ended_ms=round(ended_at_ms),
                delivered_ul=session.delivered_ul,
                reason=reason,
            )
        )
        del self._ended[:-100]

    def _end_session(self, reason: StopReason, ended_at_ms: float) -> None:
        session = self._session
        assert session is not None
        self._session = None
        self._flow_ul_min = 0.0
        self._last_delivered_ul = session.delivered_ul
        self._last_target_ul = session.target_ul
        self._last_output_pct = session.output_pct
        self._last_stop = reason
        self._record_end(session, reason.name, ended_at_ms)
        end = SessionEnd(
            session_id=session.session_id,
            delivered_ul=self._reported_delivered(),
            duration_ms=max(0, round(ended_at_ms - session.started_ms)),
            reason=reason,
        )
        seq = self._next_seq()
        frame = encode_frame(end, seq=seq)
        self._transmit(frame)
        self._pending_ends.append(
            _PendingEnd(seq=seq, frame=frame, sends=1, next_ms=self._now_ms + SESSION_END_REPEAT_MS)
        )

    def _reported_delivered_now(self) -> int:
        session = self._session
        delivered = session.delivered_ul if session else self._last_delivered_ul
        return min(0xFFFFFFFF, math.floor(delivered + 1e-9))

    def _reported_delivered(self) -> int:
        if "frozen_delivered" in self._defects:
            return self._frozen_delivered_ul
        return self._reported_delivered_now()

    # --- host frames -----------------------------------------------------------------------

    def _handle_rx(self, data: bytes) -> None:
        if self._booting or not data:
            return
        for event in self._deframer.feed(data):
            if isinstance(event, FrameError):
                self._count_bad_frame()
            elif isinstance(
                event.message, Hello | Heartbeat | Start | Stop | ClearFaults | AckEnd
            ) or (self.breathing is not None and isinstance(event.message, QueryCaps | StartGated)):
                self._host_frames += 1
                self._last_host_frame_ms = self._now_ms
                self._handle_frame(event)
            else:
                self._count_bad_frame()  # a device message type is unknown to the device

    def _count_bad_frame(self) -> None:
        self._crc_errors = min(CRC_ERRORS_MAX, self._crc_errors + 1)

    def _handle_frame(self, frame: Frame) -> None:
        message = frame.message
        if isinstance(message, Heartbeat):
            return
        if isinstance(message, AckEnd):
            self._pending_ends = [p for p in self._pending_ends if p.seq != message.end_seq]
            return
        key = (frame.seq, message)
        cached = self._answers.get(key)
        if cached is not None:
            self._answers.move_to_end(key)
            self._send_answer(cached)
            return
        answer = self._execute(message, frame.seq)
        encoded = encode_frame(answer, seq=self._next_seq())
        self._answers[key] = encoded
        while len(self._answers) > _ANSWER_CACHE_SIZE:
            self._answers.popitem(last=False)
        self._send_answer(encoded)

    def _identity(self, message: Hello | QueryCaps, seq: int) -> Ident | Caps:
        if isinstance(message, QueryCaps):
            breathing = self.breathing
            assert breathing is not None  # a version-1 head drops QUERY_CAPS before this
            bits = CapBits.BREATH_SENSING | (CapBits.BREATH_GATED if self.breath_gating else 0)
            return Caps(
                ack_seq=seq,
                icd_minor=ICD_MINOR_BREATH,
                caps=CapBits(bits),
                trigger_ml_s=breathing.trigger_ml_s,
                detect_latency_ms=breathing.detect_latency_ms,
            )
        return Ident(
            ack_seq=seq,
            serial=self.serial,
            fw_major=self.fw_version[0],
            fw_minor=self.fw_version[1],
            fw_patch=self.fw_version[2],
            hw_rev=self.hw_rev,
            nominal_ul_min=self.nominal_ul_min,
            reservoir_capacity_ul=self.capacity_ul,
        )

    def _execute(self, message: object, seq: int) -> DeviceMessage:
        if isinstance(message, Hello | QueryCaps):
            return self._identity(message, seq)
        if isinstance(message, Start | StartGated):
            reason = self._start_refusal(message)
            if reason is not None:
                return Nak(ack_seq=seq, reason=reason)
            if self._session is None:
                self._start_session(message)
            return Ack(ack_seq=seq)
        if isinstance(message, Stop):
            session = self._session
            if (
                session is not None
                and message.session_id in (0, session.session_id)
                and "ignore_stop" not in self._defects
            ):
                self._end_session(StopReason.HOST_STOP, float(self._now_ms))
            return Ack(ack_seq=seq)
        assert isinstance(message, ClearFaults)
        if self._clear_faults():
            return Ack(ack_seq=seq)
        return Nak(ack_seq=seq, reason=NakReason.FAULT_PERSISTS)

    def _gated_refusal(self, start: StartGated) -> NakReason | None:
        if not self.breath_gating:
            return NakReason.UNSUPPORTED  # before any range check: the head cannot gate
        if (
            start.gate_pct not in GATED_GATE_PCT
            or start.lead_breaths not in GATED_LEAD_BREATHS
            or start.apnoea_s not in GATED_APNOEA_S
        ):
            return NakReason.BAD_VALUE
        return None

    def _start_refusal(self, start: Start | StartGated) -> NakReason | None:
        if isinstance(start, StartGated) and (gated := self._gated_refusal(start)) is not None:
            return gated
        if (
            start.session_id < 1
            or start.target_ul not in START_TARGET_UL
            or start.max_duration_s not in START_MAX_DURATION_S
            or start.output_pct not in START_OUTPUT_PCT
        ):
            return NakReason.BAD_VALUE
        if self._session is not None:
            # The same session again: ACK and change nothing; another one: refuse.
            same = self._session.session_id == start.session_id
            return None if same else NakReason.WRONG_STATE
        if self._faults & ~FaultBits.RESERVOIR_EMPTY:
            return NakReason.FAULT_ACTIVE
        if self._condition_present(FaultBits.RESERVOIR_EMPTY):
            return NakReason.NO_MEDICATION
        return NakReason.FAULT_ACTIVE if self._faults else None

    # --- output ----------------------------------------------------------------------------

    def _next_seq(self) -> int:
        seq = self._seq
        self._seq = (seq + 1) & 0xFF
        return seq

    def _status(self) -> Status:
        return Status(
            uptime_ms=(self._now_ms - self._boot_ms) & 0xFFFFFFFF,
            state=self._state(),
            session_id=self._session_id,
            delivered_ul=self._reported_delivered(),
            flow_ul_min=min(0xFFFF, round(self._flow_ul_min)),
            reservoir_ul=min(0xFFFF, max(0, round(self._reservoir_ul))),
            mesh_temp_cC=max(-0x8000, min(0x7FFF, round(self._mesh_temp_cC))),
            drive_ma=self._drive_ma(),
            faults=self._faults,
            crc_errors=self._crc_errors,
            last_stop=self._last_stop,
            confirm_count=self._confirm_count,
        )

    def _send(self, message: DeviceMessage) -> None:
        self._transmit(encode_frame(message, seq=self._next_seq()))

    def _send_answer(self, frame: bytes) -> None:
        rate = self._link.drop_answer_rate
        if rate and self._rng.random() < rate:
            return
        self._transmit(frame)

    def _transmit(self, frame: bytes) -> None:
        if self._link.silent or self._booting:
            return
        self._tx.push(frame, self._now_ms)
