"""The terminal monitor's screen, pure: rows of the shared ward model in, one
page of a table out, sized to the terminal.

* sorted by urgency (`controller.telemetry.urgency_key`, the station's order);
* one page at a time: only the rows that fit are rendered (rendering 1000 rows
  that nobody can see is what made the monitor fall 30 s behind);
* the bed column first and never truncated; narrower terminals drop the less
  important columns, then rich truncates the rest with an ellipsis;
* alarm messages (as the bed formatted them), not codes; the data age on every row;
  OFFLINE / NO DATA rows say since when and hide stale figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich import box
from rich.console import Group
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from controller.telemetry import AckRequest, BedRow, urgency_key

__all__ = ["AckChoice", "Page", "ack_choices", "layout_page", "render_rows"]

_PRIORITY_STYLE = {"high": "bold white on red", "medium": "bold black on yellow", "low": "cyan"}
_PRIORITY_MARK = {"high": "!!!", "medium": "!!", "low": "!"}
#: Lines around the table rows: title, header, header rule, status, help.
_CHROME_LINES = 6
_MAX_CHOICES = 9


@dataclass(frozen=True, kw_only=True)
class Page:
    """The rows on screen now and where they sit in the ward."""

    rows: list[BedRow]
    number: int  # 0-based, clamped
    count: int
    total_beds: int


def layout_page(rows: Sequence[BedRow], *, height: int, page: int) -> Page:
    """Sort by urgency and cut out page `page` for a terminal `height` lines tall."""
    per_page = max(1, height - _CHROME_LINES)
    ordered = sorted(rows, key=urgency_key)
    count = max(1, -(-len(ordered) // per_page))
    number = min(max(0, page), count - 1)
    start = number * per_page
    return Page(
        rows=ordered[start : start + per_page],
        number=number,
        count=count,
        total_beds=len(ordered),
    )


@dataclass(frozen=True, kw_only=True)
class AckChoice:
    """One alarm `a` offers: the key to press and what it acknowledges."""

    key: str
    label: str
    request: AckRequest


def ack_choices(rows: Sequence[BedRow]) -> list[AckChoice]:
    """The unacknowledged alarms, most urgent bed first, numbered 1-9."""
    choices: list[AckChoice] = []
    for row in sorted(rows, key=urgency_key):
        if row.device_id is None:
            continue
        for alarm in row.alarms:
            if alarm.acknowledged or len(choices) == _MAX_CHOICES:
                continue
            key = str(len(choices) + 1)
            message = alarm.text or alarm.alarm_code.replace("_", " ")
            choices.append(
                AckChoice(
                    key=key,
                    label=f"{key}) {row.bed} {alarm.priority.upper()}: {message}",
                    request=AckRequest(
                        ward=row.ward,
                        bed=row.bed,
                        device_id=row.device_id,
                        alarm_code=alarm.alarm_code,
                    ),
                )
            )
    return choices


def _volume(ul: int | None) -> str:
    return "-" if ul is None else f"{ul / 1000:.2f} mL"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _age(row: BedRow, now_s: float) -> str:
    if row.last_seen_s is None:
        return "never"
    return f"{_duration(max(0.0, now_s - row.last_seen_s))} ago"


def _columns(width: int) -> list[str]:
    """The columns that fit, most important first (the bed always)."""
    columns = ["Bed", "State", "Data", "Alarm", "Delivered / cap"]
    if width >= 110:
        columns += ["Left", "Reservoir"]
    if width >= 140:
        columns += ["Progress", "Link", "Flow", "Seq"]
    return columns


def _state(row: BedRow, now_s: float) -> Text:
    if row.online is False:
        since = row.offline_since_s if row.offline_since_s is not None else row.last_seen_s
        ago = "" if since is None else f" {_duration(max(0.0, now_s - since))}"
        return Text(f"OFFLINE{ago}", style="bold white on red")
    if row.stale:
        return Text("NO DATA", style="bold black on yellow")
    return Text((row.session_state or "-").replace("_", " "))


def _alarm_cell(row: BedRow) -> Text:
    cell = Text()
    for alarm in row.alarms:
        message = alarm.text or alarm.alarm_code.replace("_", " ")
        if alarm.acknowledged:
            cell.append(f"{message} (ack {alarm.acknowledged_by or ''}) ", style="dim")
        else:
            cell.append(
                f"{_PRIORITY_MARK[alarm.priority]} {message} ",
                style=_PRIORITY_STYLE[alarm.priority],
            )
    return cell


def _cells(row: BedRow, now_s: float) -> dict[str, Any]:
    current = not row.no_data  # a silent bed's last figures are not shown as if current
    progress: Any = "-"
    if current and row.cap_ul:
        completed = min(row.delivered_ul or 0, row.cap_ul)
        progress = ProgressBar(total=row.cap_ul, completed=completed, width=12)
    seq = Text(f"gaps {row.gaps} dup {row.duplicates}")
    if row.unrecoverable:
        seq.append(f" lost {row.unrecoverable}", style="red")
    return {
        "Bed": f"{row.ward}/{row.bed}",
        "State": _state(row, now_s),
        "Data": _age(row, now_s),
        "Alarm": _alarm_cell(row),
        "Delivered / cap": (
            f"{_volume(row.delivered_ul)} / {_volume(row.cap_ul)}" if current else "-"
        ),
        "Left": _duration(row.time_left_s) if current else "-",
        "Reservoir": _volume(row.reservoir_ul) if current else "-",
        "Progress": progress,
        "Link": "-" if not current or row.link_quality_pct is None else f"{row.link_quality_pct}%",
        "Flow": "-" if not current or row.flow_ul_min is None else f"{row.flow_ul_min} µL/min",
        "Seq": seq,
    }


def render_rows(
    rows: Sequence[BedRow], *, now_s: float, width: int, title: str, status: str = ""
) -> Group:
    """A table of exactly `rows` for a terminal `width` columns wide."""
    table = Table(title=title, box=box.SIMPLE_HEAD, expand=True, pad_edge=False)
    bed_width = max((len(f"{r.ward}/{r.bed}") for r in rows), default=3)
    for column in _columns(width):
        if column == "Bed":
            table.add_column(column, no_wrap=True, min_width=min(bed_width, width // 3))
        elif column == "Alarm":
            table.add_column(column, no_wrap=True, overflow="ellipsis", ratio=3)
        else:
            table.add_column(column, no_wrap=True, overflow="ellipsis")
    names = _columns(width)
    for row in rows:
        cells = _cells(row, now_s)
        table.add_row(*(cells[name] for name in names))
    return Group(table, Text(status, style="dim", no_wrap=True, overflow="ellipsis"))
