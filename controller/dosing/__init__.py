"""Dose rules as pure functions: prescriptions, hard ceilings, the time model, `decide()`."""

from controller.dosing._types import (
    ConstraintCode,
    ConstraintResult,
    Decision,
    DoseRequest,
    Instant,
    Override,
    SessionRecord,
    SessionStatus,
    StorageStatus,
    TrustedTime,
    elapsed_s,
)

__all__ = [
    "ConstraintCode",
    "ConstraintResult",
    "Decision",
    "DoseRequest",
    "Instant",
    "Override",
    "SessionRecord",
    "SessionStatus",
    "StorageStatus",
    "TrustedTime",
    "elapsed_s",
]
