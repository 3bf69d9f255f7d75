"""The asyncio shell around the sans-IO session runtime (`controller.session`).

Every decision is the runtime's. This shell only feeds it (link events, ticks at
the runtime's own deadlines, condition readings, requests from the control
interface and remote commands) and performs its effects in the order given,
which is the safe one (design guide §2 rule 2):

* `SendStop` — written synchronously (`SerialLink.send_stop_now`) before anything
  else is done with the input;
* ledger writes (alarm rows first) — queued on the `Recorder`'s writer thread,
  never awaited on the stop path; the intent row is the one write that is awaited,
  because START may only go out after it is committed (rule 3);
* log lines last.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Final

from controller.alarms import AlarmCode, AlarmEvent, AlarmSettings
from controller.breath import BreathingCadence
from controller.clock import Clock, ClockTrustMonitor
from controller.dosing import (
    BedsideScan,
    Decision,
    DoseRequest,
    Override,
    Prescription,
    StorageStatus,
    TrustedTime,
    decide,
)
from controller.ledger import Ledger, ReserveFile, StorageReport, check_storage_floor
from controller.logging import bind_session, get_logger, unbind_session
from controller.session import (
    ASSUMED_STOP_LATENCY_MS,
    TICK_MS,
    LedgerWrite,
    LogLine,
    Now,
    SendStop,
    SessionRuntime,
    StartOutcome,
    StartSettled,
)
from drivers.mn1 import (
    Ack,
    CapsDiscovery,
    ClearFaults,
    CommandAnswered,
    CommandFailed,
    LinkEvent,
    LinkPhase,
    Nak,
    SerialLink,
)

from ._recorder import Recorder
from ._records import Publications, messages_for, perform_write, write_intent
from ._snapshot import snapshot

__all__ = ["CONDITIONS_PERIOD_S", "TICK_MS", "Publications", "StartOutcome", "Supervisor"]

_log = get_logger(__name__)

#: How often clock trust and free space are read: a step or a crossing is alarmed
#: within this (plus the read itself), well inside the 1 s the safety case asks.
CONDITIONS_PERIOD_S: Final = 0.5
#: The longest a start may take from START to its answer (START retries, the
#: runtime's confirm deadline, and margin); past it the shell reports a bug.
_START_SETTLE_BOUND_MS: Final = 10_000
#: The longest a breath-gated start waits for capability discovery (a version-1 head
#: is known after 3 unanswered QUERY_CAPS 50 ms apart; margin for a loaded machine).
CAPS_WAIT_MS: Final = 1500


class Supervisor:
    """Owns the device session for one bed: the runtime plus the I/O it needs."""

    def __init__(
        self,
        *,
        link: SerialLink,
        recorder: Recorder[Ledger],
        prescription: Prescription,
        clock: Clock,
        trust: ClockTrustMonitor,
        data_dir_for_storage: Path,
        free_space_floor_mb: int,
        emergency_free_mb: int = 0,
        stop_latency_ms: int = ASSUMED_STOP_LATENCY_MS,
        alarm_settings: AlarmSettings | None = None,
        publications: Publications | None = None,
        expected_serial: str | None = None,
        now_ms: Callable[[], int] | None = None,
        progress_interval_ms: int = 5000,
    ) -> None:
        self._link = link
        self._recorder = recorder
        self._clock = clock
        self._trust = trust
        self._data_dir = data_dir_for_storage
        self._floor_bytes = free_space_floor_mb * 1024 * 1024
        self._emergency_bytes = emergency_free_mb * 1024 * 1024
        self._reserve: ReserveFile | None = None  # the ledger's end-record reserve
        self._pub = publications or Publications()
        self._now_ms = now_ms or (lambda: time.monotonic_ns() // 1_000_000)
        self.runtime = SessionRuntime(
            prescription=prescription,
            stop_latency_ms=stop_latency_ms,
            alarm_settings=alarm_settings,
            expected_serial=expected_serial,
            progress_interval_ms=progress_interval_ms,
        )
        self._changed = asyncio.Event()
        self._wake = asyncio.Event()
        self._settled: StartOutcome | None = None
        self._start_lock = asyncio.Lock()
        self._breathing_cadence = BreathingCadence()
        recorder.on_failure = self._on_ledger_failure

    # ------------------------------------------------------------------ views

    @property
    def prescription(self) -> Prescription:
        """The verified prescription the runtime enforces."""
        return self.runtime.prescription

    @property
    def publications(self) -> Publications:
        """The builder of the messages that accompany ledger rows."""
        return self._pub

    def link_ready(self) -> bool:
        """The head is identified and its STATUS is arriving."""
        return self._link.phase is LinkPhase.IDENTIFIED and bool(self._link.link_up)

    def controller_refusals(self) -> list[str]:
        """Reasons, outside the dose rules, why no session may start now."""
        return self.runtime.refusals(link_ready=self.link_ready())

    def snapshot(self) -> dict[str, Any]:
        """Everything `session status` shows."""
        return snapshot(
            self.runtime, link_up=bool(self._link.link_up), refusals=self.controller_refusals()
        ) | {"breathing": self.runtime.breath.snapshot(self._now_ms())}

    def breathing_message(self) -> dict[str, object] | None:
        """The fields of a `nebuliser.breathing` message if one is due now (every 10 s
        and at a change of session or WAITING), on a breath-aware head only."""
        tracker = self.runtime.breath
        if tracker.caps is None:
            return None
        run = tracker.run
        current = run if run is not None and run.end_reason is None else None
        now_ms = self._now_ms()
        reason = self._breathing_cadence.poll(
            now_ms,
            session_id=current.session_id if current is not None else None,
            waiting=current is not None and current.accumulator.waiting,
        )
        return None if reason is None else tracker.message_fields(now_ms, reason=reason)

    # ------------------------------------------------------------------ effects

    def _now(self) -> Now:
        return Now(self._now_ms(), self._clock.now())

    def _perform(self) -> None:
        """Carry out the runtime's effects in its order: STOP, alarm rows, records, logs.

        The records of one batch (a stop decision and its alarm) go to the writer
        thread in one hand-off and are committed in one transaction, after the STOP
        bytes are written and before any log line.
        """
        writes: list[LedgerWrite] = []
        for effect in self.runtime.take_effects():
            match effect:
                case SendStop(session_id=sid):
                    if self._link.phase is not LinkPhase.PORT_CLOSED:
                        self._link.send_stop_now(sid)  # re-sent by PortOpened otherwise
                case LogLine(level=level, message=message, fields=fields):
                    self._record(writes)
                    writes = []
                    getattr(_log, level)(message, **fields)
                case StartSettled(outcome=outcome):
                    self._settled = outcome
                case _:
                    writes.append(effect)
        self._record(writes)
        self._changed.set()
        self._wake.set()

    def _record(self, writes: Sequence[LedgerWrite]) -> None:
        """Queue the records (with their messages, built here on the loop) as one batch."""
        if not writes:
            return
        batch = [(write, messages_for(write, self._pub)) for write in writes]
        self._recorder.submit_all(
            [(partial(perform_write, write=write, publish=publish), type(write).__name__)
             for write, publish in batch],
            together=Ledger.batch,
            then=self._pub.committed if any(publish for _, publish in batch) else None,
        )  # fmt: skip

    # ------------------------------------------------------------------ inputs

    async def recover(self) -> None:
        """At start-up: sessions left open by a crash are marked UNCERTAIN, never resumed."""
        self._reserve = await self._recorder.call(lambda ledger: ledger.reserve)
        open_sessions = await self._recorder.call(lambda ledger: ledger.open_sessions())
        pending = await self._recorder.call(lambda ledger: ledger.uncertain_sessions())
        self.runtime.recover(
            open_sessions=open_sessions, uncertain_sessions=pending, now=self._now()
        )
        self._perform()
        await self._recorder.drain()  # the UNCERTAIN marks are durable before anything else

    def handle_event(self, event: LinkEvent) -> None:
        """React to one link event (synchronous: STOP bytes go out before we return)."""
        self.runtime.on_link_event(event, self._now())
        self._perform()

    def tick(self) -> None:
        """Predictive stop between STATUS frames, STOP repetition, start deadlines."""
        self.runtime.tick(self._now())
        self._perform()

    async def run_ticks(self) -> None:
        """Tick at the runtime's deadlines (every TICK_MS while a session is open;
        never while idle: an input wakes the loop when a deadline appears)."""
        while True:
            self._wake.clear()
            deadline = self.runtime.next_deadline_ms()
            if deadline is None:
                await self._wake.wait()
                continue
            delay_ms = deadline - self._now_ms()
            if delay_ms > 0:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a
                # cancellation that arrives as its timeout fires (the task then
                # never ends and shutdown hangs).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay_ms / 1000):
                        await self._wake.wait()
                continue
            self.tick()

    def _on_ledger_failure(self, failures: int) -> None:
        self.runtime.on_ledger_failure(failures, self._now())
        self._perform()

    def command_flood(self, *, active: bool, unrecorded_total: int) -> None:
        """The command intake's flood state (messages refused without a record)."""
        self.runtime.on_command_flood(
            active=active, unrecorded_total=unrecorded_total, now=self._now()
        )
        self._perform()

    def telemetry_dropped(self, dropped_total: int) -> None:
        """The outbox's running count of dropped telemetry messages."""
        self.runtime.on_telemetry_dropped(dropped_total, self._now())
        self._perform()

    async def refresh_conditions(self) -> tuple[TrustedTime, StorageReport]:
        """Read clock trust and free space (both may block: in a thread) and feed them."""
        trusted: TrustedTime = await asyncio.to_thread(self._trust.check)
        reserve = self._reserve
        storage = await asyncio.to_thread(
            lambda: check_storage_floor(
                self._data_dir,
                floor_bytes=self._floor_bytes,
                emergency_bytes=self._emergency_bytes,
                reserve=reserve,
            )
        )
        self.runtime.on_conditions(trusted, storage, self._now())
        self._perform()
        if reserve is not None and storage.ok and not storage.reserve_intact:
            # Room again: re-make the end-record reserve (on the writer thread).
            self._recorder.submit(
                lambda ledger: ledger.reserve and ledger.reserve.ensure(), what="reserve"
            )
        return trusted, storage

    async def watch_conditions(self) -> None:
        """Feed clock trust and free space every CONDITIONS_PERIOD_S, for ever."""
        while True:
            await self.refresh_conditions()
            await asyncio.sleep(CONDITIONS_PERIOD_S)

    # ------------------------------------------------------------------ requests

    async def admit(
        self,
        *,
        requested_ul: int | None = None,
        override: Override | None = None,
        continue_last: bool = False,
        accept_reduced_ul: int | None = None,
        scan: BedsideScan | None = None,
    ) -> Decision:
        """Ask the dose engine; record the decision. Controller conditions come first.

        `continue_last` asks for the rest of the last, interrupted administration;
        `scan` is the wristband and lot scanned at the bedside (the five-rights check)."""
        trusted, storage = await self.refresh_conditions()
        subject = self.prescription.subject_id
        # Only the runs inside the rules' windows and the course totals (issue 14).
        history = await self._recorder.call(
            lambda ledger: ledger.admission_history(subject, trusted.instant)
        )
        request = DoseRequest(
            subject_id=subject,
            storage=StorageStatus(ok=storage.ok, reason=storage.reason),
            requested_ul=requested_ul,
            override=override,
            continue_last=continue_last,
            accept_reduced_ul=accept_reduced_ul,  # issue 15: a reduced dose is explicit
            scan=scan if scan is not None else BedsideScan(),  # issue 20: five rights
        )
        decision = decide(self.prescription, history, request, trusted)
        self.runtime.admitted(decision, override, self._now())
        self._perform()
        return decision

    async def start(self, decision: Decision) -> StartOutcome:
        """Intent (committed) → START with the device cap → the head shows it running."""
        async with self._start_lock:
            await self._await_capabilities()
            step = self.runtime.request_start(
                decision, link_ready=self.link_ready(), now=self._now()
            )
            self._perform()
            if isinstance(step, StartOutcome):
                return step
            self._settled = None
            try:
                session_id = await self._recorder.call(lambda ledger: write_intent(ledger, step))
            except Exception as exc:  # noqa: BLE001 - any failure means: nothing was sent
                self.runtime.intent_failed(repr(exc), self._now())
                self._perform()
                return self._take_settled()
            bind_session(session_id)
            command = self.runtime.intent_recorded(session_id, self._now())
            self._perform()
            answer = await self._link.submit(command).outcome()
            self.runtime.start_answered(answer, self._now())
            self._perform()
            if not await self._wait_for(lambda: self._settled is not None, _START_SETTLE_BOUND_MS):
                raise RuntimeError(f"session {session_id}: the runtime never settled its start")
            outcome = self._take_settled()
            if not outcome.started:
                unbind_session()
            return outcome

    async def _await_capabilities(self) -> None:
        """A breath-gated prescription needs the head's capabilities (ICD 1.1): wait,
        bounded, for discovery to end; the runtime refuses if it is still pending."""
        if self.prescription.delivery.breath_gated:
            await self._wait_for(
                lambda: self.runtime.caps_discovery is not CapsDiscovery.PENDING,
                CAPS_WAIT_MS,
            )

    def _take_settled(self) -> StartOutcome:
        outcome = self._settled
        assert outcome is not None
        self._settled = None
        return outcome

    def override_refused(
        self, *, by: str, reason: str, peer: Mapping[str, object] | None = None
    ) -> None:
        """Record a refused override attempt in the dose ledger (who tried, why).

        `peer`: the kernel's word on the asking process (SO_PEERCRED), kept with it."""
        self.runtime.override_refused(by=by, reason=reason, peer=peer, now=self._now())
        self._perform()

    def control_request(
        self,
        *,
        op: str,
        by: str,
        peer: Mapping[str, object] | None,
        outcome: Mapping[str, object],
        session_id: int | None = None,
    ) -> None:
        """Record a local control-socket request with its peer (see the runtime's
        `control_request`). Queued like every record: never waits for the disk."""
        self.runtime.control_request(
            op=op, by=by, peer=peer, outcome=outcome, session_id=session_id, now=self._now()
        )
        self._perform()

    def stop_now(self, reason: str) -> bool:
        """Stop the running session at once (STOP bytes before anything else)."""
        stopped = self.runtime.stop(reason, self._now())
        self._perform()
        return stopped

    def acknowledge_alarm(self, code: AlarmCode, by: str) -> list[AlarmEvent]:
        """A person acknowledges an active alarm (recorded with who and when)."""
        events = self.runtime.acknowledge_alarm(code, by, self._now())
        self._perform()
        return events

    def shutdown_unconfirmed(self) -> None:
        """The head did not confirm STOP before shutdown: UNCERTAIN + HIGH alarm."""
        self.runtime.shutdown_unconfirmed(self._now())
        self._perform()

    async def clear_faults(self, *, by: str) -> tuple[bool, str]:
        """Send CLEAR_FAULTS (ICD §3): latched bits whose condition has gone are cleared.

        Refused while a session of ours is open. The device NAKs FAULT_PERSISTS while
        a fault's condition is still present.
        """
        if self.runtime.session is not None:
            return False, "a session is open; stop it first"
        outcome = await self._link.command(ClearFaults())
        if isinstance(outcome, CommandAnswered) and isinstance(outcome.answer, Ack):
            cleared, reason = True, "device cleared its latched faults"
        elif isinstance(outcome, CommandAnswered) and isinstance(outcome.answer, Nak):
            cleared, reason = False, f"device refused: {outcome.answer.reason.name}"
        elif isinstance(outcome, CommandFailed):
            cleared, reason = False, f"no answer from the device ({outcome.reason})"
        else:
            cleared, reason = False, f"unexpected answer from the device: {outcome.answer!r}"
        at = self._clock.now()
        body = {"cleared": cleared, "reason": reason}
        self._recorder.submit(
            lambda ledger: ledger.record_command(
                command="device.clear_faults", origin=by, body=body, at=at
            ),
            what="clear faults",
        )
        _log.info("clear faults", by=by, cleared=cleared, reason=reason)
        return cleared, reason

    # ------------------------------------------------------------------ bedside CONFIRM

    def arm_confirm(self) -> None:
        """Start watching the head's CONFIRM button (a change of confirm_count)."""
        self.runtime.arm_confirm()

    async def wait_confirm_button(self) -> None:
        """Return once the head's CONFIRM button has been pressed after `arm_confirm`."""
        if self.runtime.last_status is None:
            await self._wait_for(lambda: self.runtime.last_status is not None, 10_000)
            if self.runtime.last_status is None:
                raise TimeoutError("no STATUS from the head: cannot watch its CONFIRM button")
        while not self.runtime.confirm_pressed:
            self._changed.clear()
            await self._changed.wait()

    def disarm_confirm(self) -> None:
        """Stop watching the CONFIRM button."""
        self.runtime.disarm_confirm()

    # ------------------------------------------------------------------ waiting

    async def _wait_for(self, predicate: Callable[[], bool], timeout_ms: int) -> bool:
        deadline = self._now_ms() + timeout_ms
        while not predicate():
            remaining = deadline - self._now_ms()
            if remaining <= 0:
                return False
            self._changed.clear()
            try:
                async with asyncio.timeout(remaining / 1000):
                    await self._changed.wait()
            except TimeoutError:
                return predicate()
        return True

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no session of ours is open (used by shutdown and the CLI)."""
        return await self._wait_for(lambda: self.runtime.session is None, int(timeout_s * 1000))
