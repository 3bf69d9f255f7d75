"""The pure start-up check: anchors + ledger facts -> verdict (no I/O)."""

from __future__ import annotations

import pytest

from controller.ledger import (
    AnchorReading,
    ChainHead,
    ContinuityCode,
    LedgerAnchor,
    LedgerFacts,
    LedgerFileState,
    anchor_from_json,
    anchor_to_json,
    check_continuity,
)
from controller.ledger._chain import GENESIS_HASH

DEVICE = "neb-0001"
LEDGER = "a" * 32
HASH_7 = "7" * 64


def _anchor(
    *, seq: int = 7, digest: str = HASH_7, ledger_id: str = LEDGER, device: str = DEVICE
) -> LedgerAnchor:
    return LedgerAnchor(
        ledger_id=ledger_id,
        device_id=device,
        last_event_seq=seq,
        last_event_hash=digest,
        last_session_id=2,
        reason="ended",
        written_utc="2026-12-07T06:00:00.000000+00:00",
    )


def _reading(anchor: LedgerAnchor | None, source: str = "anchor file") -> AnchorReading:
    return AnchorReading(source=source, anchor=anchor)


def _facts(
    *,
    head_seq: int = 7,
    hashes: dict[int, str] | None = None,
    ledger_id: str = LEDGER,
    device: str | None = DEVICE,
) -> LedgerFacts:
    return LedgerFacts(
        state=LedgerFileState.PRESENT,
        ledger_id=ledger_id,
        device_id=device,
        head=ChainHead(seq=head_seq, hash="f" * 64),
        hashes={7: HASH_7} if hashes is None else hashes,
    )


def _verdict(readings: list[AnchorReading], facts: LedgerFacts) -> ContinuityCode:
    verdict = check_continuity(readings=readings, facts=facts, device_id=DEVICE)
    if not verdict.ok:
        assert verdict.reason
        assert "nebuliser ledger" in verdict.action  # every refusal names the fix
    return verdict.code


def test_a_ledger_that_continues_its_anchors_is_accepted() -> None:
    verdict = check_continuity(
        readings=[_reading(_anchor()), _reading(_anchor(), "audit log")],
        facts=_facts(),
        device_id=DEVICE,
    )
    assert (verdict.ok, verdict.code) == (True, ContinuityCode.CONTINUOUS)


def test_a_ledger_newer_than_its_anchors_is_accepted() -> None:
    """A crash between the commit and the anchor write leaves the ledger ahead: fine."""
    verdict = check_continuity(
        readings=[_reading(_anchor())], facts=_facts(head_seq=9), device_id=DEVICE
    )
    assert verdict.ok


def test_no_anchors_and_a_ledger_is_an_upgrade_and_accepted() -> None:
    verdict = check_continuity(readings=[_reading(None)], facts=_facts(), device_id=DEVICE)
    assert (verdict.ok, verdict.code) == (True, ContinuityCode.NO_EVIDENCE)


@pytest.mark.parametrize(
    ("readings", "facts", "code"),
    [
        # WAL deleted / old backup restored: the ledger ends before the anchored event.
        ([_reading(_anchor())], _facts(head_seq=3), ContinuityCode.OLDER_THAN_ANCHOR),
        # Another ledger of this device put in place (same length, other history).
        ([_reading(_anchor())], _facts(hashes={7: "0" * 64}), ContinuityCode.HISTORY_DIFFERS),
        ([_reading(_anchor())], _facts(ledger_id="b" * 32), ContinuityCode.REPLACED),
        ([_reading(_anchor())], _facts(device="neb-0002"), ContinuityCode.OTHER_DEVICE),
        ([_reading(None)], _facts(device="neb-0002"), ContinuityCode.OTHER_DEVICE),
        (
            [_reading(_anchor(device="neb-0009"))],
            _facts(),
            ContinuityCode.OTHER_DEVICE,
        ),
        (
            [_reading(_anchor()), _reading(_anchor(seq=12), "audit log")],
            _facts(head_seq=9, hashes={7: HASH_7}),
            ContinuityCode.OLDER_THAN_ANCHOR,
        ),
        (
            [_reading(_anchor(seq=0, digest="1" * 64))],
            _facts(head_seq=0, hashes={}),
            ContinuityCode.HISTORY_DIFFERS,
        ),
        (
            [AnchorReading(source="anchor file", anchor=None, problem="unreadable: bad JSON")],
            _facts(),
            ContinuityCode.ANCHOR_UNREADABLE,
        ),
    ],
)
def test_every_discontinuity_is_refused_with_its_code(
    readings: list[AnchorReading], facts: LedgerFacts, code: ContinuityCode
) -> None:
    assert _verdict(readings, facts) is code


@pytest.mark.parametrize(
    ("state", "code"),
    [
        (LedgerFileState.MISSING, ContinuityCode.LEDGER_MISSING),
        (LedgerFileState.EMPTY, ContinuityCode.LEDGER_EMPTY),
        (LedgerFileState.UNREADABLE, ContinuityCode.LEDGER_UNREADABLE),
    ],
)
def test_no_usable_file_is_refused_even_without_anchors(
    state: LedgerFileState, code: ContinuityCode
) -> None:
    facts = LedgerFacts(state=state, detail="x")
    assert _verdict([_reading(None)], facts) is code
    assert _verdict([_reading(_anchor())], facts) is code


def test_a_missing_ledger_says_restore_when_there_are_traces_and_init_when_new() -> None:
    missing = LedgerFacts(state=LedgerFileState.MISSING)
    with_anchor = check_continuity(readings=[_reading(_anchor())], facts=missing, device_id=DEVICE)
    fresh = check_continuity(readings=[_reading(None)], facts=missing, device_id=DEVICE)
    traces = check_continuity(
        readings=[_reading(None)],
        facts=LedgerFacts(state=LedgerFileState.MISSING, earlier_use=True),
        device_id=DEVICE,
    )
    assert "ledger restore" in with_anchor.action
    assert "ledger init" not in with_anchor.action
    assert "ledger restore" in traces.action
    assert "ledger init" not in traces.action
    assert "ledger init" in fresh.action


def test_an_unreadable_anchor_is_tolerated_when_another_confirms_the_ledger() -> None:
    broken = AnchorReading(source="anchor file", anchor=None, problem="unreadable")
    verdict = check_continuity(
        readings=[broken, _reading(_anchor(), "audit log")], facts=_facts(), device_id=DEVICE
    )
    assert verdict.ok


def test_an_empty_ledger_matches_its_init_anchor() -> None:
    verdict = check_continuity(
        readings=[_reading(_anchor(seq=0, digest=GENESIS_HASH))],
        facts=LedgerFacts(
            state=LedgerFileState.PRESENT, ledger_id=LEDGER, device_id=DEVICE, head=None
        ),
        device_id=DEVICE,
    )
    assert verdict.ok


def test_anchor_json_round_trips_and_refuses_other_schemas() -> None:
    anchor = _anchor()
    assert anchor_from_json(anchor_to_json(anchor)) == anchor
    with pytest.raises(ValueError, match=r"not a nebuliser\.ledger_anchor"):
        anchor_from_json({**anchor_to_json(anchor), "schema": "other"})
    with pytest.raises(ValueError, match="missing or malformed"):
        anchor_from_json({k: v for k, v in anchor_to_json(anchor).items() if k != "ledger_id"})
