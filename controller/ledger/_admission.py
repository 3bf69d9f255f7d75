"""Admission reads: what `decide()` needs of one subject, in a fixed number of
statements that do not grow with the number of past sessions (issue 14).

`decide()` reads individual runs only near the present (`AdmissionHistory`): the
24 h window, every OPEN or UNCERTAIN run, the last administration (continuation) and
the two latest administrations of this boot and of earlier boots (the interval, one
of which may be the administration being continued). Everything older enters only
through the course totals. The runs are read as a tail (every session from the
oldest one needed on), so the last administration by id is always in it. So
admission reads:

1. the settled totals: how many intents, refusals by the head and continuations;
   the sum of ended and reconciled volumes. Each session ends at most once (`ended`,
   `uncertain` or `start_refused`, each only from OPEN) and is reconciled at most
   once (only from UNCERTAIN), so these add up to the volume of every settled
   session and tell how many are still unsettled. They are counted once from the
   indexes (migration 5) and then kept: each admission adds the events committed
   since the last one (`SettledCounts`);
2. the oldest session id any window needs (index range reads, a few rows each);
3. every run from that id on (the tail), as `history()` builds them.

The tail is widened when a run continues an administration that began before it,
or when an unsettled run (a restored or never-ended one) lies before it. If the
ledger does not look like the controller wrote it (an end without a volume, a
continuation that names no counted first run), the whole history is read instead:
the answer is then slower, never different.
"""

from __future__ import annotations

import sqlite3
from dataclasses import astuple, dataclass
from datetime import timedelta
from typing import Final

from controller.dosing import (
    ROLLING_WINDOW_S,
    AdmissionHistory,
    CourseTotals,
    Instant,
    SessionRecord,
    SessionStatus,
    full_history,
)
from controller.ledger._database import utc_text
from controller.ledger._history import read_history

__all__ = ["SettledCounts", "read_admission_history"]

#: Read one second more than the window: the rules filter exactly; a superset is safe.
_SLACK_S: Final = 1
_NS_PER_S: Final = 1_000_000_000
#: Widenings of the tail before reading the whole history instead (normally 0).
_MAX_WIDENINGS: Final = 8
#: A session id above every possible one (ids are u32): an empty tail.
_NO_SESSION: Final = 1 << 32

_UNSETTLED: Final = (SessionStatus.OPEN, SessionStatus.UNCERTAIN)

# A counted first run: an intent that continues nothing and that the head did not refuse.
_FIRST_COUNTED = (
    "json_extract(i.body, '$.administration_id') IS NULL AND NOT EXISTS ("
    "SELECT 1 FROM events n WHERE n.session_id = i.session_id AND n.kind = 'start_refused')"
)

_COUNTS = """SELECT
    (SELECT count(*) FROM events WHERE subject_id = :s AND kind = 'intent'
        AND event_id <= :upto),
    (SELECT count(*) FROM events WHERE subject_id = :s AND kind = 'start_refused'
        AND event_id <= :upto),
    (SELECT count(*) FROM events INDEXED BY intents_continuing WHERE subject_id = :s
        AND kind = 'intent' AND json_extract(body, '$.administration_id') IS NOT NULL
        AND event_id <= :upto),
    (SELECT count(*) FROM events n JOIN events i ON i.session_id = n.session_id
        AND i.kind = 'intent' WHERE n.subject_id = :s AND n.kind = 'start_refused'
        AND n.event_id <= :upto AND json_extract(i.body, '$.administration_id') IS NULL)"""

_VOLUMES = """SELECT kind, count(*), count(delivered_ul), coalesce(sum(delivered_ul), 0)
    FROM events WHERE subject_id = :s AND kind IN ('ended', 'reconciled')
        AND event_id <= :upto GROUP BY kind"""

