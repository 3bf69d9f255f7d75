"""The runtime's data and the pure checks it makes before a start.

`RunningSession` is what the host knows of its open session; `UncertainSession` is
a session whose delivery is unknown; `Conditions` are the facts about the
controller itself (clock, storage, ledger, telemetry). The two functions decide
whether a start may go ahead on the controller's side (the dose rules are
`controller.dosing.decide`).
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.mn1 import Ident, Status

from ._states import START_ALLOWED_STATES, SessionState
from ._stop_rules import host_stop_reason

__all__ = [
    "Conditions",
    "RunningSession",
    "UncertainSession",
    "cap_too_small",
    "controller_refusals",
]


@dataclass(slots=True, kw_only=True)
class RunningSession:
    """The host's view of its open session (one at a time)."""

    session_id: int
    subject_id: str
    cap_ul: int
    max_duration_s: int
    output_pct: int
    expected_flow_ul_min: int
    worst_flow_ul_min: int  # the head's maximum output (IDENT nominal at 100 %)
    start_sent_ms: int
    nebulising_since_ms: int | None = None
    delivered_ul: int = 0
    flow_ul_min: int = 0
    status_at_ms: int | None = None
    host_reason: str | None = None
    stop_sent_ms: int | None = None
    last_stop_tx_ms: int | None = None
    progress_recorded_ms: int | None = None
    started_recorded: bool = False
    administration_id: int | None = None  # the first run's id, on a continuation run


@dataclass(slots=True, kw_only=True)
class UncertainSession:
    """A session whose delivery is unknown: its full planned cap counts.

    It blocks new starts until the device's figures reconcile it or a person
    acknowledges it (safety rule 4).
    """

    session_id: int
    planned_cap_ul: int
    reason: str
    acknowledged_by: str | None = None


@dataclass(slots=True, kw_only=True)
class Conditions:
    """Facts about the controller itself that alarms and admission need."""

    clock_trusted: bool = True
    storage_low: bool = False
    storage_emergency: bool = False
    storage_free_mib: int = 0
    ledger_failures: int = 0
    telemetry_dropped_total: int = 0
    command_flood: bool = False
    command_unrecorded_total: int = 0


def cap_too_small(
    *,
    cap_ul: int,
    expected_flow_ul_min: int,
    max_duration_s: int,
    stop_latency_ms: int,
) -> str | None:
    """Why a session with this cap could not be stopped in time (None: it can).

    The predictive stop would fire before the first STATUS: the cap is below the
    volume the head delivers during the host's stop latency.
    """
    too_small = host_stop_reason(
        delivered_ul=0,
        flow_ul_min=expected_flow_ul_min,
        session_cap_ul=cap_ul,
        status_age_ms=0,
        elapsed_ms=0,
        max_duration_ms=max_duration_s * 1000,
        faults=0,
        stop_latency_ms=stop_latency_ms,
    )
    if too_small is None:
        return None
    return (
        f"a {cap_ul} µL cap is below what the host can stop in time at "
        f"{expected_flow_ul_min} µL/min ({too_small.value})"
    )


def controller_refusals(
    *,
    state: SessionState,
    link_ready: bool,
    last_status: Status | None,
    ident: Ident | None,
    expected_serial: str | None,
    conditions: Conditions,
    uncertain: list[UncertainSession],
    start_pending: bool,
) -> list[str]:
    """Reasons, outside the dose rules, why no session may start now (empty: none)."""
    reasons = []
    if start_pending:
        reasons.append("another start is in progress")
    if state not in START_ALLOWED_STATES:
        reasons.append(f"controller state is {state.value}; a start needs idle")
    if not link_ready:
        reasons.append("the nebuliser head is not connected (no IDENT/STATUS)")
    elif last_status is not None and last_status.faults:
        reasons.append(f"device fault bits set: {last_status.faults!r}")
    if expected_serial and ident is not None and ident.serial != expected_serial:
        reasons.append(f"head serial {ident.serial} is not the configured {expected_serial}")
    if conditions.storage_emergency:
        reasons.append(
            "storage below the emergency level (or the end-record reserve is used up): "
            "free disk space first"
        )
    if conditions.ledger_failures:
        reasons.append(f"{conditions.ledger_failures} ledger write(s) failed")
    reasons.extend(
        f"session {entry.session_id} could not be accounted ({entry.reason}); its "
        f"full cap of {entry.planned_cap_ul} µL counts. A person must acknowledge "
        "it first: `nebuliser alarm ack delivery_uncertain --by NAME` at the "
        "bedside, or a signed alarm.ack from the ward"
        for entry in uncertain
        if entry.acknowledged_by is None
    )
    return reasons
