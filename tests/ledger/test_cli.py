"""`nebuliser ledger show` and `nebuliser ledger backup` on a real ledger file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.cli import main
from controller.exitcodes import ExitCode
from controller.ledger import LEDGER_FILE_NAME, AlarmAction, EndSource, Ledger
from tests.ledger.conftest import SimClock, create_ledger, intent


@pytest.fixture
def data_dir(tmp_path: Path, clock: SimClock) -> Path:
    with create_ledger(tmp_path / LEDGER_FILE_NAME) as ledger:
        done = intent(ledger, clock, cap_ul=500)
        ledger.record_started(done, at=clock.advance(1))
        ledger.record_alarm(
            alarm_code="output_low",
            action=AlarmAction.RAISED,
            actor="controller",
            session_id=done,
            at=clock.advance(20),
        )
        ledger.record_ended(
            done,
            delivered_ul=400,
            duration_ms=200_000,
            reason="BUTTON_STOP",
            source=EndSource.DEVICE,
            at=clock.advance(180),
        )
        clock.advance(86_400)
        pending = intent(ledger, clock, cap_ul=300, subject_id="subj-2")
        ledger.mark_uncertain(pending, reason="controller_restart", at=clock.advance(5))
    return tmp_path


def test_show_prints_volume_dose_reasons_and_alarms(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ledger", "show", "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert "delivered 400 uL  dose 0.4 mg  [salbutamol 1 mg/mL]" in out
    assert "end: BUTTON_STOP (reported by device) after 200.0 s" in out
    assert "alarm 2026-11-25 08:00:21Z: output_low raised by controller" in out
    assert "NOT reconciled: counts its full planned cap of 300 uL" in out


def test_show_filters_and_emits_json(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["ledger", "show", "--data-dir", str(data_dir), "--since", "2026-11-26", "--json"])
        == 0
    )
    rows = json.loads(capsys.readouterr().out)
    assert [(r["session_id"], r["subject_id"], r["status"]) for r in rows] == [
        (2, "subj-2", "uncertain")
    ]
    assert main(["ledger", "show", "--data-dir", str(data_dir), "--subject", "nobody"]) == 0
    assert "no sessions" in capsys.readouterr().out


def test_backup_makes_a_verified_copy_that_opens(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "copy.sqlite3"
    assert main(["ledger", "backup", str(dest), "--data-dir", str(data_dir)]) == 0
    assert "verified" in capsys.readouterr().out
    with Ledger.open(dest, read_only=True) as copy:
        assert len(copy.summaries()) == 2


def test_missing_ledger_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ledger", "show", "--data-dir", str(tmp_path / "empty")]) == ExitCode.LEDGER
    assert "no dose ledger" in capsys.readouterr().err


def test_show_and_backup_work_while_the_controller_has_the_ledger_open(
    tmp_path: Path, clock: SimClock, capsys: pytest.CaptureFixture[str]
) -> None:
    with create_ledger(tmp_path / LEDGER_FILE_NAME) as running:
        intent(running, clock)
        assert main(["ledger", "show", "--data-dir", str(tmp_path), "--json"]) == 0
        assert len(json.loads(capsys.readouterr().out)) == 1
        assert (
            main(["ledger", "backup", str(tmp_path / "b.sqlite3"), "--data-dir", str(tmp_path)])
            == 0
        )
        intent(running, clock)  # the writer is not disturbed
    with Ledger.open(tmp_path / "b.sqlite3", read_only=True) as copy:
        assert [s.session_id for s in copy.summaries()] == [1]