# The same counts over the events committed since the last read: a primary-key range
# (`+subject_id`, `+kind` keep the planner on it), O(new events).
_NEW_COUNTS = """SELECT
    coalesce(sum(kind = 'intent'), 0),
    coalesce(sum(kind = 'start_refused'), 0),
    coalesce(sum(kind = 'intent'
        AND json_extract(body, '$.administration_id') IS NOT NULL), 0),
    coalesce(sum(kind = 'start_refused' AND EXISTS (SELECT 1 FROM events i
        WHERE i.session_id = e.session_id AND i.kind = 'intent'
        AND json_extract(i.body, '$.administration_id') IS NULL)), 0),
    coalesce(sum(kind = 'ended'), 0),
    coalesce(sum(kind = 'ended' AND delivered_ul IS NOT NULL), 0),
    coalesce(sum(CASE WHEN kind = 'ended' THEN delivered_ul END), 0),
    coalesce(sum(kind = 'reconciled'), 0),
    coalesce(sum(kind = 'reconciled' AND delivered_ul IS NOT NULL), 0),
    coalesce(sum(CASE WHEN kind = 'reconciled' THEN delivered_ul END), 0)
    FROM events e WHERE event_id > :after AND event_id <= :upto AND +subject_id = :s
        AND +kind IN ('intent', 'start_refused', 'ended', 'reconciled')"""

_WINDOW_START = f"""SELECT min(session_id) FROM (
    SELECT session_id FROM events WHERE kind = 'intent' AND subject_id = :s
        AND boot_id = :boot AND monotonic_ns >= :mono_from
    UNION ALL
    SELECT session_id FROM events WHERE kind = 'intent' AND subject_id = :s
        AND utc >= :utc_from
    UNION ALL
    SELECT session_id FROM (SELECT session_id FROM events i WHERE kind = 'intent'
        AND subject_id = :s AND boot_id = :boot AND {_FIRST_COUNTED}
        ORDER BY monotonic_ns DESC LIMIT 2)
    UNION ALL
    SELECT session_id FROM (SELECT session_id FROM events i WHERE kind = 'intent'
        AND subject_id = :s AND boot_id <> :boot AND {_FIRST_COUNTED}
        ORDER BY utc DESC LIMIT 2)
)"""  # noqa: S608 - fixed text only: no value is interpolated

_UNSETTLED_BEFORE = """SELECT count(*), min(session_id) FROM (
    SELECT session_id FROM events i WHERE kind = 'intent' AND subject_id = ?
        AND session_id < ? AND NOT EXISTS (SELECT 1 FROM events t
            WHERE t.session_id = i.session_id
            AND t.kind IN ('ended', 'start_refused', 'reconciled'))
    ORDER BY session_id DESC LIMIT ?)"""


@dataclass(frozen=True, slots=True)
class _Counts:
    """Step 1's counts of one subject's events (additive: events are only appended)."""

    intents: int = 0
    refused: int = 0
    continuing: int = 0
    refused_first: int = 0
    ended: int = 0
    ended_with_volume: int = 0
    ended_ul: int = 0
    reconciled: int = 0
    reconciled_with_volume: int = 0
    reconciled_ul: int = 0

    def __add__(self, other: _Counts) -> _Counts:
        return _Counts(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))

    @property
    def complete(self) -> bool:
        """Every end and reconciliation has a volume (as the controller writes them)."""
        return (self.ended, self.reconciled) == (
            self.ended_with_volume,
            self.reconciled_with_volume,
        )

    @property
    def settled_ul(self) -> int:
        """The volume of every settled session (completed, reconciled; refused is 0)."""
        return self.ended_ul + self.reconciled_ul

    @property
    def unsettled(self) -> int:
        """OPEN and UNCERTAIN sessions."""
        return self.intents - self.ended - self.refused - self.reconciled

    @property
    def administrations(self) -> int:
        """Counted first runs (each continuation names one, see `record_intent`)."""
        return self.intents - self.continuing - self.refused_first


