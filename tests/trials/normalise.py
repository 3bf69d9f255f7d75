"""The normaliser of the blinded-stream comparison: what may differ between two runs.

Only the values of the keys in `VOLATILE_KEYS` are replaced, by `"<key>"` (also when
null: a head's figure is null until its first STATUS, which is timing). Everything
else (every other key and value, every string, the topics) is compared byte for byte.
The keys are run identity (ids, times, sequence numbers, hashes) and the head's
physical measurements, which vary from one real-time run to the next on any arm.
"""

from __future__ import annotations

import json
from typing import Any, Final

__all__ = [
    "FINAL_TOPICS",
    "SAMPLED_TOPICS",
    "TIMING_PATH_EVENTS",
    "VOLATILE_KEYS",
    "normalise_stream",
]

VOLATILE_KEYS: Final = frozenset(
    {
        # run identity: when, which boot, which message, which process, which chain head
        "timestamp",  # log lines
        "utc",  # messages
        "time_utc",  # command replies
        "raised_utc",  # alarms/active
        "seq",
        "session_id",  # ids; a breathing sample falls between sessions (null) or not
        "command_id",  # a signed command's random id (echoed in its reply)
        "issued_at_ms",  # a signed command's times and signature (the station's command
        "expires_at_ms",  # is on the bed's tree too)
        "signature",
        "backlog_ceiling_seq",  # the outbox's sequence number when MQTT connected
        "boot_id",
        "pid",  # the control client's process (log lines of control requests)
        "port",  # the simulator's pty (/dev/pts/N)
        "firmware",  # the head's identity ("" in a state sampled before it was identified)
        "head",  # audit chain head: a hash over this bed's own records
        "config_sha256",  # a hash of the whole configuration file
        # the dose ledger's anchor (`ledger/anchor`): which file, its chain head, and
        # when the session's intent was written
        "ledger_id",
        "last_event_hash",
        "last_event_seq",  # how many ledger events so far (progress rows are timing)
        "intent_utc",
        # delivery: whether a sample waited in the outbox for the broker connection
        "historical",
        "republished",
        # the head's physical measurements (timing of a real-time run, on any arm)
        "delivered_ul",
        "estimated_ul",
        "flow_ul_min",
        "reservoir_ul",
        "temperature_cC",
        "duration_ms",
        "link_quality_pct",
        "counted_ul",  # course summary: sums of the runs' delivered volumes
        "course_ul",
        "rolling_24h_ul",
        "seconds_since_breath",  # breathing: when the sample fell in the breath cycle
        "breaths",  # breathing: breaths of the run so far when the sample was taken
        # the state as sampled at the telemetry rate: a state of a few ms (confirming,
        # stopping) is caught or not; every transition is compared in the log lines
        "session_state",
        "value",  # a constraint's current figure: seconds since the last start, µL used
    }
)


def _normalise(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            key: (f"<{key}>" if key in VOLATILE_KEYS else _normalise(item))
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_normalise(item) for item in value]
    return value


def _line(text: str | bytes) -> str:
    try:
        decoded = json.loads(text)
    except ValueError:
        return text.decode() if isinstance(text, bytes) else text
    if isinstance(decoded, dict) and decoded.get("event") in TIMING_PATH_EVENTS:
        # Which way the state machine went (through WAITING or straight to NEBULISING)
        # depends on where in the patient's breath the START fell: timing, not the arm.
        decoded = {k: v for k, v in decoded.items() if k not in ("before", "after", "trigger")}
    return json.dumps(_normalise(decoded), sort_keys=True, ensure_ascii=False)


#: Topics whose messages are samples taken at the telemetry rate (not events).
SAMPLED_TOPICS: Final = ("/state", "/telemetry", "/breathing")
#: Retained summaries republished on events and on a timer, built from whatever the
#: ledger held at that moment: only the last one of a run is compared (it is the
#: summary after the whole course; the earlier ones depend on when they were built).
FINAL_TOPICS: Final = ("/course",)
#: Log events whose path (before/after/trigger) follows the breath phase at START.
TIMING_PATH_EVENTS: Final = frozenset({"session state"})


def _facts(value: Any, path: str = "") -> set[str]:
    """Each leaf of a JSON document as `path=value` (`prescription.label="…"`)."""
    if isinstance(value, dict):
        return {fact for key, item in value.items() for fact in _facts(item, f"{path}.{key}")}
    if isinstance(value, list):
        return {fact for item in value for fact in _facts(item, f"{path}[]")}
    return {f"{path}={json.dumps(value, ensure_ascii=False)}"}


def normalise_stream(
    messages: list[tuple[str, bytes]], log_lines: list[str]
) -> dict[str, set[str]]:
    """Per topic (and `log` for the log lines): the set of distinct normalised lines.

    A set, not a list: how many telemetry samples and status polls fall into a run,
    and how lines of concurrent tasks interleave, depend on timing, never on the arm.
    Each distinct line is still compared byte for byte. Sampled topics (state,
    telemetry, breathing) are compared as the set of their leaf values: whether a
    sample happened to fall in the few ms before the head was identified, or while a
    start was being confirmed, is timing too; every value any sample carried is kept.
    """
    streams: dict[str, set[str]] = {}
    last: dict[str, bytes] = {}
    for topic, payload in messages:
        lines = streams.setdefault(topic, set())
        if topic.endswith(FINAL_TOPICS):
            last[topic] = payload
        elif topic.endswith(SAMPLED_TOPICS):
            lines |= _facts(_normalise(json.loads(payload)))
        else:
            lines.add(_line(payload))
    for topic, payload in last.items():
        streams[topic] = {_line(payload)}
    streams["log"] = {_line(line) for line in log_lines}
    return streams
