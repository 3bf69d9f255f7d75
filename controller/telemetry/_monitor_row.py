"""One bed's row of the ward model (`WardModel`), what every view draws from.

Kept apart from the model's message handling: the row is what views read (the
terminal monitor's table, the station's tiles); `apply_*` are the small pure
updates from one message each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from controller.telemetry._schemas import (
    ActiveAlarm,
    BreathingMessage,
    LedgerAnchorMessage,
    StateMessage,
)

__all__ = [
    "BREATHING_MAX_AGE_S",
    "PRIORITY_RANK",
    "BedRow",
    "Breathing",
    "apply_breathing",
    "apply_state",
    "breathing_text",
    "dose_text",
    "urgency_key",
]

PRIORITY_RANK = {"high": 0, "medium": 1, "low": 2}
UL_PER_ML = 1000
#: A breathing report is published every 10 s: older than three periods, the head
#: has stopped reporting (swapped for a version-1.0 head, or the link is down).
BREATHING_MAX_AGE_S = 30.0


@dataclass(frozen=True, kw_only=True)
class Breathing:
    """What the ward shows of a bed's breathing (from `nebuliser.breathing`)."""

    gated: bool
    waiting: bool
    rate_bpm: float | None
    insp_share_pct: float | None
    seconds_since_breath: int | None
    utc: datetime


@dataclass(kw_only=True)
class BedRow:
    """What the table shows for one bed."""

    ward: str
    bed: str
    device_id: str | None = None
    online: bool | None = None
    session_state: str | None = None
    prescription_label: str | None = None
    running: bool = False
    delivered_ul: int | None = None
    cap_ul: int | None = None
    flow_ul_min: int | None = None
    reservoir_ul: int | None = None
    link_quality_pct: int | None = None
    faults: list[str] = field(default_factory=list)
    alarms: list[ActiveAlarm] = field(default_factory=list)
    telemetry_hz: int = 1
    last_seen_s: float | None = None
    stale: bool = False
    gaps: int = 0
    duplicates: int = 0
    unrecoverable: int = 0
    applied_seq: dict[str, int] = field(default_factory=dict)
    session_id: int | None = None
    #: Monotonic time the bed's presence went offline (None while online).
    offline_since_s: float | None = None
    #: The device's UTC stamp of the newest live message (display lag = now - this).
    data_utc: datetime | None = None
    #: `WardModel.version` when this row last changed (views redraw only moved rows).
    version: int = 0
    #: The newest dose-ledger anchor the bed published (retained `ledger/anchor`): how
    #: far its ledger had reached, kept for `nebuliser ledger restore` (docs/ledger.md).
    ledger_anchor: LedgerAnchorMessage | None = None
    #: None until the prescription summary says; True: no drug-unit figure exists.
    blinded: bool | None = None
    #: The lot's unit and concentration (open prescriptions only; see `delivered_dose`).
    dose_unit: str | None = None
    concentration_per_ml: float | None = None
    #: The newest `nebuliser.breathing` (ICD 1.1 heads only) and when it arrived.
    breathing: Breathing | None = None
    breathing_seen_s: float | None = None

    @property
    def no_data(self) -> bool:
        """Offline or stale: the figures on the row are not current."""
        return self.online is False or self.stale

    def in_units(self, volume_ul: int | None) -> str | None:
        """A volume of this bed's lot in the lot's units, as text (None: blinded,
        or the prescription summary carried no unit)."""
        if (
            self.blinded
            or volume_ul is None
            or self.concentration_per_ml is None
            or self.dose_unit is None
        ):
            return None
        return dose_text(volume_ul * self.concentration_per_ml / UL_PER_ML, self.dose_unit)

    def breathing_now(self, *, now_s: float) -> Breathing | None:
        """The bed's breathing if there is some to show: None for a version-1.0 head
        (it never reports any), after `BREATHING_MAX_AGE_S` without a report, or while
        nothing has been measured (a continuous session before its first breath)."""
        if self.breathing is None or self.breathing_seen_s is None:
            return None
        if now_s - self.breathing_seen_s > BREATHING_MAX_AGE_S:
            return None
        if self.breathing.rate_bpm is None and not self.breathing.waiting:
            return None
        return self.breathing

    @property
    def time_left_s(self) -> float | None:
        """Seconds to reach the cap at the current flow (None if not running)."""
        if (
            not self.running
            or self.delivered_ul is None
            or self.cap_ul is None
            or not self.flow_ul_min
        ):
            return None
        return max(0, self.cap_ul - self.delivered_ul) * 60.0 / self.flow_ul_min


def urgency_key(row: BedRow) -> tuple[int, str, str]:
    """Sort key of a bed: most urgent first, then ward and bed.

    Unacknowledged HIGH, then unacknowledged MEDIUM, then beds with no data
    (offline or stale: nobody knows what they are doing), then unacknowledged LOW,
    then beds whose alarms are all acknowledged, then quiet beds.
    """
    unacked = [PRIORITY_RANK[a.priority] for a in row.alarms if not a.acknowledged]
    top = min(unacked, default=None)
    if top is not None and top < PRIORITY_RANK["low"]:
        rank = top
    elif row.no_data:
        rank = 2
    elif top is not None:
        rank = 3
    elif row.alarms:
        rank = 4
    else:
        rank = 5
    return rank, row.ward, row.bed


_UNIT_LABEL = {"vesicles": "vesicles", "mg": "mg", "ug": "µg"}
_SUPERSCRIPT = str.maketrans("0123456789-", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻")


def dose_text(value: float, unit: str) -> str:
    """A drug amount for people: `1.33×10⁸ vesicles`, `0.50 mg`, `250 µg`."""
    label = _UNIT_LABEL.get(unit, unit)
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-2):
        mantissa, exponent = f"{value:.2e}".split("e")
        return f"{mantissa}×10{str(int(exponent)).translate(_SUPERSCRIPT)} {label}"
    return f"{value:.3g} {label}" if value >= 100 else f"{value:.2f} {label}"


def breathing_text(breathing: Breathing) -> str:
    """One line: `WAITING — no breath 12 s` or `15/min · insp 97 %`."""
    if breathing.waiting:
        since = breathing.seconds_since_breath
        return "WAITING — no breath" + ("" if since is None else f" {since} s")
    rate = "–" if breathing.rate_bpm is None else f"{breathing.rate_bpm:.0f}/min"
    share = breathing.insp_share_pct
    return rate if share is None else f"{rate} · insp {share:.0f} %"


def apply_state(row: BedRow, message: StateMessage) -> None:
    """The retained `state`: session state and what may be shown of the prescription."""
    row.session_state = message.session_state
    row.session_id = message.session_id
    row.telemetry_hz = message.telemetry_hz
    rx = message.prescription
    row.prescription_label = rx.label if rx else None
    row.blinded = rx.blinded if rx else None
    # Only an open prescription's summary carries these (the schema refuses them
    # for a blinded one); a change to a blinded prescription clears them.
    row.dose_unit = rx.dose_unit if rx else None
    row.concentration_per_ml = rx.concentration_per_ml if rx else None


def apply_breathing(row: BedRow, message: BreathingMessage, *, now_s: float) -> None:
    """The newest live `breathing` report."""
    row.breathing = Breathing(
        gated=message.gated,
        waiting=message.waiting,
        rate_bpm=message.rate_bpm,
        insp_share_pct=message.insp_share_pct,
        seconds_since_breath=message.seconds_since_breath,
        utc=message.utc,
    )
    row.breathing_seen_s = now_s
