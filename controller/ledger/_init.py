"""`nebuliser ledger init`: the only way a ledger comes into existence.

A new ledger is refused wherever there is a trace of an earlier one (anchors, files
moved aside, audit records): an empty history there would let the dose rules allow a
dose the lost history forbids. The clinical team may accept an empty history on
purpose (`accept_empty_history` with a name and a reason), and that is audited.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from controller.ledger._anchor import LedgerAnchor, anchor_to_json
from controller.ledger._continuity import (
    AnchorWriter,
    LedgerLocation,
    audit_record,
    earlier_use,
    read_readings,
)
from controller.ledger._database import quarantined_files
from controller.ledger._errors import LedgerExistsError
from controller.ledger._ledger import Ledger
from controller.security import DATA_UMASK

__all__ = ["EmptyHistoryAcceptance", "init_ledger"]


@dataclass(frozen=True, slots=True, kw_only=True)
class EmptyHistoryAcceptance:
    """Who accepts starting an empty ledger where an earlier one existed, and why."""

    by: str
    reason: str

    def __post_init__(self) -> None:
        if not self.by.strip() or not self.reason.strip():
            raise ValueError("accepting an empty history needs a name (--by) and a --reason")


def init_ledger(
    location: LedgerLocation,
    *,
    device_id: str,
    subject_id: str,
    accept: EmptyHistoryAcceptance | None = None,
    ward_anchors: Sequence[LedgerAnchor] = (),
) -> LedgerAnchor:
    """Create the ledger once, anchor it (file + audit log), audit the init; its anchor.

    `ward_anchors` (the bed's retained `ledger/anchor` the ward station kept) are traces
    of an earlier ledger too: they need `accept`, and the audit record lists them, so
    that `serve` then accepts the ward's anchor of the old ledger (docs/ledger.md).
    The files are created group-readable at most (0640), whatever the caller's umask.
    Raises `LedgerExistsError` naming what was found and what to do instead.
    """
    previous = os.umask(DATA_UMASK)
    os.umask(previous | DATA_UMASK)
    try:
        return _init_ledger(
            location,
            device_id=device_id,
            subject_id=subject_id,
            accept=accept,
            ward_anchors=ward_anchors,
        )
    finally:
        os.umask(previous)


def _init_ledger(
    location: LedgerLocation,
    *,
    device_id: str,
    subject_id: str,
    accept: EmptyHistoryAcceptance | None,
    ward_anchors: Sequence[LedgerAnchor],
) -> LedgerAnchor:
    if location.ledger_path.exists():
        raise LedgerExistsError(
            f"a ledger already exists at {location.ledger_path}; `ledger init` never "
            "replaces one (to go back to a backup use `nebuliser ledger restore`)"
        )
    moved = quarantined_files(location.ledger_path)
    if moved:
        raise LedgerExistsError(
            "earlier ledgers were moved aside in this data directory ("
            + ", ".join(str(p) for p in moved)
            + "); restore the newest backup with `nebuliser ledger restore BACKUP --by NAME`, "
            "or, if the clinical team accepts an empty history, move those files out of the "
            "data directory (keep them for the investigation) and run `ledger init "
            "--accept-empty-history --by NAME --reason TEXT`"
        )
    readings = read_readings(location) if location.data_dir.is_dir() else []
    previous = [r.anchor for r in readings if r.anchor is not None]
    traces = bool(previous) or bool(ward_anchors) or any(r.problem for r in readings)
    if location.data_dir.is_dir():
        traces = traces or earlier_use(location)
    if traces and accept is None:
        raise LedgerExistsError(
            f"{location.data_dir} shows this controller had a ledger before (anchors or "
            "audit records); restore the newest backup with `nebuliser ledger restore BACKUP "
            "--by NAME`, or, if the clinical team accepts an empty dose history, run `ledger "
            "init --accept-empty-history --by NAME --reason TEXT`"
        )
    location.data_dir.mkdir(parents=True, exist_ok=True)
    with Ledger.create(location.ledger_path, device_id=device_id, subject_id=subject_id) as ledger:
        anchor = ledger.anchor(reason="init")
    audit_record(
        location,
        "ledger_init",
        {
            "ledger_id": anchor.ledger_id,
            "device_id": device_id,
            "subject_id": subject_id,
            "accepted_empty_history": accept is not None,
            "by": None if accept is None else accept.by,
            "reason": None if accept is None else accept.reason,
            "previous_anchors": [anchor_to_json(a) for a in previous],
            "ward_anchors": [anchor_to_json(a) for a in ward_anchors],
        },
    )
    writer = AnchorWriter(location)
    try:
        writer(anchor)
    finally:
        writer.close()
    return anchor
