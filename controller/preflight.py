"""The checks `nebuliser serve` runs before it touches the device, as one function.

`nebuliser serve` and `nebuliser config check` both call `preflight()`, so a file
that `config check` accepts is a file that `serve` starts with, and `config check`
exits with the code `serve` would exit with. Errors stop `serve`; warnings are
legal but unusual settings that a person should have chosen on purpose.

The rules are pure functions of the validated configuration, apart from looking at
the file system for the paths (data directory, prescription file, socket).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from pathlib import Path

from controller.config import (
    LoadedPrescription,
    NebuliserConfig,
    PrescriptionSourceError,
    load_service_prescription,
)
from controller.dosing import CEILING_MAX_DURATION_S, Prescription
from controller.exitcodes import ExitCode

__all__ = [
    "GATED_TIME_FACTOR",
    "MIN_SESSION_DURATION_S",
    "NOMINAL_FLOW_UL_MIN",
    "SLOWEST_BREATH_RATE_BPM",
    "TYPICAL_MAX_FLOW_UL_MIN",
    "Finding",
    "Preflight",
    "Severity",
    "preflight",
]

#: Shorter than this, `max_session_duration_s` cannot be meant (1 = minutes typed as s?).
MIN_SESSION_DURATION_S = 30
#: No MN-1 head in use delivers more than this at 100 % output; a duration that needs
#: more to deliver `session_ul` would end every session early (underdosing).
TYPICAL_MAX_FLOW_UL_MIN = 1000
#: The slowest breathing a breath-gated prescription is expected to meet: 6 breaths/min
#: (the `slow-deep` pattern, docs/simulator.md; ICD addendum 1.1 names no lower rate),
#: one breath every 10 s. The prescription names no expected rate or pattern, so
#: `apnoea_s` is judged against this one.
SLOWEST_BREATH_RATE_BPM = 6
#: The MN-1's nominal continuous output at 100 % (IDENT `nominal_ul_min` of the heads in
#: use, and the simulator's default); `config check` has no head to ask.
NOMINAL_FLOW_UL_MIN = 400
#: A breath-gated run takes 2.75× (I:E 1:1) to 4× (I:E 1:2) as long as a continuous
#: one (bench/breath_gating.py, docs/performance.md); a duration below this many times
#: the continuous treatment time likely ends a gated dose early.
GATED_TIME_FACTOR = 3
#: `sun_path` of a Unix socket holds at most this many bytes on Linux (108 with NUL).
_MAX_SOCKET_PATH_BYTES = 107
_FREE_SPACE_FLOOR_LOW_MB = 50


class Severity(StrEnum):
    """An error stops `serve`; a warning is printed and `serve` goes on."""

    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Finding:
    """One result of the pre-flight checks: the key, what is wrong and how to fix it."""

    severity: Severity
    key: str
    message: str
    exit_code: ExitCode = ExitCode.OK

    def __str__(self) -> str:
        return f"{self.severity.value}: {self.key}: {self.message}"


# When several errors are found, the exit code is that of the first check serve
# would fail: the configuration, then the prescription, then the ledger.
_EXIT_PRIORITY = (ExitCode.USAGE, ExitCode.PRESCRIPTION, ExitCode.LEDGER)


@dataclass(frozen=True, slots=True)
class Preflight:
    """Every finding, and the prescription `serve` would run with (None if refused)."""

    findings: list[Finding] = field(default_factory=list)
    loaded: LoadedPrescription | None = None

    @property
    def errors(self) -> list[Finding]:
        """The findings that stop `serve`."""
        return [f for f in self.findings if f.severity is Severity.ERROR]

    @property
    def warnings(self) -> list[Finding]:
        """Legal but unusual settings."""
        return [f for f in self.findings if f.severity is Severity.WARNING]

    @property
    def exit_code(self) -> ExitCode:
        """The code `serve` exits with for these findings (0 when it would start)."""
        codes = {f.exit_code for f in self.errors}
        return next((code for code in _EXIT_PRIORITY if code in codes), ExitCode.OK)


def _error(key: str, message: str, code: ExitCode) -> Finding:
    return Finding(Severity.ERROR, key, message, code)


def _warning(key: str, message: str) -> Finding:
    return Finding(Severity.WARNING, key, message)


def limit_findings(prescription: Prescription, *, today: date) -> list[Finding]:
    """Limits that contradict each other, durations that cannot be meant, a course
    that is over or has not started."""
    limits = prescription.limits
    findings: list[Finding] = []
    key = "prescription.limits"
    code = ExitCode.PRESCRIPTION
    session_ul = limits.session_ul
    if session_ul is not None:
        for name in ("rolling_24h_max_ul", "course_max_ul"):
            bound = getattr(limits, name)
            if bound is not None and bound < session_ul:
                findings.append(
                    _error(
                        f"{key}.{name}",
                        f"{bound} µL is less than one session (session_ul = {session_ul} µL): "
                        "no full session could ever be given; correct one of them",
                        code,
                    )
                )
    if limits.session_dose is not None:
        for name in ("rolling_24h_max_dose", "course_max_dose"):
            bound = getattr(limits, name)
            if bound is not None and bound < limits.session_dose:
                findings.append(
                    _error(
                        f"{key}.{name}",
                        f"{bound:g} is less than one session's dose (session_dose = "
                        f"{limits.session_dose:g}); correct one of them",
                        code,
                    )
                )
    sessions_24h = limits.rolling_24h_max_sessions
    if (
        sessions_24h is not None
        and limits.course_max_sessions is not None
        and limits.course_max_sessions < sessions_24h
    ):
        findings.append(
            _warning(
                f"{key}.rolling_24h_max_sessions",
                f"{sessions_24h} per 24 h is more than the whole course "
                f"({limits.course_max_sessions} sessions)",
            )
        )
    duration_s = limits.max_session_duration_s
    if duration_s is not None and duration_s < MIN_SESSION_DURATION_S:
        findings.append(
            _error(
                f"{key}.max_session_duration_s",
                f"{duration_s} s is too short for any nebulisation (at least "
                f"{MIN_SESSION_DURATION_S} s; the value is in seconds: 20 minutes = 1200)",
                code,
            )
        )
    elif duration_s is not None and session_ul is not None:
        needed_ul_min = session_ul * 60 / duration_s
        if needed_ul_min > TYPICAL_MAX_FLOW_UL_MIN:
            findings.append(
                _warning(
                    f"{key}.max_session_duration_s",
                    f"{duration_s} s delivers {session_ul} µL only at {needed_ul_min:.0f} "
                    f"µL/min or more; heads give at most about {TYPICAL_MAX_FLOW_UL_MIN} "
                    "µL/min, so sessions would end at the time cap before the volume",
                )
            )
    if limits.course_end is not None and limits.course_end < today:
        findings.append(
            _warning(
                f"{key}.course_end",
                f"the course ended on {limits.course_end} (today is {today} in "
                f"{prescription.timezone}): every start will be refused",
            )
        )
    if limits.course_start is not None and limits.course_start > today:
        findings.append(
            _warning(
                f"{key}.course_start",
                f"the course starts on {limits.course_start} (today is {today}): starts are "
                "refused until then",
            )
        )
    return findings


def delivery_findings(prescription: Prescription) -> list[Finding]:
    """A breath-gated prescription whose apnoea pause or maximum duration does not fit
    the breathing it will meet (warnings: legal, but a person should look)."""
    delivery = prescription.delivery
    if not delivery.breath_gated:
        return []
    findings: list[Finding] = []
    breath_s = 60 / SLOWEST_BREATH_RATE_BPM
    apnoea_s = delivery.gated_apnoea_s
    if apnoea_s <= breath_s:
        findings.append(
            _warning(
                "prescription.delivery.apnoea_s",
                f"{apnoea_s} s is not longer than one breath at the slowest expected rate "
                f"({SLOWEST_BREATH_RATE_BPM}/min = {breath_s:.0f} s per breath): a patient "
                'breathing slowly would make the head pause (WAITING) and raise "no '
                'breathing detected" between normal breaths; set apnoea_s = 15 (the '
                f"default) or at least {breath_s + 1:.0f}",
            )
        )
    limits = prescription.limits
    duration_s = limits.max_session_duration_s
    volume_ul = delivery.expected_dry_ul if delivery.to_dryness else limits.session_ul
    if duration_s is None or volume_ul is None:
        return findings
    flow_ul_min = NOMINAL_FLOW_UL_MIN * limits.output_pct / 100
    continuous_s = volume_ul * 60 / flow_ul_min
    needed_s = round(GATED_TIME_FACTOR * continuous_s)
    if duration_s < needed_s:
        fix = (
            f"raise limits.max_session_duration_s to at least {needed_s} s"
            if needed_s <= CEILING_MAX_DURATION_S
            else f"even the ICD maximum of {CEILING_MAX_DURATION_S} s is short: prescribe a "
            "smaller volume per session or continuous delivery (a run ended at its maximum "
            "duration cannot be continued)"
        )
        findings.append(
            _warning(
                "prescription.limits.max_session_duration_s",
                f"{duration_s} s is likely too short for breath-gated delivery: {volume_ul} µL "
                f"takes about {continuous_s:.0f} s continuously at {flow_ul_min:.0f} µL/min "
                f"({limits.output_pct} % output) and a gated run {GATED_TIME_FACTOR}× as long "
                f"or more (2.75-4× by breathing pattern), so the session would end at its "
                f"maximum duration before the dose is given; {fix}",
            )
        )
    return findings


def _creatable_dir(path: Path) -> str | None:
    """None if `path` is (or can be made) a writable directory; else why not."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            return "no existing parent directory"
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} exists and is not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable by this user (uid {os.getuid()})"
    return None


