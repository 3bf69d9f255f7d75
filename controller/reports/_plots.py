"""`nebuliser report plot`: delivery of one session, and a course overview (matplotlib).

matplotlib is the optional extra `plots` so that the bedside install stays small;
it is imported only here and only when a plot is drawn. Figures are drawn with the
object-oriented API on the Agg canvas (no pyplot, no display, no global state).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller.ledger import BreathRecord

from ._breathing import BreathStrip, RunBreathing
from ._course import CourseSession, ProgressPoint, ReportContext
from ._outcome import local_time, session_outcome

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "DEFAULT_PLOT_SIZE_PX",
    "CoursePlotData",
    "PlotsUnavailableError",
    "plot_course",
    "plot_session",
    "session_figure",
    "session_title",
]

DEFAULT_PLOT_SIZE_PX = (1200, 700)
_DPI = 100


class PlotsUnavailableError(RuntimeError):
    """matplotlib is not installed (the optional extra `plots`)."""


def _figure(size_px: tuple[int, int]) -> Figure:
    try:
        figure_module = importlib.import_module("matplotlib.figure")
    except ImportError:
        raise PlotsUnavailableError(
            "plots need matplotlib, which is the optional extra 'plots': run "
            "`uv sync --extra plots` in the checkout (or `pip install 'nebuliser[plots]'`), "
            "then try again. Reports as CSV and FHIR need no extra."
        ) from None
    width, height = size_px
    figure: Figure = figure_module.Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI)
    return figure


def _save(figure: Figure, path: Path) -> None:
    # No bbox_inches="tight": the PNG is exactly the requested size in pixels.
    figure.savefig(path, format="png", dpi=_DPI)


def _seconds(moment: datetime, origin: datetime) -> float:
    return (moment - origin).total_seconds()


def session_title(session: CourseSession, context: ReportContext | None = None) -> str:
    """The title of a session plot: its outcome label and its start in the ward's zone."""
    s = session.summary
    zone = "UTC" if context is None else context.timezone
    outcome = session_outcome(session, delivery=None if context is None else context.delivery)
    origin = session.started_utc or s.intent_at.utc
    return (
        f"session {s.session_id}, subject {s.subject_id}: {outcome.label} "
        f"(start {local_time(origin, zone).replace('T', ' ')} {zone})"
    )


def plot_session(
    session: CourseSession,
    progress: Sequence[ProgressPoint],
    path: Path,
    *,
    size_px: tuple[int, int] = DEFAULT_PLOT_SIZE_PX,
    context: ReportContext | None = None,
    breaths: Sequence[BreathRecord] = (),
) -> None:
    """Draw `session_figure(...)` into a PNG at `path`."""
    figure = session_figure(session, progress, size_px=size_px, context=context, breaths=breaths)
    _save(figure, path)


