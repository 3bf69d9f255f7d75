"""Shared value types of the dose engine: time stamps, ledger history, requests, decisions.

These names are a contract with `controller.ledger` (which builds `SessionRecord`
from its rows) and `controller.session` (which builds `DoseRequest` and reads
`Decision`). Keep them stable.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

__all__ = [
    "ARM_NEUTRAL_UNITS",
    "BedsideScan",
    "ConstraintCode",
    "ConstraintResult",
    "Decision",
    "DoseRequest",
    "Instant",
    "Override",
    "ReducedDoseOffer",
    "SessionRecord",
    "SessionStatus",
    "StorageStatus",
    "TrustedTime",
    "elapsed_s",
]

_NS_PER_S = 1_000_000_000

#: Constraint units whose figures may leave a blinded bed (issue 20): "" (no figure),
#: volumes, times and counts are the same on every arm; a drug unit is not.
ARM_NEUTRAL_UNITS: Final = frozenset({"", "µL", "s", "sessions"})


@dataclass(frozen=True, slots=True, kw_only=True)
class Instant:
    """A moment as the controller saw it: wall clock (UTC) plus the boot's monotonic clock.

    `boot_id` identifies one boot of the machine (Linux: /proc/sys/kernel/random/boot_id);
    `monotonic_ns` is `time.monotonic_ns()` in that boot. Two instants of the same boot
    are compared by their monotonic values, which do not move when the wall clock steps.
    """

    utc: datetime
    boot_id: str
    monotonic_ns: int

    def __post_init__(self) -> None:
        if self.utc.tzinfo is None or self.utc.utcoffset() != timedelta(0):
            raise ValueError(
                f"Instant.utc must be an aware UTC datetime, got {self.utc!r}; "
                "use datetime.now(UTC) or .astimezone(UTC)"
            )
        if not self.boot_id:
            raise ValueError("Instant.boot_id must be a non-empty boot identifier")

    @classmethod
    def from_parts(cls, *, utc: datetime, boot_id: str, monotonic_ns: int) -> Instant:
        """Build an instant, converting any aware datetime to UTC first."""
        return cls(utc=utc.astimezone(UTC), boot_id=boot_id, monotonic_ns=monotonic_ns)


def elapsed_s(earlier: Instant, now: Instant) -> float:
    """Seconds from `earlier` to `now`, never negative.

    Same boot: the monotonic difference (immune to wall-clock steps). Different boots:
    the UTC difference. A record stamped after `now` (clock stepped back, or a future
    stamp) counts as happening now (0 s), so rolling windows and intervals never shrink.
    """
    if earlier.boot_id == now.boot_id:
        delta_s = (now.monotonic_ns - earlier.monotonic_ns) / _NS_PER_S
    else:
        delta_s = (now.utc - earlier.utc).total_seconds()
    return max(0.0, delta_s)


@dataclass(frozen=True, slots=True, kw_only=True)
class TrustedTime:
    """The present moment plus whether the controller trusts its wall clock.

    Built by `controller.clock` (NTP sync and step detection). When `trusted` is false,
    `decide()` refuses every new start with `reason`.
    """

    instant: Instant
    trusted: bool
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class StorageStatus:
    """Whether the ledger's storage is above its floor (supplied by `controller.ledger`)."""

    ok: bool
    reason: str = ""


