"""Audit anchors kept away from the bed: an append-only JSON-lines file of every
``audit/head`` message a ward station or monitor has seen.

Each bed publishes its audit head (INDEX:HASH, retained, QoS 1) after every batch
of audit records and at shutdown (docs/security.md §5). Whoever receives it calls
`AnchorStore.add`; `nebuliser audit verify --anchors FILE` later checks the bed's
log against every stored anchor of that device (`verify_audit_log(anchors=...)`):
a missing anchored record means the tail was truncated, a different hash means
the history was rewritten.

One line per anchor, fsynced: ``{"device_id", "ward", "bed", "head", "utc",
"reason", "received_utc"}``. The same head seen twice (retained re-delivery) is
stored once.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from controller.security._audit import AuditHead

__all__ = ["AnchorStore", "StoredAnchor", "load_anchors"]


@dataclass(frozen=True, kw_only=True)
class StoredAnchor:
    """One anchor as received from a bed."""

    device_id: str
    ward: str
    bed: str
    head: AuditHead
    utc: str
    reason: str

    def line(self, received: datetime) -> str:
        """The JSON line stored for this anchor."""
        return json.dumps(
            {
                "device_id": self.device_id,
                "ward": self.ward,
                "bed": self.bed,
                "head": str(self.head),
                "utc": self.utc,
                "reason": self.reason,
                "received_utc": received.astimezone(UTC).isoformat(timespec="milliseconds"),
            },
            sort_keys=True,
        )


def load_anchors(path: Path, *, device_id: str | None = None) -> list[StoredAnchor]:
    """Every anchor in `path` (of `device_id` only, when given), in file order.

    Raises ValueError naming the line for a malformed line (a tampered or
    truncated file is not silently half-read)."""
    anchors: list[StoredAnchor] = []
    with path.open(encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                entry = json.loads(text)
                anchor = StoredAnchor(
                    device_id=str(entry["device_id"]),
                    ward=str(entry["ward"]),
                    bed=str(entry["bed"]),
                    head=AuditHead.parse(str(entry["head"])),
                    utc=str(entry["utc"]),
                    reason=str(entry["reason"]),
                )
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path} line {number} is not an anchor: {exc}") from exc
            if device_id is None or anchor.device_id == device_id:
                anchors.append(anchor)
    return anchors


class AnchorStore:
    """Appends anchors to a JSON-lines file (created 0640), one fsync per new anchor."""

    def __init__(self, *, path: Path) -> None:
        self.path = path
        self._seen: set[tuple[str, str]] = set()
        if path.exists():
            self._seen = {(a.device_id, str(a.head)) for a in load_anchors(path)}

    def add(
        self,
        *,
        device_id: str,
        ward: str,
        bed: str,
        head: str,
        utc: str,
        reason: str,
        received: datetime | None = None,
    ) -> StoredAnchor | None:
        """Store one received anchor; None when it was already stored.

        Raises ValueError when `head` is not INDEX:HASH."""
        anchor = StoredAnchor(
            device_id=device_id,
            ward=ward,
            bed=bed,
            head=AuditHead.parse(head),
            utc=utc,
            reason=reason,
        )
        key = (device_id, str(anchor.head))
        if key in self._seen:
            return None
        line = anchor.line(received or datetime.now(UTC)) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        try:
            os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        self._seen.add(key)
        return anchor
