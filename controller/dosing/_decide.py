"""`decide()`: the one pure function that admits or refuses a dosing session."""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction

from controller.dosing._administration import (
    Administration,
    ContinuationOffer,
    administrations,
    continuation_offer,
)
from controller.dosing._ceilings import (
    CEILING_24H_UL,
    CEILING_MAX_DURATION_S,
    CEILING_SESSION_UL,
    ROLLING_WINDOW_S,
)
from controller.dosing._five_rights import five_rights
from controller.dosing._history import AdmissionHistory, full_history
from controller.dosing._prescription import Prescription
from controller.dosing._reduced import reduced_dose
from controller.dosing._types import (
    ConstraintCode,
    ConstraintResult,
    Decision,
    DoseRequest,
    Override,
    SessionRecord,
    SessionStatus,
    TrustedTime,
    elapsed_s,
)
from controller.dosing._usage import dose_usage

__all__ = ["decide", "format_duration"]

_C = ConstraintCode


def format_duration(seconds: float) -> str:
    """Human duration: `23h02m`, `24h`, `45m`, `30s` (whole seconds, rounded down)."""
    total_s = int(seconds)
    hours, rest_s = divmod(total_s, 3600)
    minutes, secs = divmod(rest_s, 60)
    if hours and not minutes and not secs:
        return f"{hours}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes and not secs:
        return f"{minutes}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _fmt_dose(value: Fraction | float) -> str:
    return f"{float(value):.4g}"


def _volume(
    code: ConstraintCode, *, limit_ul: int, used_ul: int, what: str, soft: bool = False
) -> ConstraintResult:
    remaining_ul = limit_ul - used_ul
    passed = remaining_ul >= 1
    relation = "leaves" if passed else "leaves no"
    reason = f"{code}: {used_ul} µL {what} of {limit_ul} µL {relation} allowance" + (
        f" ({remaining_ul} µL)" if passed else ""
    )
    return ConstraintResult(
        code=str(code),
        passed=passed,
        reason=reason,
        unit="µL",
        limit=limit_ul,
        current=used_ul,
        remaining=remaining_ul,
        remaining_ul=max(0, remaining_ul),
        soft=soft,
    )


def _dose(
    code: ConstraintCode,
    prescription: Prescription,
    *,
    limit_dose: float,
    used_ul: int,
    what: str,
) -> ConstraintResult:
    unit = prescription.lot.unit
    used_dose = prescription.ul_to_dose(used_ul)
    remaining_dose = Fraction(limit_dose) - used_dose
    remaining_ul = prescription.dose_to_ul_floor(remaining_dose) if remaining_dose > 0 else 0
    passed = remaining_ul >= 1
    reason = f"{code}: {_fmt_dose(used_dose)} {unit} {what} of {_fmt_dose(limit_dose)} {unit} " + (
        f"leaves {remaining_ul} µL" if passed else "leaves less than 1 µL"
    )
    return ConstraintResult(
        code=str(code),
        passed=passed,
        reason=reason,
        unit=unit,
        limit=limit_dose,
        current=float(used_dose),
        remaining=float(remaining_dose),
        remaining_ul=remaining_ul,
    )


def _count(
    code: ConstraintCode, *, limit: int, used: int, what: str, soft: bool
) -> ConstraintResult:
    passed = used < limit
    relation = "<" if passed else ">="
    return ConstraintResult(
        code=str(code),
        passed=passed,
        reason=f"{code}: {used} sessions {what} {relation} limit {limit}",
        unit="sessions",
        limit=limit,
        current=used,
        remaining=limit - used,
        soft=soft,
    )


def _gate(code: ConstraintCode, *, passed: bool, reason: str) -> ConstraintResult:
    return ConstraintResult(code=str(code), passed=passed, reason=f"{code}: {reason}")


def _override_check(
    prescription: Prescription, override: Override | None
) -> tuple[ConstraintResult | None, frozenset[str]]:
    """Validate an override; return its trace entry and the codes it may lift."""
    if override is None:
        return None, frozenset()
    limits = prescription.limits
    problems: list[str] = []
    if override.role not in limits.override_roles:
        allowed = ", ".join(limits.override_roles) or "none"
        problems.append(f"role '{override.role}' may not override (allowed: {allowed})")
    if not override.reason.strip():
        problems.append("a reason is required")
    if not override.constraint_codes:
        problems.append("no constraint codes named")
    hard = sorted(set(override.constraint_codes) - set(limits.soft_limits))
    if hard:
        problems.append(
            f"{', '.join(hard)} not soft in this prescription "
            f"(soft: {', '.join(limits.soft_limits) or 'none'})"
        )
    if problems:
        return _gate(_C.OVERRIDE, passed=False, reason="; ".join(problems)), frozenset()
    codes = ", ".join(sorted(override.constraint_codes))
    entry = _gate(
        _C.OVERRIDE,
        passed=True,
        reason=f"{override.role} may override {codes}: {override.reason.strip()}",
    )
    return entry, override.constraint_codes


