"""The service's audit log: what happened, hash-chained in ``<data-dir>/audit.sqlite3``.

Record third: audit appends run on their own writer thread (a `Recorder`), after
the action they describe; nothing on the STOP path waits for them.

What is recorded, and from where:
- at start-up: the configuration hash and the prescription (hash, source, signer);
- remote commands (accepted or refused) and start-request outcomes, by the command
  intake (`_commands.py`), right after acting;
- decisions, overrides, alarms and acknowledgements, *mirrored* from the dose ledger
  (the ledger is written first, by the supervisor; `mirror_ledger` copies each new
  event once, tagged with the ledger id and event id, so a crash between the two
  writes is caught up at the next start and nothing is audited twice);
- anchors: after every batch of new records (checked each `MIRROR_INTERVAL_S`), after
  each session end, every `ANCHOR_INTERVAL_S` and at shutdown an anchor record is
  appended and its INDEX:HASH published, retained, QoS 1 (docs/security.md §5).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final

from controller.clock import Clock
from controller.config import LoadedPrescription, NebuliserConfig
from controller.ledger import LEDGER_FILE_NAME, AlarmAction, EventKind, Ledger, LedgerEvent
from controller.logging import get_logger
from controller.security import (
    AUDIT_DB_NAME,
    AuditHead,
    AuditKind,
    AuditLog,
    canonical_json,
    read_hmac_key_file,
)
from controller.session import CONTROL_REQUEST_COMMAND_PREFIX, OVERRIDE_REFUSED_COMMAND
from controller.telemetry import AuditHeadMessage

from ._recorder import Recorder

__all__ = [
    "ANCHOR_INTERVAL_S",
    "MIRRORED_LEDGER_KINDS",
    "HeadPublisher",
    "ServiceAudit",
    "anchor_body",
    "config_sha256",
    "load_audit_hmac_key",
    "run_audit",
]

_log = get_logger(__name__)

#: How often the audit head is anchored (recorded and published) while running.
ANCHOR_INTERVAL_S: Final = 900.0
#: How often new ledger events are copied into the audit log.
MIRROR_INTERVAL_S: Final = 1.0
MIRRORED_LEDGER_KINDS: Final = frozenset(
    {EventKind.DECISION, EventKind.OVERRIDE, EventKind.ALARM, EventKind.COMMAND}
)


def _mirrored(event: LedgerEvent) -> bool:
    """Command rows are mirrored only when a person asked locally (start, confirm,
    stop, alarm ack through the control socket, a refused override): remote commands
    have their own audit records (`_commands.py`), device reports need none."""
    if event.kind is not EventKind.COMMAND:
        return True
    command = str(event.body.get("command", ""))
    return command.startswith(CONTROL_REQUEST_COMMAND_PREFIX) or command == (
        OVERRIDE_REFUSED_COMMAND
    )


#: systemd credential name: `LoadCredential=audit-hmac-key:/etc/nebuliser/audit-hmac.key`.
AUDIT_HMAC_CREDENTIAL: Final = "audit-hmac-key"


def load_audit_hmac_key(path: Path | None) -> bytes | None:
    """The audit HMAC key for `serve`: `[security] audit_hmac_key_file`, else the
    systemd credential `audit-hmac-key` (``$CREDENTIALS_DIRECTORY``), else None."""
    if path is None:
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        candidate = None if directory is None else Path(directory) / AUDIT_HMAC_CREDENTIAL
        if candidate is None or not candidate.exists():
            return None
        path = candidate
    return read_hmac_key_file(path)


def config_sha256(config: NebuliserConfig) -> str:
    """SHA-256 of the effective configuration (canonical JSON; secrets appear masked)."""
    return hashlib.sha256(canonical_json(config.model_dump(mode="json"))).hexdigest()


def _audit_kind(event: LedgerEvent) -> AuditKind:
    if event.kind is EventKind.ALARM:
        if event.body.get("action") == str(AlarmAction.ACKNOWLEDGED):
            return AuditKind.ACKNOWLEDGEMENT
        return AuditKind.ALARM
    if event.kind is EventKind.OVERRIDE:
        return AuditKind.OVERRIDE
    if event.kind is EventKind.COMMAND:  # only local requests are mirrored (`_mirrored`)
        return AuditKind.CONTROL_REQUEST
    return AuditKind.DECISION


class _Stores:
    """Lives on the audit writer thread: the audit log and a read-only ledger view."""

    def __init__(self, *, data_dir: Path, hmac_key: bytes | None) -> None:
        self.data_dir = data_dir
        self.log = AuditLog.in_data_dir(data_dir, hmac_key=hmac_key)
        self._reader: Ledger | None = None
        self._watermark: dict[str, int] = {}

    def close(self) -> None:
        self.log.close()
        if self._reader is not None:
            self._reader.close()

    def _mirrored_up_to(self, ledger_id: str) -> int:
        if ledger_id not in self._watermark:
            with contextlib.closing(sqlite3.connect(self.data_dir / AUDIT_DB_NAME)) as conn:
                row = conn.execute(
                    "SELECT max(json_extract(body_json, '$.ledger_event_id')) FROM audit_log "
                    "WHERE json_extract(body_json, '$.ledger_id') = ?",
                    (ledger_id,),
                ).fetchone()
            self._watermark[ledger_id] = int(row[0]) if row and row[0] is not None else 0
        return self._watermark[ledger_id]

    def mirror(self, now: datetime) -> int:
        """Copy ledger events not yet in the audit log; returns how many were copied."""
        if self._reader is None:
            path = self.data_dir / LEDGER_FILE_NAME
            if not path.exists():
                return 0
            # Opened after the service's writer checked the file (no second check).
            self._reader = Ledger.open(path, read_only=True, check=False)
        ledger_id = self._reader.ledger_id
        after = self._mirrored_up_to(ledger_id)
        # Incremental: only events after the last one mirrored (the primary key, so
        # the read is O(new events) whatever the ledger's size or the clock did).
        events = self._reader.events(kinds=MIRRORED_LEDGER_KINDS, after_event_id=after)
        copied = 0
        for event in events:
            if not _mirrored(event):
                # Known not to be mirrored: not read again this run (after a restart the
                # watermark is the last mirrored event, so a few are read once more).
                self._watermark[ledger_id] = event.event_id
                continue
            body = {
                "ledger_id": ledger_id,
                "ledger_event_id": event.event_id,
                "ledger_utc": event.at.utc.isoformat(),
                "session_id": event.session_id,
                "subject_id": event.subject_id,
                "event": dict(event.body),
            }
            self.log.append(_audit_kind(event), body, now=now)
            self._watermark[ledger_id] = event.event_id
            copied += 1
        return copied


class ServiceAudit:
    """The running service's audit log (one writer thread; appends in submission order)."""

    def __init__(self, *, data_dir: Path, clock: Clock, hmac_key: bytes | None = None) -> None:
        self._clock = clock
        #: Records submitted so far (anchors included): a change means "anchor again".
        self.appended = 0
        self._recorder: Recorder[_Stores] = Recorder(
            opener=lambda: _Stores(data_dir=data_dir, hmac_key=hmac_key),
            closer=lambda stores: stores.close(),
        )

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[ServiceAudit]:
        """Open the audit log; on exit, finish every append and close it."""
        async with self._recorder.running():
            yield self

    @property
    def failures(self) -> int:
        """Appends that failed (logged); a health page or test can read this."""
        return self._recorder.failures

    def record(self, kind: AuditKind, body: Mapping[str, object]) -> None:
        """Queue one record (never blocks; the time is taken now, on the event loop)."""
        self.appended += 1
        now = self._clock.now().utc
        record = dict(body)
        self._recorder.submit(
            lambda stores: stores.log.append(kind, record, now=now), what=f"audit {kind}"
        )

    async def append(self, kind: AuditKind, body: Mapping[str, object]) -> AuditHead:
        """Append one record and wait until it is committed; returns its INDEX:HASH."""
        self.appended += 1
        now = self._clock.now().utc
        record = dict(body)
        stored = await self._recorder.call(lambda stores: stores.log.append(kind, record, now=now))
        return AuditHead(index=stored.index, hash=stored.hash)

    async def mirror_ledger(self) -> int:
        """Copy new decision/override/alarm events from the ledger; returns the count."""
        now = self._clock.now().utc
        copied = await self._recorder.call(lambda stores: stores.mirror(now))
        self.appended += copied
        return copied

    async def anchor(self, reason: str) -> AuditHead:
        """Mirror the ledger, then append an anchor record; its INDEX:HASH is the new head."""
        await self.mirror_ledger()
        previous = await self._recorder.call(lambda stores: stores.log.head())
        return await self.append(
            AuditKind.ANCHOR,
            {"reason": reason, "previous_head": None if previous is None else str(previous)},
        )

    async def record_startup(
        self, config: NebuliserConfig, prescription: LoadedPrescription | None
    ) -> None:
        """The configuration hash and the prescription in force, at start-up."""
        security = config.effective_security
        await self.append(
            AuditKind.CONFIG,
            {
                "config_sha256": config_sha256(config),
                "device_id": config.device.device_id,
                "ward": config.device.ward,
                "bed": config.device.bed,
                "require_signed_prescriptions": security.require_signed_prescriptions,
                "senders": sorted(f"{s.id}:{s.role.value}" for s in security.senders),
                "remote_commands": config.mqtt is not None and config.security is not None,
            },
        )
        if prescription is not None:
            await self.append(
                AuditKind.PRESCRIPTION,
                {
                    "event": "in_force",
                    "sha256": prescription.sha256,
                    "source": prescription.source,
                    "signed_by": prescription.signed_by,
                    "subject_id": prescription.prescription.subject_id,
                    "protocol_id": prescription.prescription.protocol_id,
                },
            )


