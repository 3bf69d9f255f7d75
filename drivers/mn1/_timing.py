"""The host link's ICD timing constants (ICD §5–§6, addendum 1.1 §1) and the uptime rule.

One home for these numbers: the link, the serial transport and the tests read
them from here (through `drivers.mn1`).
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "CAPS_QUERY_INTERVAL_MS",
    "CAPS_QUERY_TRIES",
    "HEARTBEAT_INTERVAL_MAX_MS",
    "MAX_RETRANSMITS",
    "RETRANSMIT_AFTER_MS",
    "STATUS_TIMEOUT_MS",
    "uptime_shows_reboot",
]

#: ICD §6: an unanswered command is sent again after this long.
RETRANSMIT_AFTER_MS: Final = 50
#: ICD §6: retransmissions after the first transmission, then the command has failed.
MAX_RETRANSMITS: Final = 5
#: ICD §5.5: the host sends some frame at least this often (device watchdog is 1000 ms).
HEARTBEAT_INTERVAL_MAX_MS: Final = 250
#: ICD §6: this long without a valid STATUS is link loss.
STATUS_TIMEOUT_MS: Final = 300
#: Addendum 1.1 §1: QUERY_CAPS is repeated, same seq, this often while unanswered...
CAPS_QUERY_INTERVAL_MS: Final = 50
#: ...and after this many unanswered transmissions the head is version 1 (no capabilities).
CAPS_QUERY_TRIES: Final = 3

# A drop of uptime_ms from within this distance of 2**32 to a small value is the
# counter wrapping (every 49.7 days), not a reboot.
_UPTIME_MODULUS: Final = 1 << 32
_UPTIME_WRAP_WINDOW_MS: Final = 60_000


def uptime_shows_reboot(previous_uptime_ms: int | None, uptime_ms: int) -> bool:
    """True if STATUS `uptime_ms` after `previous_uptime_ms` means the head rebooted.

    The uptime going back is a reboot, unless it is the u32 counter wrapping: from
    within a minute of 2**32 to less than a minute.
    """
    if previous_uptime_ms is None or uptime_ms >= previous_uptime_ms:
        return False
    wrapped = (
        previous_uptime_ms >= _UPTIME_MODULUS - _UPTIME_WRAP_WINDOW_MS
        and uptime_ms < _UPTIME_WRAP_WINDOW_MS
    )
    return not wrapped
