"""The ledger's schema as an ordered list of migrations.

Each migration is a version number and the statements that take the database from
the previous version to it. A migration runs in one transaction together with the
row that records it in `schema_version`, so a crash leaves either the old or the new
schema, never half of one. Never edit a released migration: append a new one.
"""

from __future__ import annotations

__all__ = ["EVENT_KINDS", "MIGRATIONS", "OUTBOX_KINDS", "SCHEMA_VERSION"]

EVENT_KINDS: tuple[str, ...] = (
    "intent",
    "started",
    "start_refused",
    "progress",
    "ended",
    "uncertain",
    "reconciled",
    "override",
    "alarm",
    "decision",
    "command",
    "outbox_drop",
)
"""Every kind of ledger event (see docs/ledger.md for the body of each)."""

_ONCE_PER_SESSION = ("intent", "started", "start_refused", "ended", "uncertain", "reconciled")

OUTBOX_KINDS: tuple[str, ...] = ("telemetry", "state", "session", "alarm", "decision", "reply")


def _quoted(names: tuple[str, ...]) -> str:
    return ", ".join(f"'{name}'" for name in names)


def _append_only(table: str) -> tuple[str, ...]:
    return tuple(
        f"CREATE TRIGGER {table}_no_{verb.lower()} BEFORE {verb} ON {table} BEGIN "
        f"SELECT RAISE(ABORT, 'ledger table {table} is append-only: {verb} is not allowed'); END"
        for verb in ("UPDATE", "DELETE")
    )


def _session_join(alias: str, kind: str) -> str:
    return (
        f"LEFT JOIN events {alias} ON {alias}.session_id = s.session_id AND {alias}.kind = '{kind}'"
    )


_V1: tuple[str, ...] = (
    """CREATE TABLE schema_version (
        version INTEGER PRIMARY KEY,
        applied_utc TEXT NOT NULL
    ) STRICT""",
    *_append_only("schema_version"),
    """CREATE TABLE ledger_meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) STRICT""",
    *_append_only("ledger_meta"),
    # A random id per database file: subscribers can tell a replaced ledger (whose
    # sequence numbers restart) from the old one.
    """INSERT INTO ledger_meta (key, value) VALUES
        ('ledger_id', lower(hex(randomblob(16)))),
        ('created_utc', strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))""",
    """CREATE TABLE sessions (
        session_id INTEGER PRIMARY KEY AUTOINCREMENT
            CHECK (session_id BETWEEN 1 AND 4294967295),
        subject_id TEXT NOT NULL CHECK (length(subject_id) > 0),
        allocated_utc TEXT NOT NULL
    ) STRICT""",
    *_append_only("sessions"),
    f"""CREATE TABLE events (
        event_id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL CHECK (kind IN ({_quoted(EVENT_KINDS)})),
        session_id INTEGER REFERENCES sessions(session_id),
        subject_id TEXT,
        utc TEXT NOT NULL,
        boot_id TEXT NOT NULL CHECK (length(boot_id) > 0),
        monotonic_ns INTEGER NOT NULL,
        delivered_ul INTEGER CHECK (delivered_ul IS NULL OR delivered_ul >= 0),
        body TEXT NOT NULL CHECK (json_valid(body))
    ) STRICT""",
    *_append_only("events"),
    "CREATE INDEX events_by_session ON events(session_id, kind)",
    "CREATE INDEX events_by_kind ON events(kind, utc)",
    "CREATE INDEX events_by_subject ON events(subject_id, kind)",
    f"""CREATE UNIQUE INDEX events_once_per_session ON events(session_id, kind)
        WHERE kind IN ({_quoted(_ONCE_PER_SESSION)})""",
    # A session event other than the intent needs the intent first (intent before action).
    """CREATE TRIGGER events_need_intent BEFORE INSERT ON events
        WHEN NEW.session_id IS NOT NULL AND NEW.kind <> 'intent' AND NOT EXISTS (
            SELECT 1 FROM events WHERE session_id = NEW.session_id AND kind = 'intent')
        BEGIN SELECT RAISE(ABORT, 'session event without a recorded intent'); END""",
    f"""CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL CHECK (kind IN ({_quoted(OUTBOX_KINDS)})),
        topic TEXT NOT NULL,
        payload BLOB NOT NULL,
        qos INTEGER NOT NULL CHECK (qos IN (0, 1, 2)),
        retain INTEGER NOT NULL CHECK (retain IN (0, 1)),
        created_utc TEXT NOT NULL
    )""",
    "CREATE INDEX outbox_by_kind ON outbox(kind, seq)",
    # Outbox rows may be deleted (after PUBACK, or by the budget) but never changed.
    """CREATE TRIGGER outbox_no_update BEFORE UPDATE ON outbox
        BEGIN SELECT RAISE(ABORT, 'outbox rows are never updated, only deleted'); END""",
    """CREATE TABLE outbox_stats (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        row_count INTEGER NOT NULL,
        byte_count INTEGER NOT NULL
    ) STRICT""",
    "INSERT INTO outbox_stats (id, row_count, byte_count) VALUES (1, 0, 0)",
    """CREATE TRIGGER outbox_count_insert AFTER INSERT ON outbox BEGIN
        UPDATE outbox_stats SET row_count = row_count + 1,
            byte_count = byte_count + length(NEW.payload) + length(CAST(NEW.topic AS BLOB))
        WHERE id = 1; END""",
    """CREATE TRIGGER outbox_count_delete AFTER DELETE ON outbox BEGIN
        UPDATE outbox_stats SET row_count = row_count - 1,
            byte_count = byte_count - length(OLD.payload) - length(CAST(OLD.topic AS BLOB))
        WHERE id = 1; END""",
    # A session's status is derived from its events, never stored.
    # Fixed text only (S608 does not apply: no value is interpolated).
    f"""CREATE VIEW session_status AS
        SELECT s.session_id AS session_id,
            s.subject_id AS subject_id,
            i.utc AS intent_utc,
            i.boot_id AS intent_boot_id,
            i.monotonic_ns AS intent_monotonic_ns,
            json_extract(i.body, '$.planned_cap_ul') AS planned_cap_ul,
            CASE
                WHEN r.event_id IS NOT NULL THEN 'reconciled'
                WHEN n.event_id IS NOT NULL THEN 'refused_by_device'
                WHEN e.event_id IS NOT NULL THEN 'completed'
                WHEN u.event_id IS NOT NULL THEN 'uncertain'
                ELSE 'open'
            END AS status,
            st.event_id IS NOT NULL AS started,
            CASE
                WHEN r.event_id IS NOT NULL THEN r.delivered_ul
                WHEN n.event_id IS NOT NULL THEN 0
                WHEN e.event_id IS NOT NULL THEN e.delivered_ul
                ELSE (SELECT p.delivered_ul FROM events p
                      WHERE p.session_id = s.session_id AND p.kind = 'progress'
                      ORDER BY p.event_id DESC LIMIT 1)
            END AS delivered_ul
        FROM sessions s
        JOIN events i ON i.session_id = s.session_id AND i.kind = 'intent'
        {_session_join("st", "started")}
        {_session_join("n", "start_refused")}
        {_session_join("e", "ended")}
        {_session_join("u", "uncertain")}
        {_session_join("r", "reconciled")}""",  # noqa: S608
)

