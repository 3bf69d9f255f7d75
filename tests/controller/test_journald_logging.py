"""Log lines carry their syslog priority for journald: `journalctl -p warning` shows
alarms, and a HIGH alarm being raised is an `err` entry."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from controller.logging import syslog_priority


@pytest.mark.parametrize(
    ("level", "fields", "priority"),
    [
        ("debug", {"event": "tick"}, 7),
        ("info", {"event": "controller ready"}, 6),
        ("warning", {"event": "alarm", "kind": "raised", "priority": "low"}, 4),
        ("warning", {"event": "alarm", "kind": "raised", "priority": "medium"}, 4),
        ("warning", {"event": "alarm", "kind": "raised", "priority": "high"}, 3),
        ("warning", {"event": "alarm", "kind": "acknowledged", "priority": "high"}, 4),
        ("error", {"event": "ledger unavailable"}, 3),
        ("critical", {"event": "alarm", "kind": "raised", "priority": "high"}, 2),
    ],
)
def test_priority_of_each_line(level: str, fields: dict[str, str], priority: int) -> None:
    assert syslog_priority(level, dict(fields)) == priority


_PROGRAM = """
from controller.logging import configure_logging, get_logger
configure_logging(level="info")
log = get_logger("t")
log.info("controller ready")
log.warning("alarm", kind="raised", code="dry_cup", priority="high", message="cup dry")
"""


def _run(tmp_path: Path, *, as_journal: bool) -> list[str]:
    err_path = tmp_path / "stderr"
    with err_path.open("wb") as err:
        status = os.fstat(err.fileno())
        env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
        if as_journal:
            env["JOURNAL_STREAM"] = f"{status.st_dev}:{status.st_ino}"
        subprocess.run(
            [sys.executable, "-c", _PROGRAM], stderr=err, env=env, check=True, timeout=60
        )
    return err_path.read_text(encoding="utf-8").splitlines()


def test_lines_to_the_journal_start_with_their_priority(tmp_path: Path) -> None:
    lines = _run(tmp_path, as_journal=True)
    assert lines[0].startswith('<6>{"event": "controller ready"')
    assert lines[1].startswith("<3>{")
    assert '"priority": "high"' in lines[1]


def test_lines_elsewhere_are_plain_json(tmp_path: Path) -> None:
    lines = _run(tmp_path, as_journal=False)
    assert lines[0].startswith('{"event": "controller ready"')
