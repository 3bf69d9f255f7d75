"""The per-breath strip of a session plot, drawn from the BREATH reports the ledger kept.

A breath-gated pilot run (iso27427 patient) in simulated time (`tests/session/_bed.py`)
writes a real ledger through the runtime's own effects, with three BREATH reports lost
on the way. The plot's artists are read back: one bar per stored report, lost reports
as gaps. A ledger from before per-breath rows still plots, from the run's summary.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from controller.config import load_config
from controller.dosing import Instant
from controller.ledger import LEDGER_FILE_NAME, BreathRecord, Ledger
from controller.reports import (
    BreathStrip,
    read_progress,
    read_sessions,
    report_context,
    session_figure,
)
from controller.reports import _plots as plots
from controller.reports._plots import LOST_REPORTS_GID
from controller.session import WriteBreathSummary
from drivers.mn1 import Breath
from tests.dosing._factories import SUBJECT
from tests.ledger.test_breath_rows import as_previous_version
from tests.session._bed import Bed
from tests.session.test_runtime_breath import gated, head_11, ready, run_to_end

from .test_breath_reports import _DRUG_UNIT_FIGURE, run_cli, write_config
from .test_plots import png_size

save = plots._save  # the real one, before any test replaces it

PER_BREATH_LABEL = "aerosol per breath (µL)"
INSP = "inspiratory-phase (estimate)"
EXP = "expiratory-phase (to the room)"


@dataclass(frozen=True)
class LossyRun:
    data_dir: Path
    session_id: int
    lost_nos: tuple[int, ...]


@pytest.fixture(scope="module")
def lossy_run(tmp_path_factory: pytest.TempPathFactory) -> LossyRun:
    """A gated run to its cap whose 5th, 6th and 12th BREATH reports were lost."""
    data_dir = tmp_path_factory.mktemp("lossy")
    seen: list[int] = []
    lost: list[int] = []

    def lose(breath: Breath) -> bool:
        if breath.session_id == 0:
            return False
        seen.append(breath.breath_no)
        if len(seen) in (5, 6, 12):
            lost.append(breath.breath_no)
            return True
        return False

    ledger = Ledger.create(data_dir / LEDGER_FILE_NAME, device_id="neb-test", subject_id=SUBJECT)
    with ledger:
        bed = ready(Bed(prescription=gated(), model=head_11("iso27427"), ledger=ledger))
        bed.lose_breath = lose
        assert bed.start().started
        ended = run_to_end(bed)
        bed.run_until_true(lambda: bool(bed.of_type(WriteBreathSummary)), timeout_ms=10_000)
    assert len(lost) == 3
    return LossyRun(data_dir=data_dir, session_id=ended.session_id, lost_nos=tuple(lost))


def draw(data_dir: Path, config: Path, session_id: int) -> tuple[Any, list[BreathRecord]]:
    """The session figure as `report plot --session` draws it, and the stored breaths."""
    pytest.importorskip("matplotlib", reason="plots are the optional extra 'plots'")
    context = report_context(load_config(config))
    with Ledger.open(data_dir / LEDGER_FILE_NAME, read_only=True) as ledger:
        (session,) = [s for s in read_sessions(ledger) if s.session_id == session_id]
        progress = read_progress(ledger, session_id)
        breaths = ledger.breaths(session_id)
    figure = session_figure(session, progress, context=context, breaths=breaths)
    return figure, breaths


def per_breath_axes(figure: Any) -> list[Any]:
    return [ax for ax in figure.axes if ax.get_ylabel() == PER_BREATH_LABEL]


def test_the_strip_has_one_bar_per_stored_breath_and_a_gap_per_loss(
    lossy_run: LossyRun, tmp_path: Path
) -> None:
    config = write_config(tmp_path, lossy_run.data_dir, blinded=False)
    figure, breaths = draw(lossy_run.data_dir, config, lossy_run.session_id)
    assert len(breaths) > 8
    (strip,) = per_breath_axes(figure)
    delivered_ax = figure.axes[0]
    assert strip.get_shared_x_axes().joined(strip, delivered_ax)  # the session's time axis

    bars = {container.get_label(): container.patches for container in strip.containers}
    insp, exp = bars[INSP], bars[EXP]
    assert len(insp) == len(exp) == len(breaths)  # one bar per stored report
    assert [p.get_height() for p in insp] == [b.aerosol_insp_dul / 10 for b in breaths]
    assert [p.get_height() for p in exp] == [b.aerosol_exp_dul / 10 for b in breaths]
    assert [p.get_width() for p in insp] == [b.insp_ms / 1000 for b in breaths]
    assert [p.get_width() for p in exp] == [b.exp_ms / 1000 for b in breaths]
    starts = [p.get_x() for p in insp]
    assert starts == sorted(starts)
    for inspiration, expiration in zip(insp, exp, strict=True):
        assert expiration.get_x() == pytest.approx(inspiration.get_x() + inspiration.get_width())
    # A gated run: the aerosol is in the green (inspiratory) bars.
    assert sum(p.get_height() for p in insp) > 20 * sum(p.get_height() for p in exp)

    # Each loss is a hatched gap between the stored breaths around it, labelled.
    gaps = [p for p in strip.patches if p.get_gid() == LOST_REPORTS_GID]
    after_loss = [i for i, b in enumerate(breaths) if b.lost_before]
    assert [breaths[i].lost_before for i in after_loss] == [2, 1]
    assert len(gaps) == len(after_loss)
    for gap, index in zip(gaps, after_loss, strict=True):
        left, right = gap.get_x(), gap.get_x() + gap.get_width()
        assert left == pytest.approx(exp[index - 1].get_x() + exp[index - 1].get_width())
        assert right == pytest.approx(insp[index].get_x())
        assert right - left > 1.5 * (breaths[index].insp_ms / 1000)  # a breath's worth or more
    assert gaps[0].get_hatch() == "//"
    assert {t.get_text() for t in strip.texts} == {"2 lost", "1 lost"}
    title = strip.get_title()
    assert f"{len(breaths)} BREATH reports stored, 3 lost" in title
    assert "lost BREATH reports 3" in title  # the summary says the same
    legend = [t.get_text() for t in strip.get_legend().get_texts()]
    assert sorted(legend) == sorted([INSP, EXP, "breath reported", "lost BREATH reports"])


def saved_figures(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every figure the CLI saves, kept for inspection (and still written)."""
    pytest.importorskip("matplotlib", reason="plots are the optional extra 'plots'")
    saved: list[Any] = []

    def keep(figure: Any, path: Path) -> None:
        saved.append(figure)
        save(figure, path)

    monkeypatch.setattr(plots, "_save", keep)
    return saved


