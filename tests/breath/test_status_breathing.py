"""`nebuliser session status`: the breathing line a nurse reads (ICD 1.1 heads)."""

from __future__ import annotations

import pytest

from controller.cli.session import _print_breathing


def test_a_running_gated_session_shows_rate_waiting_and_inspiratory_share(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _print_breathing(
        {
            "delivery": "breath_gated",
            "head": "breath_gated",
            "rate_bpm": 15.0,
            "tidal_ml": 500,
            "ie_ratio": 2.0,
            "seconds_since_breath": 1,
            "session_id": 7,
            "gated": True,
            "waiting": True,
            "breaths": 12,
            "insp_share_pct": 99.6,
            "lost_reports": 0,
        }
    )
    line = capsys.readouterr().out
    assert "breath_gated on a breath_gated head" in line
    assert "rate 15.0/min" in line
    assert "WAITING for a breath" in line
    assert "99.6 % of the aerosol in inspiration" in line


def test_a_gated_prescription_on_a_version_1_head_says_so(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _print_breathing(
        {"delivery": "breath_gated", "head": "version_1", "rate_bpm": None, "session_id": None}
    )
    assert "breath_gated on a version_1 head" in capsys.readouterr().out


def test_nothing_for_a_continuous_prescription_on_a_version_1_head(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _print_breathing({"delivery": "continuous", "head": "version_1", "session_id": None})
    assert capsys.readouterr().out == ""
