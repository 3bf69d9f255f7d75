"""The MN-1 device, sans-IO, in the caller's time (ICD v1 and addendum 1.1, device side).

The model has no clock and does no I/O. The caller feeds it host bytes with
`receive(data, now_ms)`, lets time pass with `advance(now_ms)`, sends whatever
`take_output()` returns, and calls `advance` again no later than
`next_deadline_ms()`. Tests drive it in simulated time (a 10-minute session runs
in milliseconds); the real-time server drives it from the monotonic clock.

`DeviceModel` is the firmware: timers, faults, sessions, frames in and out. It
leans on named parts: `_device_types` (constants, the truth snapshot),
`_host_rules` (how each command is answered, pure), `_host_intake` (deframing,
bad-frame counter, repeated commands), `_physics` (`HeadPhysics`: cup, mesh,
temperature, clog), `_session_slot` (the running or last session),
`_end_repeats` (SESSION_END repeats), `_breath_carry` (BREATH rounding),
`_breathing` (the patient and the gate) and `_link_faults` (the line).

Timers (all from the ICD, §5):

- STATUS every 100 ms from boot, in every state.
- Answers (IDENT, ACK, NAK) inside the `receive` call that completed the command.
- Watchdog: 1000 ms without a valid host frame while nebulising → stop, WATCHDOG.
- SESSION_END resent every 200 ms with the same seq until ACK_END, 50 sends at most.
- Physics is integrated in steps of at most 10 ms while nebulising.

Choices the ICD leaves open are listed in `_host_rules` and docs/simulator.md;
CLEAR_FAULTS NAKs FAULT_PERSISTS while any bit stays set afterwards (including
RESERVOIR_EMPTY with a dry cup).

Addendum 1.1 (only with a `BreathingModel`; without one the device is a version-1
head that drops QUERY_CAPS and START_GATED as unknown types):

- A gated session's mesh runs from each detected inspiration for `gate_pct` of the
  expected inspiratory time, or until expiration is seen; WAITING during the lead
  breaths and after `apnoea_s` without an inspiration; NO_BREATHING after 3 ×
  `apnoea_s` of apnoea WAITING (see docs/simulator.md for the choices made).
- One BREATH per detected breath, sent when the next inspiration is detected.
"""

from __future__ import annotations

import random
from dataclasses import asdict
from typing import Final

