"""Builders shared by the dosing tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from controller.dosing import (
    BedsideScan,
    DoseRequest,
    Instant,
    Override,
    Prescription,
    SessionRecord,
    SessionStatus,
    StorageStatus,
    TrustedTime,
)

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
BOOT = "boot-a"
NS = 1_000_000_000
SUBJECT = "S-001"


def at(seconds: float, *, boot: str = BOOT, wall_offset_s: float = 0.0) -> Instant:
    """An instant `seconds` after T0 on a boot whose monotonic clock was 0 at T0."""
    return Instant(
        utc=T0 + timedelta(seconds=seconds + wall_offset_s),
        boot_id=boot,
        monotonic_ns=round(seconds * NS),
    )


def limit(name: str, value: object) -> dict[str, Any]:
    """One limit as keyword arguments of `make_prescription` (typed for mypy)."""
    return {name: value}


def trusted(instant: Instant) -> TrustedTime:
    return TrustedTime(instant=instant, trusted=True, reason="test")


def make_prescription(
    *,
    amount: float = 2.0e8,
    per_volume_ml: float = 3.0,
    unit: str = "vesicles",
    blinded: bool = False,
    timezone: str = "UTC",
    delivery: dict[str, Any] | None = None,
    **limits: Any,
) -> Prescription:
    """A prescription with only the given limits (validated like a config file)."""
    return Prescription.model_validate(
        {
            "subject_id": SUBJECT,
            "protocol_id": "P-1",
            "drug": "test drug",
            "timezone": timezone,
            "lot": {
                "lot_id": "LOT-1",
                "amount": amount,
                "unit": unit,
                "per_volume_ml": per_volume_ml,
            },
            "arm": {"arm_id": "arm-high", "cohort": "cohort-16e8", "blinded": blinded},
            "limits": limits,
            **({} if delivery is None else {"delivery": delivery}),
        }
    )


def session(
    session_id: int,
    started: Instant,
    *,
    delivered_ul: int | None = None,
    planned_cap_ul: int = 3000,
    status: SessionStatus = SessionStatus.COMPLETED,
    subject_id: str = SUBJECT,
) -> SessionRecord:
    if status is SessionStatus.COMPLETED and delivered_ul is None:
        delivered_ul = planned_cap_ul
    return SessionRecord(
        session_id=session_id,
        subject_id=subject_id,
        started=started,
        planned_cap_ul=planned_cap_ul,
        delivered_ul=delivered_ul,
        status=status,
    )


def request(
    *,
    requested_ul: int | None = None,
    output_pct: int | None = None,
    override: Override | None = None,
    storage_ok: bool = True,
    subject_id: str = SUBJECT,
    accept_reduced_ul: int | None = None,
    scan: BedsideScan | None = None,
) -> DoseRequest:
    return DoseRequest(
        subject_id=subject_id,
        storage=StorageStatus(ok=storage_ok, reason="" if storage_ok else "12 MB free < 64 MB"),
        requested_ul=requested_ul,
        requested_output_pct=output_pct,
        override=override,
        accept_reduced_ul=accept_reduced_ul,
        scan=BedsideScan() if scan is None else scan,
    )
