"""The host-side chain over a real pty against `simulators/mn1` as an ICD 1.1 head.

Capability discovery → admission → START_GATED from the prescription → BREATH and
STATUS into the accumulator → the run's accounting and alarm facts. (The session
runtime will call exactly these pieces; see docs/protocol.md.)
"""

from __future__ import annotations

import asyncio

from controller.alarms import AlarmState, evaluate
from controller.breath import BreathAccumulator, breathing_facts, delivery_refusal, start_command
from controller.dosing import Delivery
from drivers.mn1 import (
    Ack,
    BreathReceived,
    CommandAnswered,
    LinkEvent,
    NoCapabilities,
    SerialLink,
    SessionEndReceived,
    StatusReceived,
    StopReason,
)
from simulators.mn1 import BreathingModel, DeviceModel, run_pty_simulator
from tests.alarms.test_alarms import quiet

GATED = Delivery(mode="breath_gated", gate_pct=80, lead_breaths=1, apnoea_s=10)


async def next_of(link: SerialLink, kind: type[object], timeout_s: float) -> LinkEvent:
    async with asyncio.timeout(timeout_s):
        while True:
            event = await link.next_event()
            if isinstance(event, kind):
                return event


async def test_gated_run_to_its_cap_is_accounted_by_breath_phase() -> None:
    # A fast head (2000 µL/min) and a fast breather keep the real-time run short.
    model = DeviceModel(nominal_ul_min=2000, breathing=BreathingModel(pattern="severe"))
    async with run_pty_simulator(model) as sim, SerialLink(url=sim.device_path) as link:
        async with asyncio.timeout(5):
            caps = await link.wait_capabilities()
        assert caps is not None
        assert caps.breath_gated
        host = link.host_link
        refusal = delivery_refusal(
            GATED, caps_discovery=host.caps_discovery, caps=host.capabilities
        )
        assert refusal is None
        command = start_command(
            GATED, session_id=5, target_ul=20, max_duration_s=600, output_pct=100
        )
        outcome = await link.command(command)
        assert isinstance(outcome, CommandAnswered)
        assert isinstance(outcome.answer, Ack)
        accumulator = BreathAccumulator(session_id=5, started_ms=outcome.at_ms)
        end_reason: StopReason | None = None
        delivered_ul = 0
        now_ms = outcome.at_ms
        async with asyncio.timeout(60):
            while True:
                event = await link.next_event()
                now_ms = event.at_ms
                if isinstance(event, StatusReceived):
                    accumulator.on_status(event.status, now_ms)
                elif isinstance(event, SessionEndReceived):
                    end_reason = event.session_end.reason
                    delivered_ul = event.session_end.delivered_ul
                elif isinstance(event, BreathReceived):
                    accumulator.on_breath(event.breath, now_ms)
                    if end_reason is not None and event.breath.session_id != 5:
                        break  # the run's last breath is in: the next one is not ours
    assert (end_reason, delivered_ul) == (StopReason.TARGET_REACHED, 20)
    summary = accumulator.summary()
    assert abs(summary.aerosol_ul - delivered_ul) <= 1
    assert summary.insp_share is not None
    assert summary.insp_share >= 0.95
    assert summary.rate_mean_bpm is not None
    assert 30 <= summary.rate_mean_bpm <= 34  # the severe pattern: 32/min
    facts = breathing_facts(
        accumulator,
        now_ms=now_ms,
        gated=True,
        apnoea_s=GATED.gated_apnoea_s,
        delivered_ul=delivered_ul,
        end_reason=end_reason,
        final=True,
    )
    state, events = evaluate(quiet(breathing=facts), AlarmState(), now_ms)
    assert events == []  # gating worked, the accounting adds up, the patient breathes
    assert state.active == ()


async def test_gated_prescription_refused_on_a_version_1_head() -> None:
    async with run_pty_simulator(DeviceModel()) as sim, SerialLink(url=sim.device_path) as link:
        async with asyncio.timeout(5):
            assert await link.wait_capabilities() is None
        await next_of(link, NoCapabilities, 1)  # the event was queued as well
        host = link.host_link
        refusal = delivery_refusal(
            GATED, caps_discovery=host.caps_discovery, caps=host.capabilities
        )
        assert refusal is not None
        assert refusal.code == "head_not_breath_aware"
        assert not refusal.transient
        # The same head runs a continuous prescription as before.
        continuous = delivery_refusal(
            Delivery(), caps_discovery=host.caps_discovery, caps=host.capabilities
        )
        assert continuous is None


async def test_apnoea_waiting_raises_no_breathing_then_clears_when_breathing_returns() -> None:
    model = DeviceModel(nominal_ul_min=400, breathing=BreathingModel(pattern="severe"))
    delivery = Delivery(mode="breath_gated", lead_breaths=0, apnoea_s=5)
    async with run_pty_simulator(model) as sim, SerialLink(url=sim.device_path) as link:
        async with asyncio.timeout(5):
            assert await link.wait_capabilities() is not None
        command = start_command(
            delivery, session_id=6, target_ul=3000, max_duration_s=600, output_pct=100
        )
        outcome = await link.command(command)
        assert isinstance(outcome, CommandAnswered)
        assert isinstance(outcome.answer, Ack)
        accumulator = BreathAccumulator(session_id=6, started_ms=outcome.at_ms)
        reply = sim.control({"cmd": "apnoea", "seconds": 8})
        assert reply["ok"], reply
        state = AlarmState()
        seen: list[tuple[str, str]] = []
        async with asyncio.timeout(30):
            while ("cleared", "no_breathing_detected") not in seen:
                event = await link.next_event()
                if isinstance(event, StatusReceived):
                    accumulator.on_status(event.status, event.at_ms)
                elif isinstance(event, BreathReceived):
                    accumulator.on_breath(event.breath, event.at_ms)
                else:
                    continue
                facts = breathing_facts(
                    accumulator,
                    now_ms=event.at_ms,
                    gated=True,
                    apnoea_s=delivery.gated_apnoea_s,
                    delivered_ul=0,
                    end_reason=None,
                    final=False,
                )
                state, events = evaluate(quiet(breathing=facts), state, event.at_ms)
                seen += [(e.kind.value, e.code.value) for e in events]
        link.send_stop_now(6)
    assert seen == [("raised", "no_breathing_detected"), ("cleared", "no_breathing_detected")]
    assert accumulator.summary().waiting_ms >= 2_000  # apnoea 8 s − apnoea_s 5 s, give or take
