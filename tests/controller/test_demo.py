"""`nebuliser demo` runs from a clean checkout: session, refusal, fault, exit 0."""

from __future__ import annotations

import pytest

from controller.cli import main


def test_demo_runs_a_session_refuses_a_second_and_raises_the_fault_alarm(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--log-level", "error", "demo", "--nominal-ul-min", "30000"]) == 0
    out = capsys.readouterr().out
    assert "ended:" in out
    assert "refused: interval" in out
    assert "device_head_disconnected" in out
    assert "second dose refused: True" in out
