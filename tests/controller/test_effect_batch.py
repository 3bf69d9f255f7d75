"""The shell writes one batch of the runtime's effects as one durable transaction.

A fault STATUS gives STOP, the fault alarm and the stop decision. The STOP bytes go
out first, before any disk write (rule 2); then the alarm row and the decision row
are committed together: one hand-off to the writer thread, one COMMIT (one fsync),
and a crash cannot keep the alarm without the decision that goes with it.

The session is brought to NEBULISING in simulated time (`tests/session/_bed.py`,
with a real ledger file); the fault STATUS then goes through a real `Supervisor`
and `Recorder` (writer thread) onto the same ledger.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

from controller.clock import ClockTrustMonitor, ClockTrustPolicy, SystemClock
from controller.ledger import EventKind, Ledger
from controller.service._recorder import Recorder
from controller.service._supervisor import Supervisor
from drivers.mn1 import FaultBits, LinkPhase, StatusReceived
from tests.session._bed import Bed
from tests.session.test_runtime import ready_bed

_REPO = Path(__file__).resolve().parents[2]


class _Link:
    """The part of `SerialLink` the supervisor uses on the stop path: it notes, for
    each STOP, how many ledger statements had run when the bytes went out."""

    phase = LinkPhase.IDENTIFIED
    link_up = True

    def __init__(self, statements: list[str]) -> None:
        self._statements = statements
        self.stops: list[tuple[int, int]] = []  # (session id, statements before it)

    def send_stop_now(self, session_id: int) -> None:
        self.stops.append((session_id, len(self._statements)))


def _nebulising(path: Path) -> tuple[Bed, Ledger]:
    ledger = Ledger.create(path, device_id="neb-test", subject_id="TEST-001")
    bed = ready_bed(ledger=ledger)
    assert bed.start().started
    bed.run_for(2000)
    return bed, ledger


async def _fault_through_the_shell(bed: Bed, ledger: Ledger, link: _Link) -> None:
    """One STATUS with a fault bit, handled by the service's supervisor."""
    recorder: Recorder[Ledger] = Recorder(opener=lambda: ledger, closer=lambda _ledger: None)
    async with recorder.running():
        supervisor = Supervisor(
            link=link,  # type: ignore[arg-type]  # the stop path's part of SerialLink
            recorder=recorder,
            prescription=bed.prescription,
            clock=SystemClock(),
            trust=ClockTrustMonitor(clock=SystemClock(), policy=ClockTrustPolicy(mode="system")),
            data_dir_for_storage=ledger.path.parent,
            free_space_floor_mb=0,
            now_ms=lambda: bed.now_ms,
        )
        supervisor.runtime = bed.runtime  # the session the simulated bed has running
        _, last = bed.statuses[-1]
        faulty = dataclasses.replace(last, faults=FaultBits.INTERNAL)
        supervisor.handle_event(StatusReceived(at_ms=bed.now_ms, seq=1, status=faulty))


def _kinds_since(ledger: Ledger, after_event: int) -> list[EventKind]:
    return [e.kind for e in ledger.events() if e.event_id > after_event]


async def test_a_fault_stop_and_its_alarm_are_one_commit_after_the_stop_bytes(
    tmp_path: Path,
) -> None:
    bed, ledger = _nebulising(tmp_path / "ledger.sqlite3")
    session_id = bed.runtime.session.session_id if bed.runtime.session else 0
    before = ledger.events()[-1].event_id
    statements: list[str] = []
    ledger._db.connection.set_trace_callback(statements.append)
    link = _Link(statements)
    await _fault_through_the_shell(bed, ledger, link)
    ledger._db.connection.set_trace_callback(None)
    assert link.stops == [(session_id, 0)], "STOP must go out before any ledger statement"
    kinds = _kinds_since(ledger, before)
    assert EventKind.ALARM in kinds, kinds
    assert EventKind.DECISION in kinds, kinds
    commits = [s for s in statements if s.strip().upper() == "COMMIT"]
    assert len(commits) == 1, f"{len(commits)} commits for one effect batch: {statements}"
    ledger.close()


def crash_in_the_batch(path: str) -> None:
    """Child process: the writer dies (os._exit) while writing the stop decision,
    after the alarm row of the same batch was written."""
    bed, ledger = _nebulising(Path(path))

    def die(*_args: object, **_kwargs: object) -> int:
        os._exit(9)

    ledger.record_decision = die  # type: ignore[method-assign]
    Path(f"{path}.before").write_text(str(ledger.events()[-1].event_id))
    asyncio.run(_fault_through_the_shell(bed, ledger, _Link([])))


def test_a_crash_in_the_batch_leaves_no_alarm_without_its_decision(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    code = (
        "from tests.controller.test_effect_batch import crash_in_the_batch;"
        f" crash_in_the_batch({str(path)!r})"
    )
    child = subprocess.run(
        [sys.executable, "-c", code],
        cwd=_REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert child.returncode == 9, child.stderr[-2000:]
    before = int(Path(f"{path}.before").read_text())
    with Ledger.open(path) as ledger:
        kinds = _kinds_since(ledger, before)
    assert EventKind.ALARM not in kinds, f"alarm recorded without its stop decision: {kinds}"
    assert EventKind.DECISION not in kinds
