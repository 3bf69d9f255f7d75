"""The real ledger outbox, with the conveniences the publisher tests need.

Tests feed `OutboxEntry`s (telemetry builders) and may back-date rows to make them
historical; this wraps `controller.ledger.Ledger` so the publisher is always tested
against the production outbox table, never a copy of its schema.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from controller.dosing import Instant
from controller.ledger import Ledger, OutboxRow
from controller.telemetry import OutboxEntry, ledger_message

__all__ = ["LedgerBackedOutbox"]


class LedgerBackedOutbox:
    """`OutboxReader` over a real ledger file, plus `append`/`append_many`."""

    def __init__(self, *, path: Path) -> None:
        self._ledger = (
            Ledger.open(path)
            if path.exists()
            else Ledger.create(path, device_id="neb-test", subject_id="TEST-001")
        )

    def close(self) -> None:
        """Close the ledger."""
        self._ledger.close()

    @staticmethod
    def _at(created_utc: datetime | None) -> Instant:
        utc = created_utc or datetime.now(UTC)
        return Instant(utc=utc.astimezone(UTC), boot_id="test-boot", monotonic_ns=0)

    def append(self, entry: OutboxEntry, *, created_utc: datetime | None = None) -> int:
        """One message in its own transaction; returns its seq."""
        return self._ledger.outbox.append(ledger_message(entry), at=self._at(created_utc))

    def append_many(
        self, entries: Sequence[OutboxEntry], *, created_utc: datetime | None = None
    ) -> list[int]:
        """Several messages in one transaction; their seqs in order."""
        messages = [ledger_message(entry) for entry in entries]
        return self._ledger.outbox.append_many(messages, at=self._at(created_utc))

    def pending(self, *, limit: int = 100, after_seq: int = 0) -> list[OutboxRow]:
        """Rows waiting, oldest first."""
        return self._ledger.outbox.pending(limit=limit, after_seq=after_seq)

    def high_seq(self) -> int:
        """The highest seq waiting."""
        return self._ledger.outbox.high_seq()

    def newest_retained(self) -> list[OutboxRow]:
        """The newest waiting row of each retained topic."""
        return self._ledger.outbox.newest_retained()

    def delete(self, seqs: Iterable[int]) -> int:
        """Delete acknowledged rows."""
        return self._ledger.outbox.delete(seqs)

    def count(self) -> int:
        """Rows waiting."""
        return self._ledger.outbox.count()