class SessionStatus(enum.StrEnum):
    """Life cycle of one dosing session as recorded in the ledger."""

    OPEN = "open"
    """Intent written (and maybe started); no end recorded yet."""
    COMPLETED = "completed"
    """The device reported the end and the delivered volume."""
    UNCERTAIN = "uncertain"
    """Outcome unknown (restart mid-session, lost link); counts its full planned cap."""
    RECONCILED = "reconciled"
    """Was uncertain; the device's own figures later gave the delivered volume."""
    REFUSED_BY_DEVICE = "refused_by_device"
    """The device NAKed the START: nothing was delivered and no session ran."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionRecord:
    """One session from the ledger, as the dose rules need it."""

    session_id: int
    subject_id: str
    started: Instant
    """Time of the intent (written before START), so the interval counts from it."""
    planned_cap_ul: int
    delivered_ul: int | None
    status: SessionStatus
    administration_id: int | None = None
    """The first run's session id when this run continues an administration."""
    ended: Instant | None = None
    """When the run ended (end, uncertain or refusal record), if it has."""
    end_reason: str | None = None
    """Why it ended: the host's reason if the host stopped it, else the head's or the
    uncertain reason (see `controller.dosing.is_continuable`)."""
    upper_bound_ul: int | None = None
    """For an UNCERTAIN run whose figures are gone for good (head rebooted or
    replaced): the last delivered figure plus the head's maximum output until it must
    have stopped (safety rule 4). Never above the planned cap."""

    @property
    def counted_ul(self) -> int:
        """Volume (µL) that counts against every limit.

        OPEN and UNCERTAIN count the full planned cap until reconciled (or, where the
        head's figures are gone for good, their upper bound); COMPLETED and RECONCILED
        count what was delivered; a session refused by the device counts 0.
        """
        match self.status:
            case SessionStatus.OPEN:
                return max(self.planned_cap_ul, self.delivered_ul or 0)
            case SessionStatus.UNCERTAIN:
                bound = self.planned_cap_ul
                if self.upper_bound_ul is not None:
                    bound = min(bound, self.upper_bound_ul)
                return max(bound, self.delivered_ul or 0)
            case SessionStatus.COMPLETED | SessionStatus.RECONCILED:
                if self.delivered_ul is None:
                    # A completed record without a figure is a ledger defect: count the cap.
                    return self.planned_cap_ul
                return self.delivered_ul
            case SessionStatus.REFUSED_BY_DEVICE:
                return 0

    @property
    def counts_as_session(self) -> bool:
        """True if this record counts as a session start (interval, session counts)."""
        return self.status is not SessionStatus.REFUSED_BY_DEVICE


@dataclass(frozen=True, slots=True, kw_only=True)
class Override:
    """A request to override soft limits: who (role), why, and which constraint codes.

    `signed_by` names the person whose key signed the override credential, and
    `credential_id` that credential (`controller.security.verify_override`); both are
    recorded in the ledger with the override.
    """

    role: str
    reason: str
    constraint_codes: frozenset[str]
    signed_by: str | None = None
    credential_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class BedsideScan:
    """What the nurse scanned (or typed) at the bedside before CONFIRM: the patient's
    wristband id and the vial's lot label. None: not scanned."""

    subject_id: str | None = None
    lot_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DoseRequest:
    """What the controller asks for: a session for `subject_id`.

    The volume wanted is `requested_ul` if given, else the prescribed session volume.
    If any limit leaves less than that, `decide()` refuses (code `reduced_dose`) and
    says how much is still allowed: a dose is never cut down silently. The nurse
    accepts a smaller dose explicitly with `accept_reduced_ul` (at most that many µL,
    refused if even that is no longer allowed). `storage` comes from the ledger's
    storage-floor check.
    """

    subject_id: str
    storage: StorageStatus
    requested_ul: int | None = None
    requested_output_pct: int | None = None
    override: Override | None = None
    accept_reduced_ul: int | None = None
    continue_last: bool = False
    """Continue the last, interrupted administration (not a new one)."""
    scan: BedsideScan = BedsideScan()
    """The wristband and lot scanned at the bedside (the five-rights check)."""


class ConstraintCode(enum.StrEnum):
    """Stable machine-readable codes of every constraint `decide()` evaluates."""

    TIME_TRUSTED = "time_trusted"
    STORAGE = "storage"
    SUBJECT = "subject"
    OVERRIDE = "override"
    COURSE_START = "course_start"
    COURSE_END = "course_end"
    OPEN_SESSION = "open_session"
    INTERVAL = "interval"
    SESSION_UL = "session_ul"
    SESSION_DOSE = "session_dose"
    REQUESTED_UL = "requested_ul"
    ROLLING_24H_SESSIONS = "rolling_24h_sessions"
    ROLLING_24H_UL = "rolling_24h_ul"
    ROLLING_24H_DOSE = "rolling_24h_dose"
    COURSE_SESSIONS = "course_sessions"
    COURSE_UL = "course_ul"
    COURSE_DOSE = "course_dose"
    CEILING_SESSION_UL = "ceiling_session_ul"
    CEILING_24H_UL = "ceiling_24h_ul"
    CONTINUATION = "continuation"
    ADMINISTRATION_UL = "administration_ul"
    OUTPUT_PCT = "output_pct"
    REDUCED_DOSE = "reduced_dose"
    CAP = "cap"
    # The five-rights check before CONFIRM (`dosing/_five_rights.py`, docs/trials.md).
    SCAN_SUBJECT = "scan_subject"
    LOT_KNOWN = "lot_known"
    LOT_ARM = "lot_arm"
    LOT_COHORT = "lot_cohort"
    LOT_STRENGTH = "lot_strength"
    LOT_PRESCRIBED = "lot_prescribed"
    """Blinded: arm, cohort and strength as one constraint, so no reason names the arm."""
    LOT_EXPIRY = "lot_expiry"