def test_the_cli_plot_draws_the_stored_breaths_and_shows_no_drug_unit_figure_when_blinded(
    lossy_run: LossyRun,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    saved = saved_figures(monkeypatch)
    config = write_config(tmp_path, lossy_run.data_dir, blinded=True)
    out = tmp_path / "strip.png"
    args = ["report", "plot", "--session", str(lossy_run.session_id), "-o", str(out)]
    run_cli(capsys, *args, "--config", str(config))
    assert png_size(out) == (1200, 700)
    (figure,) = saved
    (strip,) = per_breath_axes(figure)
    (_, breaths) = draw(lossy_run.data_dir, config, lossy_run.session_id)
    assert len(strip.containers[0].patches) == len(breaths)
    texts = [t.get_text() for t in figure.findobj(lambda a: hasattr(a, "get_text"))]
    assert any("BREATH reports stored" in t for t in texts)
    assert not [t for t in texts if _DRUG_UNIT_FIGURE.search(t) or "vesicles" in t]


def test_a_ledger_from_before_per_breath_rows_still_plots_from_the_summary(
    lossy_run: LossyRun,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data_dir = tmp_path / "older"
    shutil.copytree(lossy_run.data_dir, data_dir)
    as_previous_version(data_dir / LEDGER_FILE_NAME)  # no table `breaths`, no rows
    with Ledger.open(data_dir / LEDGER_FILE_NAME):  # the controller's start migrates it
        pass
    config = write_config(tmp_path, data_dir, blinded=False)
    figure, breaths = draw(data_dir, config, lossy_run.session_id)
    assert breaths == []
    assert per_breath_axes(figure) == []
    (summary_strip,) = [ax for ax in figure.axes if ax.get_xlabel() == "aerosol (µL)"]
    labels = [t.get_text() for t in summary_strip.get_yticklabels()]
    assert labels == ["by breath phase", "emitted"]
    assert "lost BREATH reports 3" in summary_strip.get_title()
    saved = saved_figures(monkeypatch)
    out = tmp_path / "older.png"
    args = ["report", "plot", "--session", str(lossy_run.session_id), "-o", str(out)]
    run_cli(capsys, *args, "--config", str(config))
    assert png_size(out) == (1200, 700)
    (drawn,) = saved
    assert per_breath_axes(drawn) == []
    assert [ax.get_xlabel() for ax in drawn.axes].count("aerosol (µL)") == 1


def test_strip_geometry_from_records_including_a_loss_before_the_first_stored_breath() -> None:
    origin = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)

    def record(breath_no: int, received_s: float, lost_before: int = 0) -> BreathRecord:
        return BreathRecord(
            session_id=1,
            breath_no=breath_no,
            lost_before=lost_before,
            at=Instant(
                utc=origin + timedelta(seconds=received_s),
                boot_id="b",
                monotonic_ns=int(received_s * 1e9),
            ),
            insp_ms=1500,
            exp_ms=2500,
            tidal_ml=500,
            peak_flow_ml_s=400,
            aerosol_insp_dul=412,
            aerosol_exp_dul=3,
        )

    strip = BreathStrip.from_records(
        [record(65535, 12.0, lost_before=2), record(0, 16.0), record(3, 28.0, lost_before=2)],
        origin=origin,
    )
    first, second, third = strip.bars
    assert (first.insp_start_s, first.exp_start_s, first.end_s) == (8.0, 9.5, 12.0)
    assert (first.aerosol_insp_ul, first.aerosol_exp_ul) == (41.2, 0.3)
    assert second.insp_start_s == 12.0  # follows the first without a gap
    assert third.insp_start_s == 24.0
    assert [(g.count, g.start_s, g.end_s) for g in strip.lost] == [(2, 0.0, 8.0), (2, 16.0, 24.0)]
    assert strip.text() == "per breath: 3 BREATH reports stored, 4 lost"