def session_figure(
    session: CourseSession,
    progress: Sequence[ProgressPoint],
    *,
    size_px: tuple[int, int] = DEFAULT_PLOT_SIZE_PX,
    context: ReportContext | None = None,
    breaths: Sequence[BreathRecord] = (),
) -> Figure:
    """Delivered volume and flow over time, with the cap and the alarms marked.

    The title says the outcome in the report vocabulary (`partial (FAULT)`, ...) and
    the start time in the prescription's zone (`context`) with its UTC offset.

    A run on a breath-aware head gets a third panel: one bar per stored BREATH report
    (`breaths`, `Ledger.breaths`) on the same time axis, lost reports as gaps; a run
    recorded before the ledger kept each breath gets its breath summary's split instead.
    """
    s = session.summary
    figure = _figure(size_px)
    origin = session.started_utc or s.intent_at.utc
    # The strips draw µL only; blinding is still applied where the context is known.
    breathing = session.breathing if context is None else session.breathing_shown(context)
    if breathing is None and not breaths:
        delivered_ax, flow_ax = figure.subplots(2, 1, sharex=True, height_ratios=(2, 1))
    else:
        grid = figure.add_gridspec(3, 1, height_ratios=(2, 1, 1), hspace=0.75)
        delivered_ax = figure.add_subplot(grid[0])
        flow_ax = figure.add_subplot(grid[1], sharex=delivered_ax)
        if breaths:
            strip = BreathStrip.from_records(breaths, origin=origin)
            _per_breath_strip(figure.add_subplot(grid[2], sharex=delivered_ax), strip, breathing)
        elif breathing is not None:
            _breath_strip(figure.add_subplot(grid[2]), breathing, delivered_ul=s.delivered_ul)
    if progress and session.started_utc is not None:
        # Nothing is delivered at the START ACK: draw from the origin.
        progress = [ProgressPoint(utc=origin, delivered_ul=0, flow_ul_min=0), *progress]
    times = [_seconds(p.utc, origin) for p in progress]
    if progress:
        delivered_ax.plot(times, [p.delivered_ul for p in progress], marker=".", label="delivered")
        flow_ax.plot(times, [p.flow_ul_min for p in progress], marker=".", color="tab:green")
    if session.ended_utc is not None and s.delivered_ul is not None:
        end_s = _seconds(session.ended_utc, origin)
        start_ul = progress[-1].delivered_ul if progress else 0
        start_s = times[-1] if progress else 0.0
        delivered_ax.plot(
            [start_s, end_s],
            [start_ul, s.delivered_ul],
            linestyle="--",
            color="tab:blue",
            label="to recorded end" if progress else "start to end (no progress samples)",
        )
        delivered_ax.scatter([end_s], [s.delivered_ul], color="tab:blue", zorder=3)
        delivered_ax.annotate(
            f"{s.delivered_ul} µL ({s.end_reason})",
            (end_s, s.delivered_ul),
            textcoords="offset points",
            xytext=(-10, -16),
            ha="right",
        )
    delivered_ax.axhline(s.planned_cap_ul, color="tab:red", linestyle="-", label="planned cap")
    if s.device_target_ul != s.planned_cap_ul:
        delivered_ax.axhline(
            s.device_target_ul, color="tab:orange", linestyle=":", label="device target"
        )
    for alarm in session.alarms:
        if alarm.action.value != "raised":
            continue
        at_s = _seconds(alarm.utc, origin)
        for ax in (delivered_ax, flow_ax):
            ax.axvline(at_s, color="tab:purple", linestyle="-.", linewidth=1)
        delivered_ax.annotate(
            alarm.alarm_code,
            (at_s, s.planned_cap_ul),
            rotation=90,
            va="top",
            ha="right",
            color="tab:purple",
            fontsize=8,
        )
    delivered_ax.set_title(session_title(session, context))
    delivered_ax.set_ylabel("delivered (µL)")
    delivered_ax.set_ylim(bottom=0, top=s.planned_cap_ul * 1.1)
    delivered_ax.legend(loc="upper left")
    delivered_ax.grid(visible=True, alpha=0.3)
    flow_ax.set_ylabel("flow (µL/min)")
    flow_ax.set_xlabel("seconds since start")
    flow_ax.set_ylim(bottom=0)
    flow_ax.grid(visible=True, alpha=0.3)
    if not progress:
        flow_ax.text(
            0.5, 0.5, "no progress samples recorded", ha="center", transform=flow_ax.transAxes
        )
    return figure


#: `gid` of the lost-report spans (tests and SVG readers find them by it).
LOST_REPORTS_GID = "lost-breath-reports"