HeadPublisher = Callable[[AuditHead, str], Awaitable[None]]


@dataclass(kw_only=True)
class _AnchorState:
    sessions_ended: int
    next_anchor_s: float
    anchored_at: int = -1  # `ServiceAudit.appended` right after the last anchor


#: How long the shutdown anchor may take to reach the broker.
_SHUTDOWN_PUBLISH_S: Final = 5.0


async def run_audit(
    audit: ServiceAudit,
    *,
    sessions_ended: Callable[[], int],
    publish_head: HeadPublisher | None = None,
    before_shutdown_anchor: Callable[[], None] | None = None,
    anchor_interval_s: float = ANCHOR_INTERVAL_S,
    mirror_interval_s: float = MIRROR_INTERVAL_S,
) -> None:
    """Mirror the ledger every `mirror_interval_s`; anchor after every batch of new
    records, after each session end and on a timer (each anchor published through
    `publish_head` when given). Runs until cancelled; at cancellation (shutdown)
    `before_shutdown_anchor` queues its last records, then a last anchor is recorded
    and published (bounded wait), so it covers them. Never raises for a failed
    append: it is logged and retried at the next poll."""
    loop = asyncio.get_running_loop()
    state = _AnchorState(sessions_ended=sessions_ended(), next_anchor_s=loop.time())

    async def anchor(reason: str) -> None:
        head = await audit.anchor(reason)
        state.anchored_at = audit.appended
        state.next_anchor_s = loop.time() + anchor_interval_s
        _log.info("audit anchor", reason=reason, head=str(head))
        if publish_head is not None:
            await publish_head(head, reason)

    try:
        while True:
            try:
                await audit.mirror_ledger()
                ended = sessions_ended()
                if ended != state.sessions_ended:
                    state.sessions_ended = ended
                    await anchor("session_end")
                elif state.anchored_at < 0:
                    await anchor("startup")
                elif audit.appended != state.anchored_at:
                    await anchor("batch")
                elif loop.time() >= state.next_anchor_s:
                    await anchor("periodic")
            except Exception as exc:  # noqa: BLE001 - the audit must never stop the service
                _log.error("audit log append failed; retrying", error=repr(exc))
            await asyncio.sleep(mirror_interval_s)
    except asyncio.CancelledError:
        if before_shutdown_anchor is not None:
            before_shutdown_anchor()
        with contextlib.suppress(OSError, sqlite3.Error, ValueError, TimeoutError):
            async with asyncio.timeout(_SHUTDOWN_PUBLISH_S):
                await anchor("shutdown")
        raise


def anchor_body(
    head: AuditHead, *, device_id: str, ward: str, bed: str, reason: str, now: datetime
) -> bytes:
    """The JSON published on ``<root>/<ward>/<bed>/audit/head`` (retained, QoS 1)."""
    message = AuditHeadMessage(
        utc=now, device_id=device_id, ward=ward, bed=bed, reason=reason, head=str(head)
    )
    return message.model_dump_json(by_alias=True).encode("utf-8")
