"""The ward station's retained anchor as the third continuity source (pure; issue 12).

Local anchors that agree with a rolled-back or lost data directory cannot see the loss;
the ward's anchor can. Each rule is tested both ways: refused, and accepted where an
audited restore or accepted init accounted for the ward's anchor.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.ledger import (
    AnchorReading,
    AnchorWriter,
    ChainHead,
    ContinuityCode,
    ContinuityVerdict,
    EmptyHistoryAcceptance,
    LedgerAnchor,
    LedgerDiscontinuityError,
    LedgerFacts,
    LedgerFileState,
    LedgerLocation,
    anchor_to_json,
    audit_record,
    check_continuity,
    init_ledger,
    open_checked,
)
from controller.ledger._continuity import read_supersessions
from controller.ledger._ward_check import (
    Supersession,
    SupersessionKind,
    WardEvidence,
    point_of,
)

DEVICE = "neb-0001"
LEDGER = "a" * 32
OTHER_LEDGER = "b" * 32
TOPIC = "nebuliser/v1/3west/bed12/ledger/anchor"
HASH_5, HASH_9 = "5" * 64, "9" * 64


def _anchor(
    *, seq: int, digest: str, ledger_id: str = LEDGER, device: str = DEVICE
) -> LedgerAnchor:
    return LedgerAnchor(
        ledger_id=ledger_id,
        device_id=device,
        last_event_seq=seq,
        last_event_hash=digest,
        last_session_id=3,
        reason="ended",
        written_utc="2026-12-07T06:00:00+00:00",
    )


LOCAL_5 = _anchor(seq=5, digest=HASH_5)
WARD_9 = _anchor(seq=9, digest=HASH_9)


def _facts(
    *, head_seq: int = 5, hashes: dict[int, str] | None = None, ledger_id: str = LEDGER
) -> LedgerFacts:
    return LedgerFacts(
        state=LedgerFileState.PRESENT,
        ledger_id=ledger_id,
        device_id=DEVICE,
        head=ChainHead(seq=head_seq, hash="f" * 64),
        hashes={5: HASH_5} if hashes is None else hashes,
    )


def _ward(anchor: LedgerAnchor = WARD_9, *supersessions: Supersession) -> WardEvidence:
    return WardEvidence(anchor=anchor, topic=TOPIC, supersessions=supersessions)


def _check(
    facts: LedgerFacts, ward: WardEvidence | None, local: LedgerAnchor | None = LOCAL_5
) -> ContinuityVerdict:
    readings = [
        AnchorReading(source="anchor file", anchor=local),
        AnchorReading(source="audit log", anchor=local),
    ]
    return check_continuity(readings=readings, facts=facts, device_id=DEVICE, ward=ward)


def test_a_whole_data_dir_rolled_back_is_refused_by_the_ward_anchor() -> None:
    """Ledger, anchor file and audit log all at event 5; the ward saw event 9."""
    assert _check(_facts(), None).ok  # the local anchors alone cannot see it
    verdict = _check(_facts(), _ward())
    assert not verdict.ok
    assert verdict.code is ContinuityCode.OLDER_THAN_ANCHOR
    assert TOPIC in verdict.reason
    assert "event 9" in verdict.reason
    assert "ledger restore BACKUP --ward-anchor" in verdict.action


def test_a_ledger_whose_history_differs_from_the_ward_anchor_is_refused() -> None:
    facts = _facts(head_seq=9, hashes={5: HASH_5, 9: "0" * 64})
    verdict = _check(facts, _ward())
    assert (verdict.ok, verdict.code) == (False, ContinuityCode.HISTORY_DIFFERS)


def test_a_ledger_that_continues_the_ward_anchor_is_accepted() -> None:
    facts = _facts(head_seq=11, hashes={5: HASH_5, 9: HASH_9})
    verdict = _check(facts, _ward())
    assert (verdict.ok, verdict.code) == (True, ContinuityCode.CONTINUOUS)
    assert "ward station" in verdict.reason


def test_a_ward_anchor_behind_the_ledger_is_accepted() -> None:
    """The ward may lag (messages still in the outbox): a newer ledger is fine."""
    verdict = _check(_facts(head_seq=7), _ward(_anchor(seq=5, digest=HASH_5)))
    assert verdict.ok


def test_a_missing_ledger_with_a_ward_anchor_names_restore_with_the_ward_anchor() -> None:
    facts = LedgerFacts(state=LedgerFileState.MISSING)
    without = _check(facts, None, local=None)
    assert not without.ok
    assert "ledger init" in without.action
    verdict = _check(facts, _ward(), local=None)
    assert (verdict.ok, verdict.code) == (False, ContinuityCode.LEDGER_MISSING)
    assert "ledger restore BACKUP --ward-anchor" in verdict.action
    assert "do not run `ledger init`" in verdict.action
    assert TOPIC in verdict.action


def _restore(*known: LedgerAnchor, ledger_id: str = LEDGER) -> Supersession:
    return Supersession(
        kind=SupersessionKind.RESTORE,
        ledger_id=ledger_id,
        known=frozenset(point_of(a) for a in known),
    )


def test_a_restore_that_accounted_for_the_ward_anchor_supersedes_it() -> None:
    """After `ledger restore --ward-anchor`, the restored ledger's event 9 differs from
    the ward's (the missing session was added as UNCERTAIN): the start-up passes."""
    facts = _facts(head_seq=9, hashes={5: HASH_5, 9: "e" * 64})
    assert _check(facts, _ward(WARD_9, _restore(WARD_9))).ok
    assert _check(_facts(head_seq=6), _ward(WARD_9, _restore(WARD_9))).ok


