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
