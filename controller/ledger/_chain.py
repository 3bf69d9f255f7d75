"""The hash chain over ledger events and the expected-schema fingerprint.

Event i's chain hash is SHA-256 over the JSON array
``[previous chain hash, event_id, kind, session_id, subject_id, utc, boot_id,
monotonic_ns, delivered_ul, body]`` (the previous hash of the first event is 64
zeros). The last event's chain hash therefore stands for the whole history: an
anchor that records (event id, chain hash) is contradicted by any ledger that lost,
changed or replaced an event up to that id.
"""

from __future__ import annotations

import functools
import hashlib
import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from controller.ledger._schema import MIGRATIONS

__all__ = [
    "GENESIS_HASH",
    "ChainHead",
    "ChainReport",
    "event_chain_hash",
    "expected_schema",
    "next_chain_hash",
    "schema_differences",
    "stored_hash_at",
    "stored_head",
    "verify_chain",
]

GENESIS_HASH = "0" * 64

_CHAIN_COLUMNS = (
    "event_id, kind, session_id, subject_id, utc, boot_id, monotonic_ns, delivered_ul, body"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ChainHead:
    """The newest event: its id (the ledger's event seq) and chain hash."""

    seq: int
    hash: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ChainReport:
    """Result of recomputing the chain: the head, the hashes asked for, the first problem."""

    head: ChainHead | None
    events_checked: int
    hashes: dict[int, str]
    problem: str | None = None

    @property
    def ok(self) -> bool:
        """True when every stored chain hash matched the recomputed one."""
        return self.problem is None


def event_chain_hash(previous: str, row: Iterable[Any]) -> str:
    """The chain hash of one event row (columns in `_CHAIN_COLUMNS` order)."""
    text = json.dumps([previous, *row], separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def verify_chain(
    connection: sqlite3.Connection, *, wanted: Iterable[int] = (), upto: int | None = None
) -> ChainReport:
    """Recompute the chain over every event (up to `upto`), checking stored hashes.

    Returns the head, the recomputed hash of each event id in `wanted` that exists,
    and the first event whose stored hash disagrees (edited row, reordered history).
    """
    want = set(wanted)
    hashes: dict[int, str] = {}
    previous = GENESIS_HASH
    head: ChainHead | None = None
    checked = 0
    limit = "" if upto is None else " WHERE event_id <= ?"
    params: tuple[int, ...] = () if upto is None else (upto,)
    cursor = connection.execute(
        # Fixed text only; the limit is a ? parameter.
        f"SELECT {_CHAIN_COLUMNS}, chain_hash FROM events{limit} ORDER BY event_id",  # noqa: S608
        params,
    )
    for *row, stored in cursor:
        current = event_chain_hash(previous, row)
        if stored is not None and stored != current:
            return ChainReport(
                head=head,
                events_checked=checked,
                hashes=hashes,
                problem=f"event {row[0]} does not match its stored chain hash (edited or "
                "reordered history)",
            )
        event_id = int(row[0])
        if event_id in want:
            hashes[event_id] = current
        head = ChainHead(seq=event_id, hash=current)
        previous = current
        checked += 1
    return ChainReport(head=head, events_checked=checked, hashes=hashes)


def next_chain_hash(connection: sqlite3.Connection, row: Iterable[Any]) -> str:
    """The chain hash for a new event, from the newest stored one (inside the transaction)."""
    last = connection.execute(
        "SELECT event_id, chain_hash FROM events ORDER BY event_id DESC LIMIT 1"
    ).fetchone()
    if last is None:
        previous = GENESIS_HASH
    elif last[1] is not None:
        previous = str(last[1])
    else:  # events from before schema 4: recompute once from their columns
        report = verify_chain(connection)
        previous = GENESIS_HASH if report.head is None else report.head.hash
    return event_chain_hash(previous, row)


def stored_head(connection: sqlite3.Connection) -> ChainHead | None:
    """The newest event's id and chain hash (recomputed if it predates schema 4)."""
    last = connection.execute(
        "SELECT event_id, chain_hash FROM events ORDER BY event_id DESC LIMIT 1"
    ).fetchone()
    if last is None:
        return None
    if last[1] is not None:
        return ChainHead(seq=int(last[0]), hash=str(last[1]))
    return verify_chain(connection).head


def stored_hash_at(connection: sqlite3.Connection, seq: int) -> str | None:
    """The chain hash of event `seq` (None if there is no such event)."""
    row = connection.execute("SELECT chain_hash FROM events WHERE event_id = ?", (seq,)).fetchone()
    if row is None:
        return None
    if row[0] is not None:
        return str(row[0])
    return verify_chain(connection, wanted=(seq,), upto=seq).hashes.get(seq)


_SchemaRow = tuple[str, str, str]


@functools.cache
def expected_schema(upto_version: int | None = None) -> frozenset[_SchemaRow]:
    """(type, name, sql) of every schema object the migrations create (computed in memory),
    all of them or those up to `upto_version`."""
    connection = sqlite3.connect(":memory:")
    try:
        for version, statements in MIGRATIONS:
            if upto_version is not None and version > upto_version:
                break
            for statement in statements:
                connection.execute(statement)
        return _schema_rows(connection)
    finally:
        connection.close()


def _schema_rows(connection: sqlite3.Connection) -> frozenset[_SchemaRow]:
    return frozenset(
        (str(kind), str(name), str(sql))
        for kind, name, sql in connection.execute(
            "SELECT type, name, sql FROM sqlite_master"
            " WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%'"
        )
    )


def schema_differences(
    connection: sqlite3.Connection, *, upto_version: int | None = None
) -> list[str]:
    """What differs from the migrations' schema: 'altered view session_status', ...

    Empty for a file whose schema is exactly what the migrations (up to `upto_version`)
    produce.
    """
    found = _schema_rows(connection)
    wanted = expected_schema(upto_version)
    found_by = {(k, n): s for k, n, s in found}
    wanted_by = {(k, n): s for k, n, s in wanted}
    problems = [
        f"missing {kind} {name}" for (kind, name) in sorted(wanted_by.keys() - found_by.keys())
    ]
    problems += [
        f"unexpected {kind} {name}" for (kind, name) in sorted(found_by.keys() - wanted_by.keys())
    ]
    problems += [
        f"altered {kind} {name}"
        for (kind, name) in sorted(wanted_by.keys() & found_by.keys())
        if wanted_by[(kind, name)] != found_by[(kind, name)]
    ]
    return problems
