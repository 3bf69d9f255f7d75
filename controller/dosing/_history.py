"""What `decide()` reads of a subject's ledger: the runs inside its windows and the
course totals over every session (pure).

The rules look back in three ways. The 24 h rolling limits, the open-session gate,
the interval and the continuation offer need individual runs, but only recent ones
(and, for the interval and the continuation, the last administrations). The course
limits need every session, but only as two totals: the volume that counts and the
number of administrations. `AdmissionHistory` carries exactly that, so the ledger can
read a bounded tail of the history plus aggregates, instead of every session, and
the decision stays the same (tests/dosing/test_windowed_history.py compares the two
on random histories written to a real ledger).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from controller.dosing._administration import administrations
from controller.dosing._types import SessionRecord

__all__ = ["AdmissionHistory", "CourseTotals", "full_history"]


@dataclass(frozen=True, slots=True, kw_only=True)
class CourseTotals:
    """Course totals of one subject, over every session in the ledger."""

    counted_ul: int
    """The volume that counts against the course limits (`SessionRecord.counted_ul`)."""
    administrations: int
    """Administrations (an interrupted dose continued in later runs counts once)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AdmissionHistory:
    """The part of one subject's ledger that `decide()` reads.

    `runs` must hold, with every run of their administrations: each session started
    within the 24 h window, every OPEN or UNCERTAIN session, the last administration,
    and the two most recent administrations of this boot and of earlier boots (the
    interval). `course` is over every session. `full_history` builds it from the
    whole history; `Ledger.admission_history` from a bounded read.
    """

    subject_id: str
    runs: tuple[SessionRecord, ...]
    course: CourseTotals


def full_history(history: Iterable[SessionRecord], subject_id: str) -> AdmissionHistory:
    """The admission history of `subject_id` from its whole history (other subjects'
    sessions are ignored)."""
    runs = tuple(s for s in history if s.subject_id == subject_id)
    counted = [s for s in runs if s.counts_as_session]
    return AdmissionHistory(
        subject_id=subject_id,
        runs=runs,
        course=CourseTotals(
            counted_ul=sum(s.counted_ul for s in counted),
            administrations=len(administrations(counted)),
        ),
    )