@dataclass(frozen=True, slots=True, kw_only=True)
class ConstraintResult:
    """One evaluated constraint: its limit, the current value and what remains.

    Values are in `unit` (µL, s, sessions, or the drug unit). `remaining_ul` is the
    allowance this constraint leaves for the next session in whole µL (None when the
    constraint does not bound volume).
    """

    code: str
    passed: bool
    reason: str
    unit: str = ""
    limit: float | None = None
    current: float | None = None
    remaining: float | None = None
    remaining_ul: int | None = None
    soft: bool = False
    overridden: bool = False
    limited_by: str | None = None
    """`reduced_dose` only: the code of the constraint that leaves less than wanted."""

    @property
    def arm_neutral(self) -> bool:
        """True when this constraint's figures are equal on every arm of a blinded study
        (volumes, times, session counts) and may leave the bed; False when they are in
        the lot's drug unit, which would tell an active arm from a placebo arm."""
        return self.unit in ARM_NEUTRAL_UNITS


@dataclass(frozen=True, slots=True, kw_only=True)
class ReducedDoseOffer:
    """What a refusal for a too-small allowance offers the nurse: a smaller dose.

    `allowed_ul` of the `wanted_ul` remain because of `limiting_code` (`because` is
    that constraint's sentence). Starting it needs `DoseRequest.accept_reduced_ul`.
    """

    allowed_ul: int
    wanted_ul: int
    limiting_code: str
    because: str

    def question(self) -> str:
        """The question asked at the bedside terminal."""
        return (
            f"only {self.allowed_ul} µL of {self.wanted_ul} µL remain because "
            f"{self.because}: give {self.allowed_ul} µL?"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """The answer of `decide()`: allowed or not, the device parameters, and the full trace."""

    allowed: bool
    session_cap_ul: int
    max_duration_s: int
    output_pct: int
    constraints: tuple[ConstraintResult, ...]
    evaluated_at: Instant | None = None
    override: Override | None = None
    continues_administration: int | None = None
    """The administration this run continues (None: a new administration)."""
    continuation_available: str | None = None
    """When a plain start is refused but the last administration may be continued:
    what to say and the command to type."""

    @property
    def refusal_reasons(self) -> tuple[str, ...]:
        """Human reasons of every failed constraint (empty when allowed), and the
        continuation the nurse may start instead, if there is one."""
        reasons = tuple(c.reason for c in self.constraints if not c.passed)
        if reasons and self.continuation_available:
            reasons += (self.continuation_available,)
        return reasons

    def public_refusal_reasons(self, *, blinded: bool) -> tuple[str, ...]:
        """`refusal_reasons` as they may leave the bed. For a blinded arm, the codes of
        the failed constraints only, as in the published decision message (a sentence
        of a constraint in drug units names the dose and the lot); the continuation
        offer is in µL and stays."""
        if not blinded:
            return self.refusal_reasons
        reasons = tuple(c.code for c in self.constraints if not c.passed)
        if reasons and self.continuation_available:
            reasons += (self.continuation_available,)
        return reasons

    @property
    def refusal_codes(self) -> tuple[str, ...]:
        """Codes of every failed constraint (empty when allowed)."""
        return tuple(c.code for c in self.constraints if not c.passed)

    @property
    def reduced_dose_offer(self) -> ReducedDoseOffer | None:
        """The smaller dose a nurse may accept, when that is the only reason to refuse.

        None when the decision is allowed, or refused for any other reason too (an
        interval, an untrusted clock...): then no smaller dose would be allowed either.
        """
        if self.allowed or self.refusal_codes != (ConstraintCode.REDUCED_DOSE,):
            return None
        entry = next(c for c in self.constraints if c.code == ConstraintCode.REDUCED_DOSE)
        limiting = next((c for c in self.constraints if c.code == entry.limited_by), None)
        if entry.remaining_ul is None or entry.limit is None or limiting is None:
            return None
        return ReducedDoseOffer(
            allowed_ul=entry.remaining_ul,
            wanted_ul=int(entry.limit),
            limiting_code=limiting.code,
            because=limiting.reason,
        )
