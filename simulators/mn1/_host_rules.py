"""How the simulated MN-1 answers host commands: pure rules, no device state.

Choices the ICD leaves open (documented in docs/simulator.md):

- START checks in this order: BAD_VALUE, same session already nebulising → ACK,
  WRONG_STATE, FAULT_ACTIVE for any fault bit but RESERVOIR_EMPTY, NO_MEDICATION
  when no liquid above the residual volume, FAULT_ACTIVE for RESERVOIR_EMPTY.
- START_GATED (addendum 1.1) checks UNSUPPORTED first, then START's checks and
  the gated ranges.
- STOP with a session_id other than 0 or the running one is ACKed and stops nothing.
- A host frame of a device type (0x81..0x87) is dropped and counted like a bad
  frame; so are QUERY_CAPS and START_GATED on a version-1 head (no breath sensor).
- HELLO → IDENT; QUERY_CAPS → CAPS (BREATH_SENSING, and BREATH_GATED unless the
  head was built without gating).
"""

from __future__ import annotations

from drivers.mn1 import (
    GATED_APNOEA_S,
    GATED_GATE_PCT,
    GATED_LEAD_BREATHS,
    ICD_MINOR_BREATH,
    START_MAX_DURATION_S,
    START_OUTPUT_PCT,
    START_TARGET_UL,
    AckEnd,
    CapBits,
    Caps,
    ClearFaults,
    FaultBits,
    Heartbeat,
    Hello,
    Ident,
    NakReason,
    QueryCaps,
    Start,
    StartGated,
    Stop,
)

from ._breathing import BreathingModel

__all__ = [
    "caps_answer",
    "ident_answer",
    "is_host_command",
    "start_refusal",
    "stop_applies",
]


def is_host_command(message: object, *, breath_aware: bool) -> bool:
    """True for a message type this head takes from a host (1.1 types only if `breath_aware`)."""
    return isinstance(message, Hello | Heartbeat | Start | Stop | ClearFaults | AckEnd) or (
        breath_aware and isinstance(message, QueryCaps | StartGated)
    )


def _gated_refusal(start: StartGated, *, breath_gating: bool) -> NakReason | None:
    if not breath_gating:
        return NakReason.UNSUPPORTED  # before any range check: the head cannot gate
    if (
        start.gate_pct not in GATED_GATE_PCT
        or start.lead_breaths not in GATED_LEAD_BREATHS
        or start.apnoea_s not in GATED_APNOEA_S
    ):
        return NakReason.BAD_VALUE
    return None


def start_refusal(
    start: Start | StartGated,
    *,
    running_session_id: int | None,
    faults: FaultBits,
    cup_dry: bool,
    breath_gating: bool,
) -> NakReason | None:
    """Why the head NAKs this START (None: ACK it), checked in the order above.

    `running_session_id` is the session being nebulised (None when idle); the
    same session again is ACKed and changes nothing. `cup_dry`: no liquid above
    the residual volume.
    """
    if (
        isinstance(start, StartGated)
        and (gated := _gated_refusal(start, breath_gating=breath_gating)) is not None
    ):
        return gated
    if (
        start.session_id < 1
        or start.target_ul not in START_TARGET_UL
        or start.max_duration_s not in START_MAX_DURATION_S
        or start.output_pct not in START_OUTPUT_PCT
    ):
        return NakReason.BAD_VALUE
    if running_session_id is not None:
        # The same session again: ACK and change nothing; another one: refuse.
        same = running_session_id == start.session_id
        return None if same else NakReason.WRONG_STATE
    if faults & ~FaultBits.RESERVOIR_EMPTY:
        return NakReason.FAULT_ACTIVE
    if cup_dry:
        return NakReason.NO_MEDICATION
    return NakReason.FAULT_ACTIVE if faults else None


def stop_applies(stop: Stop, *, running_session_id: int | None) -> bool:
    """True if this STOP ends the running session (session_id 0 or the running one)."""
    return running_session_id is not None and stop.session_id in (0, running_session_id)


def ident_answer(
    seq: int,
    *,
    serial: str,
    fw_version: tuple[int, int, int],
    hw_rev: int,
    nominal_ul_min: int,
    capacity_ul: int,
) -> Ident:
    """The IDENT that answers HELLO `seq`."""
    return Ident(
        ack_seq=seq,
        serial=serial,
        fw_major=fw_version[0],
        fw_minor=fw_version[1],
        fw_patch=fw_version[2],
        hw_rev=hw_rev,
        nominal_ul_min=nominal_ul_min,
        reservoir_capacity_ul=capacity_ul,
    )


def caps_answer(seq: int, *, breathing: BreathingModel, breath_gating: bool) -> Caps:
    """The CAPS that answers QUERY_CAPS `seq` on an addendum-1.1 head."""
    bits = CapBits.BREATH_SENSING | (CapBits.BREATH_GATED if breath_gating else 0)
    return Caps(
        ack_seq=seq,
        icd_minor=ICD_MINOR_BREATH,
        caps=CapBits(bits),
        trigger_ml_s=breathing.trigger_ml_s,
        detect_latency_ms=breathing.detect_latency_ms,
    )
