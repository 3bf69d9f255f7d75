"""The alarm evaluator's inputs: the facts snapshot (`AlarmInputs`) and the thresholds.

`AlarmInputs` is everything the alarm table looks at, filled by the session
runtime at every input; `SessionProgress` the treatment facts of the open (or just
finished) session; `AlarmSettings` the thresholds of the timed and computed rows,
with the reasoning behind each default.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._breathing import BreathingFacts

__all__ = [
    "DEFAULT_ALARM_SETTINGS",
    "AlarmInputs",
    "AlarmSettings",
    "SessionProgress",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class AlarmSettings:
    """Thresholds of the timed and computed alarm conditions.

    Defaults: output low below 70 % of expected flow for 10 s (the device itself
    faults MESH_CLOGGED at 50 % for 3 s); dose reached early when the session hit
    its target in under 50 % of its expected duration; late when the target is not
    reached 60 s after the expected duration; STOP ignored when the device still
    reports NEBULISING 500 ms after the host's STOP (the ICD promises aerosol off
    within 10 ms and the next STATUS within 110 ms; 500 ms also covers the host's
    5 retransmissions at 50 ms); over-delivery when the session exceeds its cap by
    more than 3 µL (the host stop rule keeps delivery at or below the cap; the
    device's own cap may overshoot by 1 µL plus 10 ms of flow, 1.13 µL at twice the
    nominal 400 µL/min, and STATUS reports whole µL: 2.13 µL, rounded up to 3).
    """

    output_low_pct: int = 70
    output_low_for_ms: int = 10_000
    dose_early_pct: int = 50
    dose_late_margin_ms: int = 60_000
    stop_ignored_after_ms: int = 500
    overshoot_budget_ul: int = 3
    # Telemetry drops belong to one outage while the drop counter keeps growing
    # within this time (the outbox drops a sample for each new one once full; the
    # service reads the counter every 5 s). One alarm per outage, not one per read.
    telemetry_drop_quiet_ms: int = 60_000

    def __post_init__(self) -> None:
        for name, low, high in (
            ("output_low_pct", 1, 99),
            ("output_low_for_ms", 0, 600_000),
            ("dose_early_pct", 1, 99),
            ("dose_late_margin_ms", 0, 3_600_000),
            ("stop_ignored_after_ms", 1, 60_000),
            ("overshoot_budget_ul", 0, 1_000),
            ("telemetry_drop_quiet_ms", 1, 3_600_000),
        ):
            value = getattr(self, name)
            if not low <= value <= high:
                raise ValueError(f"alarm setting {name}={value} is outside {low}..{high}")


DEFAULT_ALARM_SETTINGS = AlarmSettings()


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionProgress:
    """Facts about the open (or just finished) session, for the treatment alarms.

    `target_reached` is true once the device or the host ended the session because
    the target was reached. The runtime keeps supplying the finished session's
    progress until it has recorded the end, then passes `None`.
    """

    session_id: int
    delivered_ul: int
    session_cap_ul: int
    elapsed_ms: int
    expected_duration_ms: int
    target_reached: bool
    #: When the dose counts as late (None: `expected_duration_ms` + the margin). A
    #: breath-gated run is late only at its maximum duration.
    late_after_ms: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AlarmInputs:
    """A snapshot of every fact the alarm rules look at. Every field must be filled.

    * `device_faults` — STATUS `faults` (last known; unknown bits are alarmed too).
    * `link_lost` — no valid STATUS for 300 ms (ICD §6); `session_open` — the host
      has an open session (intent written, end not yet recorded).
    * `flow_ul_min` / `expected_flow_ul_min` — measured and expected flow while
      nebulising; `expected_flow_ul_min=None` when not nebulising (timer resets).
    * `device_nebulising` — the last STATUS says NEBULISING; `stop_sent_at_ms` —
      monotonic time the first STOP of the current stop attempt was sent, or None.
    * `session_stopped_by_watchdog` — the last session ended with reason WATCHDOG
      and the end is not yet recorded/acknowledged by the runtime.
    * `uncertain_session_id` — a session whose delivery is unknown, or None.
    * `breathing` — the open (or just finished) run on a breath-aware head (ICD 1.1),
      or None (a version-1 head, or no run): the breath rows then cannot hold.
      Defaults to None so that adding the breath rows changed no caller.
    * `swapped_to_serial` — the new head's serial if the head changed mid-session.
    * `device_rebooted_mid_session` — STATUS uptime dropped during a session.
    * `telemetry_dropped_total` — messages the outbox has dropped, ever (monotonic).
    * `stop_unconfirmed_session_id` — the controller is shutting down and the head
      did not confirm STOP for this session.
    * `ledger_discontinuity` — the ledger does not continue its anchors (controller.
      ledger.check_continuity refused it); `storage_emergency` — free space is below the
      emergency level or the end-record reserve is gone (controller.ledger.
      classify_storage returned EMERGENCY). Both default to False for callers that
      predate them.
    * `command_flood` — the command intake has refused or dropped messages without
      an individual record for a while (`IntakeGate.flood_active`);
      `command_unrecorded_total` — how many, ever.
    """

    device_faults: int
    link_lost: bool
    session_open: bool
    flow_ul_min: int | None
    expected_flow_ul_min: int | None
    session: SessionProgress | None
    device_nebulising: bool
    stop_sent_at_ms: int | None
    session_stopped_by_watchdog: bool
    uncertain_session_id: int | None
    breathing: BreathingFacts | None = None
    clock_trusted: bool
    storage_low: bool
    storage_free_mib: int
    ledger_ok: bool
    swapped_to_serial: str | None
    device_rebooted_mid_session: bool
    telemetry_dropped_total: int
    stop_unconfirmed_session_id: int | None = None
    ledger_discontinuity: bool = False
    storage_emergency: bool = False
    command_flood: bool = False
    command_unrecorded_total: int = 0