def path_findings(config: NebuliserConfig) -> list[Finding]:
    """The data directory and the socket: usable by this user, socket mode safe."""
    findings: list[Finding] = []
    data_dir = config.storage.data_dir
    why = _creatable_dir(data_dir)
    if why is not None:
        findings.append(
            _error(
                "storage.data_dir",
                f"{data_dir} cannot hold the ledger: {why}",
                ExitCode.LEDGER,
            )
        )
    socket = config.control_socket
    if len(os.fsencode(socket.absolute())) > _MAX_SOCKET_PATH_BYTES:
        findings.append(
            _error(
                "control.socket_path",
                f"{socket} is longer than the {_MAX_SOCKET_PATH_BYTES} bytes a Unix socket "
                "path may have; choose a shorter data_dir or socket_path",
                ExitCode.USAGE,
            )
        )
    if config.control.socket_path is not None and socket.parent != data_dir:
        why = _creatable_dir(socket.parent)
        if why is not None:
            findings.append(
                _error("control.socket_path", f"{socket} cannot be created: {why}", ExitCode.USAGE)
            )
    mode = config.control.socket_mode
    if mode & stat.S_IRWXO:
        findings.append(
            _error(
                "control.socket_mode",
                f"0o{mode:03o} lets every user on this machine stop sessions and "
                "acknowledge alarms; use 0o660 (owner and group) or 0o600",
                ExitCode.USAGE,
            )
        )
    elif mode & stat.S_IRUSR == 0 or mode & stat.S_IWUSR == 0:
        findings.append(
            _warning(
                "control.socket_mode",
                f"0o{mode:03o} gives the owner no read/write access; the controller's own "
                "user cannot use `nebuliser session` (0o660 is usual)",
            )
        )
    return findings


