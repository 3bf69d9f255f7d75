"""The MQTT outbox: messages waiting for PUBACK, in the ledger's own database."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from controller.dosing import Instant
from controller.ledger._database import Database, parse_utc
from controller.ledger._model import OutboxKind, OutboxMessage, OutboxRow

__all__ = ["Outbox"]


class Outbox:
    """Pending messages in seq order. Rows are deleted only after PUBACK (or by the budget).

    `seq` is allocated by the ledger, increases strictly and is never reused, even after
    deletes and restarts (SQLite AUTOINCREMENT keeps the high-water mark).
    """

    def __init__(self, *, database: Database) -> None:
        self._db = database

    def append(self, message: OutboxMessage, *, at: Instant) -> int:
        """Commit one message on its own (telemetry samples); returns its seq.

        When the outbox exceeds its byte budget, the oldest telemetry rows are dropped in
        the same transaction and counted in the outbox's own counters (`drops()`).
        """
        (seq,) = self.append_many((message,), at=at)
        return seq

    def append_many(self, messages: Sequence[OutboxMessage], *, at: Instant) -> list[int]:
        """Commit several messages in one transaction (a batch of samples); their seqs."""
        with self._db.writing() as connection:
            return self._db.insert_outbox(
                connection, messages, at=at, event_id=None, session_id=None
            )

    def pending(self, *, limit: int = 100, after_seq: int = 0) -> list[OutboxRow]:
        """Up to `limit` rows with seq > `after_seq`, oldest first."""
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        with self._db.reading() as connection:
            rows = connection.execute(
                "SELECT seq, kind, topic, payload, qos, retain, created_utc FROM outbox"
                " WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
        return [
            OutboxRow(
                seq=int(seq),
                kind=OutboxKind(kind),
                topic=str(topic),
                payload=bytes(payload),
                qos=int(qos),
                retain=bool(retain),
                created_utc=parse_utc(str(created_utc)),
            )
            for seq, kind, topic, payload, qos, retain, created_utc in rows
        ]

    def high_seq(self) -> int:
        """The highest seq waiting (0 when empty); one index probe."""
        with self._db.reading() as connection:
            row = connection.execute("SELECT coalesce(max(seq), 0) FROM outbox").fetchone()
        return int(row[0])

    def newest_retained(self) -> list[OutboxRow]:
        """The newest waiting row of each retained topic, in seq order.

        Walks only the kinds that can be retained (state, session, alarm) through the
        `outbox_by_kind` index, never the telemetry backlog.
        """
        with self._db.reading() as connection:
            rows = connection.execute(
                "SELECT seq, kind, topic, payload, qos, retain, created_utc FROM outbox"
                " WHERE kind IN ('state', 'session', 'alarm') AND retain = 1 ORDER BY seq"
            ).fetchall()
        newest: dict[str, OutboxRow] = {}
        for seq, kind, topic, payload, qos, retain, created_utc in rows:
            newest[str(topic)] = OutboxRow(
                seq=int(seq),
                kind=OutboxKind(kind),
                topic=str(topic),
                payload=bytes(payload),
                qos=int(qos),
                retain=bool(retain),
                created_utc=parse_utc(str(created_utc)),
            )
        return sorted(newest.values(), key=lambda row: row.seq)

    def delete(self, seqs: Iterable[int]) -> int:
        """Delete acknowledged rows (after PUBACK); returns how many existed."""
        keys = [(int(seq),) for seq in seqs]
        if not keys:
            return 0
        with self._db.writing() as connection:
            cursor = connection.executemany("DELETE FROM outbox WHERE seq = ?", keys)
            deleted = cursor.rowcount  # summed over the batch; trigger rows not counted
        return deleted

    def count(self) -> int:
        """Number of rows waiting."""
        with self._db.reading() as connection:
            return int(connection.execute("SELECT row_count FROM outbox_stats").fetchone()[0])

    def bytes(self) -> int:
        """Payload plus topic bytes waiting (the figure the budget is applied to)."""
        with self._db.reading() as connection:
            return int(connection.execute("SELECT byte_count FROM outbox_stats").fetchone()[0])

    @property
    def budget_bytes(self) -> int:
        """The byte budget above which the oldest telemetry is dropped."""
        return self._db.budget_bytes

    def dropped_total(self) -> int:
        """Telemetry messages dropped by the budget since the ledger was created (O(1))."""
        return self.drops()[0]

    def drops(self) -> tuple[int, int, int]:
        """(messages, bytes, highest seq) dropped by the budget, ever (one-row read)."""
        with self._db.reading() as connection:
            row = connection.execute(
                "SELECT dropped_count, dropped_bytes, last_dropped_seq FROM outbox_stats"
            ).fetchone()
        return int(row[0]), int(row[1]), int(row[2])

    def last_seq(self) -> int:
        """The highest seq ever allocated (0 if none); survives deletes and restarts."""
        with self._db.reading() as connection:
            row = connection.execute(
                "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'outbox'), 0)"
            ).fetchone()
        return int(row[0])

    def raise_seq_floor(self, floor: int) -> None:
        """Make the next seq at least `floor + 1` (seqs used outside this ledger).

        Device seqs must never repeat, but a restored backup or a new ledger starts
        from its own high-water mark; `floor` is the highest seq known elsewhere (the
        sent-message archive, the seqs of a refused start-up's alarm). A no-op when
        the ledger is already past it.
        """
        if floor <= self.last_seq():
            return
        with self._db.writing() as connection:
            updated = connection.execute(
                "UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = 'outbox'", (floor,)
            ).rowcount
            if not updated:
                connection.execute(
                    "INSERT INTO sqlite_sequence (name, seq) VALUES ('outbox', ?)", (floor,)
                )
