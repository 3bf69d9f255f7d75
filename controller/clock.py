"""Clock trust: may the controller believe its wall clock? (the I/O edge of the time model)

A Raspberry Pi has no real-time clock: after a reboot its wall clock may be hours out
until NTP corrects it, and the correction is a *step*. Dose windows themselves are
measured on the monotonic clock within a boot (see `controller.dosing.elapsed_s`), but
anything that compares wall-clock times (across reboots, course dates) needs a
trusted wall clock. This module decides trust with a pure function
(`evaluate_clock_trust`) fed by thin readers (`SystemClock`, `read_ntp_status`).

Policies: `system` trusts the system clock (simulator demo and tests); `ntp` requires
the kernel/timesyncd to report NTP synchronisation. Under both, a step of the
(wall - monotonic) offset larger than `step_threshold_s` between two checks makes the
clock untrusted until the offset has stayed steady for `retrust_after_s` seconds of
monotonic time (and, under `ntp`, NTP reports synchronised), or an operator calls
`acknowledge_clock`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final, Literal, Protocol

from controller.dosing import Instant, TrustedTime

__all__ = [
    "BOOT_ID_PATH",
    "Clock",
    "ClockPolicy",
    "ClockTrustMonitor",
    "ClockTrustPolicy",
    "ClockTrustState",
    "ManualClock",
    "NtpStatus",
    "SystemClock",
    "acknowledge_clock",
    "evaluate_clock_trust",
    "interpret_adjtimex_state",
    "parse_timedatectl",
    "read_boot_id",
    "read_ntp_status",
]

BOOT_ID_PATH: Final = Path("/proc/sys/kernel/random/boot_id")
_NS_PER_S: Final = 1_000_000_000
_TIME_ERROR: Final = 5  # adjtimex(2) return value: clock not synchronised
_TIMEDATECTL_TIMEOUT_S: Final = 5.0

ClockPolicy = Literal["system", "ntp"]


class Clock(Protocol):
    """Anything that tells the present moment. Injected so tests can step the wall clock."""

    def now(self) -> Instant:
        """The present moment (wall clock in UTC, boot id, monotonic ns)."""
        ...


def read_boot_id(path: Path = BOOT_ID_PATH) -> str:
    """This boot's id from the kernel; a fresh random id (per process) if unavailable.

    The fallback makes every process its own "boot": comparisons across processes
    then use the wall clock, which is only believed when trusted.
    """
    try:
        boot_id = path.read_text(encoding="ascii").strip()
    except OSError:
        return f"process-{uuid.uuid4()}"
    return boot_id or f"process-{uuid.uuid4()}"


class SystemClock:
    """The machine's clocks: `datetime.now(UTC)` and `time.monotonic_ns()`."""

    def __init__(self, *, boot_id: str | None = None) -> None:
        self._boot_id = boot_id if boot_id is not None else read_boot_id()

    def now(self) -> Instant:
        """Read both clocks."""
        return Instant(
            utc=datetime.now(UTC), boot_id=self._boot_id, monotonic_ns=time.monotonic_ns()
        )


class ManualClock:
    """A clock under test control: advance time, step the wall clock, reboot."""

    def __init__(self, *, utc: datetime, boot_id: str = "boot-1", monotonic_ns: int = 0) -> None:
        self._utc = utc.astimezone(UTC)
        self._boot_id = boot_id
        self._monotonic_ns = monotonic_ns

    def now(self) -> Instant:
        """The simulated present."""
        return Instant(utc=self._utc, boot_id=self._boot_id, monotonic_ns=self._monotonic_ns)

    def advance(self, seconds: float) -> None:
        """Let real time pass: both clocks move forward."""
        if seconds < 0:
            raise ValueError(f"advance({seconds}) must be >= 0; use step_wall to step back")
        self._utc += timedelta(seconds=seconds)
        self._monotonic_ns += round(seconds * _NS_PER_S)

    def step_wall(self, seconds: float) -> None:
        """Step only the wall clock (forward or back), as NTP or an operator might."""
        self._utc += timedelta(seconds=seconds)

    def reboot(self, *, boot_id: str, downtime_s: float = 0.0, wall_error_s: float = 0.0) -> None:
        """Simulate a reboot: new boot id, monotonic restarts near 0, wall moves on.

        `wall_error_s` models a Pi without RTC coming up with a wrong wall clock.
        """
        self._boot_id = boot_id
        self._monotonic_ns = 0
        self._utc += timedelta(seconds=downtime_s + wall_error_s)


