"""The ledger's continuity side: identity, chain head, anchors, the end-record reserve.

A mixin of `Ledger`, kept apart so that the session-event module stays readable.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from controller.dosing import Instant
from controller.ledger._anchor import AnchoredSession, LedgerAnchor
from controller.ledger._chain import GENESIS_HASH, ChainHead, stored_hash_at
from controller.ledger._database import Database, is_disk_full, utc_text
from controller.ledger._errors import LedgerWriteError, SessionStateError
from controller.ledger._model import EventKind
from controller.ledger._storage import ReserveFile

__all__ = ["RESTORED_FROM_ANCHOR", "AnchorSink", "ContinuityMixin"]

AnchorSink = Callable[[LedgerAnchor], None]
"""Receives the ledger's high-water mark after every committed session event."""

#: `uncertain` reason of a session known only from anchors, written by `ledger restore`.
RESTORED_FROM_ANCHOR = "restored_from_anchor"


class ContinuityMixin:
    """Methods of `Ledger` about its identity and continuity evidence."""

    _db: Database
    anchor_sink: AnchorSink | None
    anchor_failures: int
    reserve: ReserveFile | None
    #: Inside `Ledger.batch()`: anchors wait here for the batch's commit.
    _deferred_anchors: list[tuple[int, str, bool]] | None

    def meta(self, key: str) -> str | None:
        """A `ledger_meta` value (`device_id`, `subject_id`, `created_utc`, ...), or None."""
        with self._db.reading() as connection:
            row = connection.execute(
                "SELECT value FROM ledger_meta WHERE key = ?", (key,)
            ).fetchone()
        return None if row is None else str(row[0])

    @property
    def device_id(self) -> str | None:
        """The device this ledger was initialised for (None for ledgers from before `init`)."""
        return self.meta("device_id")

    @property
    def head(self) -> ChainHead | None:
        """The newest event: its id and chain hash (None for a ledger without events)."""
        return self._db.head

    def chain_hash_at(self, seq: int) -> str | None:
        """The chain hash of event `seq` (None when the ledger has no such event)."""
        with self._db.reading() as connection:
            return stored_hash_at(connection, seq)

    def anchor(self, *, reason: str, session_id: int | None = None) -> LedgerAnchor:
        """The ledger's current high-water mark (for the anchor file, audit log and MQTT)."""
        with self._db.reading() as connection:
            last_session = connection.execute("SELECT max(session_id) FROM sessions").fetchone()
            session = None
            if session_id is not None:
                row = connection.execute(
                    "SELECT session_id, subject_id, planned_cap_ul, status, delivered_ul,"
                    " intent_utc FROM session_status WHERE session_id = ?",
                    (session_id,),
                ).fetchone()
                if row is not None:
                    session = AnchoredSession(
                        session_id=int(row[0]),
                        subject_id=str(row[1]),
                        planned_cap_ul=int(row[2]),
                        status=str(row[3]),
                        delivered_ul=None if row[4] is None else int(row[4]),
                        intent_utc=str(row[5]),
                    )
            ledger_id = connection.execute(
                "SELECT value FROM ledger_meta WHERE key = 'ledger_id'"
            ).fetchone()[0]
            device = connection.execute(
                "SELECT value FROM ledger_meta WHERE key = 'device_id'"
            ).fetchone()
        head = self._db.head
        return LedgerAnchor(
            ledger_id=str(ledger_id),
            device_id="" if device is None else str(device[0]),
            last_event_seq=0 if head is None else head.seq,
            last_event_hash=GENESIS_HASH if head is None else head.hash,
            last_session_id=int(last_session[0] or 0),
            reason=reason,
            written_utc=utc_text(datetime.now(UTC)),
            session=session,
        )

    def _anchor_after(self, session_id: int, reason: str, *, strict: bool) -> None:
        """Hand the new high-water mark to the anchor sink after a committed session event.

        `strict` (the intent): a failure raises, so START is never sent for a session
        whose intent is not anchored outside the ledger file. Otherwise the failure is
        counted and the next anchor catches up (a ledger newer than its anchors is fine).
        """
        if self.anchor_sink is None:
            return
        if self._deferred_anchors is not None:  # not committed yet: after the batch
            self._deferred_anchors.append((session_id, reason, strict))
            return
        try:
            self.anchor_sink(self.anchor(reason=reason, session_id=session_id))
        except Exception as exc:
            self.anchor_failures += 1
            if strict:
                raise LedgerWriteError(
                    f"session {session_id}'s intent is recorded but its anchor could not be "
                    f"written ({exc}); not starting. The session counts its full cap."
                ) from exc

    def _end_record(self, write: Callable[[], int]) -> int:
        """Write an end-type record; on a full disk release the reserve and try once more."""
        try:
            return write()
        except LedgerWriteError as exc:
            if not is_disk_full(exc) or self.reserve is None or not self.reserve.release():
                raise
        return write()

    def record_restored_session(
        self,
        *,
        session: AnchoredSession,
        restore: dict[str, Any],
        at: Instant,
    ) -> None:
        """Add a session known only from anchors (by `ledger restore`) as UNCERTAIN.

        It keeps its original session id and intent time, and counts its full planned
        cap against every limit until it is reconciled. `restore` (who, from what) is
        stored in the intent's decision trace.
        """
        intent_at = Instant(
            utc=datetime.fromisoformat(session.intent_utc).astimezone(UTC),
            boot_id="restored-from-anchor",
            monotonic_ns=0,
        )
        body = {
            "planned_cap_ul": session.planned_cap_ul,
            "device_target_ul": session.planned_cap_ul,
            "device_max_duration_s": 0,
            "output_pct": 0,
            "drug": None,
            "concentration_per_ml": None,
            "dose_unit": None,
            "decision": {"restored_from_anchor": dict(restore), "anchor_status": session.status},
        }
        with self._db.writing() as connection:
            exists = connection.execute(
                "SELECT 1 FROM sessions WHERE session_id = ?", (session.session_id,)
            ).fetchone()
            if exists is not None:
                raise SessionStateError(f"session {session.session_id} is already in the ledger")
            connection.execute(
                "INSERT INTO sessions (session_id, subject_id, allocated_utc) VALUES (?, ?, ?)",
                (session.session_id, session.subject_id, utc_text(intent_at.utc)),
            )
            for kind, when, event_body in (
                (EventKind.INTENT, intent_at, body),
                (EventKind.UNCERTAIN, at, {"reason": RESTORED_FROM_ANCHOR}),
            ):
                self._db.insert_event(
                    connection,
                    kind=kind,
                    at=when,
                    session_id=session.session_id,
                    subject_id=session.subject_id,
                    body=event_body,
                )
