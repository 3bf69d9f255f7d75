"""Command and reply topics of one bed (under the MQTT topic root, default nebuliser/v1)."""

from __future__ import annotations

__all__ = ["DEFAULT_TOPIC_ROOT", "command_topic", "reply_topic"]

DEFAULT_TOPIC_ROOT = "nebuliser/v1"


def command_topic(*, ward: str, bed: str, root: str = DEFAULT_TOPIC_ROOT) -> str:
    """``<root>/<ward>/<bed>/command``: signed commands to one bed (never retained)."""
    return f"{root}/{ward}/{bed}/command"


def reply_topic(*, ward: str, bed: str, root: str = DEFAULT_TOPIC_ROOT) -> str:
    """``<root>/<ward>/<bed>/command/reply``: the bed's accepted/refused replies."""
    return f"{root}/{ward}/{bed}/command/reply"
