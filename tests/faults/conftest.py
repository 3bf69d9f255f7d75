"""Print the reliability summary table (scenario, runs, violations, worst figure)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ._harness import reports


def summary_table() -> str:
    """The table in Markdown, one line per scenario that ran."""
    lines = [
        "| scenario | runs | violations | worst figure |",
        "|---|---|---|---|",
    ]
    for report in reports:
        violations = str(len(report.violations))
        lines.append(f"| {report.scenario} | {report.runs} | {violations} | {report.worst} |")
    return "\n".join(lines)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """After the run: the table on the terminal (and in NEBULISER_FAULT_TABLE if set)."""
    if not reports:
        return
    table = summary_table()
    terminalreporter.write_sep("=", "fault-injection summary")
    terminalreporter.write_line(table)
    for report in reports:
        for violation in report.violations:
            terminalreporter.write_line(f"VIOLATION {report.scenario}: {violation}")
    target = os.environ.get("NEBULISER_FAULT_TABLE", "")
    if target:
        Path(target).write_text(table + "\n", encoding="utf-8")
