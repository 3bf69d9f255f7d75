"""Opening the ledger with its continuity checked: the I/O around `check_continuity`.

`open_checked` is what `nebuliser serve` (and every command that writes) uses: it
reads the anchors, looks at the file, opens it, asks the pure `check_continuity`, and
either returns a ledger that writes its anchors after every session event, or moves
the suspect file aside, records the HIGH `ledger_discontinuity` alarm in the audit
log and raises a `LedgerError` whose message ends with what to do.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final

from controller.dosing import Instant
from controller.ledger._anchor import (
    AUDIT_ANCHOR_KIND,
    AnchorReading,
    ContinuityVerdict,
    LedgerAnchor,
    LedgerFacts,
    LedgerFileState,
    anchor_from_json,
    anchor_to_json,
    check_continuity,
    read_anchor_file,
    read_audit_anchors,
    write_anchor_file,
)
from controller.ledger._database import quarantine, quarantined_files
from controller.ledger._errors import (
    LedgerCorruptError,
    LedgerDiscontinuityError,
    LedgerError,
    LedgerMissingError,
    LedgerQuarantinedError,
)
from controller.ledger._ledger import DEFAULT_OUTBOX_BUDGET_BYTES, LEDGER_FILE_NAME, Ledger
from controller.ledger._model import OutboxMessage
from controller.ledger._storage import ReserveFile
from controller.ledger._ward_check import (
    AnchorPoint,
    Supersession,
    SupersessionKind,
    WardEvidence,
    point_of,
)

if TYPE_CHECKING:
    from controller.security import AuditLog

__all__ = [
    "DISCONTINUITY_ALARM",
    "AnchorWriter",
    "LedgerLocation",
    "audit_record",
    "earlier_use",
    "ledger_facts",
    "open_checked",
    "read_readings",
    "read_supersessions",
    "ward_evidence",
]

#: `controller.security.AUDIT_DB_NAME`, repeated so that importing the ledger stays
#: light (the security package pulls in cryptography); a test checks they agree.
AUDIT_DB_NAME: Final = "audit.sqlite3"

#: The alarm code recorded (and, by `serve` with `[mqtt]`, published) when the check
#: refuses the ledger.
DISCONTINUITY_ALARM: Final = "ledger_discontinuity"


@dataclass(frozen=True, slots=True, kw_only=True)
class LedgerLocation:
    """The data directory and the files of one controller's ledger."""

    data_dir: Path

    @property
    def ledger_path(self) -> Path:
        """`<data-dir>/ledger.sqlite3`."""
        return self.data_dir / LEDGER_FILE_NAME

    @property
    def audit_path(self) -> Path:
        """`<data-dir>/audit.sqlite3`."""
        return self.data_dir / AUDIT_DB_NAME


def audit_record(location: LedgerLocation, kind: str, body: dict[str, object]) -> None:
    """Append one record of `kind` (an `AuditKind` value) to the audit log (fsynced)."""
    from controller.security import AuditKind, AuditLog  # noqa: PLC0415 - keep import light

    log = AuditLog(path=location.audit_path)
    try:
        log.append(AuditKind(kind), body, now=datetime.now(UTC))
    finally:
        log.close()


class AnchorWriter:
    """The ledger's anchor sink: the sidecar file, the audit log, and MQTT if given.

    `publish` (optional) receives every anchor too; the service passes a function that
    queues the retained `ledger/anchor` message (controller.telemetry).
    """

    def __init__(
        self,
        location: LedgerLocation,
        *,
        publish: Callable[[LedgerAnchor], None] | None = None,
    ) -> None:
        self._location = location
        self._publish = publish
        self._audit: AuditLog | None = None

    def __call__(self, anchor: LedgerAnchor) -> None:
        """Write the anchor everywhere; the first failure is raised after trying the rest."""
        failure: Exception | None = None
        try:
            write_anchor_file(self._location.data_dir, anchor)
        except OSError as exc:
            failure = exc
        try:
            from controller.security import AuditKind, AuditLog  # noqa: PLC0415 - light import

            if self._audit is None:
                self._audit = AuditLog(path=self._location.audit_path)
            self._audit.append(
                AuditKind.LEDGER_ANCHOR, anchor_to_json(anchor), now=datetime.now(UTC)
            )
        except (OSError, sqlite3.Error) as exc:
            failure = failure or exc
        if self._publish is not None:
            self._publish(anchor)
        if failure is not None:
            raise failure

    def close(self) -> None:
        """Close the audit log connection."""
        if self._audit is not None:
            self._audit.close()
            self._audit = None


def read_readings(location: LedgerLocation, *, history: bool = False) -> list[AnchorReading]:
    """Every anchor source on this machine (the MQTT anchor is the ward station's).

    Start-up needs only the newest audit anchor; `history` reads all of them (restore).
    """
    limit = 1_000_000 if history else 1
    return [
        read_anchor_file(location.data_dir),
        read_audit_anchors(location.audit_path, limit=limit),
    ]


