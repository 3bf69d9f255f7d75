"""The bedside side of accountable overrides: a start that asks to lift a soft limit
must carry an investigator's signed credential (`controller.security.verify_override`).

A role typed at the terminal (`--override-role`) without one is refused with the
reason; nothing about the role is believed.
"""

from __future__ import annotations

import asyncio
from typing import Any

from controller.clock import Clock
from controller.config import NebuliserConfig
from controller.dosing import Override
from controller.security import (
    CommandLimits,
    OverrideRefusedError,
    SenderRegistry,
    SqliteCounterStore,
    verify_override,
)

__all__ = ["OverrideRefusedError", "override_from_request"]

_HOW = (
    "an override needs an investigator's signed credential: "
    "`nebuliser session sign-override` (by the investigator, with their key) and "
    "`nebuliser session start --override-credential FILE` (docs/dosing.md)"
)


async def override_from_request(
    args: dict[str, Any], *, config: NebuliserConfig, clock: Clock
) -> Override | None:
    """The verified override a `session.start` request carries, or None if it asks none.

    Raises `OverrideRefusedError` (the reason for the nurse) when it names an override
    without a valid credential, or a credential that does not match what it names.
    """
    credential = args.get("override_credential")
    role = args.get("override_role")
    if credential is None:
        if role:
            raise OverrideRefusedError(f"override by role {str(role)!r} refused: {_HOW}")
        return None
    if not isinstance(credential, str):
        raise OverrideRefusedError("override_credential must be the credential file's text")
    security = config.security
    if security is None or not security.senders:
        raise OverrideRefusedError(
            "override refused: no investigator key is configured in [security] senders"
        )
    prescription = config.prescription
    assert prescription is not None, "the service runs with a verified prescription"
    registry = SenderRegistry.from_settings(security)

    def check() -> Override:
        counters = SqliteCounterStore.in_data_dir(config.storage.data_dir)
        try:
            return verify_override(
                credential.encode("utf-8"),
                now=clock.now().utc,
                device_id=config.device.device_id,
                subject_id=prescription.subject_id,
                registry=registry,
                counters=counters,
                limits=CommandLimits.from_settings(security),
            )
        finally:
            counters.close()

    override = await asyncio.to_thread(check)  # SQLite: off the event loop
    if role and role != override.role:
        raise OverrideRefusedError(
            f"--override-role {role!r} does not match the credential's role {override.role!r}"
        )
    return override
