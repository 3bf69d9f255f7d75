"""Typed MN-1 messages and codes (ICD §3 and §4, and addendum 1.1).

Every message is a frozen dataclass; enumerated fields use IntEnum/IntFlag so
that they compare equal to the raw integers in the ICD and in the test vectors.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, IntFlag

__all__ = [
    "GATED_APNOEA_S",
    "GATED_GATE_PCT",
    "GATED_LEAD_BREATHS",
    "ICD_MINOR_BREATH",
    "LATCHED_FAULTS",
    "PROTOCOL_VERSION",
    "START_MAX_DURATION_S",
    "START_OUTPUT_PCT",
    "START_TARGET_UL",
    "Ack",
    "AckEnd",
    "Breath",
    "CapBits",
    "Caps",
    "ClearFaults",
    "DeviceMessage",
    "DeviceState",
    "FaultBits",
    "Frame",
    "Heartbeat",
    "Hello",
    "HostMessage",
    "Ident",
    "Message",
    "MsgType",
    "Nak",
    "NakReason",
    "QueryCaps",
    "SessionEnd",
    "Start",
    "StartGated",
    "Status",
    "Stop",
    "StopReason",
]

PROTOCOL_VERSION = 1

# START field ranges (ICD §3). Out of range → NAK BAD_VALUE from the device.
START_TARGET_UL = range(1, 20000 + 1)
START_MAX_DURATION_S = range(1, 3600 + 1)
START_OUTPUT_PCT = range(10, 100 + 1)

# START_GATED ranges beyond START's (addendum 1.1 §2). Out of range → NAK BAD_VALUE.
GATED_GATE_PCT = range(30, 90 + 1)
GATED_LEAD_BREATHS = range(0, 10 + 1)
GATED_APNOEA_S = range(5, 60 + 1)

#: CAPS `icd_minor` of a head that implements addendum 1.1.
ICD_MINOR_BREATH = 1


class MsgType(IntEnum):
    """Message type codes (header byte 1)."""

    HELLO = 0x01
    HEARTBEAT = 0x02
    START = 0x03
    STOP = 0x04
    CLEAR_FAULTS = 0x05
    ACK_END = 0x06
    QUERY_CAPS = 0x07  # addendum 1.1
    START_GATED = 0x08  # addendum 1.1
    IDENT = 0x81
    ACK = 0x82
    NAK = 0x83
    STATUS = 0x84
    SESSION_END = 0x85
    CAPS = 0x86  # addendum 1.1
    BREATH = 0x87  # addendum 1.1


class DeviceState(IntEnum):
    """STATUS `state`."""

    IDLE = 0
    NEBULISING = 1
    FAULT = 2
    #: Addendum 1.1: a gated session runs but the mesh is off (lead breaths, or apnoea).
    WAITING = 3


class NakReason(IntEnum):
    """NAK `reason`."""

    BAD_LENGTH = 1
    BAD_VALUE = 2
    WRONG_STATE = 3
    FAULT_ACTIVE = 4
    UNKNOWN_TYPE = 5
    FAULT_PERSISTS = 6
    NO_MEDICATION = 7
    #: Addendum 1.1: the head lacks the capability the command needs.
    UNSUPPORTED = 8


class StopReason(IntEnum):
    """SESSION_END `reason` and STATUS `last_stop` (0 = no session has ended yet)."""

    NONE = 0
    HOST_STOP = 1
    TARGET_REACHED = 2
    MAX_DURATION = 3
    RESERVOIR_EMPTY = 4
    FAULT = 5
    WATCHDOG = 6
    BUTTON_STOP = 7
    #: Addendum 1.1: a gated session stayed WAITING, after its lead breaths, for 3 × apnoea_s.
    NO_BREATHING = 8


class FaultBits(IntFlag):
    """STATUS `faults` bits (ICD §4). Unknown bits are kept, not dropped."""

    RESERVOIR_EMPTY = 1 << 0
    HEAD_DISCONNECTED = 1 << 1
    MESH_CLOGGED = 1 << 2
    OVER_TEMPERATURE = 1 << 3
    WATCHDOG = 1 << 4
    SUPPLY_LOW = 1 << 5
    INTERNAL = 1 << 6


#: Bits that stay set until CLEAR_FAULTS succeeds (all but RESERVOIR_EMPTY).
LATCHED_FAULTS = FaultBits(0x7E)


class CapBits(IntFlag):
    """CAPS `caps` bits (addendum 1.1 §1). Unknown bits are kept, not dropped."""

    BREATH_SENSING = 1 << 0
    BREATH_GATED = 1 << 1


# --- host → device -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """HELLO: the device answers IDENT."""

    TYPE = MsgType.HELLO


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """HEARTBEAT: keeps the device watchdog fed; no answer."""

    TYPE = MsgType.HEARTBEAT


@dataclass(frozen=True, slots=True, kw_only=True)
class Start:
    """START a session with device-side limits; answered ACK or NAK."""

    TYPE = MsgType.START
    session_id: int
    target_ul: int
    max_duration_s: int
    output_pct: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Stop:
    """STOP `session_id` (0 = whatever runs); always ACKed."""

    TYPE = MsgType.STOP
    session_id: int


@dataclass(frozen=True, slots=True)
class ClearFaults:
    """CLEAR_FAULTS: ACK, or NAK FAULT_PERSISTS."""

    TYPE = MsgType.CLEAR_FAULTS


@dataclass(frozen=True, slots=True, kw_only=True)
class AckEnd:
    """ACK_END: acknowledges the SESSION_END whose seq was `end_seq`."""

    TYPE = MsgType.ACK_END
    end_seq: int


@dataclass(frozen=True, slots=True)
class QueryCaps:
    """QUERY_CAPS (addendum 1.1): a 1.1 head answers CAPS; a version-1 head says nothing."""

    TYPE = MsgType.QUERY_CAPS


@dataclass(frozen=True, slots=True, kw_only=True)
class StartGated:
    """START_GATED (addendum 1.1): a breath-gated session; answered ACK or NAK.

    The first four fields mean exactly what they mean in START.
    """

    TYPE = MsgType.START_GATED
    session_id: int
    target_ul: int
    max_duration_s: int
    output_pct: int
    #: Share of the expected inspiratory time the mesh runs, from detection (30..90).
    gate_pct: int
    #: Breaths sensed before the first pulse, to learn the pattern (0..10).
    lead_breaths: int
    #: Seconds without a detected inspiration before the head pauses (5..60).
    apnoea_s: int


# --- device → host -----------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Ident:
    """IDENT: answer to HELLO."""

    TYPE = MsgType.IDENT
    ack_seq: int
    serial: str
    fw_major: int
    fw_minor: int
    fw_patch: int
    hw_rev: int
    nominal_ul_min: int
    reservoir_capacity_ul: int

    @property
    def firmware(self) -> str:
        """Firmware version as `major.minor.patch`."""
        return f"{self.fw_major}.{self.fw_minor}.{self.fw_patch}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Ack:
    """ACK of the host frame whose seq was `ack_seq`."""

    TYPE = MsgType.ACK
    ack_seq: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Nak:
    """NAK of the host frame whose seq was `ack_seq`, with a reason."""

    TYPE = MsgType.NAK
    ack_seq: int
    reason: NakReason


@dataclass(frozen=True, slots=True, kw_only=True)
class Status:
    """STATUS, sent by the device every 100 ms in every state."""

    TYPE = MsgType.STATUS
    uptime_ms: int
    state: DeviceState
    session_id: int
    delivered_ul: int
    flow_ul_min: int
    reservoir_ul: int
    mesh_temp_cC: int  # noqa: N815 - the ICD's field name; the unit is hundredths of °C
    drive_ma: int
    faults: FaultBits
    crc_errors: int
    last_stop: StopReason
    confirm_count: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionEnd:
    """SESSION_END, repeated every 200 ms until ACK_END (at most 50 times)."""

    TYPE = MsgType.SESSION_END
    session_id: int
    delivered_ul: int
    duration_ms: int
    reason: StopReason


@dataclass(frozen=True, slots=True, kw_only=True)
class Caps:
    """CAPS (addendum 1.1): answer to QUERY_CAPS."""

    TYPE = MsgType.CAPS
    ack_seq: int
    icd_minor: int
    caps: CapBits
    #: Inspiratory flow (mL/s) above which the head detects an inspiration.
    trigger_ml_s: int
    #: Typical delay from the true start of an inspiration to its detection.
    detect_latency_ms: int

    @property
    def breath_gated(self) -> bool:
        """True if the head accepts START_GATED (bit 1)."""
        return CapBits.BREATH_GATED in self.caps

    @property
    def breath_sensing(self) -> bool:
        """True if the head sends BREATH reports (bit 0)."""
        return CapBits.BREATH_SENSING in self.caps


@dataclass(frozen=True, slots=True, kw_only=True)
class Breath:
    """BREATH (addendum 1.1): one completed breath; not acknowledged, not repeated."""

    TYPE = MsgType.BREATH
    #: The session running during the breath's inspiration, 0 if none.
    session_id: int
    #: +1 per detected breath since power-up, wraps 65535 → 0 (lost reports show as gaps).
    breath_no: int
    insp_ms: int
    exp_ms: int
    tidal_ml: int
    peak_flow_ml_s: int
    #: Volume nebulised during the inspiration, in tenths of a µL.
    aerosol_insp_dul: int
    #: Volume nebulised during the expiration, in tenths of a µL.
    aerosol_exp_dul: int


HostMessage = Hello | Heartbeat | Start | Stop | ClearFaults | AckEnd | QueryCaps | StartGated
DeviceMessage = Ident | Ack | Nak | Status | SessionEnd | Caps | Breath
Message = HostMessage | DeviceMessage


@dataclass(frozen=True, slots=True)
class Frame:
    """A decoded frame: the sender's sequence number and the message."""

    seq: int
    message: Message