def earlier_use(location: LedgerLocation) -> bool:
    """Traces of an earlier ledger besides anchors: files moved aside, audit records."""
    if quarantined_files(location.ledger_path):
        return True
    if not location.audit_path.exists():
        return False
    with (
        contextlib.suppress(sqlite3.Error),
        contextlib.closing(sqlite3.connect(location.audit_path, timeout=5.0)) as connection,
    ):
        return connection.execute("SELECT 1 FROM audit_log LIMIT 1").fetchone() is not None
    return True  # an audit log that cannot be read is a trace too


def _listed_points(body: dict[str, object], *keys: str) -> set[AnchorPoint]:
    points: set[AnchorPoint] = set()
    for key in keys:
        value = body.get(key)
        items = value if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, dict):
                with contextlib.suppress(ValueError):
                    points.add(point_of(anchor_from_json(item)))
    return points


def read_supersessions(audit_path: Path, ward: LedgerAnchor) -> tuple[Supersession, ...]:
    """The audit log's `ledger_restore` and `ledger_init` records, oldest first, each with
    the anchor points it accounted for: those it lists, and the ward's anchor if the audit
    log held that exact anchor before the record. Unreadable: none (nothing supersedes)."""
    if not audit_path.exists():
        return ()
    kinds = (str(SupersessionKind.RESTORE), str(SupersessionKind.INIT))
    try:
        with contextlib.closing(sqlite3.connect(audit_path, timeout=5.0)) as connection:
            (first_seen,) = connection.execute(
                "SELECT MIN(idx) FROM audit_log WHERE kind = ? "
                "AND json_extract(body_json, '$.ledger_id') = ? "
                "AND json_extract(body_json, '$.last_event_seq') = ? "
                "AND json_extract(body_json, '$.last_event_hash') = ?",
                (AUDIT_ANCHOR_KIND, *point_of(ward)),
            ).fetchone()
            rows = connection.execute(
                "SELECT idx, kind, body_json FROM audit_log WHERE kind IN (?, ?) ORDER BY idx",
                kinds,
            ).fetchall()
    except sqlite3.Error:
        return ()
    found: list[Supersession] = []
    for idx, kind, text in rows:
        try:
            body = json.loads(text)
        except ValueError:
            continue
        if not isinstance(body, dict) or not isinstance(body.get("ledger_id"), str):
            continue
        known = _listed_points(body, "newest_anchor", "previous_anchors", "ward_anchors")
        if first_seen is not None and first_seen < idx:
            known.add(point_of(ward))
        found.append(
            Supersession(
                kind=SupersessionKind(kind),
                ledger_id=body["ledger_id"],
                accepted_empty_history=body.get("accepted_empty_history") is True,
                known=frozenset(known),
            )
        )
    return tuple(found)


def ward_evidence(
    location: LedgerLocation, anchor: LedgerAnchor | None, topic: str
) -> WardEvidence | None:
    """The ward station's retained anchor with the audit facts `check_ward_anchor` needs."""
    if anchor is None:
        return None
    return WardEvidence(
        anchor=anchor,
        topic=topic,
        supersessions=read_supersessions(location.audit_path, anchor),
    )


def ledger_facts(
    ledger: Ledger, readings: Sequence[AnchorReading], ward: WardEvidence | None = None
) -> LedgerFacts:
    """What an open ledger shows, with the chain hash at every anchored event id."""
    seqs = {r.anchor.last_event_seq for r in readings if r.anchor is not None}
    if ward is not None:
        seqs.add(ward.anchor.last_event_seq)
    hashes = {seq: h for seq in seqs if seq > 0 and (h := ledger.chain_hash_at(seq)) is not None}
    return LedgerFacts(
        state=LedgerFileState.PRESENT,
        ledger_id=ledger.ledger_id,
        device_id=ledger.device_id,
        head=ledger.head,
        hashes=hashes,
    )


def _refuse(
    location: LedgerLocation,
    verdict: ContinuityVerdict,
    *,
    quarantined_to: Path | None,
    audit: bool = True,
) -> LedgerDiscontinuityError:
    error = LedgerDiscontinuityError(
        path=location.ledger_path,
        code=str(verdict.code),
        reason=verdict.reason,
        action=verdict.action,
        quarantined_to=quarantined_to,
        alarm_raised=audit,
    )
    if not audit:
        return error
    # Record third, but record: the audit log is independent of the ledger file.
    with contextlib.suppress(OSError, sqlite3.Error):
        audit_record(
            location,
            "alarm",
            {
                "alarm_code": DISCONTINUITY_ALARM,
                "action": "raised",
                "priority": "high",
                "code": str(verdict.code),
                "reason": verdict.reason,
                "what_to_do": verdict.action,
                "quarantined_to": None if quarantined_to is None else str(quarantined_to),
            },
        )
    return error