from drivers.mn1 import (
    Ack,
    AckEnd,
    Caps,
    ClearFaults,
    DeviceMessage,
    DeviceState,
    FaultBits,
    Frame,
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

from ._breath_carry import BreathReporter
from ._breathing import BreathingModel
from ._device_types import (
    DEFECTS,
    FAULT_NAMES,
    REASON_FOR_FAULT,
    STATUS_PERIOD_MS,
    WATCHDOG_MS,
    DeviceTruth,
    EndedSession,
    Session,
    breathing_truth,
    check_head_parameters,
    fault_name,
)
from ._end_repeats import SessionEndRepeats
from ._host_intake import HostIntake
from ._host_rules import caps_answer, ident_answer, start_refusal, stop_applies
from ._link_faults import DeviceLine, LinkFaults
from ._physics import PHYSICS_STEP_MS, HeadPhysics, draw_noise
from ._session_slot import SessionSlot

__all__ = ["DeviceModel"]

_FAULT_FOR_STEP_END: Final = {
    "cup_dry": FaultBits.RESERVOIR_EMPTY,
    "mesh_clogged": FaultBits.MESH_CLOGGED,
}


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
        check_head_parameters(
            serial=serial,
            nominal_ul_min=nominal_ul_min,
            capacity_ul=capacity_ul,
            fill_ul=fill_ul,
            residual_ul=residual_ul,
            fw_version=fw_version,
            hw_rev=hw_rev,
        )
        self.serial = serial
        self.fw_version = fw_version
        self.hw_rev = hw_rev
        # Seeded noise for a reproducible simulation, not for security.
        self._rng = random.Random(seed)  # noqa: S311
        self._now_ms = start_ms
        # Physical state: survives a reboot.
        self._physics = HeadPhysics(
            nominal_ul_min=nominal_ul_min,
            fill_ul=fill_ul,
            capacity_ul=capacity_ul,
            residual_ul=residual_ul,
        )
        self._ended: list[EndedSession] = []
        # Link and firmware defects: injected from outside, survive a reboot.
        self._line = DeviceLine(seed=seed)
        self._defects: set[str] = set()
        self._frozen_delivered_ul = 0
        #: The patient and the flow sensor (None: a version-1 head, no sensor).
        self.breathing = breathing
        self.breath_gating = breath_gating
        self._power_up(boot_done_ms=start_ms)

    @property
    def nominal_ul_min(self) -> int:
        """Output at 100 % with a clean mesh (µL/min), as IDENT reports it."""
        return self._physics.nominal_ul_min

    @property
    def capacity_ul(self) -> int:
        """The cup's capacity (µL)."""
        return self._physics.capacity_ul

    @property
    def fill_ul(self) -> int:
        """The volume poured in at power-up and by a refill after a dry cup (µL)."""
        return self._physics.fill_ul

    @property
    def residual_ul(self) -> int:
        """The volume the mesh cannot nebulise (µL): below it the cup is dry."""
        return self._physics.residual_ul

    # --- power ---------------------------------------------------------------------

    def _power_up(self, *, boot_done_ms: int) -> None:
        self._boot_ms = boot_done_ms
        self._booting = boot_done_ms > self._now_ms
        self._next_status_ms = boot_done_ms
        self._seq = 0
        self._slot = SessionSlot()
        self._faults = FaultBits(0)
        self._confirm_count = 0
        self._physics.power_up()
        self._last_host_frame_ms = self._now_ms
        self._end_repeats = SessionEndRepeats()
        self._intake = HostIntake()
        self._line.clear()
        self._breath_reporter = BreathReporter()
        if self.breathing is not None:
            self.breathing.reset_sensor()
        if not self._booting:
            self._self_test()

    def _self_test(self) -> None:
        """Faults whose condition is present at boot are raised at once."""
        self._faults |= self._physics.self_test_faults()

    # --- the sans-IO surface -----------------------------------------------------

    @property
    def now_ms(self) -> int:
        """The latest time the model was given."""
        return self._now_ms

    def receive(self, data: bytes, now_ms: int) -> None:
        """Bytes from the host that arrived at `now_ms` (any chunking)."""
        self.advance(now_ms)
        self._line.host_sent(data, now_ms)
        self._handle_rx(self._line.host_bytes_due(now_ms))

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
        return self._line.device_bytes_due(self._now_ms)

    def next_deadline_ms(self) -> int:
        """The latest time at which `advance` must next be called."""
        return self._next_event_ms()

    # --- injected events (the control interface calls these) -------------------------

    def press_stop_button(self, *, now_ms: int) -> None:
        """The head's STOP button: aerosol off now, session ends with BUTTON_STOP."""
        self.advance(now_ms)
        if self._slot.session is not None and not self._booting:
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
                self._physics.drain_to_residual()
            else:
                self._add_liquid(self.fill_ul)
        elif name == "mesh_clogged":
            self._physics.set_severe_clog(active)
        else:
            self._physics.set_cause(name, active)
            if active:
                self._raise_fault(FaultBits[name.upper()])

    def set_clog_drift(self, pct_per_min: float, *, now_ms: int) -> None:
        """Output falls by `pct_per_min` % of nominal per minute of nebulising (0 stops it)."""
        if not 0.0 <= pct_per_min <= 100.0:
            raise ValueError(f"clog drift must be 0..100 % per minute, got {pct_per_min}")
        self.advance(now_ms)
        self._physics.clog_drift_pct_per_min = pct_per_min

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
        self._physics.reservoir_ul = float(volume_ul)
        self._clear_dry_cup()

    def reboot(self, *, now_ms: int, boot_ms: int = 0) -> None:
        """Power cycle: the session is lost, uptime restarts; silent for `boot_ms`."""
        if not 0 <= boot_ms <= 60_000:
            raise ValueError(f"boot_ms must be 0..60000, got {boot_ms}")
        self.advance(now_ms)
        if self._slot.session is not None:
            self._record_end(self._slot.session, "POWER_LOSS", float(self._now_ms))
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
        self._line.set_faults(faults)

    @property
    def link_faults(self) -> LinkFaults:
        """The link faults in force."""
        return self._line.faults

    def set_defect(self, name: str, enabled: bool, *, now_ms: int) -> None:
        """Turn a firmware defect on or off: one of `DEFECTS`."""
        if name not in DEFECTS:
            raise ValueError(f"unknown defect {name!r}; use one of {', '.join(DEFECTS)}")
        self.advance(now_ms)
        if enabled:
            if name == "frozen_delivered" and name not in self._defects:
                self._frozen_delivered_ul = self._slot.reported_delivered_ul()
            self._defects.add(name)
        else:
            self._defects.discard(name)

    # --- truth -----------------------------------------------------------------------

    def truth(self) -> DeviceTruth:
        """Everything the model knows, including what the device does not report."""
        session, physics, slot = self._slot.session, self._physics, self._slot
        return DeviceTruth(
            now_ms=self._now_ms,
            uptime_ms=max(0, self._now_ms - self._boot_ms),
            booting=self._booting,
            state=self._state().name,
            session_id=slot.session_id,
            nebulising=session is not None,
            target_ul=slot.target_ul,
            output_pct=slot.output_pct,
            delivered_ul=slot.delivered_ul,
            reported_delivered_ul=self._reported_delivered(),
            total_delivered_ul=physics.total_delivered_ul,
            flow_ul_min=physics.flow_ul_min,
            reservoir_ul=physics.reservoir_ul,
            residual_ul=self.residual_ul,
            capacity_ul=self.capacity_ul,
            mesh_temp_cC=round(physics.mesh_temp_cC),
            drive_ma=self._drive_ma(),
            faults=[fault_name(bit) for bit in FaultBits if bit in self._faults],
            fault_bits=int(self._faults),
            conditions=[fault_name(bit) for bit in FaultBits if physics.condition_present(bit)],
            crc_errors=self._intake.crc_errors,
            last_stop=slot.last_stop.name,
            confirm_count=self._confirm_count,
            clog_factor=physics.clog_factor,
            clog_drift_pct_per_min=physics.clog_drift_pct_per_min,
            pending_session_end_seqs=self._end_repeats.seqs,
            defects=sorted(self._defects),
            link_faults=asdict(self._line.faults),
            host_frames_received=self._intake.host_frames,
            sessions=[asdict(ended) for ended in self._ended],
            breathing=breathing_truth(
                self.breathing,
                gate=session.gate if session is not None else None,
                breath_gating=self.breath_gating,
            ),
        )

    @property
    def ended_sessions(self) -> list[EndedSession]:
        """Every session that ended since the model was created (truth), oldest first."""
        return list(self._ended)

    # --- timers ----------------------------------------------------------------------

    def _next_event_ms(self) -> int:
        if self._booting:
            return self._boot_ms
        candidates = [self._next_status_ms]
        session = self._slot.session
        if session is not None:
            candidates.append(self._now_ms + PHYSICS_STEP_MS)
            candidates.append(session.started_ms + session.max_duration_ms)
            candidates.append(self._last_host_frame_ms + WATCHDOG_MS)
        if self.breathing is not None:
            candidates.append(self.breathing.next_event_ms())
            if session is not None and session.gate is not None:
                candidates.extend(session.gate.deadlines(self._now_ms, self.breathing))
        candidates.extend(self._end_repeats.deadlines())
        candidates.extend(self._line.deadlines(self._now_ms))
        return max(self._now_ms, min(candidates))

    def _fire_due(self) -> None:
        now = self._now_ms
        if self._booting:
            if now < self._boot_ms:
                return
            self._booting = False
            self._last_host_frame_ms = now
            self._self_test()
        rx_due = self._line.host_bytes_due(now)
        if rx_due:
            self._handle_rx(rx_due)
        session = self._slot.session
        if session is not None and now >= session.started_ms + session.max_duration_ms:
            self._end_session(StopReason.MAX_DURATION, float(now))
        if self._slot.session is not None and now >= self._last_host_frame_ms + WATCHDOG_MS:
            self._raise_fault(FaultBits.WATCHDOG)
        self._fire_breathing(now)
        for frame in self._end_repeats.due(now):
            self._transmit(frame)
        if now >= self._next_status_ms:
            self._physics.noise = draw_noise(self._rng)
            self._send(self._status())
            # Keep the 100 ms grid when a real-time caller is a little late.
            self._next_status_ms += STATUS_PERIOD_MS
            if self._next_status_ms <= now:
                self._next_status_ms = now + STATUS_PERIOD_MS

    def _fire_breathing(self, now: int) -> None:
        breathing = self.breathing
        if breathing is None:
            return
        session = self._slot.session
        detections_before = breathing.detections
        reports = breathing.fire(now, session_id=session.session_id if session else 0)
        for report in reports:
            self._send(self._breath_reporter.message(report))
        gate = session.gate if session is not None else None
        if session is None or gate is None:
            return
        gate.follow(breathing, detections_before=detections_before, now_ms=now)
        if now >= gate.no_breathing_at_ms(breathing):
            self._end_session(StopReason.NO_BREATHING, float(now))

    # --- physics -----------------------------------------------------------------------

    def _integrate(self, start_ms: int, end_ms: int) -> None:
        dt_ms = end_ms - start_ms
        if dt_ms <= 0:
            return
        session = self._slot.session
        output_pct: int | None = None
        gate = session.gate if session is not None else None
        if (
            gate is not None
            and self.breathing is not None
            and gate.waiting(start_ms, self.breathing)
        ):
            gate.waiting_ms += dt_ms
        if session is not None:
            output_pct = session.output_pct
            step_end = self._physics.nebulise(
                session,
                start_ms,
                end_ms,
                honour_cap="ignore_target_cap" not in self._defects,
                breathing=self.breathing,
            )
            if step_end is not None and step_end.cause == "target_reached":
                self._end_session(StopReason.TARGET_REACHED, step_end.at_ms)
            elif step_end is not None:
                self._raise_fault(_FAULT_FOR_STEP_END[step_end.cause], at_ms=step_end.at_ms)
        if self._physics.heat(dt_ms, output_pct=output_pct):
            self._raise_fault(FaultBits.OVER_TEMPERATURE, at_ms=float(end_ms))

    def _add_liquid(self, volume_ul: float) -> None:
        self._physics.add_liquid(volume_ul)
        self._clear_dry_cup()

    def _clear_dry_cup(self) -> None:
        if not self._physics.condition_present(FaultBits.RESERVOIR_EMPTY):
            self._faults &= ~FaultBits.RESERVOIR_EMPTY

    def _drive_ma(self) -> int:
        session = self._slot.session
        return self._physics.drive_ma(session.output_pct if session is not None else None)

    # --- faults --------------------------------------------------------------------------

    def _raise_fault(self, bit: FaultBits, *, at_ms: float | None = None) -> None:
        if self._booting:
            return
        self._faults |= bit
        if self._slot.session is not None:
            reason = REASON_FOR_FAULT.get(bit, StopReason.FAULT)
            self._end_session(reason, float(self._now_ms) if at_ms is None else at_ms)

    def _clear_faults(self) -> bool:
        """CLEAR_FAULTS: drop latched bits whose cause is gone; True if none remain."""
        for bit in FaultBits:
            if bit in self._faults and not self._physics.condition_present(bit):
                self._faults &= ~bit
        return not self._faults

    def _state(self) -> DeviceState:
        session = self._slot.session
        if session is not None:
            gate, breathing = session.gate, self.breathing
            if gate is not None and breathing is not None and gate.waiting(self._now_ms, breathing):
                return DeviceState.WAITING
            return DeviceState.NEBULISING
        return DeviceState.FAULT if self._faults else DeviceState.IDLE

    # --- sessions ------------------------------------------------------------------------

    def _start_session(self, start: Start | StartGated) -> None:
        self._slot.start(start, self._now_ms)
        self._last_host_frame_ms = self._now_ms
        if "frozen_delivered" in self._defects:
            self._frozen_delivered_ul = 0

    def _record_end(self, session: Session, reason: str, ended_at_ms: float) -> None:
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
        session = self._slot.end(reason)
        self._physics.flow_ul_min = 0.0
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
        self._end_repeats.sent(seq=seq, frame=frame, now_ms=self._now_ms)

    def _reported_delivered(self) -> int:
        if "frozen_delivered" in self._defects:
            return self._frozen_delivered_ul
        return self._slot.reported_delivered_ul()

    # --- host frames -----------------------------------------------------------------------

    def _handle_rx(self, data: bytes) -> None:
        if self._booting or not data:
            return
        for frame in self._intake.commands(data, breath_aware=self.breathing is not None):
            self._last_host_frame_ms = self._now_ms
            self._handle_frame(frame)

    def _handle_frame(self, frame: Frame) -> None:
        message = frame.message
        if isinstance(message, Heartbeat):
            return
        if isinstance(message, AckEnd):
            self._end_repeats.acknowledged(message.end_seq)
            return
        cached = self._intake.cached_answer(frame)
        if cached is not None:
            self._send_answer(cached)
            return
        answer = self._execute(message, frame.seq)
        encoded = encode_frame(answer, seq=self._next_seq())
        self._intake.remember(frame, encoded)
        self._send_answer(encoded)

    def _identity(self, message: Hello | QueryCaps, seq: int) -> Ident | Caps:
        if isinstance(message, QueryCaps):
            assert self.breathing is not None  # a version-1 head drops QUERY_CAPS before this
            return caps_answer(seq, breathing=self.breathing, breath_gating=self.breath_gating)
        return ident_answer(
            seq,
            serial=self.serial,
            fw_version=self.fw_version,
            hw_rev=self.hw_rev,
            nominal_ul_min=self.nominal_ul_min,
            capacity_ul=self.capacity_ul,
        )

    def _execute(self, message: object, seq: int) -> DeviceMessage:
        session = self._slot.session
        running_session_id = session.session_id if session is not None else None
        if isinstance(message, Hello | QueryCaps):
            return self._identity(message, seq)
        if isinstance(message, Start | StartGated):
            reason = start_refusal(
                message,
                running_session_id=running_session_id,
                faults=self._faults,
                cup_dry=self._physics.condition_present(FaultBits.RESERVOIR_EMPTY),
                breath_gating=self.breath_gating,
            )
            if reason is not None:
                return Nak(ack_seq=seq, reason=reason)
            if session is None:
                self._start_session(message)
            return Ack(ack_seq=seq)
        if isinstance(message, Stop):
            if (
                stop_applies(message, running_session_id=running_session_id)
                and "ignore_stop" not in self._defects
            ):
                self._end_session(StopReason.HOST_STOP, float(self._now_ms))
            return Ack(ack_seq=seq)
        assert isinstance(message, ClearFaults)
        if self._clear_faults():
            return Ack(ack_seq=seq)
        return Nak(ack_seq=seq, reason=NakReason.FAULT_PERSISTS)

    # --- output ----------------------------------------------------------------------------

    def _next_seq(self) -> int:
        seq = self._seq
        self._seq = (seq + 1) & 0xFF
        return seq

    def _status(self) -> Status:
        physics = self._physics
        return Status(
            uptime_ms=(self._now_ms - self._boot_ms) & 0xFFFFFFFF,
            state=self._state(),
            session_id=self._slot.session_id,
            delivered_ul=self._reported_delivered(),
            flow_ul_min=min(0xFFFF, round(physics.flow_ul_min)),
            reservoir_ul=min(0xFFFF, max(0, round(physics.reservoir_ul))),
            mesh_temp_cC=max(-0x8000, min(0x7FFF, round(physics.mesh_temp_cC))),
            drive_ma=self._drive_ma(),
            faults=self._faults,
            crc_errors=self._intake.crc_errors,
            last_stop=self._slot.last_stop,
            confirm_count=self._confirm_count,
        )

    def _send(self, message: DeviceMessage) -> None:
        self._transmit(encode_frame(message, seq=self._next_seq()))

    def _send_answer(self, frame: bytes) -> None:
        if not self._line.answer_dropped(self._rng):
            self._transmit(frame)

    def _transmit(self, frame: bytes) -> None:
        if not self._booting:
            self._line.device_sent(frame, self._now_ms)