def _apply_override(
    result: ConstraintResult, lifted: frozenset[str], override: Override | None
) -> ConstraintResult:
    if result.passed or not result.soft or result.code not in lifted or override is None:
        return result
    return ConstraintResult(
        code=result.code,
        passed=True,
        reason=f"{result.reason} — overridden by {override.role}: {override.reason.strip()}",
        unit=result.unit,
        limit=result.limit,
        current=result.current,
        remaining=result.remaining,
        remaining_ul=result.remaining_ul,
        soft=True,
        overridden=True,
    )


def _schedule(
    prescription: Prescription,
    now: TrustedTime,
    sessions: list[SessionRecord],
    admins: list[Administration],
    course_sessions: int,
) -> Iterable[ConstraintResult]:
    """Date, interval and session-count constraints (no volume).

    The interval and the session counts are over administrations (an interrupted dose
    continued in a second run counts once, from its first run); `course_sessions` is
    the course's count (the administrations in `admins` are only the recent ones)."""
    recent = [a for a in admins if elapsed_s(a.first_started, now.instant) < ROLLING_WINDOW_S]
    limits = prescription.limits
    soft = set(limits.soft_limits)
    local_date = now.instant.utc.astimezone(prescription.zone).date()
    if limits.course_start is not None:
        ok = local_date >= limits.course_start
        yield ConstraintResult(
            code=str(_C.COURSE_START),
            passed=ok,
            reason=f"course_start: today {local_date} ({prescription.timezone}) "
            + ("is on/after" if ok else "is before")
            + f" course start {limits.course_start}",
            soft="course_start" in soft,
        )
    if limits.course_end is not None:
        ok = local_date <= limits.course_end
        yield ConstraintResult(
            code=str(_C.COURSE_END),
            passed=ok,
            reason=f"course_end: today {local_date} ({prescription.timezone}) "
            + ("is on/before" if ok else "is after")
            + f" course end {limits.course_end}",
            soft="course_end" in soft,
        )
    still_open = [s.session_id for s in sessions if s.status is SessionStatus.OPEN]
    yield _gate(
        _C.OPEN_SESSION,
        passed=not still_open,
        reason=f"session(s) {', '.join(map(str, still_open))} still open"
        if still_open
        else "no session open",
    )
    if limits.min_interval_s is not None:
        limit_txt = format_duration(limits.min_interval_s)
        since_s: float | None = None
        if admins:
            since_s = min(elapsed_s(a.first_started, now.instant) for a in admins)
            ok = since_s >= limits.min_interval_s
            reason = (
                f"interval: last start {format_duration(since_s)} ago "
                f"{'>=' if ok else '<'} {limit_txt}"
            )
        else:
            ok, reason = True, f"interval: no previous start (minimum {limit_txt})"
        yield ConstraintResult(
            code=str(_C.INTERVAL),
            passed=ok,
            reason=reason,
            unit="s",
            limit=limits.min_interval_s,
            current=since_s,
            remaining=None if since_s is None else max(0.0, limits.min_interval_s - since_s),
            soft="interval" in soft,
        )
    if limits.rolling_24h_max_sessions is not None:
        yield _count(
            _C.ROLLING_24H_SESSIONS,
            limit=limits.rolling_24h_max_sessions,
            used=len(recent),
            what="started in the last 24h",
            soft="rolling_24h_sessions" in soft,
        )
    if limits.course_max_sessions is not None:
        yield _count(
            _C.COURSE_SESSIONS,
            limit=limits.course_max_sessions,
            used=course_sessions,
            what="in the course",
            soft=False,
        )


