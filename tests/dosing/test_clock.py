"""controller.clock: the trust rule, the readers and the injectable clocks."""

from __future__ import annotations

import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from controller.clock import (
    ClockTrustMonitor,
    ClockTrustPolicy,
    ManualClock,
    NtpStatus,
    SystemClock,
    acknowledge_clock,
    evaluate_clock_trust,
    interpret_adjtimex_state,
    parse_timedatectl,
    read_boot_id,
    read_ntp_status,
)
from tests.dosing._factories import T0

SYNCED = NtpStatus(synchronized=True, source="test")
UNSYNCED = NtpStatus(synchronized=False, source="timedatectl", detail="NTPSynchronized=no")


def test_manual_clock_moves_and_steps() -> None:
    clock = ManualClock(utc=T0, boot_id="b1", monotonic_ns=5)
    clock.advance(1.5)
    assert clock.now().utc == T0 + timedelta(seconds=1.5)
    assert clock.now().monotonic_ns == 1_500_000_005
    clock.step_wall(-3600)
    assert clock.now().utc == T0 - timedelta(seconds=3598.5)
    assert clock.now().monotonic_ns == 1_500_000_005
    clock.reboot(boot_id="b2", downtime_s=10, wall_error_s=-100)
    assert (clock.now().boot_id, clock.now().monotonic_ns) == ("b2", 0)
    with pytest.raises(ValueError, match="use step_wall"):
        clock.advance(-1)


def test_system_clock_reads_the_real_boot_id() -> None:
    instant = SystemClock().now()
    assert instant.boot_id == read_boot_id()
    assert instant.utc.tzinfo is not None
    later = SystemClock().now()
    assert later.monotonic_ns >= instant.monotonic_ns


def test_boot_id_falls_back_to_a_per_process_id(tmp_path: Path) -> None:
    assert read_boot_id(tmp_path / "missing").startswith("process-")
    (tmp_path / "boot_id").write_text("abc-123\n", encoding="ascii")
    assert read_boot_id(tmp_path / "boot_id") == "abc-123"


@pytest.mark.parametrize(
    ("stdout", "expected"),
    [
        ("yes\n", True),
        ("no\n", False),
        ("NTPSynchronized=yes\n", True),
        ("", None),
        ("maybe", None),
    ],
)
def test_parse_timedatectl(stdout: str, expected: bool | None) -> None:
    assert parse_timedatectl(stdout) is expected


@pytest.mark.parametrize(("state", "expected"), [(0, True), (4, True), (5, False), (-1, None)])
def test_interpret_adjtimex_state(state: int, expected: bool | None) -> None:
    assert interpret_adjtimex_state(state) is expected


def test_read_ntp_status_uses_timedatectl_when_it_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("controller.clock.shutil.which", lambda _name: "/usr/bin/timedatectl")
    calls: list[list[str]] = []

    def fake_run(argv: list[str], **_kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, stdout="yes\n", stderr="")

    status = read_ntp_status(run=fake_run)
    assert status == NtpStatus(
        synchronized=True, source="timedatectl", detail="NTPSynchronized=yes"
    )
    assert calls == [["/usr/bin/timedatectl", "show", "-p", "NTPSynchronized", "--value"]]


def test_read_ntp_status_on_this_machine_gives_a_definite_source() -> None:
    # Real I/O: timedatectl if systemd runs here, else the adjtimex(2) fallback.
    status = read_ntp_status()
    assert status.source in {"timedatectl", "adjtimex", "none"}
    assert status.detail


def test_system_policy_trusts_without_ntp() -> None:
    policy = ClockTrustPolicy(mode="system")
    trusted, state = evaluate_clock_trust(
        policy=policy, instant=ManualClock(utc=T0).now(), ntp=None, previous=None
    )
    assert trusted.trusted
    assert not state.stepped


@pytest.mark.parametrize(
    ("ntp", "reason"),
    [
        (UNSYNCED, "NTP not synchronised (timedatectl: NTPSynchronized=no)"),
        (None, "NTP synchronisation unknown (not read)"),
        (NtpStatus(synchronized=None, source="none", detail="no tools"), "unknown (no tools)"),
    ],
)
def test_ntp_policy_needs_synchronisation(ntp: NtpStatus | None, reason: str) -> None:
    trusted, _ = evaluate_clock_trust(
        policy=ClockTrustPolicy(mode="ntp"),
        instant=ManualClock(utc=T0).now(),
        ntp=ntp,
        previous=None,
    )
    assert not trusted.trusted
    assert reason in trusted.reason


@pytest.mark.parametrize("step_s", [-7200.0, -2.5, 2.5, 7200.0])
def test_step_detected_then_retrusted_after_steady_period(step_s: float) -> None:
    clock = ManualClock(utc=T0)
    policy = ClockTrustPolicy(mode="system", step_threshold_s=2.0, retrust_after_s=60.0)
    monitor = ClockTrustMonitor(clock=clock, policy=policy)
    assert monitor.check().trusted
    clock.advance(1)
    clock.step_wall(step_s)
    stepped = monitor.check()
    assert not stepped.trusted
    assert f"stepped by {step_s:+.1f} s" in stepped.reason
    clock.advance(59)
    assert not monitor.check().trusted
    clock.advance(1)
    assert monitor.check().trusted


def test_step_below_threshold_is_slew_not_step() -> None:
    clock = ManualClock(utc=T0)
    monitor = ClockTrustMonitor(clock=clock, policy=ClockTrustPolicy(mode="system"))
    monitor.check()
    clock.advance(10)
    clock.step_wall(1.9)
    assert monitor.check().trusted


def test_ntp_retrust_also_needs_synchronisation() -> None:
    clock = ManualClock(utc=T0)
    statuses = [SYNCED, SYNCED, UNSYNCED, SYNCED]
    monitor = ClockTrustMonitor(
        clock=clock,
        policy=ClockTrustPolicy(mode="ntp", retrust_after_s=60.0),
        ntp_reader=lambda: statuses.pop(0),
    )
    assert monitor.check().trusted
    clock.step_wall(3600)
    assert not monitor.check().trusted
    clock.advance(120)
    assert not monitor.check().trusted  # steady, but NTP says unsynchronised
    clock.advance(1)
    assert monitor.check().trusted


def test_operator_acknowledgement_retrusts_immediately() -> None:
    clock = ManualClock(utc=T0)
    monitor = ClockTrustMonitor(clock=clock, policy=ClockTrustPolicy(mode="system"))
    monitor.check()
    clock.step_wall(-600)
    assert not monitor.check().trusted
    monitor.acknowledge()
    assert monitor.check().trusted
    assert monitor.state is not None
    assert acknowledge_clock(monitor.state) == monitor.state


def test_reboot_resets_the_baseline_without_flagging_a_step() -> None:
    clock = ManualClock(utc=T0, boot_id="b1")
    monitor = ClockTrustMonitor(clock=clock, policy=ClockTrustPolicy(mode="system"))
    monitor.check()
    clock.reboot(boot_id="b2", downtime_s=30)
    assert monitor.check().trusted
    assert monitor.state is not None
    assert monitor.state.boot_id == "b2"
