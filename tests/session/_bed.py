"""One bed in simulated time: the simulator's device model, the sans-IO host link and
the sans-IO session runtime, wired together with no asyncio, no pty and no clock.

Minutes of treatment run in milliseconds, deterministically. Effects are performed
the way the service's shell performs them (`SendStop` → STOP on the link, records
→ a list, and into a real ledger when one is given), and kept in `effects` so that
tests can check what the runtime decided and in what order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from controller.alarms import AlarmCode, AlarmEventKind, AlarmSettings
from controller.dosing import (
    Decision,
    DoseRequest,
    Instant,
    Prescription,
    StorageStatus,
    TrustedTime,
    decide,
)
from controller.ledger import Ledger, StorageReport
from controller.service._records import perform_write, write_intent
from controller.session import (
    Effect,
    LogLine,
    Now,
    SendStop,
    SessionRuntime,
    StartOutcome,
    StartSettled,
    WriteAlarm,
    WriteIntent,
)
from drivers.mn1 import (
    Breath,
    BreathReceived,
    CommandAnswered,
    CommandFailed,
    HostLink,
    LinkPhase,
    Start,
    StartGated,
    Status,
    StatusReceived,
    Stop,
)
from simulators.mn1 import DeviceModel
from tests.dosing._factories import make_prescription

__all__ = ["T0", "Bed", "pilot_prescription"]

_T = TypeVar("_T")

T0 = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
_BOOT = "boot-test"


def pilot_prescription(**limits: Any) -> Prescription:
    """The pilot dose (3 mL of 2.0e8 vesicles) with a 3000 µL session cap."""
    return make_prescription(session_ul=3000, **limits)


@dataclass(slots=True)
class Bed:
    """A device model, a host link and a runtime on one simulated clock."""

    prescription: Prescription = field(default_factory=pilot_prescription)
    model: DeviceModel = field(default_factory=lambda: DeviceModel(fill_ul=5000))
    ledger: Ledger | None = None
    expected_serial: str | None = None
    alarm_settings: AlarmSettings | None = None
    runtime: SessionRuntime = field(init=False)
    link: HostLink = field(init=False)
    effects: list[Effect] = field(default_factory=list)
    stops_sent_ms: list[int] = field(default_factory=list)
    settled: StartOutcome | None = None
    host_paused: bool = False  # the controller process is stopped (SIGSTOP): no reads, no ticks
    wall_offset_s: float = 0.0
    deaf_until_ms: int = 0  # device → host bytes are lost (corrupted) until then
    #: BREATH reports for which this says True are lost on the wire (ICD 1.1 §3: a lost
    #: report is lost); every other one is kept in `breaths` as the runtime got it.
    lose_breath: Callable[[Breath], bool] | None = None
    breaths: list[Breath] = field(default_factory=list)
    statuses: list[tuple[int, Status]] = field(default_factory=list)
    intents: list[WriteIntent] = field(default_factory=list)
    _next_session_id: int = 1
    _start_seq: int | None = None

    def __post_init__(self) -> None:
        self.runtime = SessionRuntime(
            prescription=self.prescription,
            expected_serial=self.expected_serial,
            alarm_settings=self.alarm_settings,
        )
        self.link = HostLink()
        self.link.connection_made(self.now_ms)
        self._pump()

    # --- time --------------------------------------------------------------------

    @property
    def now_ms(self) -> int:
        """Simulated monotonic time (the device model's clock)."""
        return self.model.now_ms

    def now(self) -> Now:
        """The moment, as the shell would stamp it."""
        instant = Instant(
            utc=T0 + timedelta(milliseconds=self.now_ms, seconds=self.wall_offset_s),
            boot_id=_BOOT,
            monotonic_ns=self.now_ms * 1_000_000,
        )
        return Now(self.now_ms, instant)

    def run_until(self, until_ms: int) -> None:
        """Let simulated time pass, deadline by deadline (device, link, runtime)."""
        while self.now_ms < until_ms:
            deadlines = [self.model.next_deadline_ms(), until_ms]
            if not self.host_paused:
                deadlines.extend(
                    d
                    for d in (self.link.next_deadline_ms(), self.runtime.next_deadline_ms())
                    if d is not None
                )
            step_ms = max(min(deadlines), self.now_ms + 1)
            self.model.advance(step_ms)
            if self.host_paused:
                continue
            self.link.handle_timers(self.now_ms)
            self._pump()
            deadline = self.runtime.next_deadline_ms()
            if deadline is not None and deadline <= self.now_ms:
                self.runtime.tick(self.now())
                self._perform()

    def run_for(self, duration_ms: int) -> None:
        """Let `duration_ms` of simulated time pass."""
        self.run_until(self.now_ms + duration_ms)

    def run_until_true(self, predicate: Callable[[], bool], *, timeout_ms: int) -> None:
        """Run until `predicate()` holds; AssertionError after `timeout_ms`."""
        deadline = self.now_ms + timeout_ms
        while not predicate():
            assert self.now_ms < deadline, f"not true within {timeout_ms} ms"
            self.run_for(5)

    # --- requests ----------------------------------------------------------------

    def decide(
        self,
        *,
        requested_ul: int | None = None,
        storage_ok: bool = True,
        continue_last: bool = False,
    ) -> Decision:
        """The dose engine's answer for now, on the ledger's history (if any)."""
        history = [] if self.ledger is None else self.ledger.history(self.prescription.subject_id)
        request = DoseRequest(
            subject_id=self.prescription.subject_id,
            storage=StorageStatus(ok=storage_ok, reason="" if storage_ok else "disk full"),
            requested_ul=requested_ul,
            continue_last=continue_last,
        )
        trusted = TrustedTime(instant=self.now().at, trusted=True, reason="test")
        decision = decide(self.prescription, history, request, trusted)
        self.runtime.admitted(decision, None, self.now())
        self._perform()
        return decision

    def request_start(self, decision: Decision | None = None) -> StartOutcome | int:
        """Admit, write the intent, send START; returns the refusal or the session id."""
        step = self.runtime.request_start(
            decision or self.decide(), link_ready=self.link_ready(), now=self.now()
        )
        self._perform()
        if isinstance(step, StartOutcome):
            return step
        self.intents.append(step)
        session_id = self._write_intent(step)
        command = self.runtime.intent_recorded(session_id, self.now())
        self._perform()
        self._start_seq = self.link.send_command(command, self.now_ms)
        self._pump()
        return session_id

    def start(self, decision: Decision | None = None, *, timeout_ms: int = 5000) -> StartOutcome:
        """A whole start: returns once the runtime has settled it."""
        self.settled = None
        step = self.request_start(decision)
        if isinstance(step, StartOutcome):
            return step
        self.run_until_true(lambda: self.settled is not None, timeout_ms=timeout_ms)
        return self._settled_outcome()

    def _settled_outcome(self) -> StartOutcome:
        assert self.settled is not None
        return self.settled

    def stop(self, reason: str = "operator_stop:test") -> bool:
        """A stop request from a person."""
        stopped = self.runtime.stop(reason, self.now())
        self._perform()
        return stopped

    def ack(self, code: AlarmCode, by: str = "nurse Test") -> None:
        """A person acknowledges an alarm."""
        self.runtime.acknowledge_alarm(code, by, self.now())
        self._perform()

    def conditions(
        self,
        *,
        clock_trusted: bool = True,
        free_mib: int = 1000,
        ok: bool = True,
        emergency: bool = False,
    ) -> None:
        """Feed a condition reading (clock trust, free space: floor 64 MiB, emergency
        level 16 MiB)."""
        trusted = TrustedTime(instant=self.now().at, trusted=clock_trusted, reason="test")
        floor_mib, emergency_mib = 64, 16
        free = free_mib if ok else min(free_mib, floor_mib - 1)
        if emergency:
            free = min(free, emergency_mib - 1)
        storage = StorageReport(
            data_dir=Path("/data"),
            free_bytes=free * 1024 * 1024,
            floor_bytes=floor_mib * 1024 * 1024,
            emergency_bytes=emergency_mib * 1024 * 1024,
        )
        self.runtime.on_conditions(trusted, storage, self.now())
        self._perform()

    def link_ready(self) -> bool:
        """The head is identified and STATUS arrives (as the shell reads it)."""
        return self.link.phase is LinkPhase.IDENTIFIED and self.link.link_up

    # --- views -------------------------------------------------------------------

    def of_type(self, kind: type[_T]) -> list[_T]:
        """The effects of one type, in the order they were performed."""
        return [e for e in self.effects if isinstance(e, kind)]

    def raised(self) -> list[AlarmCode]:
        """Codes of every alarm raised so far, in order."""
        return [
            e.event.code for e in self.of_type(WriteAlarm) if e.event.kind is AlarmEventKind.RAISED
        ]

    def restart_controller(self) -> None:
        """The controller process is replaced: new link, new runtime, recovery from the
        ledger (the device keeps running on its own clock)."""
        assert self.ledger is not None, "a restart needs a ledger to recover from"
        self.runtime = SessionRuntime(
            prescription=self.prescription,
            expected_serial=self.expected_serial,
            alarm_settings=self.alarm_settings,
        )
        self.link = HostLink()
        self._start_seq = None
        self.runtime.recover(
            open_sessions=self.ledger.open_sessions(),
            uncertain_sessions=self.ledger.uncertain_sessions(),
            now=self.now(),
        )
        self._perform()
        self.link.connection_made(self.now_ms)
        self._pump()

    def replace_head(self, model: DeviceModel) -> None:
        """Unplug the head and plug in `model` (another serial: a swap)."""
        self.link.connection_lost(self.now_ms, reason="unplugged")
        self._pump()
        self.model = model
        self.link.connection_made(self.now_ms)
        self._pump()

    # --- plumbing ----------------------------------------------------------------

    def _write_intent(self, intent: WriteIntent) -> int:
        if self.ledger is not None:
            return write_intent(self.ledger, intent)
        session_id = self._next_session_id
        self._next_session_id += 1
        return session_id

    def _pump(self) -> None:
        """Bytes both ways until quiet; link events into the runtime; effects out."""
        while True:
            moved = False
            for chunk in self.link.take_writes():
                self.model.receive(chunk, self.now_ms)
                moved = True
            output = b"" if self.host_paused else self.model.take_output()
            if output and self.now_ms < self.deaf_until_ms:
                output = b""  # lost on the wire
            if output:  # while paused the bytes wait in the port's buffer
                self.link.receive_data(output, self.now_ms)
                moved = True
            for event in self.link.take_events():
                moved = True
                if isinstance(event, CommandAnswered | CommandFailed):
                    if event.seq == self._start_seq and isinstance(
                        event.command, Start | StartGated
                    ):
                        self._start_seq = None
                        self.runtime.start_answered(event, self.now())
                        self._perform()
                    continue
                if isinstance(event, StatusReceived):
                    self.statuses.append((self.now_ms, event.status))
                if isinstance(event, BreathReceived):
                    if self.lose_breath is not None and self.lose_breath(event.breath):
                        continue
                    self.breaths.append(event.breath)
                self.runtime.on_link_event(event, self.now())
                self._perform()
            if not moved:
                return

    def _perform(self) -> None:
        for effect in self.runtime.take_effects():
            self.effects.append(effect)
            match effect:
                case SendStop(session_id=sid):
                    self.stops_sent_ms.append(self.now_ms)
                    if self.link.phase is not LinkPhase.PORT_CLOSED:
                        self.link.send_command(Stop(session_id=sid), self.now_ms)
                case StartSettled(outcome=outcome):
                    self.settled = outcome
                case LogLine():
                    pass
                case _:
                    if self.ledger is not None:
                        perform_write(self.ledger, effect, ())
