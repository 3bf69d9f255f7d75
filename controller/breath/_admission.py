"""Which command starts a run, and when a breath-gated prescription must be refused.

Pure: the runtime passes the prescription's `Delivery` and what the link knows of
the head (`HostLink.caps_discovery`, `HostLink.capabilities`). A breath-gated
prescription is never run continuously instead: on a head that cannot gate, the
start is refused with a reason the nurse can act on.
"""

from __future__ import annotations

from dataclasses import dataclass

from controller.dosing import Delivery
from drivers.mn1 import Caps, CapsDiscovery, Start, StartGated

__all__ = ["DeliveryRefusal", "delivery_refusal", "start_command"]


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryRefusal:
    """Why a start cannot be sent now: a machine code and a sentence with the fix."""

    code: str
    reason: str
    #: True when waiting can help (capability discovery still running): retry shortly.
    transient: bool


def delivery_refusal(
    delivery: Delivery, *, caps_discovery: CapsDiscovery, caps: Caps | None
) -> DeliveryRefusal | None:
    """None if the head can deliver as prescribed; otherwise why not.

    A continuous prescription runs on every head (version 1 or 1.1), as before.
    """
    if not delivery.breath_gated:
        return None
    if caps_discovery is CapsDiscovery.PENDING:
        return DeliveryRefusal(
            code="head_capabilities_unknown",
            reason=(
                "breath-gated delivery: the head's capabilities are not known yet "
                "(QUERY_CAPS unanswered so far); try again in a moment"
            ),
            transient=True,
        )
    if caps is None:
        return DeliveryRefusal(
            code="head_not_breath_aware",
            reason=(
                "breath-gated delivery prescribed, but this head is ICD version 1 (no breath "
                "sensor): fit a breath-aware (ICD 1.1) head or ask the prescriber for "
                'delivery.mode = "continuous"'
            ),
            transient=False,
        )
    if not caps.breath_gated:
        return DeliveryRefusal(
            code="head_cannot_gate",
            reason=(
                "breath-gated delivery prescribed, but this head senses breaths without "
                "BREATH_GATED: fit a head that gates or ask the prescriber for "
                'delivery.mode = "continuous"'
            ),
            transient=False,
        )
    return None


def start_command(
    delivery: Delivery,
    *,
    session_id: int,
    target_ul: int,
    max_duration_s: int,
    output_pct: int,
) -> Start | StartGated:
    """START, or START_GATED carrying the prescription's gating parameters.

    Call only after `delivery_refusal` returned None (the link refuses START_GATED
    to a head that did not advertise BREATH_GATED anyway).
    """
    if not delivery.breath_gated:
        return Start(
            session_id=session_id,
            target_ul=target_ul,
            max_duration_s=max_duration_s,
            output_pct=output_pct,
        )
    return StartGated(
        session_id=session_id,
        target_ul=target_ul,
        max_duration_s=max_duration_s,
        output_pct=output_pct,
        gate_pct=delivery.gated_gate_pct,
        lead_breaths=delivery.gated_lead_breaths,
        apnoea_s=delivery.gated_apnoea_s,
    )
