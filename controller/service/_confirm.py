"""Bedside confirmation of a start: the head's CONFIRM button, or the bedside terminal.

Safety rule 9: remote parties may request a start, but a dose only begins after a
confirmation at the bedside. Both the local control interface and remote
`session.request_start` commands wait here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from ._supervisor import Supervisor

__all__ = ["confirm_at_bedside"]


async def confirm_at_bedside(
    supervisor: Supervisor,
    *,
    timeout_s: float,
    terminal: Callable[[], Coroutine[Any, Any, str | None]] | None = None,
) -> str | None:
    """Wait for the CONFIRM button (or `terminal()`, if given) within `timeout_s`.

    Returns how it was confirmed ("CONFIRM button" or what `terminal` returned), or
    None when the window expired or the terminal declined.
    """
    supervisor.arm_confirm()

    async def button() -> str:
        await supervisor.wait_confirm_button()
        return "CONFIRM button"

    try:
        async with asyncio.timeout(timeout_s), asyncio.TaskGroup() as group:
            tasks: list[asyncio.Task[str | None]] = [group.create_task(button())]
            if terminal is not None:
                tasks.append(group.create_task(terminal()))
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                task.cancel()
            return next(iter(done)).result()
    except TimeoutError:
        return None
    finally:
        supervisor.disarm_confirm()