def _per_breath_strip(ax: Any, strip: BreathStrip, breathing: RunBreathing | None) -> None:
    """One bar per stored BREATH report along the session's time (µL): its
    inspiratory-phase aerosol over its inspiration, its expiratory-phase aerosol over
    its expiration, a tick where each report came, and a hatched gap where reports
    were lost (their aerosol is unknown, not zero)."""
    bars = strip.bars
    ax.bar(
        [b.insp_start_s for b in bars],
        [b.aerosol_insp_ul for b in bars],
        width=[b.insp_s for b in bars],
        align="edge",
        color="tab:green",
        label="inspiratory-phase (estimate)",
    )
    ax.bar(
        [b.exp_start_s for b in bars],
        [b.aerosol_exp_ul for b in bars],
        width=[b.exp_s for b in bars],
        align="edge",
        color="tab:red",
        label="expiratory-phase (to the room)",
    )
    ax.plot(
        [b.end_s for b in bars],
        [0.0] * len(bars),
        linestyle="none",
        marker="|",
        color="tab:gray",
        label="breath reported",
    )
    for index, gap in enumerate(strip.lost):
        ax.axvspan(
            gap.start_s,
            gap.end_s,
            facecolor="none",
            edgecolor="tab:gray",
            hatch="//",
            gid=LOST_REPORTS_GID,
            label="lost BREATH reports" if index == 0 else None,
        )
        ax.annotate(
            f"{gap.count} lost",
            ((gap.start_s + gap.end_s) / 2, 0.4),
            xycoords=("data", "axes fraction"),
            ha="center",
            va="center",
            rotation=90,
            fontsize=7,
            color="tab:gray",
            bbox={"facecolor": "white", "edgecolor": "none", "pad": 1},
        )
    top = max((max(b.aerosol_insp_ul, b.aerosol_exp_ul) for b in bars), default=0.0)
    ax.set_ylim(bottom=0, top=max(top, 0.1) * 1.5)  # room for the legend
    ax.set_ylabel("aerosol per breath (µL)")
    ax.set_xlabel("seconds since start")
    title = strip.text()
    if breathing is not None:
        share = breathing.insp_share_pct
        title = (
            breathing.breathing_text()
            + ("" if share is None else f"; inspiratory-phase share {share:.1f} %")
            + f"\n{title}"
        )
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper right", fontsize=7, ncols=4)
    ax.grid(visible=True, axis="y", alpha=0.3)


def _breath_strip(ax: Any, breathing: RunBreathing, *, delivered_ul: int | None) -> None:
    """The run's aerosol by breath phase beside the emitted volume (µL), and its breathing.

    For runs recorded before the ledger kept each BREATH report (an older ledger;
    docs/decisions/0019-breath-strip-from-summaries.md): the strip shows the run's
    split from its summary: the emitted volume on one bar, the inspiratory-phase
    estimate, the expiratory-phase (fugitive) aerosol and what lost reports leave
    unaccounted on the other.
    """
    insp, exp = breathing.aerosol_insp_ul, breathing.aerosol_exp_ul
    emitted = float(delivered_ul) if delivered_ul is not None else insp + exp
    unaccounted = max(0.0, emitted - insp - exp)
    ax.barh([1], [emitted], color="tab:blue", label="emitted (delivered)")
    ax.barh([0], [insp], color="tab:green", label="inspiratory-phase (estimate)")
    ax.barh([0], [exp], left=[insp], color="tab:red", label="expiratory-phase (to the room)")
    if unaccounted > 0:
        ax.barh(
            [0],
            [unaccounted],
            left=[insp + exp],
            color="none",
            edgecolor="tab:gray",
            hatch="//",
            label="not in BREATH reports",
        )
    share = breathing.insp_share_pct
    ax.set_yticks([0, 1], ["by breath phase", "emitted"])
    ax.set_xlabel("aerosol (µL)")
    ax.set_xlim(left=0, right=max(emitted, insp + exp, 1.0) * 1.7)  # room for the legend
    ax.set_title(
        breathing.breathing_text()
        + ("" if share is None else f"; inspiratory-phase share {share:.1f} %"),
        fontsize=9,
    )
    ax.legend(loc="center right", fontsize=8)
    ax.grid(visible=True, axis="x", alpha=0.3)


