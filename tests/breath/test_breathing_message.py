"""The `nebuliser.breathing` message: fields from real breaths, cadence, schema-valid."""

from __future__ import annotations

from datetime import UTC, datetime

from controller.breath import (
    BreathAccumulator,
    BreathingCadence,
    RecentBreathing,
    breathing_fields,
)
from controller.telemetry import outbox_entry
from tests.breath.test_accumulator import breath
from tests.telemetry.helpers import IDENTITY, ROOT, validate_payload

NOW = datetime(2026, 12, 7, 7, 0, tzinfo=UTC)


def test_fields_over_the_last_breaths_and_the_run() -> None:
    recent = RecentBreathing()
    run = BreathAccumulator(session_id=9, started_ms=0)
    for no in range(8):  # 1 s + 2 s: 20/min, I:E 1:2
        message = breath(no, session_id=9, insp_dul=30, exp_dul=0, tidal_ml=480)
        recent.on_breath(message, 3000 * (no + 1))
        run.on_breath(message, 3000 * (no + 1))
    fields = breathing_fields(recent, run, now_ms=26_500, gated=True, reason="periodic")
    assert fields == {
        "reason": "periodic",
        "gated": True,
        "rate_bpm": 20.0,
        "tidal_ml": 480,
        "ie_ratio": 2.0,
        "seconds_since_breath": 2,
        "session_id": 9,
        "waiting": False,
        "insp_share_pct": 100.0,
        "breaths": 8,
        "lost_reports": 0,
    }
    entry = outbox_entry(IDENTITY, root_topic=ROOT, schema="nebuliser.breathing", utc=NOW, **fields)
    body = validate_payload(entry.build(5))
    assert body["schema"] == "nebuliser.breathing"
    assert entry.topic == "nebuliser/v1/W7/B03/breathing"


def test_no_breath_yet_and_no_run_still_validates() -> None:
    fields = breathing_fields(RecentBreathing(), None, now_ms=0, gated=False, reason="periodic")
    entry = outbox_entry(IDENTITY, root_topic=ROOT, schema="nebuliser.breathing", utc=NOW, **fields)
    assert validate_payload(entry.build(1))["rate_bpm"] is None


def test_cadence_every_10_s_and_at_each_change() -> None:
    cadence = BreathingCadence()
    assert cadence.poll(0, session_id=None, waiting=False) == "state_change"  # first
    assert cadence.poll(9_999, session_id=None, waiting=False) is None
    assert cadence.poll(10_000, session_id=None, waiting=False) == "periodic"
    assert cadence.poll(12_000, session_id=4, waiting=True) == "state_change"
    assert cadence.poll(12_100, session_id=4, waiting=True) is None
    assert cadence.poll(13_000, session_id=4, waiting=False) == "state_change"
