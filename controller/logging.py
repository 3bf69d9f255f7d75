"""structlog set-up: JSON lines when not on a terminal, pretty console on a terminal.

Device and session ids are bound as context variables (`bind_device`,
`bind_session`) so that every log line from a task carries them.

Under systemd (stderr connected to the journal, `JOURNAL_STREAM`) every line starts
with its syslog priority, `<3>{...}`, which journald strips and records as the
entry's PRIORITY: `journalctl -p warning -u nebuliser` then shows warnings, errors
and alarms, and a HIGH alarm being raised is an `err` entry (`syslog_priority`).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, TextIO


def _import_structlog_without_rich() -> Any:
    """structlog renders exceptions with rich when rich is importable, which costs a
    quarter of a second and ~5 MiB at every start of every command and of the
    service. Import it as if rich were absent (plain tracebacks); a process that has
    already imported rich (the terminal monitor) keeps rich's tracebacks."""
    if "rich" in sys.modules:
        import structlog  # noqa: PLC0415 - the import this function wraps

        return structlog
    sys.modules["rich"] = None  # type: ignore[assignment] # "not installed" for this import
    try:
        import structlog  # noqa: PLC0415 - the import this function wraps
    finally:
        del sys.modules["rich"]
    return structlog


structlog = _import_structlog_without_rich()

__all__ = [
    "bind_device",
    "bind_session",
    "configure_logging",
    "get_logger",
    "stderr_is_journal",
    "syslog_priority",
    "unbind_session",
]

# syslog priorities (RFC 5424) of structlog's level names.
_LEVEL_PRIORITY = {
    "critical": 2,
    "exception": 3,
    "error": 3,
    "warning": 4,
    "warn": 4,
    "info": 6,
    "debug": 7,
}
_PRIORITY_ERR = 3


def syslog_priority(method_name: str, event_dict: dict[str, Any]) -> int:
    """The journald PRIORITY of a log line: its level, raised to `err` for a HIGH
    alarm being raised (a nurse must come now; IEC 60601-1-8)."""
    priority = _LEVEL_PRIORITY.get(method_name, 6)
    high_alarm = event_dict.get("event") == "alarm" and event_dict.get("priority") == "high"
    if high_alarm and event_dict.get("kind") == "raised":
        priority = min(priority, _PRIORITY_ERR)
    return priority


def stderr_is_journal(environ: dict[str, str] | None = None) -> bool:
    """True when stderr is the systemd journal's stream (systemd's own recipe:
    `JOURNAL_STREAM` holds the device and inode of that stream)."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not device.isdigit() or not inode.isdigit():
        return False
    try:
        status = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return (status.st_dev, status.st_ino) == (int(device), int(inode))


def _with_priority_prefix(renderer: Any) -> Any:
    def render(logger: Any, method_name: str, event_dict: dict[str, Any]) -> str:
        priority = syslog_priority(method_name, event_dict)
        return f"<{priority}>{renderer(logger, method_name, event_dict)}"

    return render


def configure_logging(
    *,
    level: str = "info",
    stream: TextIO | None = None,
    json: bool | None = None,
    journald: bool | None = None,
) -> None:
    """Configure structlog once per process.

    `json=None` chooses JSON when `stream` is not a terminal (services, pipes, CI)
    and a readable console renderer on a terminal. `journald=None` adds the `<N>`
    priority prefix when logging to stderr and stderr is the journal.
    """
    out = stream if stream is not None else sys.stderr
    use_json = (not out.isatty()) if json is None else json
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    if journald or (journald is None and stream is None and stderr_is_journal()):
        renderer = _with_priority_prefix(renderer)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=(
            structlog.PrintLoggerFactory(file=stream) if stream is not None else _StderrLogger
        ),
        cache_logger_on_first_use=False,
    )


class _StderrLogger:
    """Writes each line to whatever `sys.stderr` is *now* (tests swap it; a cached
    file object would be closed under us)."""

    def __init__(self, *_args: Any) -> None:
        pass

    def msg(self, message: str) -> None:
        """Write one rendered line."""
        print(message, file=sys.stderr, flush=True)  # noqa: T201 - this is the log sink

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


def get_logger(name: str) -> Any:
    """A bound structlog logger named after its module."""
    return structlog.get_logger(name)


def bind_device(device_id: str) -> None:
    """Attach the device id to every log line of the current context."""
    structlog.contextvars.bind_contextvars(device_id=device_id)


def bind_session(session_id: int) -> None:
    """Attach the session id to every log line of the current context."""
    structlog.contextvars.bind_contextvars(session_id=session_id)


def unbind_session() -> None:
    """Remove the session id once the session has ended."""
    structlog.contextvars.unbind_contextvars("session_id")
