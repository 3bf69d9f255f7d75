"""`nebuliser ledger restore BACKUP`: put a verified backup back, and say what it lacks.

1. The backup is copied into the data directory under a temporary name and opened
   like any ledger: integrity check, expected schema, migrations.
2. Its hash chain is recomputed (every stored event hash must match), and every
   anchor the audit log and the anchor file hold for the same ledger, up to the
   backup's newest event, must match it: the backup really is this ledger's history.
3. Anchors beyond the backup show what it is missing: events, and the sessions they
   were about. Each such session is added to the restored ledger as UNCERTAIN with its
   original id, intent time and planned cap, so it counts its full cap until the
   device's figures (or a clinician's override) reconcile it.
4. The copy is renamed into place, the restore (who, when, from what, what was
   missing) is recorded in the audit log, and fresh anchors are written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from controller.dosing import Instant
from controller.ledger._anchor import AnchoredSession, LedgerAnchor, anchor_to_json
from controller.ledger._chain import ChainHead, verify_chain
from controller.ledger._continuity import (
    AnchorWriter,
    LedgerLocation,
    audit_record,
    read_readings,
)
from controller.ledger._database import fsync_dir
from controller.ledger._errors import LedgerError, LedgerExistsError
from controller.ledger._ledger import Ledger

__all__ = ["RestorePlan", "plan_restore", "restore_ledger"]

_READ_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class RestorePlan:
    """What a backup holds and what it lacks against the anchors."""

    backup: Path
    backup_sha256: str
    ledger_id: str
    device_id: str | None
    head: ChainHead | None
    events_checked: int
    anchors_confirmed: int
    newest_anchor: LedgerAnchor | None
    missing_sessions: tuple[AnchoredSession, ...]

    @property
    def missing_events(self) -> int:
        """Events the anchors show beyond the backup's newest one."""
        if self.newest_anchor is None:
            return 0
        head_seq = 0 if self.head is None else self.head.seq
        return max(0, self.newest_anchor.last_event_seq - head_seq)

    def describe(self) -> list[str]:
        """Lines for the clinical engineer: what the backup has and lacks."""
        head_seq = 0 if self.head is None else self.head.seq
        lines = [
            f"backup {self.backup} (sha256 {self.backup_sha256[:16]}...)",
            f"  ledger {self.ledger_id}, device {self.device_id or '(not recorded)'}, "
            f"{self.events_checked} events, hash chain verified",
            f"  matches {self.anchors_confirmed} anchor(s) of this ledger up to event {head_seq}",
        ]
        newest = self.newest_anchor
        if newest is None or self.missing_events == 0:
            lines.append("  missing against the anchors: nothing")
            return lines
        lines.append(
            f"  MISSING: {self.missing_events} event(s) after event {head_seq}; the newest "
            f"anchor ({newest.written_utc}) shows event {newest.last_event_seq}, "
            f"session {newest.last_session_id}"
        )
        for session in self.missing_sessions:
            delivered = "?" if session.delivered_ul is None else f"{session.delivered_ul}"
            lines.append(
                f"  session #{session.session_id} {session.subject_id} at "
                f"{session.intent_utc}: planned {session.planned_cap_ul} uL, last known "
                f"{session.status} (delivered {delivered} uL) -> restored as UNCERTAIN, "
                "counts its full cap until reconciled"
            )
        lines.append("  check the ward record, the head and the ward station for doses in this gap")
        return lines


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(_READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _anchors(
    location: LedgerLocation, ledger_id: str, ward: Sequence[LedgerAnchor] = ()
) -> list[LedgerAnchor]:
    """Every readable anchor of `ledger_id`, newest first (anchor file, audit log, and
    the ward station's `ward` anchors)."""
    found: list[LedgerAnchor] = list(ward)
    for reading in read_readings(location, history=True):
        candidates = reading.history or ((reading.anchor,) if reading.anchor else ())
        found.extend(a for a in candidates if a is not None and a.ledger_id == ledger_id)
    return sorted(found, key=lambda a: (a.last_event_seq, a.written_utc), reverse=True)


def _ward_anchors(
    ledger: Ledger, device_id: str, ward: Sequence[LedgerAnchor]
) -> list[LedgerAnchor]:
    """The ward station's anchors, checked against the backup; the subject (which the
    ward message leaves out) is the ledger's own."""
    subject = ledger.meta("subject_id") or ""
    checked = []
    for anchor in ward:
        if anchor.device_id != device_id:
            raise LedgerError(
                f"the ward station's anchor is of device {anchor.device_id!r}, this controller "
                f"is {device_id!r}; save the anchor of this bed's own controller"
            )
        if anchor.ledger_id != ledger.ledger_id:
            raise LedgerError(
                f"the ward station's anchor names ledger {anchor.ledger_id}, the backup is "
                f"ledger {ledger.ledger_id}; restore a backup of the ledger this controller used"
            )
        session = anchor.session
        if session is not None and not session.subject_id:
            session = dataclasses.replace(session, subject_id=subject)
        checked.append(dataclasses.replace(anchor, session=session))
    return checked


def _check(
    ledger: Ledger,
    location: LedgerLocation,
    backup: Path,
    device_id: str,
    ward: Sequence[LedgerAnchor] = (),
) -> RestorePlan:
    ledger_id = ledger.ledger_id
    backup_device = ledger.device_id
    if backup_device is not None and backup_device != device_id:
        raise LedgerError(
            f"the backup belongs to device {backup_device!r}, this controller is "
            f"{device_id!r}; restore this device's own backup"
        )
    anchors = _anchors(location, ledger_id, _ward_anchors(ledger, device_id, ward))
    wanted = {a.last_event_seq for a in anchors}
    with ledger._db.reading() as connection:
        report = verify_chain(connection, wanted=wanted)
    if not report.ok:
        raise LedgerError(f"the backup's hash chain is broken: {report.problem}")
    head_seq = 0 if report.head is None else report.head.seq
    confirmed = 0
    for anchor in anchors:
        if anchor.last_event_seq > head_seq or anchor.last_event_seq == 0:
            continue
        if report.hashes.get(anchor.last_event_seq) != anchor.last_event_hash:
            raise LedgerError(
                f"the backup's event {anchor.last_event_seq} differs from the anchor written "
                f"{anchor.written_utc}: it is not this ledger's history (or was altered)"
            )
        confirmed += 1
    if not anchors and any(r.anchor or r.history for r in read_readings(location)):
        raise LedgerError(
            f"the backup is ledger {ledger_id}, but this controller's anchors name another "
            "ledger; restore a backup of the ledger this controller used"
        )
    known = {record.session_id for record in ledger.summaries()}
    missing: dict[int, AnchoredSession] = {}
    for anchor in anchors:  # newest first: the first state seen of a session is its latest
        session = anchor.session
        if anchor.last_event_seq <= head_seq or session is None:
            continue
        if session.session_id not in known and session.session_id not in missing:
            missing[session.session_id] = session
    return RestorePlan(
        backup=backup,
        backup_sha256=_sha256(backup),
        ledger_id=ledger_id,
        device_id=backup_device,
        head=report.head,
        events_checked=report.events_checked,
        anchors_confirmed=confirmed,
        newest_anchor=anchors[0] if anchors else None,
        missing_sessions=tuple(sorted(missing.values(), key=lambda s: s.session_id)),
    )


def _staging(location: LedgerLocation, backup: Path) -> Path:
    if not backup.is_file():
        raise LedgerError(f"backup {backup} does not exist or is not a file")
    if location.ledger_path.exists():
        raise LedgerExistsError(
            f"a ledger is in place at {location.ledger_path}; restore replaces only a ledger "
            "that was set aside (stop the controller and move the file aside first)"
        )
    location.data_dir.mkdir(parents=True, exist_ok=True)
    staging = location.data_dir / f".{location.ledger_path.name}.restoring-{uuid.uuid4().hex}"
    shutil.copyfile(backup, staging)
    return staging


def plan_restore(
    location: LedgerLocation,
    backup: Path,
    *,
    device_id: str,
    ward_anchors: Sequence[LedgerAnchor] = (),
) -> RestorePlan:
    """Verify `backup` and report what it lacks, changing nothing (a dry run).

    `ward_anchors` are anchors the ward station kept (retained `ledger/anchor`), used
    like the local ones: they must match the backup, and show what it lacks.
    """
    staging = _staging(location, backup)
    try:
        with Ledger.open(staging) as ledger:
            return _check(ledger, location, backup, device_id, ward_anchors)
    finally:
        for leftover in staging.parent.glob(staging.name + "*"):
            leftover.unlink()


def restore_ledger(
    location: LedgerLocation,
    backup: Path,
    *,
    device_id: str,
    by: str,
    reason: str = "",
    ward_anchors: Sequence[LedgerAnchor] = (),
) -> RestorePlan:
    """Verify `backup`, add the sessions it lacks as UNCERTAIN, put it in place, audit it.

    `ward_anchors`: as for `plan_restore`.

    Raises `LedgerError` (nothing changed) when the backup is damaged, of another
    device or ledger, or contradicts an anchor.
    """
    if not by.strip():
        raise ValueError("say who restores the ledger (--by NAME): the audit log records it")
    staging = _staging(location, backup)
    try:
        with Ledger.open(staging) as ledger:
            plan = _check(ledger, location, backup, device_id, ward_anchors)
            now = datetime.now(UTC)
            restore = {
                "by": by,
                "reason": reason,
                "backup": str(backup),
                "backup_sha256": plan.backup_sha256,
                "utc": now.isoformat(),
            }
            at = Instant(utc=now, boot_id=f"restore-{uuid.uuid4().hex[:12]}", monotonic_ns=0)
            for session in plan.missing_sessions:
                ledger.record_restored_session(session=session, restore=restore, at=at)
            anchor = ledger.anchor(reason="restore")
        staging.replace(location.ledger_path)
        fsync_dir(location.data_dir)
    finally:
        for leftover in staging.parent.glob(staging.name + "*"):
            leftover.unlink()
    audit_record(
        location,
        "ledger_restore",
        {
            **restore,
            "ledger_id": plan.ledger_id,
            "backup_last_event_seq": 0 if plan.head is None else plan.head.seq,
            "anchors_confirmed": plan.anchors_confirmed,
            "newest_anchor": None
            if plan.newest_anchor is None
            else anchor_to_json(plan.newest_anchor),
            "missing_events": plan.missing_events,
            "sessions_restored_uncertain": [s.session_id for s in plan.missing_sessions],
            # The ward station's anchors this restore accounted for: `serve` then accepts
            # the ward's (older) retained anchor of this ledger (controller.ledger._ward_check).
            "ward_anchors": [anchor_to_json(a) for a in ward_anchors],
        },
    )
    writer = AnchorWriter(location)
    try:
        writer(anchor)
    finally:
        writer.close()
    return plan
