"""Ward telemetry over MQTT: message schemas, the topic tree, the store-and-forward
publisher that drains the ledger's outbox, backfill, and the ward monitor's model.
See docs/mqtt.md."""

from controller.telemetry._archive import (
    PRUNE_BATCH_ROWS,
    ArchivedMessage,
    ArchivePruner,
    SentArchive,
)
from controller.telemetry._backfill import (
    MAX_BACKFILL_MESSAGES,
    MAX_BACKFILL_SPAN,
    build_backfill_reply,
)
from controller.telemetry._backoff import ReconnectBackoff
from controller.telemetry._broker import (
    MosquittoBroker,
    MosquittoMissingError,
    find_mosquitto,
    free_loopback_port,
)
from controller.telemetry._builders import (
    DeviceIdentity,
    OutboxEntry,
    encode_alarm_ack,
    encode_backfill_request,
    encode_presence,
    mark_historical,
    mark_republished,
    outbox_entry,
)
from controller.telemetry._connection import BedConnection
from controller.telemetry._export import json_schema_documents, write_json_schemas
from controller.telemetry._ledger_adapter import ledger_appender, ledger_message
from controller.telemetry._monitor import BackfillAsk, BedRow, SeqTracker, WardModel, urgency_key
from controller.telemetry._monitor_client import AckRequest, AckSigner, EventSink, WardMonitor
from controller.telemetry._monitor_history import AlarmEvent, BedHistory, Run
from controller.telemetry._outbox import (
    OutboxReader,
    OutboxRowLike,
    ReplyAppender,
    Settler,
    utc_text,
)
from controller.telemetry._publisher import (
    AlarmAckHandler,
    OutboxPublisher,
    PublisherStats,
    PublishRefusedError,
    mqtt_client,
)
from controller.telemetry._remote import publish_alarm_ack, publish_backfill_ask
from controller.telemetry._schemas import (
    ALL_SCHEMAS,
    DEVICE_SCHEMAS,
    ActiveAlarm,
    ActiveAlarmsMessage,
    AlarmAckCommand,
    AlarmMessage,
    AuditHeadMessage,
    BackfillReplyMessage,
    BackfillRequest,
    BreathingMessage,
    ConstraintResult,
    DecisionMessage,
    PrescriptionSummary,
    PresenceMessage,
    Reason,
    SessionMessage,
    StateMessage,
    TelemetryMessage,
)
from controller.telemetry._settings import MqttSettings, TlsSettings, require_safe_level
from controller.telemetry._topics import SCHEMA_ROUTES, BedTopics, Route, parse_bed_topic

__all__ = [
    "ALL_SCHEMAS",
    "DEVICE_SCHEMAS",
    "MAX_BACKFILL_MESSAGES",
    "MAX_BACKFILL_SPAN",
    "PRUNE_BATCH_ROWS",
    "SCHEMA_ROUTES",
    "AckRequest",
    "AckSigner",
    "ActiveAlarm",
    "ActiveAlarmsMessage",
    "AlarmAckCommand",
    "AlarmAckHandler",
    "AlarmEvent",
    "AlarmMessage",
    "ArchivePruner",
    "ArchivedMessage",
    "AuditHeadMessage",
    "BackfillAsk",
    "BackfillReplyMessage",
    "BackfillRequest",
    "BedConnection",
    "BedHistory",
    "BedRow",
    "BedTopics",
    "BreathingMessage",
    "ConstraintResult",
    "DecisionMessage",
    "DeviceIdentity",
    "EventSink",
    "MosquittoBroker",
    "MosquittoMissingError",
    "MqttSettings",
    "OutboxEntry",
    "OutboxPublisher",
    "OutboxReader",
    "OutboxRowLike",
    "PrescriptionSummary",
    "PresenceMessage",
    "PublishRefusedError",
    "PublisherStats",
    "Reason",
    "ReconnectBackoff",
    "ReplyAppender",
    "Route",
    "Run",
    "SentArchive",
    "SeqTracker",
    "SessionMessage",
    "Settler",
    "StateMessage",
    "TelemetryMessage",
    "TlsSettings",
    "WardModel",
    "WardMonitor",
    "build_backfill_reply",
    "encode_alarm_ack",
    "encode_backfill_request",
    "encode_presence",
    "find_mosquitto",
    "free_loopback_port",
    "json_schema_documents",
    "ledger_appender",
    "ledger_message",
    "mark_historical",
    "mark_republished",
    "mqtt_client",
    "outbox_entry",
    "parse_bed_topic",
    "publish_alarm_ack",
    "publish_backfill_ask",
    "require_safe_level",
    "urgency_key",
    "utc_text",
    "write_json_schemas",
]
