"""Continuity evidence outside the ledger file, and the pure start-up check.

An *anchor* is a small high-water mark of the ledger: its id, the device it belongs
to, the id and chain hash of its newest event, and the session that event was about.
The ledger writes one after every committed session event (intent, start, refusal,
end, uncertain, reconciled), at start-up, at `ledger init` and at `ledger restore`,
to places that fail independently of the ledger file:

- the sidecar file `<data-dir>/ledger.anchor.json` (written atomically: temp file,
  fsync, rename, fsync of the directory);
- the audit log `<data-dir>/audit.sqlite3` (a `ledger_anchor` record, fsynced by
  SQLite's `synchronous=FULL`);
- the retained MQTT message `<root>/<ward>/<bed>/ledger/anchor` where MQTT is
  configured (schema `nebuliser.ledger_anchor`, built by
  `controller.telemetry.ledger_anchor_entry`; the ward station keeps it).

`check_continuity` compares them with what the ledger file shows, without I/O.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from controller.ledger._chain import GENESIS_HASH, ChainHead
from controller.ledger._database import fsync_dir

if TYPE_CHECKING:
    from controller.ledger._ward_check import WardEvidence

__all__ = [
    "ANCHOR_FILE_NAME",
    "ANCHOR_SCHEMA",
    "AUDIT_ANCHOR_KIND",
    "AnchorReading",
    "AnchoredSession",
    "ContinuityCode",
    "ContinuityVerdict",
    "LedgerAnchor",
    "LedgerFacts",
    "LedgerFileState",
    "anchor_against",
    "anchor_from_json",
    "anchor_to_json",
    "check_continuity",
    "read_anchor_file",
    "read_audit_anchors",
    "write_anchor_file",
]

ANCHOR_FILE_NAME: Final = "ledger.anchor.json"
ANCHOR_SCHEMA: Final = "nebuliser.ledger_anchor"
_ANCHOR_VERSION: Final = 1
#: The audit log record kind that carries an anchor (see controller.security.AuditKind).
AUDIT_ANCHOR_KIND: Final = "ledger_anchor"


@dataclass(frozen=True, slots=True, kw_only=True)
class AnchoredSession:
    """The session an anchored event was about, as the ledger had it then."""

    session_id: int
    subject_id: str
    planned_cap_ul: int
    status: str
    delivered_ul: int | None
    intent_utc: str


@dataclass(frozen=True, slots=True, kw_only=True)
class LedgerAnchor:
    """A high-water mark of one ledger."""

    ledger_id: str
    device_id: str
    last_event_seq: int
    last_event_hash: str
    last_session_id: int
    reason: str
    written_utc: str
    session: AnchoredSession | None = None


def anchor_to_json(anchor: LedgerAnchor) -> dict[str, Any]:
    """The anchor as plain JSON (also the body of the audit record and MQTT message)."""
    return {"schema": ANCHOR_SCHEMA, "version": _ANCHOR_VERSION, **asdict(anchor)}


def anchor_from_json(data: Mapping[str, Any]) -> LedgerAnchor:
    """Parse `anchor_to_json` output; raises ValueError naming what is wrong."""
    if data.get("schema") != ANCHOR_SCHEMA or data.get("version") != _ANCHOR_VERSION:
        raise ValueError(
            f"not a {ANCHOR_SCHEMA} v{_ANCHOR_VERSION} anchor: "
            f"{data.get('schema')!r} v{data.get('version')!r}"
        )
    try:
        session = data.get("session")
        return LedgerAnchor(
            ledger_id=str(data["ledger_id"]),
            device_id=str(data["device_id"]),
            last_event_seq=int(data["last_event_seq"]),
            last_event_hash=str(data["last_event_hash"]),
            last_session_id=int(data["last_session_id"]),
            reason=str(data["reason"]),
            written_utc=str(data["written_utc"]),
            session=None if session is None else AnchoredSession(**session),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"anchor field missing or malformed: {exc}") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class AnchorReading:
    """What one evidence source said: an anchor, nothing (`anchor` None), or a problem."""

    source: str
    anchor: LedgerAnchor | None
    problem: str | None = None
    history: tuple[LedgerAnchor, ...] = ()
    """Older anchors from the same source, newest first (the audit log keeps them all)."""


def write_anchor_file(data_dir: Path, anchor: LedgerAnchor) -> Path:
    """Atomically replace `<data_dir>/ledger.anchor.json` (temp, fsync, rename, fsync dir)."""
    final = data_dir / ANCHOR_FILE_NAME
    temp = data_dir / f".{ANCHOR_FILE_NAME}.tmp"
    payload = json.dumps(anchor_to_json(anchor), sort_keys=True, indent=1).encode("utf-8")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        view = memoryview(payload)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    temp.replace(final)
    fsync_dir(data_dir)
    return final


def read_anchor_file(data_dir: Path) -> AnchorReading:
    """The sidecar anchor: None if there is no file, a problem if it cannot be parsed."""
    source = f"anchor file {data_dir / ANCHOR_FILE_NAME}"
    try:
        text = (data_dir / ANCHOR_FILE_NAME).read_text(encoding="utf-8")
    except FileNotFoundError:
        return AnchorReading(source=source, anchor=None)
    except (OSError, UnicodeDecodeError) as exc:
        return AnchorReading(source=source, anchor=None, problem=f"unreadable: {exc}")
    try:
        return AnchorReading(source=source, anchor=anchor_from_json(json.loads(text)))
    except ValueError as exc:
        return AnchorReading(source=source, anchor=None, problem=f"unreadable: {exc}")


def read_audit_anchors(audit_path: Path, *, limit: int = 1) -> AnchorReading:
    """The newest `limit` `ledger_anchor` records in the audit log (newest first)."""
    source = f"audit log {audit_path}"
    if not audit_path.exists():
        return AnchorReading(source=source, anchor=None)
    try:
        with contextlib.closing(sqlite3.connect(audit_path, timeout=5.0)) as connection:
            rows = connection.execute(
                "SELECT body_json FROM audit_log WHERE kind = ? ORDER BY idx DESC LIMIT ?",
                (AUDIT_ANCHOR_KIND, limit),
            ).fetchall()
    except sqlite3.Error as exc:
        return AnchorReading(source=source, anchor=None, problem=f"unreadable: {exc}")
    anchors: list[LedgerAnchor] = []
    for (body,) in rows:
        try:
            anchors.append(anchor_from_json(json.loads(body)))
        except ValueError as exc:
            if not anchors:
                return AnchorReading(source=source, anchor=None, problem=f"unreadable: {exc}")
    if not anchors:
        return AnchorReading(source=source, anchor=None)
    return AnchorReading(source=source, anchor=anchors[0], history=tuple(anchors))


class LedgerFileState(StrEnum):
    """What is at the ledger's path before (or instead of) opening it."""

    MISSING = "missing"
    EMPTY = "empty"
    UNREADABLE = "unreadable"
    PRESENT = "present"


