"""What `nebuliser demo` shows: its narrative, each bed's progress and the ward table.

On a terminal a live view (rich) redrawn in place: the story so far, a progress bar
per bed, and the ward as the ward station sees it over MQTT. Elsewhere (a pipe, a
log, a test) the same story as plain lines. The controllers' log lines never mix
into either: `nebuliser demo` writes them to a file and prints its path.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Self, TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from ._common import progress_bar

__all__ = ["BedProgress", "DemoView"]

_PLAIN_BAR_CELLS = 12
_PLAIN_BEDS_PER_LINE = 3
_PLAIN_LINE_EVERY_S = 1.0
_LIVE_REFRESH_HZ = 8


@dataclass(frozen=True, slots=True)
class BedProgress:
    """One bed's session progress as the demo shows it."""

    bed: str
    delivered_ul: int
    cap_ul: int
    state: str

    def plain(self) -> str:
        """`bed-01 [██████······] 1500/3000 µL`."""
        bar = progress_bar(
            self.delivered_ul, self.cap_ul, width=_PLAIN_BAR_CELLS, fill="█", empty="·"
        )
        return f"{self.bed} [{bar}] {self.delivered_ul:4d}/{self.cap_ul} µL"


class DemoView:
    """The demo's output; use as a context manager (the live view runs inside it)."""

    def __init__(self, *, live: bool | None = None, out: TextIO | None = None) -> None:
        self._out = out if out is not None else sys.stdout
        self._live_wanted = self._out.isatty() if live is None else live
        self._console = Console(file=self._out, width=None if self._live_wanted else 140)
        self._live: Live | None = None
        self._story: list[str] = []
        self._progress: list[BedProgress] = []
        self._ward: RenderableType | None = None
        self._line_open = False  # plain mode: a progress line is being overwritten
        self._last_line_s = 0.0

    @property
    def is_live(self) -> bool:
        """True when the output is a live view on a terminal."""
        return self._live_wanted

    def __enter__(self) -> Self:
        if self._live_wanted:
            self._live = Live(
                self._render(),
                console=self._console,
                refresh_per_second=_LIVE_REFRESH_HZ,
                vertical_overflow="visible",
            )
            self._live.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._live is not None:
            self._live.update(self._render(), refresh=True)
            self._live.__exit__(exc_type, exc, traceback)
            self._live = None
        self._close_line()

    def say(self, text: str) -> None:
        """One line of the story."""
        self._story.append(text)
        if self._live is not None:
            self._live.update(self._render())
            return
        self._close_line()
        print(text, file=self._out, flush=True)

    def show_progress(self, beds: list[BedProgress]) -> None:
        """Each bed's progress now (redrawn live; in plain mode a line, rate-limited)."""
        self._progress = beds
        if self._live is not None:
            self._live.update(self._render())
            return
        line = "  " + " | ".join(bed.plain() for bed in beds)
        if len(beds) <= _PLAIN_BEDS_PER_LINE:
            print("\r" + line, end="", file=self._out, flush=True)
            self._line_open = True
        elif time.monotonic() - self._last_line_s >= _PLAIN_LINE_EVERY_S:
            self._last_line_s = time.monotonic()
            print(line, file=self._out, flush=True)

    def show_ward(self, ward: RenderableType, *, final: bool = False) -> None:
        """The ward table (kept in the live view; printed once in plain mode if `final`)."""
        self._ward = ward
        if self._live is not None:
            self._live.update(self._render())
        elif final:
            self._close_line()
            self._console.print(ward)

    def _close_line(self) -> None:
        if self._line_open:
            print(file=self._out, flush=True)
            self._line_open = False

    def _render(self) -> RenderableType:
        parts: list[RenderableType] = [Text("\n".join(self._story))]
        if self._progress:
            table = Table(title="pilot session per bed", title_justify="left", expand=False)
            for column in ("bed", "progress", "delivered / cap", "state"):
                table.add_column(column)
            for bed in self._progress:
                table.add_row(
                    bed.bed,
                    ProgressBar(total=max(bed.cap_ul, 1), completed=bed.delivered_ul, width=30),
                    f"{bed.delivered_ul} / {bed.cap_ul} µL",
                    bed.state,
                )
            parts.append(table)
        if self._ward is not None:
            parts.append(self._ward)
        return Group(*parts)