def open_checked(
    location: LedgerLocation,
    *,
    device_id: str,
    outbox_budget_bytes: int = DEFAULT_OUTBOX_BUDGET_BYTES,
    progress_interval_ms: int = 1000,
    reserve_bytes: int = 0,
    anchor_message: Callable[[LedgerAnchor], OutboxMessage] | None = None,
    seq_floor: int = 0,
    ward_anchor: LedgerAnchor | None = None,
    ward_topic: str = "",
) -> Ledger:
    """Open the ledger only if it continues its anchors; never creates one.

    On success the ledger writes an anchor (file + audit log, and `anchor_message` into
    its own outbox for MQTT) after every session event, and one now ("startup"); the
    end-record reserve is allocated. `seq_floor` is the highest device message seq
    used outside this ledger (`Outbox.raise_seq_floor`): its outbox continues above it.
    `ward_anchor` is this bed's retained anchor the ward station kept (fetched from
    `ward_topic` by `serve`), the third source (controller.ledger._ward_check).
    On refusal the suspect file is moved aside (`ledger.sqlite3.suspect-<utc>`), a
    HIGH `ledger_discontinuity` alarm is recorded in the audit log, and a `LedgerError`
    (usually `LedgerDiscontinuityError`) is raised whose message says what to do.
    """
    readings = read_readings(location)
    ward = ward_evidence(location, ward_anchor, ward_topic)
    path = location.ledger_path
    pre = _pre_open_facts(location)
    if pre is not None:
        moved = None
        if pre.state is LedgerFileState.EMPTY:
            moved = quarantine(path, label="suspect")
        verdict = check_continuity(readings=readings, facts=pre, device_id=device_id, ward=ward)
        # A new install that skipped `ledger init` is not a loss: no alarm record, which
        # would also make the data directory look used and `init` refuse.
        fresh = not pre.earlier_use and not any(r.anchor or r.problem for r in readings)
        # The ward's anchor of this device is a trace of an earlier ledger too.
        fresh = fresh and (ward is None or ward.anchor.device_id != device_id)
        raise _refuse(location, verdict, quarantined_to=moved, audit=not fresh)
    try:
        ledger = Ledger.open(
            path,
            outbox_budget_bytes=outbox_budget_bytes,
            progress_interval_ms=progress_interval_ms,
        )
    except LedgerCorruptError as exc:
        facts = LedgerFacts(state=LedgerFileState.UNREADABLE, detail=exc.detail)
        verdict = check_continuity(readings=readings, facts=facts, device_id=device_id, ward=ward)
        raise _refuse(location, verdict, quarantined_to=exc.quarantined_to) from None
    except (LedgerMissingError, LedgerQuarantinedError):
        raise  # handled by _pre_open_facts; a race with another process
    try:
        verdict = check_continuity(
            readings=readings,
            facts=ledger_facts(ledger, readings, ward),
            device_id=device_id,
            ward=ward,
        )
    except BaseException:
        ledger.close()
        raise
    if not verdict.ok:
        ledger.close()
        raise _refuse(location, verdict, quarantined_to=quarantine(path, label="suspect"))
    ledger.anchor_sink = _start_anchoring(
        ledger, location, anchor_message=anchor_message, seq_floor=seq_floor
    )
    reserve = ReserveFile(data_dir=location.data_dir, size_bytes=reserve_bytes)
    reserve.ensure()  # if it cannot be allocated, the storage level reports EMERGENCY
    ledger.reserve = reserve
    return ledger


def _start_anchoring(
    ledger: Ledger,
    location: LedgerLocation,
    *,
    anchor_message: Callable[[LedgerAnchor], OutboxMessage] | None,
    seq_floor: int,
) -> AnchorWriter:
    """Raise the outbox seq floor and write the start-up anchor; closes the ledger on failure."""
    try:
        ledger.outbox.raise_seq_floor(seq_floor)
    except LedgerError:
        ledger.close()
        raise
    publish = None
    if anchor_message is not None:
        build = anchor_message

        def publish(anchor: LedgerAnchor) -> None:
            now = datetime.now(UTC)
            at = Instant(utc=now, boot_id="anchor", monotonic_ns=time.monotonic_ns())
            ledger.outbox.append(build(anchor), at=at)

    writer = AnchorWriter(location, publish=publish)
    try:
        writer(ledger.anchor(reason="startup"))
    except (OSError, sqlite3.Error, LedgerError) as exc:
        ledger.close()
        writer.close()
        raise LedgerError(
            f"the ledger is fine but its anchors cannot be written to {location.data_dir} "
            f"({exc}); fix the data directory (permissions, free space) and start again"
        ) from exc
    return writer


def _pre_open_facts(location: LedgerLocation) -> LedgerFacts | None:
    """Facts when there is no usable file to open (missing or empty); None otherwise."""
    path = location.ledger_path
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return LedgerFacts(state=LedgerFileState.MISSING, earlier_use=earlier_use(location))
    if size == 0:
        return LedgerFacts(state=LedgerFileState.EMPTY)
    return None