def test_a_restore_that_did_not_know_the_ward_anchor_does_not_supersede_it() -> None:
    for restore in (
        _restore(LOCAL_5),  # restored without --ward-anchor: the ward's event 9 unaccounted
        _restore(WARD_9, ledger_id=OTHER_LEDGER),  # a restore of another ledger
        _restore(_anchor(seq=9, digest="d" * 64)),  # another history's event 9
    ):
        verdict = _check(_facts(), _ward(WARD_9, restore))
        assert (verdict.ok, verdict.code) == (False, ContinuityCode.OLDER_THAN_ANCHOR), restore


def test_an_init_does_not_supersede_a_same_ledger_ward_anchor() -> None:
    init = Supersession(
        kind=SupersessionKind.INIT,
        ledger_id=LEDGER,
        accepted_empty_history=True,
        known=frozenset({point_of(WARD_9)}),
    )
    assert not _check(_facts(), _ward(WARD_9, init)).ok


def _init(*, accepted: bool, known: tuple[LedgerAnchor, ...], ledger_id: str) -> Supersession:
    return Supersession(
        kind=SupersessionKind.INIT,
        ledger_id=ledger_id,
        accepted_empty_history=accepted,
        known=frozenset(point_of(a) for a in known),
    )


def test_a_ledger_of_another_id_than_the_ward_anchor_is_refused() -> None:
    """The data dir was wiped and `ledger init` run (no local trace): the ward knows."""
    local = _anchor(seq=0, digest="0" * 64, ledger_id=OTHER_LEDGER)
    facts = _facts(head_seq=0, hashes={}, ledger_id=OTHER_LEDGER)
    plain_init = _init(accepted=False, known=(), ledger_id=OTHER_LEDGER)
    verdict = _check(facts, _ward(WARD_9, plain_init), local=local)
    assert (verdict.ok, verdict.code) == (False, ContinuityCode.REPLACED)
    assert "--ward-anchor" in verdict.action
    assert "--accept-empty-history" in verdict.action


