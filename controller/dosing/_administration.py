"""Administrations: one prescribed dose, possibly given in several runs (pure).

A session that ends early for a technical reason (the head's watchdog, a silence of
the head, a reboot or swap of the head, a dry cup, a device fault) may be *continued*
by the nurse within a window: the continuation is a further run of the same
administration. For the interval and the per-day and course session counts an
administration counts once, from its first run; for volumes every run counts what it
delivered (or, where its figure is lost, its upper bound); the runs of one
administration never total more than the session cap.

A stop by a person (nurse, remote STOP, the head's button), by a limit (cap, maximum
duration) or a complete run is not continuable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from ._ceilings import DEFAULT_CONTINUATION_WINDOW_S
from ._end import EndClass, classify_end
from ._prescription import Delivery
from ._types import Instant, SessionRecord, SessionStatus, elapsed_s

__all__ = [
    "CONTINUABLE_END_REASONS",
    "DEFAULT_CONTINUATION_WINDOW_S",
    "Administration",
    "ContinuationOffer",
    "administrations",
    "continuation_offer",
    "is_continuable",
]

#: End reasons (host, device or uncertain) that are technical interruptions.
CONTINUABLE_END_REASONS: Final = frozenset(
    {
        # host reasons
        "status_silent",
        "link_lost",
        "device_fault",
        "reservoir_empty",
        "shutdown",
        # device reasons (ICD stop reasons)
        "WATCHDOG",
        "RESERVOIR_EMPTY",
        "FAULT",
        # uncertain reasons
        "controller_restart",
        "device_rebooted",
        "device_swapped",
        "delivery_unknown",
        "start_unanswered",
        "shutdown_stop_unconfirmed",
        "uncertain_before_restart",
    }
)


def is_continuable(end_reason: str | None) -> bool:
    """True when a run that ended for `end_reason` may be continued by the nurse."""
    return end_reason in CONTINUABLE_END_REASONS


@dataclass(frozen=True, slots=True, kw_only=True)
class Administration:
    """The runs of one administration, oldest first (the first run's id names it)."""

    administration_id: int
    runs: tuple[SessionRecord, ...]

    @property
    def first_started(self) -> Instant:
        """When the administration began (the first run's intent)."""
        return self.runs[0].started

    @property
    def last_run(self) -> SessionRecord:
        """The most recent run."""
        return self.runs[-1]

    @property
    def given_ul(self) -> int:
        """What counts as given so far (delivered, or the bound/cap where unknown)."""
        return sum(r.counted_ul for r in self.runs)


@dataclass(frozen=True, slots=True, kw_only=True)
class ContinuationOffer:
    """The rest of an interrupted administration that the nurse may still give."""

    administration_id: int
    runs: int
    given_ul: int
    remaining_ul: int
    interrupted_by: str
    window_left_s: float

    def sentence(self) -> str:
        """What the refusal of a plain start says, with the command to type."""
        minutes = max(1, int(self.window_left_s // 60))
        return (
            f"administration {self.administration_id} was interrupted "
            f"({self.interrupted_by}) after {self.given_ul} µL: its remaining "
            f"{self.remaining_ul} µL may be given as a continuation within {minutes} min — "
            "`nebuliser session start --continue`"
        )


def administrations(sessions: list[SessionRecord]) -> list[Administration]:
    """Group counted sessions into administrations, ordered by their first run."""
    groups: dict[int, list[SessionRecord]] = {}
    for session in sessions:
        key = session.administration_id or session.session_id
        groups.setdefault(key, []).append(session)
    return sorted(
        (
            Administration(
                administration_id=key, runs=tuple(sorted(runs, key=lambda r: r.session_id))
            )
            for key, runs in groups.items()
        ),
        key=lambda a: a.runs[0].session_id,
    )


def continuation_offer(
    history: list[Administration],
    *,
    session_cap_ul: int,
    window_s: int,
    now: Instant,
    delivery: Delivery | None = None,
) -> ContinuationOffer | None:
    """The continuation the last administration allows now, or None.

    Only the most recent administration may be continued, only when its last run
    ended for a technical reason, within `window_s` of that end, with at least 1 µL
    of the session cap left. A to-dryness prescription (`delivery`) that ran dry at
    its expected volume is complete: nothing to continue.
    """
    if not history or window_s <= 0:
        return None
    admin = history[-1]
    last = admin.last_run
    if last.status is SessionStatus.OPEN or not is_continuable(last.end_reason):
        return None
    if delivery is not None and (
        classify_end(
            delivery,
            delivered_ul=last.delivered_ul or 0,
            device_reason=last.end_reason,
            host_reason=last.end_reason,
        ).end
        is EndClass.COMPLETED_TO_DRYNESS
    ):
        return None
    ended = last.ended or last.started
    since_s = elapsed_s(ended, now)
    remaining_ul = session_cap_ul - admin.given_ul
    if since_s > window_s or remaining_ul < 1:
        return None
    return ContinuationOffer(
        administration_id=admin.administration_id,
        runs=len(admin.runs),
        given_ul=admin.given_ul,
        remaining_ul=remaining_ul,
        interrupted_by=str(last.end_reason),
        window_left_s=window_s - since_s,
    )
