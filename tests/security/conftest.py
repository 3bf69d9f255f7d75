"""Shared fixtures: keys for each role, a registry, a real SQLite counter store."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controller.security import (
    CommandBody,
    CommandName,
    Role,
    SecuritySettings,
    SenderConfig,
    SenderRegistry,
    SqliteCounterStore,
    public_key_to_text,
    sign_command,
)

DEVICE_ID = "neb-0001"
NOW = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)


@dataclass(frozen=True)
class Keys:
    ward: Ed25519PrivateKey
    clinician: Ed25519PrivateKey
    pharmacy: Ed25519PrivateKey
    stranger: Ed25519PrivateKey


@pytest.fixture(scope="session")
def keys() -> Keys:
    return Keys(
        ward=Ed25519PrivateKey.generate(),
        clinician=Ed25519PrivateKey.generate(),
        pharmacy=Ed25519PrivateKey.generate(),
        stranger=Ed25519PrivateKey.generate(),
    )


@pytest.fixture(scope="session")
def settings(keys: Keys) -> SecuritySettings:
    def entry(sender_id: str, key: Ed25519PrivateKey, role: Role) -> SenderConfig:
        return SenderConfig(
            id=sender_id, public_key=public_key_to_text(key.public_key()), role=role
        )

    return SecuritySettings(
        senders=(
            entry("ward-3west", keys.ward, Role.WARD_STATION),
            entry("dr-jones", keys.clinician, Role.CLINICIAN),
            entry("pharmacy-1", keys.pharmacy, Role.PHARMACY),
        )
    )


@pytest.fixture(scope="session")
def registry(settings: SecuritySettings) -> SenderRegistry:
    return SenderRegistry.from_settings(settings)


@pytest.fixture
def counters(tmp_path: Path) -> Iterator[SqliteCounterStore]:
    store = SqliteCounterStore.in_data_dir(tmp_path)
    yield store
    store.close()


def make_command(
    key: Ed25519PrivateKey,
    *,
    command: CommandName,
    body: CommandBody,
    counter: int = 1,
    sender_id: str = "ward-3west",
    device_id: str = DEVICE_ID,
    issued_at_ms: int = NOW_MS,
    validity_s: int = 30,
    command_id: str | None = None,
) -> bytes:
    """A correctly signed envelope (tests then break one thing at a time)."""
    return sign_command(
        key=key,
        sender_id=sender_id,
        device_id=device_id,
        counter=counter,
        command=command,
        body=body,
        issued_at_ms=issued_at_ms,
        validity_s=validity_s,
        command_id=command_id,
    )
