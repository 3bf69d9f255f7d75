"""The ward station's retained anchor as a third continuity source (pure; issue 12).

The anchor file and the audit log live in the data directory: when the whole
directory is rolled back consistently (an old backup of ledger, audit log and sidecar
restored together) or lost, they agree with the ledger and cannot see it. The ward
station keeps the bed's newest anchor (retained `<root>/<ward>/<bed>/ledger/anchor`),
so `serve` fetches it at start-up (controller.service) and `check_continuity` judges
the ledger against it too:

- no ledger file, but the ward has an anchor of this device: refused, and the fix is
  `ledger restore BACKUP --ward-anchor FILE` (not `init`: the ward proves there was
  a history);
- the same ledger id, but the ledger ends before the ward's event, or its event there
  has another hash: refused like the local rollback cases, UNLESS a `ledger restore`
  of that ledger *accounted for* the ward's anchor;
- another ledger id: refused, UNLESS an accepted `ledger init` of the ledger in
  place (`--accept-empty-history`, with a name and reason) accounted for it.

A restore or init *accounts for* the ward's anchor when its audit record lists that
exact anchor (same ledger id, event seq and chain hash: the restore's newest anchor or
its `--ward-anchor`s, the init's previous anchors or `--ward-anchor`s), or when the
audit log held that exact anchor *before* the record (the restore or init read it
there). Wall-clock times are never compared. An anchor the ward holds from another
device (the bed got a new controller) is not this ledger's evidence and is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TypeAlias

from controller.ledger._anchor import (
    ContinuityCode,
    ContinuityVerdict,
    LedgerAnchor,
    LedgerFacts,
    LedgerFileState,
    anchor_against,
)

__all__ = [
    "AnchorPoint",
    "Supersession",
    "SupersessionKind",
    "WardEvidence",
    "check_ward_anchor",
    "point_of",
]

#: (ledger id, last event seq, last event hash): what identifies a point in a history.
AnchorPoint: TypeAlias = tuple[str, int, str]


def point_of(anchor: LedgerAnchor) -> AnchorPoint:
    """The history point an anchor marks."""
    return (anchor.ledger_id, anchor.last_event_seq, anchor.last_event_hash)


class SupersessionKind(StrEnum):
    """An audited act that may replace the history the ward last saw."""

    RESTORE = "ledger_restore"
    INIT = "ledger_init"


@dataclass(frozen=True, slots=True, kw_only=True)
class Supersession:
    """One `ledger_restore` or `ledger_init` audit record, as far as the ward check needs."""

    kind: SupersessionKind
    ledger_id: str
    """The ledger the record put in place."""
    accepted_empty_history: bool = False
    """For an init: someone named accepted an empty history (`--accept-empty-history`)."""
    known: frozenset[AnchorPoint] = frozenset()
    """Anchor points the record lists, plus those the audit log held before it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WardEvidence:
    """The ward station's retained anchor of this bed, and the audit facts to judge it."""

    anchor: LedgerAnchor
    topic: str
    supersessions: tuple[Supersession, ...] = ()

    @property
    def source(self) -> str:
        """How the verdict names this source."""
        return f"the ward station's retained anchor ({self.topic})"

    def restore_action(self) -> str:
        """What to do when the ward proves a history the data directory lacks."""
        return (
            f"Save the ward station's anchor (`mosquitto_sub -t '{self.topic}' -C 1 -W 5 > "
            "ward-anchor.json`) and restore this device's newest backup with `nebuliser "
            "ledger restore BACKUP --ward-anchor ward-anchor.json --by NAME` (docs/ledger.md); "
            "do not run `ledger init`: the ward shows this controller had a dose history."
        )


def _accounted(ward: WardEvidence, kind: SupersessionKind, ledger_id: str | None) -> bool:
    point = point_of(ward.anchor)
    return any(
        s.kind is kind
        and s.ledger_id == ledger_id
        and (kind is SupersessionKind.RESTORE or s.accepted_empty_history)
        and point in s.known
        for s in ward.supersessions
    )


def check_ward_anchor(
    *, ward: WardEvidence, facts: LedgerFacts, device_id: str
) -> ContinuityVerdict | None:
    """The ward's verdict on the ledger (None: no objection). See the module docstring."""
    anchor = ward.anchor
    if anchor.device_id != device_id:
        return None  # another controller's anchor on this bed's topic: not our history
    if facts.state is not LedgerFileState.PRESENT:
        return ContinuityVerdict(
            ok=False,
            code=ContinuityCode.LEDGER_MISSING,
            reason=(
                f"there is no usable ledger file, but {ward.source} shows this controller's "
                f"ledger {anchor.ledger_id} reached event {anchor.last_event_seq} (session "
                f"{anchor.last_session_id}, {anchor.written_utc})"
            ),
            action=ward.restore_action(),
        )
    if anchor.ledger_id != facts.ledger_id:
        if _accounted(ward, SupersessionKind.INIT, facts.ledger_id):
            return None
        return ContinuityVerdict(
            ok=False,
            code=ContinuityCode.REPLACED,
            reason=(
                f"the ledger's id is {facts.ledger_id}, but {ward.source} names ledger "
                f"{anchor.ledger_id} (event {anchor.last_event_seq}, {anchor.written_utc}), "
                "and no accepted `ledger init` recorded here replaced it: the data directory "
                "was replaced or re-initialised without the ward's history"
            ),
            action=ward.restore_action()
            + " Only if the clinical team accepts an empty dose history: move the ledger "
            "out of the data directory and run `nebuliser ledger init --accept-empty-history "
            "--ward-anchor ward-anchor.json --by NAME --reason TEXT`.",
        )
    verdict = anchor_against(ward.source, anchor, facts)
    if verdict is None or _accounted(ward, SupersessionKind.RESTORE, facts.ledger_id):
        return None
    return ContinuityVerdict(
        ok=False, code=verdict.code, reason=verdict.reason, action=ward.restore_action()
    )
