"""Configuration loading: every error named with its key; flags beat env beat file."""

from __future__ import annotations

import re
import subprocess
from datetime import date
from pathlib import Path

import pytest

from controller.cli import main
from controller.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]


def test_example_config_is_valid_and_is_what_config_example_prints(
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = load_config(REPO / "config" / "example.toml")
    assert config.prescription is not None
    assert config.prescription.subject_id == "PILOT-001"
    assert config.clock.mode == "ntp"  # a Pi has no RTC: the example requires NTP
    shipped = (REPO / "config" / "example.toml").read_text("utf-8")
    assert main(["config", "example", "--start", "2026-12-01"]) == 0
    assert capsys.readouterr().out == shipped


def test_config_example_fills_the_course_from_today_or_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["config", "example", "--start", "2027-02-27"]) == 0
    printed = capsys.readouterr().out
    assert "course_start = 2027-02-27\n" in printed
    assert "course_end = 2027-03-03\n" in printed
    assert main(["config", "example"]) == 0
    today = tmp_path / "today.toml"
    today.write_text(capsys.readouterr().out, encoding="utf-8")
    rx = load_config(today).prescription
    assert rx is not None
    from controller.preflight import limit_findings  # noqa: PLC0415

    assert limit_findings(rx, today=rx.limits.course_start or date.min) == []
    with pytest.raises(SystemExit):
        main(["config", "example", "--start", "tomorrow"])


def test_every_error_is_reported_with_key_value_and_rule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[device]\nport = "/dev/x"\nbogus = 1\n[session]\nstop_latency_ms = 5\n'
        '[storage]\nfree_space_floor_mb = "lots"\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as caught:
        load_config(bad)
    keys = {issue.key for issue in caught.value.issues}
    assert keys == {"device.bogus", "session.stop_latency_ms", "storage.free_space_floor_mb"}
    assert main(["config", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "device.bogus: unknown key" in err
    assert "session.stop_latency_ms" in err
    assert "(got 5)" in err


def test_bad_toml_and_missing_file_are_clear(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[device\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken)
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "absent.toml")


def test_precedence_flags_over_environment_over_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[device]\nport = "/dev/from-file"\nward = "w2"\n', encoding="utf-8")
    assert load_config(path).device.port == "/dev/from-file"
    monkeypatch.setenv("NEBULISER_DEVICE__PORT", "/dev/from-env")
    assert load_config(path).device.port == "/dev/from-env"
    assert load_config(path).device.ward == "w2"
    flagged = load_config(path, overrides={"device": {"port": "/dev/from-flag"}})
    assert flagged.device.port == "/dev/from-flag"


def test_every_nebuliser_variable_in_the_repository_is_a_setting_or_listed() -> None:
    # A NEBULISER_ variable that is neither a setting nor in OTHER_ENV_VARIABLES would
    # make every configuration load fail where it is set (unknown variables are errors).
    from controller.configfile import OTHER_ENV_VARIABLES, TOP_LEVEL_KEYS  # noqa: PLC0415

    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    found: set[str] = set()
    for name in listed:
        path = REPO / name
        if path.suffix in {".py", ".md", ".toml", ".service", ".yaml", ""} and path.is_file():
            text = path.read_text(encoding="utf-8", errors="replace")
            found |= set(re.findall(r"\bNEBULISER_[A-Z][A-Z0-9_]*[A-Z0-9]\b", text))
    deliberate_typos = {"NEBULISER_DEVICE_PORT"}  # the docs' and tests' example of one
    strays = {
        name
        for name in found - OTHER_ENV_VARIABLES - deliberate_typos
        if name.removeprefix("NEBULISER_").split("__")[0].lower() not in TOP_LEVEL_KEYS
    }
    assert strays == set()
    assert {"NEBULISER_FAULT_RUNS", "NEBULISER_MQTT_PASSWORD"} <= found
