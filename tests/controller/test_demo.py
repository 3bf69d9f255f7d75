"""`nebuliser demo` runs from a clean checkout: session, refusal, fault, exit 0."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.cli import main
from controller.exitcodes import ExitCode
from controller.logging import get_logger


def test_demo_runs_a_session_refuses_a_second_and_raises_the_fault_alarm(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--log-level", "error", "demo", "--nominal-ul-min", "30000"]) == 0
    out = capsys.readouterr().out
    assert "ended:" in out
    assert "refused: interval" in out
    assert "device_head_disconnected" in out
    assert "second dose refused: True" in out
    assert "demo passed; logs:" in out
    assert "DEMO FAILED" not in out


def test_demo_on_two_beds_publishes_over_mqtt_with_no_gaps(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--log-level", "error", "demo", "--nominal-ul-min", "30000", "--beds", "2"]) == 0
    out = capsys.readouterr().out
    assert "private MQTT broker (Mosquitto) on mqtt://127.0.0.1:" in out
    assert "bed-01 ended:" in out
    assert "bed-02 ended:" in out
    assert "acknowledged by nurse.demo" in out  # a signed alarm.ack naming the person
    for bed in ("bed-01", "bed-02"):
        line = next(
            x for x in out.splitlines() if x.strip().startswith(f"{bed}: ") and "messages" in x
        )
        assert "messages published and received, gaps 0" in line
        assert "now offline" in line
        assert int(line.split(":")[1].split()[0]) > 5


def test_demo_fails_and_says_why_when_the_pilot_session_falls_short(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    log = tmp_path / "demo.log"
    argv = ["demo", "--nominal-ul-min", "30000", "--no-mqtt", "--fill-ul", "1500"]
    assert main([*argv, "--log-file", str(log)]) == ExitCode.REFUSED
    out = capsys.readouterr().out
    assert f"controller logs: {log}" in out
    failure = next(line for line in out.splitlines() if line.startswith("DEMO FAILED"))
    assert "bed-01 delivered" in failure
    assert "of 3000 µL (expected at least 2850)" in failure
    assert "device reason" in failure  # why it stopped
    assert "demo FAILED; logs:" in out
    # The controllers' log lines went to the file, not into the story.
    assert '"event"' not in out
    assert '"event"' in log.read_text(encoding="utf-8")
    # Logging is back on stderr afterwards (the file is closed): later code can log.
    get_logger("after-demo").error("still logging")
    assert "still logging" in capsys.readouterr().err