@dataclass(frozen=True, slots=True, kw_only=True)
class CoursePlotData:
    """Dose per day of one subject (pure; what the course plot draws)."""

    days: tuple[date, ...]
    delivered_dose: tuple[float, ...]
    """Known delivered dose per day."""
    unknown_dose: tuple[float, ...]
    """Planned-cap dose of open/unreconciled sessions that day (counts against limits)."""

    @classmethod
    def from_sessions(
        cls, sessions: Sequence[CourseSession], context: ReportContext
    ) -> CoursePlotData:
        """Group doses by day in the prescription's time zone."""
        delivered: dict[date, float] = {}
        unknown: dict[date, float] = {}
        for cs in sessions:
            day = cs.local_day(context.timezone)
            delivered.setdefault(day, 0.0)
            unknown.setdefault(day, 0.0)
            status = cs.summary.status.value
            if status in ("open", "uncertain"):
                recorded = None if context.blinded else cs.summary.concentration_per_ml
                per_ml = recorded or context.amount_per_ml or 0.0
                unknown[day] += cs.summary.planned_cap_ul / 1000.0 * per_ml
            else:
                delivered[day] += cs.dose(context) or 0.0
        days = tuple(sorted(delivered))
        return cls(
            days=days,
            delivered_dose=tuple(delivered[d] for d in days),
            unknown_dose=tuple(unknown[d] for d in days),
        )


def plot_course(
    sessions: Sequence[CourseSession],
    context: ReportContext,
    path: Path,
    *,
    size_px: tuple[int, int] = DEFAULT_PLOT_SIZE_PX,
) -> CoursePlotData:
    """Dose per day against the daily and per-session limits, cumulative against the course."""
    data = CoursePlotData.from_sessions(sessions, context)
    figure = _figure(size_px)
    ax = figure.subplots()
    labels = [d.isoformat() for d in data.days]
    positions = list(range(len(labels)))
    ax.bar(positions, data.delivered_dose, color="tab:blue", label="delivered")
    if any(data.unknown_dose):
        ax.bar(
            positions,
            data.unknown_dose,
            bottom=data.delivered_dose,
            color="none",
            edgecolor="tab:red",
            hatch="//",
            label="open/uncertain (planned cap counts)",
        )
    if context.daily_dose_limit is not None:
        ax.axhline(context.daily_dose_limit, color="tab:red", label="24 h limit")
    if context.session_dose_limit is not None:
        ax.axhline(
            context.session_dose_limit, color="tab:orange", linestyle=":", label="session limit"
        )
    ax.set_xticks(positions, labels, rotation=30, ha="right")
    ax.set_ylabel(f"dose per day ({context.dose_unit})")
    ax.set_xlabel(f"day ({context.timezone})")
    subject = sessions[0].summary.subject_id if sessions else "?"
    ax.set_title(f"course of {subject}: dose per day against the limits")
    ax.grid(visible=True, axis="y", alpha=0.3)
    cumulative_ax: Any = ax.twinx()
    running = 0.0
    cumulative = []
    for known, unknown in zip(data.delivered_dose, data.unknown_dose, strict=True):
        running += known + unknown
        cumulative.append(running)
    cumulative_ax.plot(positions, cumulative, color="tab:gray", marker="o", label="cumulative")
    if context.course_dose_limit is not None:
        cumulative_ax.axhline(
            context.course_dose_limit, color="tab:gray", linestyle="--", label="course limit"
        )
    cumulative_ax.set_ylabel(f"cumulative dose ({context.dose_unit})")
    tops = [*cumulative, context.course_dose_limit or 0.0]
    cumulative_ax.set_ylim(bottom=0, top=max(tops) * 1.4 or 1.0)
    day_tops = [
        *(k + u for k, u in zip(data.delivered_dose, data.unknown_dose, strict=True)),
        context.daily_dose_limit or 0.0,
        context.session_dose_limit or 0.0,
    ]
    ax.set_ylim(bottom=0, top=max(day_tops) * 1.4 or 1.0)  # room for the legend
    figure.subplots_adjust(bottom=0.18)
    handles, names = ax.get_legend_handles_labels()
    more_handles, more_names = cumulative_ax.get_legend_handles_labels()
    ax.legend(handles + more_handles, names + more_names, loc="upper left", ncols=2)
    _save(figure, path)
    return data