@dataclass(frozen=True, slots=True, kw_only=True)
class NtpStatus:
    """NTP synchronisation as read from the system: True, False or None (unknown)."""

    synchronized: bool | None
    source: str
    detail: str = ""


def parse_timedatectl(stdout: str) -> bool | None:
    """Parse `timedatectl show -p NTPSynchronized --value` (or `NTPSynchronized=yes`)."""
    value = stdout.strip().rpartition("=")[2].strip().lower()
    if value == "yes":
        return True
    if value == "no":
        return False
    return None


def interpret_adjtimex_state(state: int) -> bool | None:
    """adjtimex(2) return value: 5 (TIME_ERROR) = unsynchronised, 0..4 = synchronised."""
    if state == _TIME_ERROR:
        return False
    if 0 <= state < _TIME_ERROR:
        return True
    return None


def _read_adjtimex() -> NtpStatus:
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return NtpStatus(synchronized=None, source="adjtimex", detail="libc not found")
    libc = ctypes.CDLL(libc_name, use_errno=True)
    # struct timex is 208 bytes on 64-bit Linux; zeroed modes = read-only query.
    timex = ctypes.create_string_buffer(512)
    state = int(libc.adjtimex(timex))
    return NtpStatus(
        synchronized=interpret_adjtimex_state(state),
        source="adjtimex",
        detail=f"adjtimex returned {state}",
    )


