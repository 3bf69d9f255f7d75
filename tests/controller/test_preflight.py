"""`config check` runs the checks `serve` runs before touching the device, with the
same exit code; every mismatch of issue 18 is one test here."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from controller.benchconfig import BenchPrescription, bench_config_text, write_bench_config
from controller.cli import main
from controller.config import load_config
from controller.exitcodes import ExitCode
from controller.ledger import LEDGER_FILE_NAME, Ledger
from controller.preflight import Severity, limit_findings, preflight

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "example.toml"


def _check_and_serve(path: Path) -> tuple[int, int]:
    """Exit codes of `config check` and of `serve` (which must refuse before the device)."""
    return main(["config", "check", str(path)]), main(["serve", "--config", str(path)])


def _bench(tmp_path: Path, **limits: Any) -> Path:
    path, _ = write_bench_config(
        tmp_path, port="/nonexistent/tty", prescription=BenchPrescription(**limits)
    )
    return path


def test_a_good_bench_config_passes_with_its_warnings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["config", "check", str(_bench(tmp_path))]) == ExitCode.OK
    captured = capsys.readouterr()
    assert "OK, serve would start" in captured.out
    assert "warning: clock.mode" in captured.err
    assert "warning: security.require_signed_prescriptions" in captured.err


def test_no_prescription_is_refused_by_both_with_5(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f'[storage]\ndata_dir = "{tmp_path}/data"\n', encoding="utf-8")
    assert _check_and_serve(path) == (ExitCode.PRESCRIPTION, ExitCode.PRESCRIPTION)


def test_the_shipped_unsigned_example_is_refused_by_both_with_5(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "controller.toml"
    copy.write_text(main_example(), encoding="utf-8")
    assert _check_and_serve(copy) == (ExitCode.PRESCRIPTION, ExitCode.PRESCRIPTION)
    err = capsys.readouterr().err
    assert "serve would refuse to start: exit 5" in err
    assert "prescription_file" in err  # says how to fix it


def main_example() -> str:
    """What `nebuliser config example` prints (the example with today's course)."""
    from controller.cli.config import example_config_text  # noqa: PLC0415

    return example_config_text()


def test_empty_and_truncated_files_are_refused_by_both_with_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty.toml"
    empty.write_text("\n\n", encoding="utf-8")
    assert _check_and_serve(empty) == (ExitCode.USAGE, ExitCode.USAGE)
    assert "the file is empty" in capsys.readouterr().err
    text = EXAMPLE.read_text("utf-8")
    cut = tmp_path / "cut.toml"
    cut.write_text(text[: text.index("[prescription.lot]") + 9], encoding="utf-8")
    assert _check_and_serve(cut) == (ExitCode.USAGE, ExitCode.USAGE)
    assert "cut short" in capsys.readouterr().err
    comments = tmp_path / "comments.toml"
    comments.write_text(text[: text.index("[device]")], encoding="utf-8")
    assert _check_and_serve(comments) == (ExitCode.USAGE, ExitCode.USAGE)
    assert "holds no settings" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("limits", "key"),
    [
        ({"session_ul": 3000, "rolling_24h_max_ul": 2000}, "rolling_24h_max_ul"),
        ({"session_ul": 500, "course_max_ul": 400}, "course_max_ul"),
        ({"max_session_duration_s": 1}, "max_session_duration_s"),
    ],
)
def test_inconsistent_limits_are_refused_by_both_with_5(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], limits: dict[str, int], key: str
) -> None:
    path = _bench(tmp_path, **limits)
    assert _check_and_serve(path) == (ExitCode.PRESCRIPTION, ExitCode.PRESCRIPTION)
    assert f"error: prescription.limits.{key}" in capsys.readouterr().err


def test_limit_rules_on_their_own() -> None:
    rx = load_config(EXAMPLE).prescription
    assert rx is not None
    during = limit_findings(rx, today=date(2026, 12, 3))
    assert during == []
    after = limit_findings(rx, today=date(2026, 12, 7))
    assert [(f.severity, f.key) for f in after] == [
        (Severity.WARNING, "prescription.limits.course_end")
    ]


def test_a_slow_duration_is_a_warning_not_an_error(tmp_path: Path) -> None:
    # 3000 µL in 60 s needs 3000 µL/min: legal, but every session would hit the time cap.
    config = load_config(_bench(tmp_path, session_ul=3000, max_session_duration_s=60))
    result = preflight(config)
    assert result.exit_code is ExitCode.OK
    assert any(f.key.endswith("max_session_duration_s") for f in result.warnings)


