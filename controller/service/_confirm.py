"""Bedside confirmation of a start: the head's CONFIRM button, or the bedside terminal.

Safety rule 9: remote parties may request a start, but a dose only begins after a
confirmation at the bedside. Both the local control interface and remote
`session.request_start` commands wait here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Final

from controller.control import ControlError
from controller.dosing import BedsideScan, ConstraintCode, Decision, ReducedDoseOffer

from ._supervisor import Supervisor

__all__ = [
    "MAX_SCAN_CHARS",
    "bedside_scan",
    "confirm_at_bedside",
    "reduced_dose_reason",
    "reduced_offer_json",
]


#: The longest wristband or lot label accepted (a scanner that never sends Enter).
MAX_SCAN_CHARS: Final = 128


def bedside_scan(subject: object, lot: object) -> BedsideScan:
    """The wristband and lot the nurse scanned, from a control-socket request.

    Raises `ControlError` naming the field when one is not a short line of text."""
    labels: dict[str, str | None] = {}
    for name, value in (("subject", subject), ("lot", lot)):
        # A scanner ends the label with Enter (CR or LF): blanks around it are not part of it.
        text = value.strip() if isinstance(value, str) else value
        if text is not None and (
            not isinstance(text, str) or len(text) > MAX_SCAN_CHARS or not text.isprintable()
        ):
            raise ControlError(
                f"{name} must be the scanned label as one line of printable text (at most "
                f"{MAX_SCAN_CHARS} characters), e.g. --{name} S-001"
            )
        labels[name] = text or None
    return BedsideScan(subject_id=labels["subject"], lot_id=labels["lot"])


async def _until(event: asyncio.Event) -> None:
    await event.wait()


def reduced_offer_json(offer: ReducedDoseOffer) -> dict[str, Any]:
    """The smaller dose a refusal offers, as the control socket sends it to the terminal."""
    return {
        "allowed_ul": offer.allowed_ul,
        "wanted_ul": offer.wanted_ul,
        "constraint": offer.limiting_code,
        "because": offer.because,
        "question": offer.question(),
    }


def reduced_dose_reason(decision: Decision) -> str | None:
    """Why an allowed dose is below the prescribed one (shown while awaiting CONFIRM)."""
    return next(
        (c.reason for c in decision.constraints if c.code == ConstraintCode.REDUCED_DOSE),
        None,
    )


async def confirm_at_bedside(
    supervisor: Supervisor,
    *,
    timeout_s: float,
    terminal: Callable[[], Coroutine[Any, Any, str | None]] | None = None,
    cancelled: asyncio.Event | None = None,
) -> str | None:
    """Wait for the CONFIRM button (or `terminal()`, if given) within `timeout_s`.

    Returns how it was confirmed ("CONFIRM button" or what `terminal` returned), or
    None when the window expired, the terminal declined or `cancelled` was set
    (`session stop` while the start waits).
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
            if cancelled is not None:
                tasks.append(group.create_task(_until(cancelled)))
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                task.cancel()
            return next(iter(done)).result()
    except TimeoutError:
        return None
    finally:
        supervisor.disarm_confirm()
