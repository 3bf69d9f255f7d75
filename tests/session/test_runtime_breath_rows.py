"""Each BREATH report of a run is stored (ICD 1.1 §3), lost reports stay gaps.

A breath-aware head with the ISO 27427 patient (`_bed.Bed`, simulated time), a real
ledger file, and some BREATH reports lost on the way to the runtime.
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

from controller.ledger import Ledger
from controller.session import (
    BREATH_BATCH_MAX_ROWS,
    WriteBreaths,
    WriteBreathSummary,
)
from drivers.mn1 import Breath
from tests.session._bed import Bed
from tests.session.test_runtime_breath import CAP_UL, gated, head_11, ready, run_to_end

#: Which of the run's reports are lost (1 = its first): two in a row, then one.
LOST_ORDINALS = frozenset({5, 6, 12})


def test_every_breath_report_of_a_run_is_stored_and_lost_ones_are_gaps(tmp_path: Path) -> None:
    ledger = Ledger.create(tmp_path / "ledger.db", device_id="neb-test", subject_id="S-001")
    seen: list[int] = []
    lost_nos: list[int] = []

    def lose(breath: Breath) -> bool:
        if breath.session_id == 0:
            return False
        seen.append(breath.breath_no)
        if len(seen) in LOST_ORDINALS:
            lost_nos.append(breath.breath_no)
            return True
        return False

    bed = ready(Bed(prescription=gated(), model=head_11("iso27427"), ledger=ledger))
    bed.lose_breath = lose
    assert bed.start().started
    ended = run_to_end(bed)
    bed.run_until_true(lambda: bool(bed.of_type(WriteBreathSummary)), timeout_ms=20_000)
    sid = ended.session_id
    summary = ledger.breath_summary(sid)
    assert summary is not None
    rows = ledger.breaths(sid)

    # Every report the runtime got for this run is a row, in order, with its figures.
    reported = [b for b in bed.breaths if b.session_id == sid]
    assert [r.breath_no for r in rows] == [b.breath_no for b in reported]
    assert [
        (r.insp_ms, r.exp_ms, r.tidal_ml, r.aerosol_insp_dul, r.aerosol_exp_dul) for r in rows
    ] == [
        (b.insp_ms, b.exp_ms, b.tidal_ml, b.aerosol_insp_dul, b.aerosol_exp_dul) for b in reported
    ]
    assert len(rows) == summary["breaths"]
    # The lost ones are gaps: absent, and counted on the row that follows them.
    assert len(lost_nos) == len(LOST_ORDINALS)
    assert not {r.breath_no for r in rows} & set(lost_nos)
    gaps = {r.breath_no: r.lost_before for r in rows if r.lost_before}
    assert gaps == {lost_nos[1] + 1: 2, lost_nos[2] + 1: 1}
    assert sum(r.lost_before for r in rows) == summary["lost_reports"] == len(LOST_ORDINALS)
    for previous, row in pairwise(rows):
        assert row.breath_no == (previous.breath_no + 1 + row.lost_before) % 65536
    # The rows add up to the summary's split.
    assert sum(r.aerosol_insp_dul for r in rows) / 10 == summary["aerosol_insp_ul"]
    assert sum(r.aerosol_exp_dul for r in rows) / 10 == summary["aerosol_exp_ul"]
    assert all(r.at.utc <= ended.at.utc for r in rows[:-1])  # the last comes after the end

    # Written in batches (not a transaction per breath), all before the summary.
    batches = bed.of_type(WriteBreaths)
    assert sum(len(b.rows) for b in batches) == len(rows)
    assert len(batches) < len(rows) / 2
    assert all(0 < len(b.rows) <= BREATH_BATCH_MAX_ROWS for b in batches)
    order = [e for e in bed.effects if isinstance(e, WriteBreaths | WriteBreathSummary)]
    assert isinstance(order[-1], WriteBreathSummary)
    assert CAP_UL - 10 <= ended.delivered_ul <= CAP_UL


def test_no_breath_rows_on_a_version_1_head(tmp_path: Path) -> None:
    from simulators.mn1 import DeviceModel  # noqa: PLC0415 - only here

    ledger = Ledger.create(tmp_path / "ledger.db", device_id="neb-test", subject_id="S-001")
    bed = ready(Bed(model=DeviceModel(nominal_ul_min=2000, fill_ul=5000), ledger=ledger))
    assert bed.start().started
    ended = run_to_end(bed)
    bed.run_for(10_000)
    assert bed.of_type(WriteBreaths) == []
    assert ledger.breaths(ended.session_id) == []


def test_breath_rows_reach_the_ledger_while_the_session_runs(tmp_path: Path) -> None:
    """A batch waits at most BREATH_BATCH_MAX_AGE_MS: a crash mid-dose loses seconds of
    breaths, not the whole run's."""
    ledger = Ledger.create(tmp_path / "ledger.db", device_id="neb-test", subject_id="S-001")
    bed = ready(Bed(prescription=gated(), model=head_11("iso27427"), ledger=ledger))
    assert bed.start().started
    bed.run_for(30_000)
    session = bed.runtime.session
    assert session is not None  # still running
    received = [b.breath_no for b in bed.breaths if b.session_id == session.session_id]
    stored = [r.breath_no for r in ledger.breaths(session.session_id)]
    assert len(received) >= 6
    assert stored == received[: len(stored)]
    # 15 breaths/min (one report every 4 s): at most the reports of the last 10 s and a
    # tick (docs/ledger.md) are still waiting for their batch.
    assert len(received) - len(stored) <= 3