def test_a_world_accessible_socket_is_refused_by_both_with_2(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    text = bench_config_text(port="/nonexistent/tty", data_dir=tmp_path / "data")
    path.write_text(text + "[control]\nsocket_mode = 0o666\n", encoding="utf-8")
    assert _check_and_serve(path) == (ExitCode.USAGE, ExitCode.USAGE)


def test_an_unusable_data_dir_is_refused_by_both_with_4(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("", encoding="utf-8")
    path = tmp_path / "c.toml"
    path.write_text(
        bench_config_text(port="/nonexistent/tty", data_dir=blocker / "data"), encoding="utf-8"
    )
    assert _check_and_serve(path) == (ExitCode.LEDGER, ExitCode.LEDGER)


def test_a_mistyped_environment_variable_is_refused_by_both_with_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _bench(tmp_path)
    monkeypatch.setenv("NEBULISER_DEVICE_PORT", "/dev/ttyACM0")  # one underscore
    assert _check_and_serve(path) == (ExitCode.USAGE, ExitCode.USAGE)
    assert "NEBULISER_DEVICE_PORT: unknown setting" in capsys.readouterr().err
    monkeypatch.delenv("NEBULISER_DEVICE_PORT")
    monkeypatch.setenv("NEBULISER_DEVICE__PROT", "/dev/ttyACM0")
    assert main(["config", "check", str(path)]) == ExitCode.USAGE
    assert "[set by NEBULISER_DEVICE__PROT]" in capsys.readouterr().err


def test_nested_environment_overrides_get_clear_messages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _bench(tmp_path)
    cases = {
        "NEBULISER_DEVICE": "set one key per variable, e.g. NEBULISER_DEVICE__KEY",
        "NEBULISER_PRESCRIPTION__LIMITS__SESSION_UL": "cannot be changed from the environment",
        "NEBULISER_DEVICE__PORT__PATH": "[set by NEBULISER_DEVICE__PORT__PATH]",
    }
    for name, expected in cases.items():
        monkeypatch.setenv(name, "5")
        assert main(["config", "check", str(path)]) == ExitCode.USAGE
        assert expected in capsys.readouterr().err, name
        monkeypatch.delenv(name)
    # A good nested override reaches its key (text converted like the file's value).
    monkeypatch.setenv("NEBULISER_SESSION__STOP_LATENCY_MS", "180")
    assert load_config(path).session.stop_latency_ms == 180


def test_quoted_date_and_decimal_socket_mode_say_what_to_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = EXAMPLE.read_text("utf-8")
    quoted = tmp_path / "quoted.toml"
    quoted.write_text(text.replace("course_start = 2026", 'course_start = "2026'), "utf-8")
    quoted.write_text(
        quoted.read_text("utf-8").replace('"2026-12-01', '"2026-12-01"'), encoding="utf-8"
    )
    assert main(["config", "check", str(quoted)]) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert "a date is written without quotes in TOML: course_start = 2026-12-01" in err
    decimal = tmp_path / "decimal.toml"
    decimal.write_text(text.replace("socket_mode = 0o660", "socket_mode = 660"), "utf-8")
    assert main(["config", "check", str(decimal)]) == ExitCode.USAGE
    assert "a file mode is octal: socket_mode = 0o660" in capsys.readouterr().err
    leading_zero = tmp_path / "zero.toml"
    leading_zero.write_text(text.replace("socket_mode = 0o660", "socket_mode = 0660"), "utf-8")
    assert main(["config", "check", str(leading_zero)]) == ExitCode.USAGE
    assert "socket_mode = 0o660" in capsys.readouterr().err


def test_config_show_prints_every_value_with_its_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _bench(tmp_path)
    monkeypatch.setenv("NEBULISER_SESSION__OUTPUT_LOW_S", "12")
    assert main(["config", "show", str(path), "--json"]) == ExitCode.OK
    rows = {row["key"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["device.port"] == {"key": "device.port", "value": "/nonexistent/tty",
                                   "source": "file"}  # fmt: skip
    assert rows["session.output_low_s"]["source"] == "env NEBULISER_SESSION__OUTPUT_LOW_S"
    assert rows["session.output_low_s"]["value"] == 12
    assert rows["device.ward"]["source"] == "default"
    assert rows["prescription.limits.session_ul"]["source"] == "file"
    assert main(["config", "show", str(path)]) == ExitCode.OK
    assert "# env NEBULISER_SESSION__OUTPUT_LOW_S" in capsys.readouterr().out


def test_relative_paths_resolve_against_the_config_files_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    text = bench_config_text(port="/nonexistent/tty", data_dir=Path("course-data"))
    config_path = site / "course.toml"
    config_path.write_text(text, encoding="utf-8")
    (site / "course-data").mkdir()
    Ledger.create(
        site / "course-data" / LEDGER_FILE_NAME, device_id="neb-bench", subject_id="BENCH-001"
    ).close()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert load_config(config_path).storage.data_dir == site / "course-data"
    assert main(["report", "sessions", "--config", str(config_path), "--json"]) == ExitCode.OK
    assert json.loads(capsys.readouterr().out) == []
    # From the environment or a flag, a relative path means the current directory.
    monkeypatch.setenv("NEBULISER_STORAGE__DATA_DIR", "here")
    assert load_config(config_path).storage.data_dir == Path("here")


def _gated_bench(tmp_path: Path, *, apnoea_s: int, **limits: Any) -> Path:
    """The bench configuration with a breath-gated prescription (ICD 1.1 heads)."""
    path = _bench(tmp_path, **limits)
    with path.open("a", encoding="utf-8") as file:
        file.write(
            "[prescription.delivery]\n"
            f'mode = "breath_gated"\ngate_pct = 80\nlead_breaths = 1\napnoea_s = {apnoea_s}\n'
        )
    return path


def test_an_apnoea_pause_shorter_than_a_slow_breath_is_a_warning_naming_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 6/min is one breath every 10 s: a 5 s pause would stop the mesh between breaths.
    path = _gated_bench(tmp_path, apnoea_s=5)
    assert main(["config", "check", str(path)]) == ExitCode.OK
    captured = capsys.readouterr()
    assert "OK, serve would start" in captured.out
    line = next(
        line for line in captured.err.splitlines() if "prescription.delivery.apnoea_s" in line
    )
    assert "warning: prescription.delivery.apnoea_s: 5 s is not" in line
    assert "5 s is not longer than one breath" in line
    assert "6/min = 10 s" in line
    assert "set apnoea_s = 15" in line
    # At the boundary (one breath exactly) still a warning; one second longer is fine.
    for apnoea_s, warned in ((10, True), (11, False), (15, False)):
        config = load_config(_gated_bench(tmp_path, apnoea_s=apnoea_s))
        keys = [f.key for f in preflight(config).warnings]
        assert ("prescription.delivery.apnoea_s" in keys) is warned, apnoea_s


def test_a_gated_dose_longer_than_its_maximum_duration_is_a_warning_naming_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The pilot: 3000 µL at 400 µL/min is 450 s continuous; gated ×3 is 1350 s > 1200 s.
    path = _gated_bench(
        tmp_path,
        apnoea_s=15,
        session_ul=3000,
        max_session_duration_s=1200,
        rolling_24h_max_ul=3000,
        course_max_ul=15000,
    )
    assert main(["config", "check", str(path)]) == ExitCode.OK
    err = capsys.readouterr().err
    line = next(
        line for line in err.splitlines() if "prescription.limits.max_session_duration_s" in line
    )
    assert "warning: prescription.limits.max_session_duration_s: 1200 s" in line
    assert "1200 s is likely too short for breath-gated delivery" in line
    assert "about 450 s continuously at 400 µL/min" in line
    assert "raise limits.max_session_duration_s to at least 1350 s" in line
    assert "prescription.delivery.apnoea_s" not in err
    # Long enough: no warning. The same limits delivered continuously: no warning either.
    enough = _gated_bench(
        tmp_path,
        apnoea_s=15,
        session_ul=3000,
        max_session_duration_s=1350,
        rolling_24h_max_ul=3000,
        course_max_ul=15000,
    )
    assert not [f for f in preflight(load_config(enough)).warnings if "duration" in f.key]
    continuous = _bench(
        tmp_path,
        session_ul=3000,
        max_session_duration_s=1200,
        rolling_24h_max_ul=3000,
        course_max_ul=15000,
    )
    assert not [f for f in preflight(load_config(continuous)).warnings if "duration" in f.key]
