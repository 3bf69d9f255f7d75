"""SecuritySettings: configuration can lower limits but never raise them or widen roles."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from controller.benchconfig import BENCH_SECURITY, bench_mqtt_section, write_bench_config
from controller.cli import main
from controller.security import (
    HARD_MAX_VALIDITY_S,
    ROLE_COMMANDS,
    CommandLimits,
    CommandName,
    Role,
    SecuritySettings,
    SenderConfig,
)

PUB = "ed25519:BJFmJG9dw9rjVd4lumjcFnSKSi/oHKSW9YDL0NatsLg="


def test_defaults_are_safe() -> None:
    settings = SecuritySettings()
    assert settings.require_signed_prescriptions is True
    assert settings.max_validity_s == HARD_MAX_VALIDITY_S == 60
    assert settings.confirm_window_s == 60
    assert CommandLimits.from_settings(settings).max_command_bytes == 16384


@pytest.mark.parametrize(
    "overrides",
    [
        {"max_validity_s": 61},
        {"clock_skew_s": 31},
        {"max_command_bytes": 65537},
        {"confirm_window_s": 301},
        {"unknown_key": 1},
    ],
)
def test_ceilings_cannot_be_raised(overrides: dict[str, int]) -> None:
    with pytest.raises(ValidationError):
        SecuritySettings.model_validate(overrides)


def test_bad_public_key_and_duplicate_sender_are_refused() -> None:
    with pytest.raises(ValidationError, match="does not start with 'ed25519:'"):
        SenderConfig(id="a", public_key="ssh-ed25519 AAAA", role=Role.CLINICIAN)
    with pytest.raises(ValidationError, match="32 bytes"):
        SenderConfig(id="a", public_key="ed25519:AAAA", role=Role.CLINICIAN)
    sender = SenderConfig(id="a", public_key=PUB, role=Role.CLINICIAN)
    with pytest.raises(ValidationError, match="listed twice"):
        SecuritySettings(senders=(sender, sender))


def test_role_table_matches_the_brief() -> None:
    remote = {CommandName.STOP, CommandName.ALARM_ACK, CommandName.SESSION_REQUEST_START}
    assert ROLE_COMMANDS[Role.WARD_STATION] == remote
    assert ROLE_COMMANDS[Role.CLINICIAN] == remote
    assert ROLE_COMMANDS[Role.PHARMACY] == {CommandName.PRESCRIPTION_UPDATE}


def test_unsigned_alarm_ack_is_off_by_default_and_config_check_warns_about_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert SecuritySettings().allow_unsigned_alarm_ack is False
    mqtt = bench_mqtt_section(host="127.0.0.1", port=18830, client_id="neb-test")
    path, _ = write_bench_config(
        tmp_path / "bench",
        port="/dev/null",
        security=BENCH_SECURITY + "allow_unsigned_alarm_ack = true\n",
        extra=mqtt,
    )
    capsys.readouterr()
    assert main(["config", "check", str(path)]) == 0  # valid, but ...
    err = capsys.readouterr().err
    assert "warning: security.allow_unsigned_alarm_ack: true" in err
    assert "BENCH ONLY" in err
    quiet, _ = write_bench_config(tmp_path / "ward", port="/dev/null", extra=mqtt)
    assert main(["config", "check", str(quiet)]) == 0
    assert "allow_unsigned_alarm_ack" not in capsys.readouterr().err
