"""Clinical reports from the dose ledger: session tables (CSV/JSON), FHIR R4, plots.

Everything here reads the ledger read-only and is safe while the controller runs.
See docs/reports.md.
"""

from controller.reports._breathing import BreathStrip, RunBreathing
from controller.reports._course import (
    ALARM_GRACE,
    COMPLETED_REASONS,
    CourseSession,
    ProgressPoint,
    ReportContext,
    prescription_blinded,
    read_progress,
    read_sessions,
    report_context,
    report_prescription,
)
from controller.reports._fhir import (
    METHOD_INHALE,
    ROUTE_RESPIRATORY_TRACT,
    SNOMED_CT,
    administration_status,
    fhir_bundle,
)
from controller.reports._outcome import (
    DOSE_SIGNIFICANT_FIGURES,
    AdministrationStatus,
    Outcome,
    format_dose,
    local_time,
    round_dose,
    session_outcome,
)
from controller.reports._plots import (
    DEFAULT_PLOT_SIZE_PX,
    CoursePlotData,
    PlotsUnavailableError,
    plot_course,
    plot_session,
    session_figure,
    session_title,
)
from controller.reports._tables import (
    SessionRow,
    render_csv,
    render_json,
    render_table,
    session_rows,
)

__all__ = [
    "ALARM_GRACE",
    "COMPLETED_REASONS",
    "DEFAULT_PLOT_SIZE_PX",
    "DOSE_SIGNIFICANT_FIGURES",
    "METHOD_INHALE",
    "ROUTE_RESPIRATORY_TRACT",
    "SNOMED_CT",
    "AdministrationStatus",
    "BreathStrip",
    "CoursePlotData",
    "CourseSession",
    "Outcome",
    "PlotsUnavailableError",
    "ProgressPoint",
    "ReportContext",
    "RunBreathing",
    "SessionRow",
    "administration_status",
    "fhir_bundle",
    "format_dose",
    "local_time",
    "plot_course",
    "plot_session",
    "prescription_blinded",
    "read_progress",
    "read_sessions",
    "render_csv",
    "render_json",
    "render_table",
    "report_context",
    "report_prescription",
    "round_dose",
    "session_figure",
    "session_outcome",
    "session_rows",
    "session_title",
]