# Version 2 (MN-1 ICD 1.1 breath-aware heads): one breath summary per session, written
# after the run's last BREATH report (which arrives after the session end). A table of
# its own, so the events table and its CHECK on `kind` stay as released.
_V2_BREATH: tuple[str, ...] = (
    """CREATE TABLE breath_summaries (
        session_id INTEGER PRIMARY KEY REFERENCES sessions(session_id),
        utc TEXT NOT NULL,
        boot_id TEXT NOT NULL CHECK (length(boot_id) > 0),
        monotonic_ns INTEGER NOT NULL,
        body TEXT NOT NULL CHECK (json_valid(body))
    ) STRICT""",
    *_append_only("breath_summaries"),
    """CREATE TRIGGER breath_summaries_need_intent BEFORE INSERT ON breath_summaries
        WHEN NOT EXISTS (
            SELECT 1 FROM events WHERE session_id = NEW.session_id AND kind = 'intent')
        BEGIN SELECT RAISE(ABORT, 'breath summary without a recorded intent'); END""",
)

# Version 3: telemetry drop counters in the outbox's own table.
_V3_DROPS: tuple[str, ...] = (
    # Telemetry dropped by the outbox budget is counted in the outbox's own counters,
    # not as `outbox_drop` dose-ledger events (a long outage wrote one per sample).
    # Earlier `outbox_drop` events stay and are folded into the counters once.
    "ALTER TABLE outbox_stats ADD COLUMN dropped_count INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE outbox_stats ADD COLUMN dropped_bytes INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE outbox_stats ADD COLUMN last_dropped_seq INTEGER NOT NULL DEFAULT 0",
    """UPDATE outbox_stats SET
        dropped_count = (SELECT coalesce(sum(json_extract(body, '$.count')), 0)
            FROM events WHERE kind = 'outbox_drop'),
        dropped_bytes = (SELECT coalesce(sum(json_extract(body, '$.bytes')), 0)
            FROM events WHERE kind = 'outbox_drop'),
        last_dropped_seq = (SELECT coalesce(max(json_extract(body, '$.last_seq')), 0)
            FROM events WHERE kind = 'outbox_drop')
        WHERE id = 1""",
)

