"""A breathing patient and the head's inspiratory flow sensor (addendum 1.1), sans-IO.

The patient breathes in cycles (inspiration `insp_ms`, expiration `exp_ms`, tidal
volume `tidal_ml`) with a sinusoidal or square inspiratory flow. The head's sensor
sees an inspiration start when the flow rises above the advertised trigger flow,
`detect_latency_ms` later (so `trigger_ms + latency` after the true start), and
sees expiration begin when the flow falls back below the trigger, with the same
latency. Everything the head reports (BREATH `insp_ms`, `exp_ms`, the aerosol
split by phase) is in these *perceived* phases; the truth (aerosol released while
the patient really breathed in, or with the mask off) is kept beside it.

Every boundary is an integer millisecond and a timer: the device model never
integrates across one, so the split of each microlitre between phases is exact.

Faults on demand: apnoea for N s (no breath starts), mask off (the patient
breathes, the sensor sees nothing, all aerosol goes into the room), sensor stuck
(the sensor sees nothing, the patient breathes through the mask), pattern change
(from the next breath).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "PATTERNS",
    "PATTERN_NAMES",
    "BreathCycle",
    "BreathReport",
    "BreathingModel",
    "BreathingPattern",
    "Gate",
]

_SIGH_EVERY: Final = 12  # an irregular breather sighs about once every 12 breaths
_SIGH_TIDAL_FACTOR: Final = 2.0


@dataclass(frozen=True, slots=True, kw_only=True)
class BreathingPattern:
    """A named breathing pattern."""

    name: str
    rate_bpm: float
    tidal_ml: float
    #: Inspiratory time over the whole cycle (I:E 1:2 → 1/3).
    insp_fraction: float
    #: Square inspiratory flow (a ventilator); otherwise a half sine.
    square: bool = False
    #: Seeded random rate and depth from breath to breath, and sighs.
    irregular: bool = False


#: The patterns `--breathing` accepts.
PATTERNS: Final[dict[str, BreathingPattern]] = {
    p.name: p
    for p in (
        # ISO 27427 nebuliser test pattern: adult, 500 mL, 15/min, I:E 1:1, sinusoidal.
        BreathingPattern(name="iso27427", rate_bpm=15, tidal_ml=500, insp_fraction=1 / 2),
        BreathingPattern(name="adult", rate_bpm=15, tidal_ml=500, insp_fraction=1 / 3),
        # The pilot's patients: respiratory distress, RR >= 30.
        BreathingPattern(name="severe", rate_bpm=32, tidal_ml=350, insp_fraction=1 / 2.5),
        BreathingPattern(name="slow-deep", rate_bpm=6, tidal_ml=1200, insp_fraction=1 / 3),
        BreathingPattern(
            name="ventilated", rate_bpm=20, tidal_ml=500, insp_fraction=1 / 3, square=True
        ),
        BreathingPattern(
            name="irregular", rate_bpm=16, tidal_ml=500, insp_fraction=1 / 3, irregular=True
        ),
    )
}
PATTERN_NAMES: Final = tuple(PATTERNS)


@dataclass(frozen=True, slots=True, kw_only=True)
class BreathCycle:
    """One true breath: inspiration from `start_ms`, then expiration."""

    start_ms: int
    insp_ms: int
    exp_ms: int
    tidal_ml: float
    square: bool

    @property
    def end_ms(self) -> int:
        """When the next inspiration may start."""
        return self.start_ms + self.insp_ms + self.exp_ms

    @property
    def peak_flow_ml_s(self) -> float:
        """Peak inspiratory flow (half sine: π·V/(2·Ti); square: V/Ti)."""
        insp_s = self.insp_ms / 1000
        if self.square:
            return self.tidal_ml / insp_s
        return math.pi * self.tidal_ml / (2 * insp_s)

    def above_trigger_ms(self, trigger_ml_s: int) -> int | None:
        """Time after the start at which the flow first exceeds `trigger_ml_s` (None: never)."""
        peak = self.peak_flow_ml_s
        if peak <= trigger_ml_s:
            return None
        if self.square:
            return 0
        return math.ceil(self.insp_ms / math.pi * math.asin(trigger_ml_s / peak))


@dataclass(frozen=True, slots=True, kw_only=True)
class BreathReport:
    """What the head reports in BREATH for one completed (detected) breath."""

    breath_no: int
    session_id: int
    insp_ms: int
    exp_ms: int
    tidal_ml: int
    peak_flow_ml_s: int
    aerosol_insp_ul: float
    aerosol_exp_ul: float


@dataclass(slots=True, kw_only=True)
class _Detected:
    breath_no: int
    detect_ms: int
    exp_detect_ms: int | None
    cycle: BreathCycle
    session_id: int = 0
    aerosol_insp_ul: float = 0.0
    aerosol_exp_ul: float = 0.0


@dataclass(slots=True, kw_only=True)
class _Truth:
    insp_ul: float = 0.0
    exp_ul: float = 0.0
    mask_off_ul: float = 0.0


@dataclass(slots=True)
class _Events:
    """Boundaries of the current cycle still to come, as (time, kind), sorted."""

    items: list[tuple[int, str]] = field(default_factory=list)


class BreathingModel:
    """The patient's breathing and the head's view of it, in the caller's time."""

    def __init__(
        self,
        *,
        pattern: str = "iso27427",
        trigger_ml_s: int = 50,
        detect_latency_ms: int = 40,
        seed: int = 0,
        start_ms: int = 0,
    ) -> None:
        if pattern not in PATTERNS:
            raise ValueError(
                f"unknown breathing pattern {pattern!r}; use one of {', '.join(PATTERN_NAMES)}"
            )
        if not 1 <= trigger_ml_s <= 0xFFFF:
            raise ValueError(f"trigger_ml_s must be 1..65535 mL/s, got {trigger_ml_s}")
        if not 0 <= detect_latency_ms <= 1000:
            raise ValueError(f"detect_latency_ms must be 0..1000 ms, got {detect_latency_ms}")
        self.pattern = PATTERNS[pattern]
        self.trigger_ml_s = trigger_ml_s
        self.detect_latency_ms = detect_latency_ms
        # Seeded variability for a reproducible simulation, not for security.
        self._rng = random.Random(seed + 3)  # noqa: S311
        self._breaths_drawn = 0
        self._apnoea_until_ms = start_ms
        self.mask_off = False
        self.sensor_stuck = False
        self._cycle = self._draw_cycle(start_ms)
        self._events = self._schedule(self._cycle)
        self.true_inspiring = False
        self._detected: _Detected | None = None  # the breath being measured
        self._inspiring_seen = False  # perceived phase: inspiration
        self._breath_no = 0
        self._recent_insp_ms: list[int] = []
        self.last_detect_ms: int | None = None
        #: Inspirations detected since the model was created (never wraps).
        self.detections = 0
        self.truth = _Truth()

    # --- faults and changes ---------------------------------------------------------

    def set_pattern(self, name: str) -> None:
        """Breathe with pattern `name` from the next breath on."""
        if name not in PATTERNS:
            raise ValueError(
                f"unknown breathing pattern {name!r}; use one of {', '.join(PATTERN_NAMES)}"
            )
        self.pattern = PATTERNS[name]

    def apnoea(self, duration_ms: int, *, now_ms: int) -> None:
        """No breath starts for `duration_ms` from now (the breath in progress finishes)."""
        if not 0 <= duration_ms <= 3_600_000:
            raise ValueError(f"apnoea must last 0..3600 s, got {duration_ms / 1000} s")
        self._apnoea_until_ms = now_ms + duration_ms
        if self._cycle.start_ms > now_ms:  # the next breath is not due yet: push it back
            self._cycle = self._draw_cycle(max(self._cycle.start_ms, self._apnoea_until_ms))
            self._events = self._schedule(self._cycle)

    def reset_sensor(self) -> None:
        """Power-up: the head forgets its breaths (numbering restarts at 0)."""
        self._detected = None
        self._inspiring_seen = False
        self._breath_no = 0
        self._recent_insp_ms = []
        self.last_detect_ms = None

    # --- what the head sees -----------------------------------------------------------

    @property
    def inspiration_seen(self) -> bool:
        """True between a detected inspiration and the detected start of expiration."""
        return self._inspiring_seen

    @property
    def sensing(self) -> bool:
        """False while the mask is off or the sensor is stuck: no breath can be detected."""
        return not (self.mask_off or self.sensor_stuck)

    def expected_insp_ms(self) -> int | None:
        """Mean of the last 3 perceived inspirations (addendum 1.1 §2), None before any."""
        if not self._recent_insp_ms:
            return None
        return round(sum(self._recent_insp_ms) / len(self._recent_insp_ms))

    def next_event_ms(self) -> int:
        """The next boundary (true or perceived phase change)."""
        return self._events.items[0][0] if self._events.items else self._cycle.end_ms

    def add_aerosol(self, volume_ul: float, *, session_id: int) -> None:
        """Book `volume_ul` nebulised now into the perceived and the true phase."""
        if volume_ul <= 0:
            return
        detected = self._detected
        if detected is not None:
            if self._inspiring_seen:
                detected.aerosol_insp_ul += volume_ul
                if detected.session_id == 0:
                    detected.session_id = session_id  # the session began mid-inspiration
            else:
                detected.aerosol_exp_ul += volume_ul
        if self.mask_off:
            self.truth.mask_off_ul += volume_ul  # straight into the room
        elif self.true_inspiring:
            self.truth.insp_ul += volume_ul
        else:
            self.truth.exp_ul += volume_ul

    def fire(self, now_ms: int, *, session_id: int) -> list[BreathReport]:
        """Process the boundaries due at `now_ms`; return the breaths completed by them."""
        reports: list[BreathReport] = []
        while True:
            while self._events.items and self._events.items[0][0] <= now_ms:
                at_ms, kind = self._events.items.pop(0)
                if kind == "true_insp":
                    self.true_inspiring = True
                elif kind == "true_exp":
                    self.true_inspiring = False
                elif kind == "detect_insp" and self.sensing:
                    report = self._detect_inspiration(at_ms, session_id=session_id)
                    if report is not None:
                        reports.append(report)
                elif kind == "detect_exp" and self._inspiring_seen:
                    self._detect_expiration(at_ms)
            if self._cycle.end_ms > now_ms:
                return reports
            self._cycle = self._draw_cycle(max(self._cycle.end_ms, self._apnoea_until_ms))
            self._events = self._schedule(self._cycle)

    # --- internals ----------------------------------------------------------------------

    def _draw_cycle(self, start_ms: int) -> BreathCycle:
        pattern = self.pattern
        rate, tidal = pattern.rate_bpm, pattern.tidal_ml
        insp_fraction = pattern.insp_fraction
        if pattern.irregular:
            rate = min(30.0, max(8.0, self._rng.gauss(rate, 3.0)))
            tidal = min(900.0, max(250.0, self._rng.gauss(tidal, 80.0)))
            insp_fraction = min(0.5, max(0.25, self._rng.gauss(insp_fraction, 0.04)))
            if self._breaths_drawn % _SIGH_EVERY == _SIGH_EVERY - 1:
                tidal *= _SIGH_TIDAL_FACTOR
                rate *= 0.6
        self._breaths_drawn += 1
        cycle_ms = round(60_000 / rate)
        insp_ms = round(cycle_ms * insp_fraction)
        return BreathCycle(
            start_ms=start_ms,
            insp_ms=insp_ms,
            exp_ms=cycle_ms - insp_ms,
            tidal_ml=tidal,
            square=pattern.square,
        )

    def _schedule(self, cycle: BreathCycle) -> _Events:
        events = [(cycle.start_ms, "true_insp"), (cycle.start_ms + cycle.insp_ms, "true_exp")]
        above = cycle.above_trigger_ms(self.trigger_ml_s)
        if above is not None:
            latency = self.detect_latency_ms
            events.append((cycle.start_ms + above + latency, "detect_insp"))
            below = cycle.insp_ms - above  # the flow falls under the trigger again
            events.append((cycle.start_ms + max(below, above + 1) + latency, "detect_exp"))
        events.sort()
        return _Events(events)

    def _detect_inspiration(self, at_ms: int, *, session_id: int) -> BreathReport | None:
        previous = self._detected
        report = None
        if previous is not None:
            insp_end = previous.exp_detect_ms if previous.exp_detect_ms is not None else at_ms
            cycle = previous.cycle
            report = BreathReport(
                breath_no=previous.breath_no,
                session_id=previous.session_id,
                insp_ms=min(0xFFFF, insp_end - previous.detect_ms),
                exp_ms=min(0xFFFF, at_ms - insp_end),
                tidal_ml=min(0xFFFF, round(cycle.tidal_ml)),
                peak_flow_ml_s=min(0xFFFF, round(cycle.peak_flow_ml_s)),
                aerosol_insp_ul=previous.aerosol_insp_ul,
                aerosol_exp_ul=previous.aerosol_exp_ul,
            )
        self._detected = _Detected(
            breath_no=self._breath_no,
            detect_ms=at_ms,
            exp_detect_ms=None,
            cycle=self._cycle,
            session_id=session_id,
        )
        self._breath_no = (self._breath_no + 1) & 0xFFFF
        self._inspiring_seen = True
        self.last_detect_ms = at_ms
        self.detections += 1
        return report

    def _detect_expiration(self, at_ms: int) -> None:
        detected = self._detected
        assert detected is not None
        detected.exp_detect_ms = at_ms
        self._inspiring_seen = False
        self._recent_insp_ms = [*self._recent_insp_ms, at_ms - detected.detect_ms][-3:]