@dataclass(frozen=True, slots=True, kw_only=True)
class LedgerFacts:
    """What the ledger file shows. For PRESENT: its ids, head and the anchored seqs' hashes."""

    state: LedgerFileState
    detail: str = ""
    ledger_id: str | None = None
    device_id: str | None = None
    head: ChainHead | None = None
    hashes: Mapping[int, str] = field(default_factory=dict)
    """Chain hash of each anchored event id the ledger holds."""
    earlier_use: bool = False
    """Anything else shows the data dir was used before (quarantined ledgers, audit log)."""


class ContinuityCode(StrEnum):
    """Why a start-up was allowed or refused (machine-readable)."""

    CONTINUOUS = "continuous"
    NO_EVIDENCE = "no_evidence"
    LEDGER_MISSING = "ledger_missing"
    LEDGER_EMPTY = "ledger_empty"
    LEDGER_UNREADABLE = "ledger_unreadable"
    OTHER_DEVICE = "ledger_from_other_device"
    REPLACED = "ledger_replaced"
    OLDER_THAN_ANCHOR = "ledger_older_than_anchor"
    HISTORY_DIFFERS = "ledger_history_differs"
    ANCHOR_UNREADABLE = "anchor_unreadable"


_RESTORE = (
    "Restore the newest backup with `nebuliser ledger restore BACKUP --by NAME` "
    "(docs/ledger.md); sessions after it will count their full cap until reconciled."
)
_INIT_OR_RESTORE = (
    "On a new install run `nebuliser ledger init`; if this controller was used before, "
    "restore the newest backup with `nebuliser ledger restore BACKUP --by NAME` "
    "(docs/ledger.md)."
)
_OWN_DEVICE = (
    "Put this device's own ledger back, or restore this device's newest backup with "
    "`nebuliser ledger restore BACKUP --by NAME` (docs/ledger.md)."
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ContinuityVerdict:
    """Allowed or refused, with a machine code, what was found and what to do."""

    ok: bool
    code: ContinuityCode
    reason: str
    action: str = ""


def _refuse(code: ContinuityCode, reason: str, action: str = _RESTORE) -> ContinuityVerdict:
    return ContinuityVerdict(ok=False, code=code, reason=reason, action=action)


def check_continuity(  # noqa: PLR0911, PLR0912 - one return per finding, in order
    *,
    readings: Sequence[AnchorReading],
    facts: LedgerFacts,
    device_id: str,
    ward: WardEvidence | None = None,
) -> ContinuityVerdict:
    """Is the ledger file the continuation of the ledger its anchors describe?

    Refuses (ok=False) a missing, empty or unreadable file, a ledger of another device,
    a ledger whose id differs from an anchor's (a swapped file), one whose newest event
    is older than an anchor (deleted WAL, restored old backup), one whose history at
    the anchored event differs, and — when no anchor is readable — an unreadable anchor.
    A ledger may be *newer* than its anchors (a crash between commit and anchor write).

    `ward` is the ward station's retained anchor (fetched by `serve` with `[mqtt]`), the
    third source, judged after the local ones by `check_ward_anchor` (controller.ledger.
    _ward_check): it sees a data directory lost or rolled back as a whole.
    """
    from controller.ledger._ward_check import check_ward_anchor  # noqa: PLC0415 - cycle

    if ward is not None and facts.state is LedgerFileState.MISSING:
        verdict = check_ward_anchor(ward=ward, facts=facts, device_id=device_id)
        if verdict is not None:
            return verdict
    anchors = [(r.source, r.anchor) for r in readings if r.anchor is not None]
    broken = [r for r in readings if r.problem is not None]
    evidence = bool(anchors or broken or facts.earlier_use)
    if facts.state is LedgerFileState.MISSING:
        if evidence:
            where = ", ".join(s for s, _ in anchors) or "earlier ledgers or the audit log"
            return _refuse(
                ContinuityCode.LEDGER_MISSING,
                f"there is no ledger file, but {where} show(s) this controller had one",
            )
        return _refuse(ContinuityCode.LEDGER_MISSING, "there is no ledger file", _INIT_OR_RESTORE)
    if facts.state is LedgerFileState.EMPTY:
        return _refuse(ContinuityCode.LEDGER_EMPTY, "the ledger file is empty (0 bytes)")
    if facts.state is LedgerFileState.UNREADABLE:
        return _refuse(
            ContinuityCode.LEDGER_UNREADABLE, f"the ledger file is unreadable ({facts.detail})"
        )
    if facts.device_id is not None and facts.device_id != device_id:
        return _refuse(
            ContinuityCode.OTHER_DEVICE,
            f"the ledger belongs to device {facts.device_id!r}, this controller is {device_id!r}",
            _OWN_DEVICE,
        )
    for source, anchor in anchors:
        assert anchor is not None
        verdict = anchor_against(source, anchor, facts)
        if verdict is not None:
            return verdict
    if broken and not anchors:
        return _refuse(
            ContinuityCode.ANCHOR_UNREADABLE,
            "; ".join(f"{r.source} is {r.problem}" for r in broken)
            + ", and no other anchor confirms the ledger",
        )
    if ward is not None:
        verdict = check_ward_anchor(ward=ward, facts=facts, device_id=device_id)
        if verdict is not None:
            return verdict
        anchors.extend(_ward_confirms(ward, facts, device_id))
    if not anchors:
        return ContinuityVerdict(
            ok=True,
            code=ContinuityCode.NO_EVIDENCE,
            reason="no anchors yet (new or upgraded install); anchors are written now",
        )
    return ContinuityVerdict(
        ok=True,
        code=ContinuityCode.CONTINUOUS,
        reason="the ledger continues every anchor (" + ", ".join(s for s, _ in anchors) + ")",
    )


def _ward_confirms(
    ward: WardEvidence, facts: LedgerFacts, device_id: str
) -> list[tuple[str, LedgerAnchor]]:
    """The ward's anchor as a confirming source (not if an audited restore or init
    superseded it, or it is another device's)."""
    anchor = ward.anchor
    if anchor.device_id != device_id or anchor_against(ward.source, anchor, facts):
        return []
    return [(ward.source, anchor)]


def anchor_against(
    source: str, anchor: LedgerAnchor, facts: LedgerFacts
) -> ContinuityVerdict | None:
    """One anchor's objection to a PRESENT ledger of the same device (None: none)."""
    if anchor.device_id and facts.device_id is None:
        pass  # a ledger from before device ids were recorded: judged by id and chain
    elif anchor.device_id != facts.device_id:
        return _refuse(
            ContinuityCode.OTHER_DEVICE,
            f"the ledger belongs to device {facts.device_id!r} but {source} names "
            f"{anchor.device_id!r}",
            _OWN_DEVICE,
        )
    if anchor.ledger_id != facts.ledger_id:
        return _refuse(
            ContinuityCode.REPLACED,
            f"the ledger's id is {facts.ledger_id}, but {source} names ledger "
            f"{anchor.ledger_id}: the file was replaced by another ledger",
        )
    head_seq = 0 if facts.head is None else facts.head.seq
    if head_seq < anchor.last_event_seq:
        return _refuse(
            ContinuityCode.OLDER_THAN_ANCHOR,
            f"the ledger ends at event {head_seq}, but {source} shows it reached event "
            f"{anchor.last_event_seq} (session {anchor.last_session_id}, {anchor.written_utc}): "
            "records are missing (deleted WAL, rolled-back backup or swapped file)",
        )
    if anchor.last_event_seq == 0:
        return None if anchor.last_event_hash == GENESIS_HASH else _history(source, anchor)
    if facts.hashes.get(anchor.last_event_seq) != anchor.last_event_hash:
        return _history(source, anchor)
    return None


def _history(source: str, anchor: LedgerAnchor) -> ContinuityVerdict:
    return _refuse(
        ContinuityCode.HISTORY_DIFFERS,
        f"the ledger's event {anchor.last_event_seq} does not match the hash {source} "
        "recorded: the history was changed or replaced",
    )