def setting_findings(config: NebuliserConfig) -> list[Finding]:
    """Legal settings that are unusual on a ward."""
    findings: list[Finding] = []
    if config.clock.mode == "system":
        findings.append(
            _warning(
                "clock.mode",
                '"system" trusts the clock without NTP: simulator benches only; a Pi at '
                'the bedside uses "ntp" (it has no battery clock)',
            )
        )
    if not config.effective_security.require_signed_prescriptions:
        findings.append(
            _warning(
                "security.require_signed_prescriptions",
                "false: an unsigned prescription is accepted (simulator benches only)",
            )
        )
    if config.effective_security.allow_unsigned_alarm_ack and config.mqtt is not None:
        findings.append(
            _warning(
                "security.allow_unsigned_alarm_ack",
                "true: anyone who can publish on the broker can silence this bed's alarms. "
                "BENCH ONLY; on a ward remove it and acknowledge with signed alarm.ack "
                "commands (docs/security.md §3)",
            )
        )
    if config.storage.free_space_floor_mb < _FREE_SPACE_FLOOR_LOW_MB:
        findings.append(
            _warning(
                "storage.free_space_floor_mb",
                f"{config.storage.free_space_floor_mb} MB leaves little room for the ledger "
                "before the disk is full (200 is the default)",
            )
        )
    mqtt = config.mqtt
    local_hosts = {"127.0.0.1", "localhost", "::1"}
    if mqtt is not None and mqtt.tls is None and mqtt.host not in local_hosts:
        findings.append(
            _warning(
                "mqtt.tls",
                f"the broker {mqtt.host} is reached without TLS: ward traffic and commands "
                "travel in clear (docs/mqtt.md)",
            )
        )
    if mqtt is not None and mqtt.tls is not None:
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(mqtt.tls, name)
            if path is not None and not path.is_file():
                findings.append(_error(f"mqtt.tls.{name}", f"{path}: no such file", ExitCode.USAGE))
    return findings


def preflight(
    config: NebuliserConfig,
    *,
    today: Callable[[Prescription], date] | None = None,
) -> Preflight:
    """Every check `serve` makes before it opens the ledger and the serial port.

    `today` gives the ward's local date for a prescription (injectable for tests);
    by default the current date in the prescription's time zone.
    """
    findings = setting_findings(config) + path_findings(config)
    loaded: LoadedPrescription | None = None
    try:
        loaded = load_service_prescription(config)
    except PrescriptionSourceError as exc:
        findings.append(_error("prescription", str(exc), ExitCode.PRESCRIPTION))
    # An inline prescription refused for want of a signature is still checked, so
    # that one run of `config check` lists everything to fix.
    rx = loaded.prescription if loaded is not None else config.prescription
    if rx is not None:
        local_today = today(rx) if today is not None else datetime.now(rx.zone).date()
        findings += limit_findings(rx, today=local_today)
        findings += delivery_findings(rx)
    return Preflight(findings=findings, loaded=loaded)