#: "Until expiration begins": a gate with no expected inspiratory time yet.
_UNTIL_EXPIRATION_MS: Final = 1 << 62


@dataclass(slots=True, kw_only=True)
class Gate:
    """The head's gating of one START_GATED session (addendum 1.1 §2)."""

    gate_pct: int
    lead_breaths: int
    apnoea_ms: int
    started_ms: int
    #: Inspirations detected since the session started.
    breaths_seen: int = 0
    #: The mesh runs until then; None while the gate is shut.
    gate_off_ms: int | None = None
    #: Truth: time spent WAITING (ms).
    waiting_ms: float = 0.0

    def in_lead(self) -> bool:
        """Still sensing the lead breaths (the lead-th breath is sensed until the next)."""
        return self.lead_breaths > 0 and self.breaths_seen <= self.lead_breaths

    def _last_breath_ms(self, breathing: BreathingModel) -> int:
        last = breathing.last_detect_ms
        return self.started_ms if last is None else max(self.started_ms, last)

    def apnoea_at_ms(self, breathing: BreathingModel) -> int:
        """When the head pauses for apnoea unless an inspiration is detected first."""
        return self._last_breath_ms(breathing) + self.apnoea_ms

    def no_breathing_at_ms(self, breathing: BreathingModel) -> int:
        """When the session ends NO_BREATHING: WAITING for apnoea during 3 × apnoea_s."""
        return self.apnoea_at_ms(breathing) + 3 * self.apnoea_ms

    def waiting(self, now_ms: int, breathing: BreathingModel) -> bool:
        """STATUS state WAITING: lead breaths, or apnoea."""
        return self.in_lead() or now_ms >= self.apnoea_at_ms(breathing)

    def mesh_on(self, at_ms: int) -> bool:
        """True if the mesh runs at `at_ms` (a step never straddles `gate_off_ms`)."""
        return self.gate_off_ms is not None and at_ms < self.gate_off_ms

    def follow(self, breathing: BreathingModel, *, detections_before: int, now_ms: int) -> None:
        """Open the gate at a detected inspiration, shut it when expiration is seen."""
        new = breathing.detections - detections_before
        if new > 0:
            self.breaths_seen += new
            if breathing.inspiration_seen and not self.in_lead():
                expected = breathing.expected_insp_ms()
                window = (
                    _UNTIL_EXPIRATION_MS if expected is None else expected * self.gate_pct // 100
                )
                assert breathing.last_detect_ms is not None
                self.gate_off_ms = breathing.last_detect_ms + window
        if not breathing.inspiration_seen:
            self.gate_off_ms = None  # expiration began: whichever comes first

    def deadlines(self, now_ms: int, breathing: BreathingModel) -> list[int]:
        """Future times at which the gate or the state changes by itself."""
        times = [self.apnoea_at_ms(breathing), self.no_breathing_at_ms(breathing)]
        if self.gate_off_ms is not None:
            times.append(self.gate_off_ms)
        return [t for t in times if t > now_ms]
