"""The durable dose ledger: append-only SQLite events, the MQTT outbox, integrity, storage floor.

See docs/ledger.md for the schema, durability guarantees and the restart procedure.
"""

from controller.ledger._errors import (
    LedgerCorruptError,
    LedgerError,
    LedgerQuarantinedError,
    LedgerSchemaTooNewError,
    LedgerWriteError,
    SessionStateError,
    UnknownSessionError,
)
from controller.ledger._ledger import (
    BREATH_SUMMARY_KEYS,
    DEFAULT_OUTBOX_BUDGET_BYTES,
    LEDGER_FILE_NAME,
    Ledger,
)
from controller.ledger._model import (
    AlarmAction,
    AlarmEntry,
    EndSource,
    EventKind,
    LedgerEvent,
    OutboxKind,
    OutboxMessage,
    OutboxRow,
    OutboxStamp,
    PayloadBuilder,
    ReconcileSource,
    SessionSummary,
    SubjectTotals,
    decision_to_json,
    summary_to_json,
)
from controller.ledger._outbox import Outbox
from controller.ledger._schema import SCHEMA_VERSION
from controller.ledger._storage import StorageReport, check_storage_floor

__all__ = [
    "BREATH_SUMMARY_KEYS",
    "DEFAULT_OUTBOX_BUDGET_BYTES",
    "LEDGER_FILE_NAME",
    "SCHEMA_VERSION",
    "AlarmAction",
    "AlarmEntry",
    "EndSource",
    "EventKind",
    "Ledger",
    "LedgerCorruptError",
    "LedgerError",
    "LedgerEvent",
    "LedgerQuarantinedError",
    "LedgerSchemaTooNewError",
    "LedgerWriteError",
    "Outbox",
    "OutboxKind",
    "OutboxMessage",
    "OutboxRow",
    "OutboxStamp",
    "PayloadBuilder",
    "ReconcileSource",
    "SessionStateError",
    "SessionSummary",
    "StorageReport",
    "SubjectTotals",
    "UnknownSessionError",
    "check_storage_floor",
    "decision_to_json",
    "summary_to_json",
]
