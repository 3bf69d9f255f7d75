"""The one reconnect back-off policy of every MQTT client in this project.

Sans-IO: `ReconnectBackoff` only computes waits; the caller sleeps. Exponential from
`initial_s`, doubling, capped at `max_s`, with "equal jitter": each wait is drawn
uniformly from [½·w, w] where w is the exponential step. Jitter keeps a ward of
controllers that lost the same broker from reconnecting in lock-step (a thundering
herd on the broker's restart); the lower half-bound keeps the first retry prompt, so
a broker that is back after a short restart is found within `initial_s`.

Why these defaults (docs/mqtt.md §Reconnection): a 0.2 s first wait and a 1 s cap
(the issue allows up to 2 s) mean a controller finds a restarted broker within 1 s,
so its retained state is back on the broker (republish) and its backlog starts to
drain within about a second. A retry to a broker that is down costs one refused TCP
connection (or a SYN that times out): a ward of 100 controllers makes at most about
130 attempts a second, nothing for a broker or a network.
"""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["DEFAULT_RECONNECT_INITIAL_S", "DEFAULT_RECONNECT_MAX_S", "ReconnectBackoff"]

DEFAULT_RECONNECT_INITIAL_S = 0.2
DEFAULT_RECONNECT_MAX_S = 1.0


class ReconnectBackoff:
    """Waits between connection attempts: call `next_wait_s()` after a failure,
    `reset()` after a connection that worked."""

    def __init__(
        self,
        *,
        initial_s: float = DEFAULT_RECONNECT_INITIAL_S,
        max_s: float = DEFAULT_RECONNECT_MAX_S,
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> None:
        if initial_s <= 0 or max_s <= 0:
            raise ValueError(
                f"reconnect back-off needs positive waits, got initial {initial_s} s, max {max_s} s"
            )
        self.initial_s = initial_s
        self.max_s = max(max_s, initial_s)
        self._uniform = uniform
        self._step_s = initial_s

    def reset(self) -> None:
        """The connection worked: the next failure waits `initial_s` again (at most)."""
        self._step_s = self.initial_s

    def next_wait_s(self) -> float:
        """How long to wait before the next attempt (jittered, never above `max_s`)."""
        step_s = self._step_s
        self._step_s = min(step_s * 2, self.max_s)
        return self._uniform(step_s / 2, step_s)
