"""The controller's view of who may send commands: public keys and roles only."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # cryptography is imported only where a key is used (_keys.py)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


from controller.security._keys import public_key_from_text
from controller.security._settings import (
    HARD_MAX_CLOCK_SKEW_S,
    HARD_MAX_COMMAND_BYTES,
    HARD_MAX_VALIDITY_S,
    ROLE_COMMANDS,
    CommandName,
    Role,
    SecuritySettings,
)

__all__ = ["CommandLimits", "Sender", "SenderRegistry"]


@dataclass(frozen=True, kw_only=True)
class Sender:
    """A known sender: id, public key and role."""

    sender_id: str
    public_key: Ed25519PublicKey
    role: Role
    name: str | None = None
    """The person holding the key, when configured (always for investigators)."""

    def may_issue(self, command: CommandName) -> bool:
        """Whether this sender's role permits `command` (fixed table in code)."""
        return command in ROLE_COMMANDS[self.role]


@dataclass(frozen=True, kw_only=True)
class CommandLimits:
    """Size and time limits applied by `verify_command` (clamped to hard ceilings)."""

    max_command_bytes: int = 16384
    max_validity_s: int = HARD_MAX_VALIDITY_S
    clock_skew_s: int = 5

    def __post_init__(self) -> None:
        if not 0 < self.max_command_bytes <= HARD_MAX_COMMAND_BYTES:
            raise ValueError(f"max_command_bytes must be 1..{HARD_MAX_COMMAND_BYTES}")
        if not 0 < self.max_validity_s <= HARD_MAX_VALIDITY_S:
            raise ValueError(f"max_validity_s must be 1..{HARD_MAX_VALIDITY_S}")
        if not 0 <= self.clock_skew_s <= HARD_MAX_CLOCK_SKEW_S:
            raise ValueError(f"clock_skew_s must be 0..{HARD_MAX_CLOCK_SKEW_S}")

    @classmethod
    def from_settings(cls, settings: SecuritySettings) -> CommandLimits:
        """The limits configured in `settings`."""
        return cls(
            max_command_bytes=settings.max_command_bytes,
            max_validity_s=settings.max_validity_s,
            clock_skew_s=settings.clock_skew_s,
        )


class SenderRegistry:
    """Immutable lookup of senders by id."""

    def __init__(self, *, senders: Iterable[Sender]) -> None:
        by_id: dict[str, Sender] = {}
        for sender in senders:
            if sender.sender_id in by_id:
                raise ValueError(f"sender id {sender.sender_id!r} is listed twice")
            by_id[sender.sender_id] = sender
        self._by_id: Mapping[str, Sender] = by_id

    @classmethod
    def from_settings(cls, settings: SecuritySettings) -> SenderRegistry:
        """Build the registry from the `[security]` settings section."""
        return cls(
            senders=(
                Sender(
                    sender_id=entry.id,
                    public_key=public_key_from_text(entry.public_key),
                    role=entry.role,
                    name=entry.name,
                )
                for entry in settings.senders
            )
        )

    def get(self, sender_id: str) -> Sender | None:
        """The sender with this id, or None when unknown."""
        return self._by_id.get(sender_id)

    def pharmacy_keys(self) -> dict[str, Ed25519PublicKey]:
        """Public keys of every pharmacy-role sender, by id (for prescription checks)."""
        return {s.sender_id: s.public_key for s in self._by_id.values() if s.role is Role.PHARMACY}
