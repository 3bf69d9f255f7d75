"""The `nebuliser.breathing` message: what to say, and when (every 10 s, and at changes)."""

from __future__ import annotations

from collections import deque
from typing import Final, Literal

from drivers.mn1 import Breath

from ._accumulator import BreathAccumulator

__all__ = ["BREATHING_PERIOD_MS", "BreathingCadence", "RecentBreathing", "breathing_fields"]

#: A breathing message at least this often while the head is breath-aware.
BREATHING_PERIOD_MS: Final = 10_000
_RECENT: Final = 5  # rate, tidal and I:E over the last 5 breaths: steady, yet current

Reason = Literal["periodic", "state_change"]


class RecentBreathing:
    """The patient's last few breaths, across sessions (for the ward display)."""

    def __init__(self) -> None:
        self._breaths: deque[tuple[int, Breath]] = deque(maxlen=_RECENT)

    def on_breath(self, breath: Breath, at_ms: int) -> None:
        """Every BREATH report, whatever its session."""
        self._breaths.append((at_ms, breath))

    def clear(self) -> None:
        """Forget (a reconnect, a head reboot or swap: another patient may be on it)."""
        self._breaths.clear()

    def fields(self, now_ms: int) -> dict[str, object]:
        """rate_bpm, tidal_ml, ie_ratio, seconds_since_breath (None before any breath)."""
        if not self._breaths:
            return {"rate_bpm": None, "tidal_ml": None, "ie_ratio": None}
        breaths = [b for _, b in self._breaths]
        cycle_ms = sum(b.insp_ms + b.exp_ms for b in breaths)
        insp_ms = sum(b.insp_ms for b in breaths)
        return {
            "rate_bpm": round(60_000 * len(breaths) / cycle_ms, 1) if cycle_ms else None,
            "tidal_ml": round(sum(b.tidal_ml for b in breaths) / len(breaths)),
            "ie_ratio": round((cycle_ms - insp_ms) / insp_ms, 2) if insp_ms else None,
            "seconds_since_breath": max(0, now_ms - self._breaths[-1][0]) // 1000,
        }


class BreathingCadence:
    """Decides when a breathing message is due: a change of (session, WAITING) or 10 s."""

    def __init__(self, *, period_ms: int = BREATHING_PERIOD_MS) -> None:
        self._period_ms = period_ms
        self._last_ms: int | None = None
        self._last_key: tuple[int | None, bool] | None = None

    def poll(self, now_ms: int, *, session_id: int | None, waiting: bool) -> Reason | None:
        """The reason to publish now, or None; a returned reason counts as published."""
        key = (session_id, waiting)
        if key != self._last_key:
            reason: Reason | None = "state_change"
        elif self._last_ms is None or now_ms - self._last_ms >= self._period_ms:
            reason = "periodic"
        else:
            reason = None
        if reason is not None:
            self._last_key, self._last_ms = key, now_ms
        return reason


def breathing_fields(
    recent: RecentBreathing,
    run: BreathAccumulator | None,
    *,
    now_ms: int,
    gated: bool,
    reason: Reason,
) -> dict[str, object]:
    """The fields of a `nebuliser.breathing` message (pass to `outbox_entry`)."""
    fields: dict[str, object] = {"reason": reason, "gated": gated, **recent.fields(now_ms)}
    if run is None:
        return fields | {"session_id": None, "waiting": False}
    summary = run.summary()
    share = summary.insp_share
    return fields | {
        "session_id": run.session_id,
        "waiting": run.waiting,
        "insp_share_pct": None if share is None else round(100 * share, 1),
        "breaths": summary.breaths,
        "lost_reports": summary.lost_reports,
    }