# Version 4: the hash chain over events.
_V4_CHAIN: tuple[str, ...] = (
    # docs/ledger.md "Continuity": each event's
    # SHA-256 over the previous event's chain hash and its own columns, computed by
    # the writer. Events written before version 4 have NULL here; their hashes are
    # recomputed from their columns when the chain is checked.
    "ALTER TABLE events ADD COLUMN chain_hash TEXT"
    " CHECK (chain_hash IS NULL OR length(chain_hash) = 64)",
)

# Each BREATH report of a run (ICD 1.1 §3), for the per-breath strip of a session plot
# (docs/decisions/0019-breath-strip-from-summaries.md). Like the breath summary: a table
# of its own, append-only, outside the events' hash chain (an estimate, never a dose).
# `lost_before`: reports missing from `breath_no` just before this one, as the run's
# accounting counted them (a renumbering after a head reboot is not a loss).
_BREATHS: tuple[str, ...] = (
    """CREATE TABLE breaths (
        breath_id INTEGER PRIMARY KEY AUTOINCREMENT,
        session_id INTEGER NOT NULL REFERENCES sessions(session_id),
        breath_no INTEGER NOT NULL CHECK (breath_no BETWEEN 0 AND 65535),
        lost_before INTEGER NOT NULL CHECK (lost_before >= 0),
        utc TEXT NOT NULL,
        boot_id TEXT NOT NULL CHECK (length(boot_id) > 0),
        monotonic_ns INTEGER NOT NULL,
        insp_ms INTEGER NOT NULL CHECK (insp_ms BETWEEN 0 AND 65535),
        exp_ms INTEGER NOT NULL CHECK (exp_ms BETWEEN 0 AND 65535),
        tidal_ml INTEGER NOT NULL CHECK (tidal_ml BETWEEN 0 AND 65535),
        peak_flow_ml_s INTEGER NOT NULL CHECK (peak_flow_ml_s BETWEEN 0 AND 65535),
        aerosol_insp_dul INTEGER NOT NULL CHECK (aerosol_insp_dul BETWEEN 0 AND 65535),
        aerosol_exp_dul INTEGER NOT NULL CHECK (aerosol_exp_dul BETWEEN 0 AND 65535)
    ) STRICT""",
    *_append_only("breaths"),
    "CREATE INDEX breaths_by_session ON breaths(session_id, breath_id)",
    """CREATE TRIGGER breaths_need_intent BEFORE INSERT ON breaths
        WHEN NOT EXISTS (
            SELECT 1 FROM events WHERE session_id = NEW.session_id AND kind = 'intent')
        BEGIN SELECT RAISE(ABORT, 'breath report without a recorded intent'); END""",
)

# Version 6: indexes for admission (issue 14). Admission reads the sessions inside
# its windows and the course totals, never the whole history: intents by subject and
# time (this boot's monotonic clock, and UTC), by session id, the continuations, and
# the volumes of ends and reconciliations (docs/ledger.md "Admission reads").
_V6_ADMISSION: tuple[str, ...] = (
    """CREATE INDEX intents_by_boot ON events(subject_id, boot_id, monotonic_ns)
        WHERE kind = 'intent'""",
    "CREATE INDEX intents_by_utc ON events(subject_id, utc) WHERE kind = 'intent'",
    "CREATE INDEX intents_by_session ON events(subject_id, session_id) WHERE kind = 'intent'",
    """CREATE INDEX intents_continuing ON events(subject_id)
        WHERE kind = 'intent' AND json_extract(body, '$.administration_id') IS NOT NULL""",
    """CREATE INDEX volumes_by_subject ON events(subject_id, kind, delivered_ul)
        WHERE kind IN ('ended', 'reconciled')""",
)

MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (1, _V1),
    (2, _V2_BREATH),
    (3, _V3_DROPS),
    (4, _V4_CHAIN),
    (5, _BREATHS),  # issue 19: each BREATH report of a run
    (6, _V6_ADMISSION),
)
"""(version, statements) in ascending order; versions are 1, 2, 3, ... without gaps."""

SCHEMA_VERSION: int = MIGRATIONS[-1][0]
"""The newest schema version this code knows."""