def _counts_upto(connection: sqlite3.Connection, subject_id: str, upto: int) -> _Counts:
    """The counts over events up to `upto`, from the subject indexes only."""
    args = {"s": subject_id, "upto": upto}
    intents, refused, continuing, refused_first = connection.execute(_COUNTS, args).fetchone()
    volumes = {
        str(kind): (int(rows), int(with_volume), int(total))
        for kind, rows, with_volume, total in connection.execute(_VOLUMES, args)
    }
    return _Counts(
        int(intents),
        int(refused),
        int(continuing),
        int(refused_first),
        *volumes.get("ended", (0, 0, 0)),
        *volumes.get("reconciled", (0, 0, 0)),
    )


class SettledCounts:
    """Step 1's counts per subject, kept between admissions by one `Ledger` object.

    The first admission counts from the indexes (O(sessions) index entries, once);
    later ones add only the events committed since (a primary-key range), whoever
    wrote them. Counts only ever grow by appended events, so the sum is exact.
    """

    def __init__(self) -> None:
        self._read: dict[str, tuple[int, _Counts]] = {}

    def counts(self, connection: sqlite3.Connection, subject_id: str) -> _Counts:
        """The counts over every committed event (call inside a read transaction)."""
        row = connection.execute("SELECT coalesce(max(event_id), 0) FROM events").fetchone()
        upto = int(row[0])
        after, counts = self._read.get(subject_id, (0, None))
        if counts is None:
            counts = _counts_upto(connection, subject_id, upto)
        elif upto > after:
            new = connection.execute(
                _NEW_COUNTS, {"s": subject_id, "after": after, "upto": upto}
            ).fetchone()
            counts += _Counts(*(int(value) for value in new))
        self._read[subject_id] = (upto, counts)
        return counts


def _window_start(connection: sqlite3.Connection, subject_id: str, now: Instant) -> int:
    reach_s = ROLLING_WINDOW_S + _SLACK_S
    row = connection.execute(
        _WINDOW_START,
        {
            "s": subject_id,
            "boot": now.boot_id,
            "mono_from": now.monotonic_ns - reach_s * _NS_PER_S,
            "utc_from": utc_text(now.utc - timedelta(seconds=reach_s)),
        },
    ).fetchone()
    return _NO_SESSION if row[0] is None else int(row[0])


def _wider_start(
    connection: sqlite3.Connection,
    subject_id: str,
    from_id: int,
    runs: list[SessionRecord],
    settled: _Counts,
) -> int | None:
    """The tail start the runs need (== `from_id` when complete), or None: read it all."""
    wanted = from_id
    first_runs = {r.session_id for r in runs if r.administration_id is None and r.counts_as_session}
    for run in runs:
        key = run.administration_id
        if key is None:
            continue
        if key < from_id:
            wanted = min(wanted, key)
        elif key not in first_runs:
            return None  # a continuation of no counted first run: not the controller's
    missing = settled.unsettled - sum(r.status in _UNSETTLED for r in runs)
    if missing < 0:
        return None
    if missing:
        found, oldest = connection.execute(
            _UNSETTLED_BEFORE, (subject_id, from_id, missing)
        ).fetchone()
        if int(found) < missing:
            return None
        wanted = min(wanted, int(oldest))
    return wanted


def read_admission_history(
    connection: sqlite3.Connection, subject_id: str, now: Instant, counts: SettledCounts
) -> AdmissionHistory:
    """What `decide()` reads of `subject_id` at `now` (inside one read transaction)."""
    settled = counts.counts(connection, subject_id)
    if settled.complete:
        from_id = _window_start(connection, subject_id, now)
        for _ in range(_MAX_WIDENINGS):
            runs = read_history(connection, subject_id, from_id)
            wanted = _wider_start(connection, subject_id, from_id, runs, settled)
            if wanted is None:
                break
            if wanted == from_id:
                unsettled_ul = sum(r.counted_ul for r in runs if r.status in _UNSETTLED)
                return AdmissionHistory(
                    subject_id=subject_id,
                    runs=tuple(runs),
                    course=CourseTotals(
                        counted_ul=settled.settled_ul + unsettled_ul,
                        administrations=settled.administrations,
                    ),
                )
            from_id = wanted
    return full_history(read_history(connection, subject_id), subject_id)