def test_an_accepted_init_that_accounted_for_the_ward_anchor_supersedes_it() -> None:
    local = _anchor(seq=0, digest="0" * 64, ledger_id=OTHER_LEDGER)
    facts = _facts(head_seq=0, hashes={}, ledger_id=OTHER_LEDGER)
    accepted = _init(accepted=True, known=(WARD_9,), ledger_id=OTHER_LEDGER)
    assert _check(facts, _ward(WARD_9, accepted), local=local).ok
    for not_enough in (
        _init(accepted=False, known=(WARD_9,), ledger_id=OTHER_LEDGER),  # not accepted
        _init(accepted=True, known=(), ledger_id=OTHER_LEDGER),  # did not know the ward's
        _init(accepted=True, known=(WARD_9,), ledger_id="c" * 32),  # another ledger's init
    ):
        assert not _check(facts, _ward(WARD_9, not_enough), local=local).ok, not_enough


def test_another_devices_anchor_on_the_bed_topic_is_ignored() -> None:
    """A replacement controller at the bed: the old controller's anchor is not its history."""
    foreign = _anchor(seq=9, digest=HASH_9, device="neb-0002", ledger_id=OTHER_LEDGER)
    assert _check(_facts(), _ward(foreign)).ok
    missing = LedgerFacts(state=LedgerFileState.MISSING)
    assert "ledger init" in _check(missing, _ward(foreign), local=None).action


def _restore_record(location: LedgerLocation, newest: LedgerAnchor) -> None:
    audit_record(
        location,
        "ledger_restore",
        {"ledger_id": LEDGER, "by": "CE", "newest_anchor": anchor_to_json(newest)},
    )


def test_the_audit_log_shows_which_anchors_a_restore_accounted_for(tmp_path: Path) -> None:
    """Read from a real audit log: the ward's anchor counts as known to a restore when
    the restore record lists it, or when the audit log held it before the record; an
    anchor written after the restore (the restored ledger's own) is not known to it."""
    location = LedgerLocation(data_dir=tmp_path)
    writer = AnchorWriter(location)
    try:
        writer(WARD_9)  # the bed anchored event 9 and published it
        _restore_record(location, LOCAL_5)  # a restore whose newest anchor was older
        later = _anchor(seq=12, digest="c" * 64)
        writer(later)  # the restored ledger's anchor, after the restore
    finally:
        writer.close()
    [before] = read_supersessions(location.audit_path, WARD_9)
    assert before.kind is SupersessionKind.RESTORE
    assert point_of(WARD_9) in before.known
    assert point_of(LOCAL_5) in before.known
    [after] = read_supersessions(location.audit_path, later)
    assert point_of(later) not in after.known
    # So a ledger rolled back to event 5 passes against the old chain's event 9 (the
    # restore accounted for it), but not against the anchor written after the restore.
    facts = _facts()
    assert _check(facts, _ward(WARD_9, before)).ok
    assert not _check(facts, _ward(later, after)).ok


def test_an_init_with_the_ward_anchor_is_recorded_as_accounting_for_it(tmp_path: Path) -> None:
    wiped = LedgerLocation(data_dir=tmp_path / "data")
    accept = EmptyHistoryAcceptance(by="Dr A. Jones", reason="no backup; ward record checked")
    init_ledger(wiped, device_id=DEVICE, subject_id="S-1", accept=accept, ward_anchors=[WARD_9])
    [init] = read_supersessions(wiped.audit_path, WARD_9)
    assert (init.kind, init.accepted_empty_history) == (SupersessionKind.INIT, True)
    assert point_of(WARD_9) in init.known
    open_checked(wiped, device_id=DEVICE, ward_anchor=WARD_9, ward_topic=TOPIC).close()
    plain = LedgerLocation(data_dir=tmp_path / "plain")
    init_ledger(plain, device_id=DEVICE, subject_id="S-1")  # no trace here: no acceptance
    with pytest.raises(LedgerDiscontinuityError, match="ward station's retained anchor"):
        open_checked(plain, device_id=DEVICE, ward_anchor=WARD_9, ward_topic=TOPIC)
