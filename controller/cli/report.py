"""`nebuliser report sessions|fhir|plot`: clinical reports from the dose ledger.

The ledger is opened read-only (safe while the controller runs). The drug unit, lot
and limits come from the prescription in --config; see docs/reports.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from controller.config import NebuliserConfig
from controller.exitcodes import ExitCode
from controller.ledger import LEDGER_FILE_NAME, Ledger, LedgerError
from controller.reports import (
    DEFAULT_PLOT_SIZE_PX,
    PlotsUnavailableError,
    ReportContext,
    fhir_bundle,
    plot_course,
    plot_session,
    read_progress,
    read_sessions,
    render_csv,
    render_json,
    render_table,
    session_rows,
)

from ._common import add_service_options, config_from_args
from ._unblinding import UnblindingRefusedError, add_unblinding_options, context_for_report

__all__ = ["register"]

EXIT_LEDGER = ExitCode.LEDGER
EXIT_PLOTS = ExitCode.MISSING_EXTRA
EXIT_REFUSED = ExitCode.REFUSED


class _RefusedError(Exception):
    """An unblinded report was refused (already printed and audited)."""


def _parse_since(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--since {text!r} is not an ISO 8601 date or time (e.g. 2026-11-25 or "
            "2026-11-25T08:00Z)"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _open_ledger(config: NebuliserConfig) -> Ledger:
    path = config.storage.data_dir / LEDGER_FILE_NAME
    if not path.exists():
        raise LedgerError(
            f"no ledger at {path}: pass the controller's --config FILE or --data-dir DIR"
        )
    return Ledger.open(path, read_only=True)


def _write(args: argparse.Namespace, text: str) -> None:
    if args.output is None or str(args.output) == "-":
        sys.stdout.write(text)
        return
    Path(args.output).write_text(text, encoding="utf-8")
    sys.stderr.write(f"wrote {args.output}\n")


def _load(args: argparse.Namespace, report: str) -> tuple[NebuliserConfig, ReportContext]:
    """The configuration and the report context: blinded for a blinded arm unless an
    unblinding credential verifies (`_unblinding.py`; refusals raise `_RefusedError`)."""
    config = config_from_args(args)
    try:
        return config, context_for_report(args, config, report=report)
    except UnblindingRefusedError as exc:
        sys.stderr.write(f"nebuliser report: unblinded report refused [{exc.code}]: {exc}\n")
        raise _RefusedError from exc


def _refusing(handler: Any) -> Any:
    """Exit REFUSED (1) when the unblinding gate refused; the report is not written."""

    def run(args: argparse.Namespace) -> int:
        try:
            return int(handler(args))
        except _RefusedError:
            return EXIT_REFUSED

    return run


def _sessions(args: argparse.Namespace) -> int:
    config, context = _load(args, "sessions")
    try:
        with _open_ledger(config) as ledger:
            sessions = read_sessions(ledger, subject_id=args.subject, since=args.since)
    except LedgerError as exc:
        sys.stderr.write(f"nebuliser report: {exc}\n")
        return EXIT_LEDGER
    rows = session_rows(sessions, context)
    fmt = "json" if args.json else args.format
    if fmt == "table":
        _write(args, render_table(rows, timezone=context.timezone, medication=context.arm_label))
    else:
        _write(args, render_csv(rows) if fmt == "csv" else render_json(rows))
    return 0


def _fhir(args: argparse.Namespace) -> int:
    config, context = _load(args, "fhir")
    try:
        with _open_ledger(config) as ledger:
            sessions = read_sessions(ledger, subject_id=args.subject, since=args.since)
            ledger_id = ledger.ledger_id
    except LedgerError as exc:
        sys.stderr.write(f"nebuliser report: {exc}\n")
        return EXIT_LEDGER
    if not sessions:
        sys.stderr.write(
            f"nebuliser report: no sessions of subject {args.subject!r} in the ledger "
            "(check the subject id and --since)\n"
        )
        return EXIT_LEDGER
    bundle = fhir_bundle(
        sessions, context=context, ledger_id=ledger_id, generated_at=datetime.now(UTC)
    )
    _write(args, json.dumps(bundle, indent=2, ensure_ascii=False) + "\n")
    return 0


def _draw(args: argparse.Namespace, ledger: Ledger, context: ReportContext) -> None:
    size = (args.width, args.height)
    if args.session is not None:
        found = [s for s in read_sessions(ledger) if s.session_id == args.session]
        if not found:
            raise LedgerError(f"no session {args.session} in the ledger (see `report sessions`)")
        plot_session(
            found[0],
            read_progress(ledger, args.session),
            args.output,
            size_px=size,
            context=context,
            breaths=ledger.breaths(args.session),
        )
        return
    sessions = read_sessions(ledger, subject_id=args.subject, since=args.since)
    if not sessions:
        raise LedgerError(f"no sessions of subject {args.subject!r} in the ledger")
    plot_course(sessions, context, args.output, size_px=size)


def _plot(args: argparse.Namespace) -> int:
    config, context = _load(args, "plot")
    try:
        with _open_ledger(config) as ledger:
            _draw(args, ledger, context)
    except LedgerError as exc:
        sys.stderr.write(f"nebuliser report: {exc}\n")
        return EXIT_LEDGER
    except PlotsUnavailableError as exc:
        sys.stderr.write(f"nebuliser report: {exc}\n")
        return EXIT_PLOTS
    sys.stderr.write(f"wrote {args.output} ({args.width}×{args.height} px)\n")
    return 0


def _common(parser: argparse.ArgumentParser, *, subject_required: bool = False) -> None:
    parser.add_argument(
        "--subject", metavar="S", required=subject_required, help="only this subject id"
    )
    parser.add_argument(
        "--since",
        type=_parse_since,
        metavar="DATE",
        help="only sessions whose intent is at or after this ISO 8601 date/time (UTC)",
    )
    add_service_options(parser)
    add_unblinding_options(parser)


def register(subparsers: Any) -> None:
    """Add `report sessions`, `report fhir` and `report plot`."""
    parser = subparsers.add_parser(
        "report", help="clinical reports from the ledger: session table/CSV, FHIR, plots"
    )
    sub = parser.add_subparsers(dest="report_command", metavar="REPORT", required=True)
    sessions = sub.add_parser(
        "sessions",
        help="every session: start/end, delivered µL, dose, end reason, alarms, overrides",
    )
    _common(sessions)
    sessions.add_argument(
        "--format",
        choices=["table", "csv", "json"],
        default="table",
        help="table (default), csv, or json (kept for scripts; --json is the same)",
    )
    sessions.add_argument("--json", action="store_true", help="machine-readable output")
    sessions.add_argument("-o", "--output", type=Path, help="write to FILE instead of stdout")
    sessions.set_defaults(handler=_refusing(_sessions))
    fhir = sub.add_parser(
        "fhir", help="a FHIR R4 Bundle of MedicationAdministration resources for one subject"
    )
    _common(fhir, subject_required=True)
    fhir.add_argument("-o", "--output", type=Path, help="write to FILE instead of stdout")
    fhir.set_defaults(handler=_refusing(_fhir))
    plot = sub.add_parser(
        "plot",
        help="PNG: one session's delivery (--session) or a subject's course (--subject)",
        description="Needs matplotlib: `uv sync --extra plots`.",
    )
    which = plot.add_mutually_exclusive_group(required=True)
    which.add_argument("--session", type=int, metavar="ID", help="plot one session's delivery")
    which.add_argument("--subject", metavar="S", help="plot the course overview of a subject")
    plot.add_argument(
        "--since", type=_parse_since, metavar="DATE", help="course plot: sessions from this date"
    )
    plot.add_argument("-o", "--output", type=Path, required=True, help="PNG file to write")
    plot.add_argument("--width", type=int, default=DEFAULT_PLOT_SIZE_PX[0], help="pixels")
    plot.add_argument("--height", type=int, default=DEFAULT_PLOT_SIZE_PX[1], help="pixels")
    add_service_options(plot)
    add_unblinding_options(plot)
    plot.set_defaults(handler=_refusing(_plot))
    _register_sign(sub)


def _sign_unblinding(args: argparse.Namespace) -> int:
    # Imported here: cryptography is not needed by the other report commands.
    from controller.security import (  # noqa: PLC0415
        KeyFileError,
        load_private_key,
        sign_unblinding,
    )

    try:
        key = load_private_key(args.key)
        credential = sign_unblinding(
            key=key,
            key_id=args.key_id,
            device_id=args.device,
            subject_id=args.subject,
            report=args.report,
            reason=args.reason,
            issued_at_ms=int(time.time() * 1000),
            validity_s=args.valid_s,
        )
    except (KeyFileError, ValueError) as exc:
        sys.stderr.write(f"nebuliser report: unblinding credential not signed: {exc}\n")
        return EXIT_REFUSED
    args.output.write_bytes(credential)
    print(
        f"unblinding credential for `report {args.report}` of subject {args.subject} written "
        f"to {args.output}; valid {args.valid_s} s, for one report"
    )
    return 0


def _register_sign(sub: Any) -> None:
    sign = sub.add_parser(
        "sign-unblinding",
        help="(coordinator) sign a credential that unblinds one report of a blinded arm",
        description="Signs with a key listed in the prescription's unblinding_keys. The "
        "credential is valid for --valid-s seconds and for one report; hand it to "
        "`nebuliser report REPORT --unblinded --unblind-credential FILE`.",
    )
    sign.add_argument("--key", type=Path, required=True, help="your Ed25519 private key (PEM)")
    sign.add_argument(
        "--key-id", required=True, help="your key's id in the prescription's unblinding_keys"
    )
    sign.add_argument("--device", required=True, help="the controller's device id")
    sign.add_argument("--subject", required=True, help="the subject whose report is unblinded")
    sign.add_argument(
        "--report", choices=["sessions", "fhir", "plot"], required=True, help="which report"
    )
    sign.add_argument("--reason", required=True, help="why (recorded in the audit log)")
    sign.add_argument(
        "--valid-s", type=int, default=60, help="seconds the credential is valid (at most 60)"
    )
    sign.add_argument("-o", "--output", type=Path, required=True, help="credential file to write")
    sign.set_defaults(handler=_sign_unblinding)