def read_ntp_status(
    *, run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run
) -> NtpStatus:
    """Ask timedatectl, falling back to adjtimex(2). Blocking (up to 5 s): call it
    from a worker thread (`asyncio.to_thread`) in async code."""
    executable = shutil.which("timedatectl")
    if executable is not None:
        try:
            completed = run(
                [executable, "show", "-p", "NTPSynchronized", "--value"],
                capture_output=True,
                text=True,
                timeout=_TIMEDATECTL_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            detail = f"timedatectl failed: {exc}"
        else:
            synced = parse_timedatectl(completed.stdout) if completed.returncode == 0 else None
            if synced is not None:
                return NtpStatus(
                    synchronized=synced,
                    source="timedatectl",
                    detail=f"NTPSynchronized={'yes' if synced else 'no'}",
                )
            detail = f"timedatectl exit {completed.returncode}: {completed.stderr.strip()[:200]}"
    else:
        detail = "timedatectl not installed"
    try:
        status = _read_adjtimex()
    except (OSError, AttributeError) as exc:
        return NtpStatus(synchronized=None, source="none", detail=f"{detail}; adjtimex: {exc}")
    return replace(status, detail=f"{detail}; {status.detail}")


@dataclass(frozen=True, slots=True, kw_only=True)
class ClockTrustPolicy:
    """Settings of clock trust."""

    mode: ClockPolicy = "ntp"
    step_threshold_s: float = 2.0
    retrust_after_s: float = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ClockTrustState:
    """What the trust rule remembers between checks (in memory, per process)."""

    boot_id: str
    offset_ns: int
    """Wall minus monotonic at the last check; a jump in this is a wall-clock step."""
    stepped: bool = False
    steady_since_ns: int | None = None
    """Monotonic time since which the offset has been steady after a step."""
    step_reason: str = ""


def _offset_ns(instant: Instant) -> int:
    utc_ns = (instant.utc - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 1000
    return utc_ns - instant.monotonic_ns


def evaluate_clock_trust(
    *,
    policy: ClockTrustPolicy,
    instant: Instant,
    ntp: NtpStatus | None,
    previous: ClockTrustState | None,
) -> tuple[TrustedTime, ClockTrustState]:
    """Pure trust rule: is the wall clock at `instant` trustworthy? Returns the new state.

    A step is detected only within one boot (the monotonic clock restarts on reboot);
    across reboots, the `ntp` policy is what protects course dates and UTC intervals.
    """
    offset_ns = _offset_ns(instant)
    state = ClockTrustState(boot_id=instant.boot_id, offset_ns=offset_ns)
    if previous is not None and previous.boot_id == instant.boot_id:
        jump_s = (offset_ns - previous.offset_ns) / _NS_PER_S
        if abs(jump_s) > policy.step_threshold_s:
            state = replace(
                state,
                stepped=True,
                steady_since_ns=instant.monotonic_ns,
                step_reason=f"wall clock stepped by {jump_s:+.1f} s at {instant.utc.isoformat()}",
            )
        elif previous.stepped:
            steady_since_ns = (
                instant.monotonic_ns
                if previous.steady_since_ns is None
                else previous.steady_since_ns
            )
            steady_s = (instant.monotonic_ns - steady_since_ns) / _NS_PER_S
            ntp_ok = policy.mode != "ntp" or (ntp is not None and ntp.synchronized is True)
            still_stepped = steady_s < policy.retrust_after_s or not ntp_ok
            state = replace(
                state,
                stepped=still_stepped,
                steady_since_ns=steady_since_ns if still_stepped else None,
                step_reason=previous.step_reason if still_stepped else "",
            )
    if state.stepped:
        reason = f"{state.step_reason}; trusted again after {policy.retrust_after_s:g} s steady" + (
            " with NTP synchronised" if policy.mode == "ntp" else ""
        )
        return TrustedTime(instant=instant, trusted=False, reason=reason), state
    if policy.mode == "ntp":
        if ntp is None or ntp.synchronized is None:
            detail = ntp.detail if ntp is not None else "not read"
            return TrustedTime(
                instant=instant, trusted=False, reason=f"NTP synchronisation unknown ({detail})"
            ), state
        if not ntp.synchronized:
            return TrustedTime(
                instant=instant,
                trusted=False,
                reason=f"NTP not synchronised ({ntp.source}: {ntp.detail})",
            ), state
        return TrustedTime(instant=instant, trusted=True, reason="NTP synchronised"), state
    return TrustedTime(
        instant=instant, trusted=True, reason="system clock trusted by policy"
    ), state


def acknowledge_clock(state: ClockTrustState) -> ClockTrustState:
    """Operator re-trust after checking the time by hand: clears a detected step."""
    return replace(state, stepped=False, steady_since_ns=None, step_reason="")


class ClockTrustMonitor:
    """Stateful wrapper: reads the clock (and NTP when required), applies the rule."""

    def __init__(
        self,
        *,
        clock: Clock,
        policy: ClockTrustPolicy,
        ntp_reader: Callable[[], NtpStatus] = read_ntp_status,
    ) -> None:
        self._clock = clock
        self._policy = policy
        self._ntp_reader = ntp_reader
        self._state: ClockTrustState | None = None

    @property
    def state(self) -> ClockTrustState | None:
        """The state after the last check (None before the first)."""
        return self._state

    def check(self) -> TrustedTime:
        """Read the clock now and decide trust. Blocking under `ntp` (reads timedatectl)."""
        ntp = self._ntp_reader() if self._policy.mode == "ntp" else None
        trusted, self._state = evaluate_clock_trust(
            policy=self._policy, instant=self._clock.now(), ntp=ntp, previous=self._state
        )
        return trusted

    def acknowledge(self) -> None:
        """Operator re-trust (see `acknowledge_clock`)."""
        if self._state is not None:
            self._state = acknowledge_clock(self._state)
