"""The terminal monitor's screen, pure: rows of the shared ward model in, one
page of a table out, sized to the terminal.

* sorted by urgency (`controller.telemetry.urgency_key`, the station's order);
* one page at a time: only the rows that fit are rendered (rendering 1000 rows
  that nobody can see is what made the monitor fall 30 s behind);
* the bed column first and never truncated; narrower terminals drop the less
  important columns, then rich truncates the rest with an ellipsis;
* alarm messages (as the bed formatted them), not codes; the data age on every row;
  OFFLINE / NO DATA rows say since when and hide stale figures;
* breathing (rate and inspiratory-phase share, or WAITING) on breath-aware heads, and
  the delivered dose in the lot's units ("blinded" when the prescription is).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Group
from rich.text import Text

from controller.telemetry import AckRequest, BedRow, urgency_key

__all__ = ["AckChoice", "Page", "ack_choices", "layout_page", "render_rows"]

_PRIORITY_STYLE = {"high": "bold white on red", "medium": "bold black on yellow", "low": "cyan"}
_PRIORITY_MARK = {"high": "!!!", "medium": "!!", "low": "!"}
#: Lines around the rows: title, header, status, and a margin for the prompt.
_CHROME_LINES = 4
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


#: Optional columns in the order they are given up on narrower terminals: name,
#: width, and how wide the alarm message must still be for the column to be worth
#: it. The bed comes first and the alarm message takes what is left.
_COLUMNS: tuple[tuple[str, int, int], ...] = (
    ("State", 13, 20),
    ("Data", 9, 20),
    ("Delivered / cap", 17, 20),
    ("Left", 7, 30),
    ("Breathing", 17, 30),
    ("Reservoir", 9, 30),
    ("Dose", 17, 40),
    ("Progress", 12, 40),
    ("Link", 5, 40),
    ("Flow", 12, 40),
    ("Seq", 20, 50),
)
_GAP = 1


def _columns(width: int, bed_width: int) -> list[tuple[str, int]]:
    """The columns that fit `width`, most important first, the alarm last and widest."""
    chosen = [("Bed", bed_width)]
    used = bed_width
    for name, size, alarm_floor in _COLUMNS:
        if used + _GAP + size + _GAP + alarm_floor > width:
            break
        chosen.append((name, size))
        used += _GAP + size
    chosen.append(("Alarm", max(1, width - used - _GAP)))
    return chosen


def _fit(text: str, size: int) -> str:
    """Pad or cut `text` to exactly `size` cells (cut with an ellipsis)."""
    return text.ljust(size) if len(text) <= size else text[: max(0, size - 1)] + "…"


def _state(row: BedRow, now_s: float) -> tuple[str, str]:
    if row.online is False:
        since = row.offline_since_s if row.offline_since_s is not None else row.last_seen_s
        ago = "" if since is None else f" {_duration(max(0.0, now_s - since))}"
        return f"OFFLINE{ago}", "bold white on red"
    if row.stale:
        return "NO DATA", "bold black on yellow"
    return (row.session_state or "-").replace("_", " "), ""


def _alarm_cell(row: BedRow, size: int) -> Text:
    cell = Text(no_wrap=True, overflow="ellipsis")
    for alarm in row.alarms:
        message = alarm.text or alarm.alarm_code.replace("_", " ")
        if alarm.acknowledged:
            cell.append(f"{message} (ack {alarm.acknowledged_by or ''}) ", style="dim")
        else:
            mark = _PRIORITY_MARK[alarm.priority]
            cell.append(f"{mark} {message} ", style=_PRIORITY_STYLE[alarm.priority])
    cell.truncate(size, overflow="ellipsis", pad=True)
    return cell


def _breathing(row: BedRow, now_s: float) -> tuple[str, str]:
    """Rate and inspiratory-phase share, or WAITING (blank for a version-1.0 head)."""
    breathing = row.breathing_now(now_s=now_s)
    if breathing is None:
        return "", ""
    if breathing.waiting:
        return "WAITING no breath", "bold black on yellow"
    rate = "-" if breathing.rate_bpm is None else f"{breathing.rate_bpm:.0f}/min"
    share = breathing.insp_share_pct
    return (rate if share is None else f"{rate} {share:.0f}% insp"), ""


def _bar(row: BedRow, size: int) -> str:
    if not row.cap_ul:
        return "-"
    done = round(size * min(row.delivered_ul or 0, row.cap_ul) / row.cap_ul)
    return "█" * done + "·" * (size - done)


def _cells(row: BedRow, now_s: float) -> dict[str, tuple[str, str]]:
    current = not row.no_data  # a silent bed's last figures are not shown as if current

    def shown(text: str) -> tuple[str, str]:
        return (text if current else "-"), ""

    seq = f"gaps {row.gaps} dup {row.duplicates}"
    if row.unrecoverable:
        seq += f" lost {row.unrecoverable}"
    return {
        "Bed": (f"{row.ward}/{row.bed}", "bold"),
        "State": _state(row, now_s),
        "Data": (_age(row, now_s), "bold red" if row.no_data else ""),
        "Delivered / cap": shown(f"{_volume(row.delivered_ul)} / {_volume(row.cap_ul)}"),
        "Left": shown(_duration(row.time_left_s)),
        "Breathing": _breathing(row, now_s) if current else ("-", ""),
        "Reservoir": shown(_volume(row.reservoir_ul)),
        "Dose": ("blinded", "dim") if row.blinded else shown(row.in_units(row.delivered_ul) or "-"),
        "Progress": shown(_bar(row, 12)),
        "Link": shown("-" if row.link_quality_pct is None else f"{row.link_quality_pct}%"),
        "Flow": shown("-" if row.flow_ul_min is None else f"{row.flow_ul_min} µL/min"),
        "Seq": (seq, "red" if row.unrecoverable else ""),
    }


def render_rows(
    rows: Sequence[BedRow], *, now_s: float, width: int, title: str, status: str = ""
) -> Group:
    """Exactly `rows`, one line each, for a terminal `width` columns wide.

    Drawn as fixed-width text lines rather than a rich Table: measuring a table
    costs tens of milliseconds per frame, and the frame must stay cheap at 4 Hz.
    """
    bed_width = min(max((len(f"{r.ward}/{r.bed}") for r in rows), default=3), width // 3)
    columns = _columns(width, bed_width)
    header = Text(no_wrap=True, style="bold")
    for index, (name, size) in enumerate(columns):
        header.append(("" if index == 0 else " ") + _fit(name, size))
    lines = [Text(title, style="bold", no_wrap=True, overflow="ellipsis"), header]
    for row in rows:
        cells = _cells(row, now_s)
        line = Text(no_wrap=True)
        for index, (name, size) in enumerate(columns):
            if index:
                line.append(" ")
            if name == "Alarm":
                line.append_text(_alarm_cell(row, size))
            else:
                text, style = cells[name]
                line.append(_fit(text, size), style=style)
        lines.append(line)
    lines.append(Text(status, style="dim", no_wrap=True, overflow="ellipsis"))
    return Group(*lines)
