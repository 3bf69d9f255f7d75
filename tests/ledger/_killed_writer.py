"""Child process for the kill-9 test: writes committed ledger events in a loop.

After each call returns (i.e. after COMMIT and fsync) it prints one line and flushes:
`S <session_id>` (intent), `E <event_id>` (other events), `O <seq>` (outbox append),
`U <session_id>` (marked uncertain at start-up). The parent SIGKILLs it at random.
"""

from __future__ import annotations

import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from controller.dosing import Instant
from controller.ledger import EndSource, Ledger, OutboxKind, OutboxMessage


def _now(boot_id: str) -> Instant:
    return Instant(utc=datetime.now(UTC), boot_id=boot_id, monotonic_ns=time.monotonic_ns())


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main(db_path: Path) -> None:
    """Write until killed."""
    boot_id = uuid.uuid4().hex  # each child is a new "boot" of the controller
    if db_path.exists():
        ledger = Ledger.open(db_path, progress_interval_ms=0)
    else:  # the first child plays `nebuliser ledger init`
        ledger = Ledger.create(
            db_path, device_id="neb-kill", subject_id="subj-kill", progress_interval_ms=0
        )
    for record in ledger.open_sessions():
        ledger.mark_uncertain(record.session_id, reason="controller_restart", at=_now(boot_id))
        _say(f"U {record.session_id}")
    _say("READY")
    message = OutboxMessage(kind=OutboxKind.SESSION, topic="ward/bed/session", payload=b"{}")
    while True:
        session_id = ledger.record_intent(
            subject_id="subj-kill",
            planned_cap_ul=500,
            device_target_ul=500,
            device_max_duration_s=600,
            output_pct=80,
            decision_trace={"allowed": True},
            at=_now(boot_id),
            publish=[message],
        )
        _say(f"S {session_id}")
        _say(f"E {ledger.record_started(session_id, at=_now(boot_id))}")
        progress = ledger.record_progress(
            session_id, delivered_ul=100, flow_ul_min=150, reservoir_ul=1000, at=_now(boot_id)
        )
        _say(f"E {progress}")
        telemetry = OutboxMessage(kind=OutboxKind.TELEMETRY, topic="t", payload=b"x" * 64, qos=0)
        _say(f"O {ledger.outbox.append(telemetry, at=_now(boot_id))}")
        ended = ledger.record_ended(
            session_id,
            delivered_ul=480,
            duration_ms=1000,
            reason="TARGET_REACHED",
            source=EndSource.DEVICE,
            at=_now(boot_id),
        )
        _say(f"E {ended}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