def _volumes(
    prescription: Prescription,
    request: DoseRequest,
    used_24h_ul: int,
    used_course_ul: int,
) -> Iterable[ConstraintResult]:
    """Every constraint that bounds the volume of the next session."""
    limits = prescription.limits
    yield ConstraintResult(
        code=str(_C.CEILING_SESSION_UL),
        passed=True,
        reason=f"ceiling_session_ul: code ceiling {CEILING_SESSION_UL} µL per session",
        unit="µL",
        limit=CEILING_SESSION_UL,
        remaining=CEILING_SESSION_UL,
        remaining_ul=CEILING_SESSION_UL,
    )
    yield _volume(
        _C.CEILING_24H_UL, limit_ul=CEILING_24H_UL, used_ul=used_24h_ul, what="in the last 24h"
    )
    if limits.session_ul is not None:
        yield ConstraintResult(
            code=str(_C.SESSION_UL),
            passed=True,
            reason=f"session_ul: prescribed {limits.session_ul} µL per session",
            unit="µL",
            limit=limits.session_ul,
            remaining=limits.session_ul,
            remaining_ul=limits.session_ul,
        )
    if limits.session_dose is not None:
        session_dose_ul = prescription.dose_to_ul_floor(limits.session_dose)
        yield ConstraintResult(
            code=str(_C.SESSION_DOSE),
            passed=session_dose_ul >= 1,
            reason=f"session_dose: {_fmt_dose(limits.session_dose)} {prescription.lot.unit} "
            f"per session is {session_dose_ul} µL of lot {prescription.lot.lot_id}",
            unit=prescription.lot.unit,
            limit=limits.session_dose,
            remaining=limits.session_dose,
            remaining_ul=session_dose_ul,
        )
    if request.requested_ul is not None:
        ok = request.requested_ul >= 1
        yield ConstraintResult(
            code=str(_C.REQUESTED_UL),
            passed=ok,
            reason=f"requested_ul: {request.requested_ul} µL requested"
            + ("" if ok else " (must be at least 1 µL)"),
            unit="µL",
            limit=request.requested_ul,
            remaining_ul=max(0, request.requested_ul),
        )
    if limits.rolling_24h_max_ul is not None:
        yield _volume(
            _C.ROLLING_24H_UL,
            limit_ul=limits.rolling_24h_max_ul,
            used_ul=used_24h_ul,
            what="in the last 24h",
        )
    if limits.rolling_24h_max_dose is not None:
        yield _dose(
            _C.ROLLING_24H_DOSE,
            prescription,
            limit_dose=limits.rolling_24h_max_dose,
            used_ul=used_24h_ul,
            what="in the last 24h",
        )
    if limits.course_max_ul is not None:
        yield _volume(
            _C.COURSE_UL, limit_ul=limits.course_max_ul, used_ul=used_course_ul, what="in course"
        )
    if limits.course_max_dose is not None:
        yield _dose(
            _C.COURSE_DOSE,
            prescription,
            limit_dose=limits.course_max_dose,
            used_ul=used_course_ul,
            what="in course",
        )


