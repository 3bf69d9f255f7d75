"""A smaller dose is the nurse's decision: the `reduced_dose` entry of `decide()` (pure)."""

from __future__ import annotations

from controller.dosing._types import ConstraintCode, ConstraintResult, DoseRequest

__all__ = ["reduced_dose"]

_C = ConstraintCode

_PRESCRIBED: frozenset[str] = frozenset(
    {str(_C.SESSION_UL), str(_C.SESSION_DOSE), str(_C.ADMINISTRATION_UL)}
)
"""Constraints that prescribe the volume of one session (what is wanted by default);
for a continuation run, what is left of its administration is what is wanted."""


def _reduced_verdict(
    *,
    wanted_ul: int,
    allowance_ul: int,
    accept_ul: int | None,
    prescribed_ul: int | None,
    why: str,
) -> tuple[bool, str] | None:
    """(passed, reason) of `reduced_dose`, or None when nothing is reduced."""
    if accept_ul is not None and accept_ul < 1:
        return False, f"accept_reduced_ul = {accept_ul} must be at least 1 µL"
    if allowance_ul < wanted_ul:
        if accept_ul is None or accept_ul > allowance_ul:
            asked = "a smaller dose must be accepted explicitly"
            if accept_ul is not None:
                asked = f"{accept_ul} µL accepted is more than that"
            return False, f"{why}; {asked}"
        return True, f"{accept_ul} µL accepted explicitly: {why}"
    if accept_ul is not None and accept_ul < wanted_ul:
        return True, f"{accept_ul} µL accepted explicitly instead of {wanted_ul} µL"
    if prescribed_ul is not None and wanted_ul < prescribed_ul:
        return True, f"{wanted_ul} µL asked for, below the prescribed {prescribed_ul} µL"
    return None


def reduced_dose(
    request: DoseRequest, results: list[ConstraintResult]
) -> tuple[ConstraintResult | None, int]:
    """The `reduced_dose` entry and the cap: a smaller dose only when asked for explicitly.

    Wanted is the request, or else the prescribed session volume (`session_ul`,
    `session_dose`); the allowance is the smallest remaining allowance of every other
    volume constraint (the limiting one is named). Less allowed than wanted is a
    refusal with the amount still allowed, unless the request accepts a reduced dose
    (`accept_reduced_ul`: the cap is then at most that, and refused if even that is no
    longer allowed). A prescription with no session volume and no request wants what
    the limits allow: nothing is reduced.
    """
    bounds = [r for r in results if r.remaining_ul is not None and r.code != _C.REQUESTED_UL]
    limiting = min(bounds, key=lambda r: r.remaining_ul or 0)
    allowance_ul = limiting.remaining_ul or 0
    prescribed = [r.remaining_ul or 0 for r in bounds if r.code in _PRESCRIBED]
    prescribed_ul = min(prescribed) if prescribed else None
    wanted_ul = request.requested_ul if request.requested_ul is not None else prescribed_ul
    accept_ul = request.accept_reduced_ul
    if wanted_ul is None:
        wanted_ul = allowance_ul if accept_ul is None else max(allowance_ul, accept_ul)
    cap_ul = min(wanted_ul, allowance_ul)
    if wanted_ul < 1 or allowance_ul < 1:
        # The request itself, or the limit that leaves nothing, is the refusal.
        return None, max(0, cap_ul)
    verdict = _reduced_verdict(
        wanted_ul=wanted_ul,
        allowance_ul=allowance_ul,
        accept_ul=accept_ul,
        prescribed_ul=prescribed_ul,
        why=f"only {allowance_ul} µL of the {wanted_ul} µL wanted remain because {limiting.reason}",
    )
    if verdict is None:
        return None, cap_ul
    passed, reason = verdict
    entry = ConstraintResult(
        code=str(_C.REDUCED_DOSE),
        passed=passed,
        reason=f"{_C.REDUCED_DOSE}: {reason}",
        unit="µL",
        limit=wanted_ul,
        current=accept_ul,
        remaining=allowance_ul,
        remaining_ul=allowance_ul,
        limited_by=limiting.code,
    )
    # Refused: the cap entry still shows what is left; the decision's cap is 0.
    return entry, cap_ul if accept_ul is None or not passed else min(cap_ul, accept_ul)
