"""The one reconnect back-off: prompt first retry, 1 s cap (issue: ≤ 2 s), jitter (docs/mqtt.md)."""

from __future__ import annotations

import random

import pytest

from controller.telemetry import MqttSettings, ReconnectBackoff


def test_defaults_start_at_200_ms_and_cap_at_1_s() -> None:
    settings = MqttSettings()
    backoff = ReconnectBackoff(
        initial_s=settings.reconnect_initial_s, max_s=settings.reconnect_max_s
    )
    waits = [backoff.next_wait_s() for _ in range(50)]
    assert waits[0] <= 0.2
    assert max(waits) <= 1.0
    assert max(waits) > 0.5, "the cap is reached after a few failures"


def test_waits_are_jittered_between_half_and_full_step() -> None:
    draws: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        draws.append((low, high))
        return random.Random(7).uniform(low, high)

    backoff = ReconnectBackoff(initial_s=0.2, max_s=2.0, uniform=uniform)
    for _ in range(6):
        backoff.next_wait_s()
    assert draws == [(0.1, 0.2), (0.2, 0.4), (0.4, 0.8), (0.8, 1.6), (1.0, 2.0), (1.0, 2.0)]
    backoff.reset()
    backoff.next_wait_s()
    assert draws[-1] == (0.1, 0.2), "a connection that worked restarts from the first step"
    spread = {round(ReconnectBackoff(initial_s=1, max_s=1).next_wait_s(), 6) for _ in range(20)}
    assert len(spread) > 1, "controllers of one ward must not retry in lock-step"


@pytest.mark.parametrize(("initial_s", "max_s"), [(0.0, 1.0), (0.2, -1.0)])
def test_non_positive_waits_are_refused(initial_s: float, max_s: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        ReconnectBackoff(initial_s=initial_s, max_s=max_s)
