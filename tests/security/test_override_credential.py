"""Accountable overrides: an investigator's Ed25519 key signs the override (same
envelope and checks as remote commands) and the person is named."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from controller.cli import main
from controller.dosing import Override
from controller.security import (
    OverrideRefusedError,
    SecuritySettings,
    SenderRegistry,
    SqliteCounterStore,
    generate_key_files,
    public_key_to_text,
    sign_override,
    verify_override,
)

NOW = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)
INVESTIGATOR = Ed25519PrivateKey.generate()
STATION = Ed25519PrivateKey.generate()


def _settings(*, name: str | None = "Dr Jane Smith") -> SecuritySettings:
    senders: list[dict[str, object]] = [
        {
            "id": "dr-smith",
            "public_key": public_key_to_text(INVESTIGATOR.public_key()),
            "role": "investigator",
            "name": name,
        },
        {
            "id": "ward-3",
            "public_key": public_key_to_text(STATION.public_key()),
            "role": "ward_station",
        },
    ]
    return SecuritySettings.model_validate({"senders": senders})


def _sign(
    key: Ed25519PrivateKey = INVESTIGATOR,
    *,
    sender_id: str = "dr-smith",
    device_id: str = "neb-0001",
    subject_id: str = "S-001",
    issued_at_ms: int = NOW_MS,
) -> bytes:
    return sign_override(
        key=key,
        sender_id=sender_id,
        device_id=device_id,
        subject_id=subject_id,
        role="investigator",
        reason="protocol deviation 7 approved",
        constraint_codes=["interval"],
        issued_at_ms=issued_at_ms,
    )


def _verify(raw: bytes, tmp_path: Path) -> Override:
    counters = SqliteCounterStore.in_data_dir(tmp_path)
    try:
        return verify_override(
            raw,
            now=NOW,
            device_id="neb-0001",
            subject_id="S-001",
            registry=SenderRegistry.from_settings(_settings()),
            counters=counters,
        )
    finally:
        counters.close()


def test_a_valid_credential_names_the_person(tmp_path: Path) -> None:
    override = _verify(_sign(), tmp_path)
    assert override.role == "investigator"
    assert override.constraint_codes == frozenset({"interval"})
    assert override.signed_by == "Dr Jane Smith (key dr-smith)"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (lambda: _sign(STATION), "bad_signature"),
        (lambda: _sign(sender_id="ward-3", key=STATION), "role_not_permitted"),
        (lambda: _sign(device_id="neb-0002"), "wrong_device"),
        (lambda: _sign(subject_id="S-002"), "signed for subject 'S-002'"),
        (lambda: _sign(issued_at_ms=NOW_MS - 120_000), "expired"),
        (lambda: b'{"role": "investigator"}', "invalid_envelope"),
    ],
)
def test_invalid_credentials_are_refused_with_the_reason(
    raw: Callable[[], bytes], reason: str, tmp_path: Path
) -> None:
    with pytest.raises(OverrideRefusedError, match=reason):
        _verify(raw(), tmp_path)


def test_one_credential_admits_one_start(tmp_path: Path) -> None:
    credential = _sign()
    _verify(credential, tmp_path)
    with pytest.raises(OverrideRefusedError, match=r"replayed_counter|duplicate_command_id"):
        _verify(credential, tmp_path)


def test_an_investigator_key_must_name_a_person() -> None:
    with pytest.raises(ValidationError, match="must name a real person"):
        _settings(name=None)


def test_the_investigators_command_signs_a_credential_the_controller_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    private, public = generate_key_files(out_dir=tmp_path / "keys", name="dr-smith")
    settings = SecuritySettings.model_validate(
        {
            "senders": [
                {
                    "id": "dr-smith",
                    "public_key": public.read_text(encoding="ascii"),
                    "role": "investigator",
                    "name": "Dr Jane Smith",
                }
            ]
        }
    )
    out = tmp_path / "override.json"
    code = main(
        [
            "session", "sign-override", "--key", str(private), "--sender", "dr-smith",
            "--device", "neb-0001", "--subject", "S-001", "--reason", "deviation 7",
            "--override", "interval", "-o", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    assert "valid 60 s, for one start" in capsys.readouterr().out
    counters = SqliteCounterStore.in_data_dir(tmp_path)
    try:
        override = verify_override(
            out.read_bytes(),
            now=datetime.now(UTC),
            device_id="neb-0001",
            subject_id="S-001",
            registry=SenderRegistry.from_settings(settings),
            counters=counters,
        )
    finally:
        counters.close()
    assert (override.reason, override.signed_by) == ("deviation 7", "Dr Jane Smith (key dr-smith)")
