"""What the MQTT publisher sees of the ledger's outbox in the running controller.

Reads go through a read-only connection on the event loop (no fsync, index reads
only); everything that writes — archiving acknowledged rows in the sent-message
archive, deleting them from the outbox, pruning the archive — is queued on the
ledger's writer thread, in order with the dose records (issue 14: nothing on the
event loop grows with uptime).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from controller.ledger import Ledger, Outbox, OutboxRow
from controller.telemetry import ArchivePruner, OutboxRowLike, SentArchive, utc_text

from ._recorder import Recorder

__all__ = ["OutboxView"]


def _utc_now() -> datetime:
    return datetime.now(UTC)


class OutboxView:
    """What the publisher sees of the ledger's outbox: reads through a read-only
    connection on the loop (no fsync); acknowledged rows are archived, deleted and
    the archive pruned on the ledger's writer thread (`settle`).

    Rows whose delete is still queued are hidden, so they are not published again.
    A failed delete makes them visible again (re-sent; monitors drop duplicates).
    """

    def __init__(
        self,
        *,
        reader: Outbox,
        recorder: Recorder[Ledger],
        archive_writer: SentArchive | None = None,
        pruner: ArchivePruner | None = None,
    ) -> None:
        self._reader = reader
        self._recorder = recorder
        self._archive_writer = archive_writer
        self._pruner = pruner or ArchivePruner()
        self._deleting: set[int] = set()
        self._finished: deque[list[int]] = deque()  # appended by the writer thread

    def pending(self, *, limit: int = 100, after_seq: int = 0) -> list[OutboxRow]:
        """Up to `limit` rows with seq > `after_seq`, not being deleted, in seq order."""
        while self._finished:
            self._deleting.difference_update(self._finished.popleft())
        rows = self._reader.pending(limit=limit + len(self._deleting), after_seq=after_seq)
        return [row for row in rows if row.seq not in self._deleting][:limit]

    def high_seq(self) -> int:
        """The highest seq waiting (rows being deleted included: they are below it)."""
        return self._reader.high_seq()

    def newest_retained(self) -> list[OutboxRow]:
        """The newest waiting row of each retained topic (one being deleted included:
        republishing it again is harmless, and hiding it could expose an older one)."""
        return self._reader.newest_retained()

    def delete(self, seqs: Iterable[int]) -> int:
        """Queue the delete of acknowledged rows (never waits for the disk)."""
        self._queue(list(seqs), archived=(), sent_utc="")
        return 0

    def settle(self, rows: Sequence[OutboxRowLike], sent: datetime) -> None:
        """The publisher's `Settler`: archive, delete and (rarely, bounded) prune, all
        queued on the writer thread. Nothing here touches the disk on the loop."""
        self._queue([row.seq for row in rows], archived=tuple(rows), sent_utc=utc_text(sent))

    def _queue(self, batch: list[int], *, archived: Sequence[OutboxRowLike], sent_utc: str) -> None:
        self._deleting.update(batch)
        finished = self._finished
        archive, pruner = self._archive_writer, self._pruner

        def _settle(ledger: Ledger) -> int:
            try:
                if archive is not None and archived:
                    # Archive first: a row is never gone from both places.
                    archive.record(archived, sent_utc=sent_utc)
                return ledger.outbox.delete(batch)
            finally:
                finished.append(batch)
                if archive is not None:
                    pruner.prune_if_due(archive, now_s=time.monotonic(), now_utc=_utc_now())

        self._recorder.submit(_settle, what="outbox settle")

    def waiting(self) -> bool:
        """Whether any row is still waiting for its PUBACK."""
        return bool(self.pending(limit=1))
