"""Pre-filling a ledger with many sessions quickly (scale tests and bench/ledger_scale.py).

Sessions are written through the ledger's own API (so statuses, chain hashes and
indexes are what the service would write), one write transaction per batch with
`synchronous = OFF` while filling: durability does not matter for a fixture.
"""

from __future__ import annotations

from datetime import timedelta

from controller.dosing import Instant
from controller.ledger import AlarmAction, EndSource, Ledger

__all__ = ["fill_sessions"]

_NS_PER_S = 1_000_000_000


def fill_sessions(
    ledger: Ledger,
    *,
    count: int,
    subject_id: str,
    start: Instant,
    spacing_s: int = 86_400,
    cap_ul: int = 500,
) -> Instant:
    """Write `count` completed sessions, `spacing_s` apart from `start`, each with a
    decision and a raised alarm; returns the instant just after the last one."""
    connection = ledger._db.connection
    connection.execute("PRAGMA synchronous = OFF")
    at = start
    try:
        for _ in range(count):
            ledger.record_decision(subject_id=subject_id, allowed=True, trace={}, at=at)
            session_id = ledger.record_intent(
                subject_id=subject_id,
                planned_cap_ul=cap_ul,
                device_target_ul=cap_ul,
                device_max_duration_s=600,
                output_pct=80,
                decision_trace={"allowed": True, "constraints": []},
                at=at,
                drug="salbutamol",
                concentration_per_ml=1.0,
                dose_unit="mg",
            )
            ledger.record_started(session_id, at=at)
            ledger.record_ended(
                session_id,
                delivered_ul=cap_ul - 10,
                duration_ms=300_000,
                reason="cap_predicted",
                source=EndSource.HOST,
                at=at,
            )
            ledger.record_alarm(
                alarm_code="dry_cup", action=AlarmAction.RAISED, actor="controller", at=at
            )
            at = Instant(
                utc=at.utc + timedelta(seconds=spacing_s),
                boot_id=at.boot_id,
                monotonic_ns=at.monotonic_ns + spacing_s * _NS_PER_S,
            )
    finally:
        connection.execute("PRAGMA synchronous = FULL")
    return at