def decide(
    prescription: Prescription,
    history: Iterable[SessionRecord] | AdmissionHistory,
    request: DoseRequest,
    now: TrustedTime,
) -> Decision:
    """Admit or refuse one session for `request.subject_id`, with every constraint traced.

    `history` is the ledger's sessions (other subjects are ignored), or the part of
    them the rules read (`AdmissionHistory`: the runs inside the windows and the
    course totals; the decision is the same). Sessions the device
    refused count for nothing; OPEN and UNCERTAIN sessions count their full planned cap.
    The cap is the volume wanted (the request, else the prescribed session volume);
    if any volume/dose constraint leaves less (whole µL, rounded down), the start is
    refused with `reduced_dose` naming the limiting constraint and the amount still
    allowed, unless the request accepts a reduced dose explicitly. It is refused if any
    constraint fails or the cap is < 1 µL.
    """
    limits = prescription.limits
    if not isinstance(history, AdmissionHistory):
        history = full_history(history, prescription.subject_id)
    if history.subject_id != prescription.subject_id:
        raise ValueError(
            f"admission history of subject '{history.subject_id}' given for a prescription "
            f"of '{prescription.subject_id}': read the prescription's subject"
        )
    sessions = [
        s for s in history.runs if s.subject_id == prescription.subject_id and s.counts_as_session
    ]
    usage = dose_usage(prescription, sessions, now.instant)
    # The windowed runs hold every run of the last 24 h, so this figure is exact; the
    # course volume is counted from the ledger's indexes (the runs read are a window).
    used_24h_ul = usage.rolling_24h_ul
    used_course_ul = history.course.counted_ul
    admins = administrations(sessions)
    window_s = limits.continuation_window_s
    offer = continuation_offer(
        admins,
        session_cap_ul=_session_cap_ul(prescription),
        window_s=window_s,
        now=now.instant,
        delivery=prescription.delivery,
    )
    continuing = request.continue_last and offer is not None
    # A continuation is part of its administration: the schedule looks at the others.
    continued_id = offer.administration_id if continuing and offer is not None else None
    prior = [a for a in admins if a.administration_id != continued_id]
    course_sessions = history.course.administrations - (0 if continued_id is None else 1)

    results: list[ConstraintResult] = [
        _gate(
            _C.TIME_TRUSTED,
            passed=now.trusted,
            reason="wall clock trusted" if now.trusted else f"time not trusted: {now.reason}",
        ),
        _gate(
            _C.STORAGE,
            passed=request.storage.ok,
            reason="ledger storage above floor"
            if request.storage.ok
            else f"ledger storage below floor: {request.storage.reason}",
        ),
        _gate(
            _C.SUBJECT,
            passed=request.subject_id == prescription.subject_id,
            reason=f"request for '{request.subject_id}', prescription for "
            f"'{prescription.subject_id}'",
        ),
    ]
    # The right patient and the right vial, scanned before CONFIRM (issue 20).
    results.extend(five_rights(prescription, request.scan, now))
    override_entry, lifted = _override_check(prescription, request.override)
    if override_entry is not None:
        results.append(override_entry)
    results.extend(
        _apply_override(r, lifted, request.override)
        for r in _schedule(prescription, now, sessions, prior, course_sessions)
    )
    results.extend(_volumes(prescription, request, used_24h_ul, used_course_ul))
    if request.continue_last:
        results.extend(_continuation(offer, window_s))

    output_pct = (
        request.requested_output_pct
        if request.requested_output_pct is not None
        else limits.output_pct
    )
    pct_ok = limits.output_pct_min <= output_pct <= limits.output_pct_max
    results.append(
        ConstraintResult(
            code=str(_C.OUTPUT_PCT),
            passed=pct_ok,
            reason=f"output_pct: {output_pct} % "
            + ("within" if pct_ok else "outside")
            + f" {limits.output_pct_min}..{limits.output_pct_max} %",
            unit="%",
            limit=limits.output_pct_max,
            current=output_pct,
        )
    )

    reduced, cap_ul = reduced_dose(request, results)
    if reduced is not None:
        results.append(reduced)
    results.append(
        ConstraintResult(
            code=str(_C.CAP),
            passed=cap_ul >= 1,
            reason=f"cap: smallest remaining allowance {cap_ul} µL"
            + ("" if cap_ul >= 1 else " is below 1 µL"),
            unit="µL",
            current=cap_ul,
            remaining_ul=cap_ul,
        )
    )
    allowed = all(r.passed for r in results)
    return Decision(
        allowed=allowed,
        session_cap_ul=cap_ul if allowed else 0,
        max_duration_s=limits.max_session_duration_s or CEILING_MAX_DURATION_S,
        output_pct=output_pct,
        constraints=tuple(results),
        evaluated_at=now.instant,
        override=request.override,
        continues_administration=continued_id,
        continuation_available=(
            offer.sentence() if offer is not None and not request.continue_last else None
        ),
    )


def _session_cap_ul(prescription: Prescription) -> int:
    """The most one administration may deliver (all its runs together)."""
    limits = prescription.limits
    caps = [CEILING_SESSION_UL]
    if limits.session_ul is not None:
        caps.append(limits.session_ul)
    if limits.session_dose is not None:
        caps.append(prescription.dose_to_ul_floor(limits.session_dose))
    return min(caps)


def _continuation(offer: ContinuationOffer | None, window_s: int) -> list[ConstraintResult]:
    """The continuation gate and what is left of the administration's cap."""
    if offer is None:
        return [
            _gate(
                _C.CONTINUATION,
                passed=False,
                reason="nothing to continue — the last administration was "
                "completed, stopped by a person or a limit, has nothing left, or ended more "
                f"than {window_s // 60} min ago; start a new administration when the limits "
                "allow it",
            )
        ]
    return [
        _gate(
            _C.CONTINUATION,
            passed=True,
            reason=f"run {offer.runs + 1} of administration "
            f"{offer.administration_id}, interrupted by {offer.interrupted_by}",
        ),
        ConstraintResult(
            code=str(_C.ADMINISTRATION_UL),
            passed=True,
            reason=f"administration_ul: {offer.given_ul} µL given in {offer.runs} run(s) "
            f"leaves {offer.remaining_ul} µL of the session cap",
            unit="µL",
            limit=offer.given_ul + offer.remaining_ul,
            current=offer.given_ul,
            remaining=offer.remaining_ul,
            remaining_ul=offer.remaining_ul,
        ),
    ]
