"""`nebuliser ledger init|show|backup|restore`: create, read, copy and restore the ledger.

`show` and `backup` open the database read-only, so they are safe while the controller
runs. `init` and `restore` are for a stopped controller (docs/ledger.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from controller.config import (
    ConfigError,
    NebuliserConfig,
    PrescriptionSourceError,
    load_config,
    load_service_prescription,
)
from controller.exitcodes import ExitCode
from controller.ledger import (
    LEDGER_FILE_NAME,
    EmptyHistoryAcceptance,
    Ledger,
    LedgerAnchor,
    LedgerError,
    LedgerLocation,
    SessionSummary,
    init_ledger,
    plan_restore,
    restore_ledger,
    summary_to_json,
)
from controller.reports import RunBreathing, prescription_blinded

__all__ = ["register"]

# The one exit-code table (controller/exitcodes.py): 2 usage, 4 the ledger.
EXIT_CONFIG = ExitCode.USAGE
EXIT_LEDGER = ExitCode.LEDGER


def _data_dir(args: argparse.Namespace) -> Path:
    if args.data_dir is not None:
        return Path(args.data_dir)
    config = load_config(Path(args.config) if args.config else None)
    return config.storage.data_dir


def _parse_since(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--since {text!r} is not an ISO 8601 date or time (e.g. 2026-11-25 or "
            "2026-11-25T08:00Z)"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _clock(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _session_lines(s: SessionSummary) -> list[str]:
    delivered = "?" if s.delivered_ul is None else f"{s.delivered_ul}"
    head = (
        f"#{s.session_id:<6} {s.subject_id:<14} {s.status.value:<17} {_clock(s.intent_at.utc)}"
        f"  planned {s.planned_cap_ul} uL  delivered {delivered} uL"
    )
    unit = s.dose_unit or "units"
    if s.dose is not None:
        head += f"  dose {s.dose:.4g} {unit}"
    if s.drug or s.concentration_per_ml is not None:
        strength = (
            "" if s.concentration_per_ml is None else f" {s.concentration_per_ml:g} {unit}/mL"
        )
        head += f"  [{s.drug or 'drug not recorded'}{strength}]"
    lines = [head]
    if s.end_reason is not None:
        duration = "" if s.duration_ms is None else f" after {s.duration_ms / 1000:.1f} s"
        lines.append(f"        end: {s.end_reason} (reported by {s.end_source}){duration}")
    if s.uncertain_reason is not None:
        outcome = (
            f"reconciled from {s.reconcile_source}"
            if s.reconcile_source
            else f"NOT reconciled: counts its full planned cap of {s.planned_cap_ul} uL"
        )
        lines.append(f"        uncertain: {s.uncertain_reason}; {outcome}")
    lines.extend(
        f"        override: {o.get('role')} - {o.get('reason')} "
        f"({', '.join(str(c) for c in o.get('constraint_codes', []))})"
        for o in s.overrides
    )
    lines.extend(
        f"        alarm {_clock(a.utc)}: {a.alarm_code} {a.action.value} by {a.actor}"
        + (f" [{a.priority}]" if a.priority else "")
        + (f" - {a.message}" if a.message else "")
        for a in s.alarms
    )
    return lines


def _totals_lines(summaries: list[SessionSummary]) -> list[str]:
    by_subject: dict[str, list[SessionSummary]] = {}
    for s in summaries:
        by_subject.setdefault(s.subject_id, []).append(s)
    lines = []
    for subject, rows in sorted(by_subject.items()):
        delivered = sum(r.delivered_ul or 0 for r in rows)
        unknown = sum(1 for r in rows if r.status.value in ("open", "uncertain"))
        dose = [r.dose for r in rows if r.dose is not None]
        line = f"{subject}: {len(rows)} session(s), {delivered} uL delivered"
        if dose:
            line += f", {sum(dose):.4g} {rows[0].dose_unit or 'units'}"
        if unknown:
            line += f", {unknown} open or uncertain (their planned caps count against limits)"
        lines.append(line)
    return lines


def _breath_lines(s: SessionSummary, breathing: RunBreathing | None) -> list[str]:
    """The run's breath summary (ICD 1.1 heads): emitted and inspiratory-phase side by side."""
    if breathing is None:
        return []
    emitted_dose = s.dose if breathing.dose_unit is not None else None
    return [
        f"        breathing {breathing.breathing_text()}",
        "        aerosol "
        + breathing.aerosol_text(delivered_ul=s.delivered_ul, emitted_dose=emitted_dose),
    ]


def _blinded(args: argparse.Namespace) -> bool:
    """No drug-unit breath figures: the prescription is blinded, or unknown (no config)."""
    if args.config is None and args.data_dir is not None:
        return True  # a bare data directory says nothing about the study's blinding
    return prescription_blinded(load_config(Path(args.config) if args.config else None))


def _show(args: argparse.Namespace) -> int:
    try:
        data_dir = _data_dir(args)
        blinded = _blinded(args)
    except ConfigError as exc:
        sys.stderr.write(f"{exc}\n")
        return EXIT_CONFIG
    try:
        with Ledger.open(data_dir / LEDGER_FILE_NAME, read_only=True) as ledger:
            summaries = ledger.summaries(since=args.since, subject_id=args.subject)
            records = ledger.breath_summaries(since=args.since, subject_id=args.subject)
    except LedgerError as exc:
        sys.stderr.write(f"{exc}\n")
        return EXIT_LEDGER
    breathing = {sid: RunBreathing.from_record(figures) for sid, figures in records.items()}
    if blinded:
        breathing = {sid: b.blinded() for sid, b in breathing.items()}
    if args.json:
        payload: list[dict[str, Any]] = [summary_to_json(s) for s in summaries]
        for entry in payload:
            run = breathing.get(int(entry["session_id"]))
            if run is not None:
                entry["breathing"] = asdict(run)
        sys.stdout.write(json.dumps(payload, indent=2, sort_keys=True) + "\n")
        return 0
    if not summaries:
        sys.stdout.write("no sessions recorded for this selection\n")
        return 0
    out: list[str] = []
    for s in summaries:
        out.extend(_session_lines(s))
        out.extend(_breath_lines(s, breathing.get(s.session_id)))
    out.append("")
    out.extend(_totals_lines(summaries))
    sys.stdout.write("\n".join(out) + "\n")
    return 0


def _backup(args: argparse.Namespace) -> int:
    try:
        data_dir = _data_dir(args)
    except ConfigError as exc:
        sys.stderr.write(f"{exc}\n")
        return EXIT_CONFIG
    destination = Path(args.destination)
    try:
        with Ledger.open(data_dir / LEDGER_FILE_NAME, read_only=True) as ledger:
            ledger.backup(destination)
    except (LedgerError, OSError) as exc:
        sys.stderr.write(f"backup failed: {exc}\n")
        return EXIT_LEDGER
    sys.stdout.write(f"backed up {data_dir / LEDGER_FILE_NAME} to {destination} (verified)\n")
    return 0


def _init_identity(args: argparse.Namespace) -> tuple[Path, str, str]:
    """Data dir, device id and subject: the flags, else the configuration's."""
    config: NebuliserConfig | None = None
    if args.config is not None or args.device_id is None or args.subject is None:
        config = load_config(Path(args.config) if args.config else None)
    data_dir = Path(args.data_dir) if args.data_dir else None
    if data_dir is None:
        assert config is not None
        data_dir = config.storage.data_dir
    device_id = args.device_id or (config.device.device_id if config else None)
    subject = args.subject
    if subject is None and config is not None:
        try:
            subject = load_service_prescription(config).prescription.subject_id
        except PrescriptionSourceError as exc:
            raise ValueError(
                f"cannot read the prescription's subject ({exc}); give it with --subject"
            ) from None
    if not device_id or not subject:
        raise ValueError("give --device-id and --subject, or a --config that has both")
    return data_dir, device_id, subject


def _init(args: argparse.Namespace) -> int:
    try:
        data_dir, device_id, subject = _init_identity(args)
        accept = (
            EmptyHistoryAcceptance(by=args.by or "", reason=args.reason or "")
            if args.accept_empty_history
            else None
        )
        ward = [_ward_anchor(Path(path)) for path in args.ward_anchor or ()]
    except (ConfigError, ValueError) as exc:
        sys.stderr.write(f"{exc}\n")
        return EXIT_CONFIG
    try:
        anchor = init_ledger(
            LedgerLocation(data_dir=data_dir),
            device_id=device_id,
            subject_id=subject,
            accept=accept,
            ward_anchors=ward,
        )
    except (LedgerError, OSError) as exc:
        sys.stderr.write(f"ledger init refused: {exc}\n")
        return EXIT_LEDGER
    sys.stdout.write(
        f"created ledger {anchor.ledger_id} for device {device_id}, subject {subject} at "
        f"{data_dir / LEDGER_FILE_NAME} (anchored in the audit log and ledger.anchor.json)\n"
    )
    return 0


def _device_and_dir(args: argparse.Namespace) -> tuple[Path, str]:
    config = None
    if args.config is not None or args.device_id is None or args.data_dir is None:
        config = load_config(Path(args.config) if args.config else None)
    data_dir = Path(args.data_dir) if args.data_dir else None
    if data_dir is None:
        assert config is not None
        data_dir = config.storage.data_dir
    device_id = args.device_id or (config.device.device_id if config else "")
    return data_dir, device_id


def _ward_anchor(path: Path) -> LedgerAnchor:
    """A `nebuliser.ledger_anchor` message the ward station kept, saved to a file: the
    payload (`mosquitto_sub -t '<root>/<ward>/<bed>/ledger/anchor' -C 1 > FILE`) or the
    station's bed-detail JSON (its `ledger_anchor`). Raises ValueError saying what is wrong."""
    from pydantic import ValidationError  # noqa: PLC0415 - only for this option

    from controller.telemetry import (  # noqa: PLC0415 - keep `ledger` commands light
        LedgerAnchorMessage,
        ledger_anchor_from_message,
    )

    hint = (
        "save the retained message with `mosquitto_sub -t '<root>/<ward>/<bed>/ledger/anchor' "
        "-C 1 > FILE` (docs/ledger.md)"
    )
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"--ward-anchor {path}: cannot be read as JSON ({exc}); {hint}") from None
    if isinstance(body, dict) and isinstance(body.get("ledger_anchor"), dict):
        body = body["ledger_anchor"]  # the station's bed detail
    try:
        return ledger_anchor_from_message(LedgerAnchorMessage.model_validate(body))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the message"
        raise ValueError(
            f"--ward-anchor {path}: not a nebuliser.ledger_anchor message ({where}: "
            f"{first['msg']}); {hint}"
        ) from None


def _restore(args: argparse.Namespace) -> int:
    try:
        data_dir, device_id = _device_and_dir(args)
    except ConfigError as exc:
        sys.stderr.write(f"{exc}\n")
        return EXIT_CONFIG
    if not args.dry_run and not (args.by or "").strip():
        sys.stderr.write("say who restores the ledger: --by NAME (recorded in the audit log)\n")
        return EXIT_CONFIG
    location = LedgerLocation(data_dir=data_dir)
    backup = Path(args.backup)
    try:
        ward = [_ward_anchor(Path(path)) for path in args.ward_anchor or ()]
    except ValueError as exc:
        sys.stderr.write(f"{exc}\n")
        return EXIT_CONFIG
    try:
        if args.dry_run:
            plan = plan_restore(location, backup, device_id=device_id, ward_anchors=ward)
        else:
            plan = restore_ledger(
                location,
                backup,
                device_id=device_id,
                by=args.by,
                reason=args.reason or "",
                ward_anchors=ward,
            )
    except (LedgerError, OSError) as exc:
        sys.stderr.write(f"ledger restore refused (nothing was changed): {exc}\n")
        return EXIT_LEDGER
    lines = plan.describe()
    if args.dry_run:
        lines.append("dry run: nothing was changed")
    else:
        lines.append(
            f"restored to {location.ledger_path} by {args.by}; recorded in the audit log. "
            "Start the controller; sessions restored as UNCERTAIN count their full cap."
        )
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def _add_location(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="controller configuration (TOML)")
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        help="data directory holding ledger.sqlite3 (default: from --config, else ./data)",
    )


def register(subparsers: Any) -> None:
    """Add `ledger init`, `ledger show`, `ledger backup` and `ledger restore`."""
    parser = subparsers.add_parser(
        "ledger", help="create, show, back up or restore the dose ledger"
    )
    sub = parser.add_subparsers(dest="ledger_command", metavar="ACTION", required=True)
    init = sub.add_parser(
        "init",
        help="create the dose ledger of a new install (once; serve never creates one)",
    )
    init.add_argument(
        "--device-id", metavar="ID", help="this controller's device id (default: from --config)"
    )
    init.add_argument(
        "--subject", metavar="S", help="the prescription's subject id (default: from --config)"
    )
    init.add_argument(
        "--accept-empty-history",
        action="store_true",
        help="start empty although an earlier ledger existed (needs --by and --reason; audited)",
    )
    init.add_argument("--by", metavar="NAME", help="who accepts the empty history")
    init.add_argument("--reason", metavar="TEXT", help="why an empty history is acceptable")
    init.add_argument(
        "--ward-anchor",
        metavar="FILE",
        action="append",
        help="the bed's retained `ledger/anchor` message of the earlier ledger, saved to a "
        "file: recorded as accepted, so `serve` starts despite it (needs "
        "--accept-empty-history; repeatable)",
    )
    _add_location(init)
    init.set_defaults(handler=_init)
    show = sub.add_parser(
        "show",
        help="print sessions with delivered volume, dose, end reasons, overrides and alarms",
    )
    show.add_argument(
        "--since",
        type=_parse_since,
        metavar="ISO_DATE",
        help="only sessions whose intent is at or after this UTC date/time",
    )
    show.add_argument("--subject", metavar="S", help="only this subject id")
    show.add_argument("--json", action="store_true", help="machine-readable JSON output")
    _add_location(show)
    show.set_defaults(handler=_show)
    backup = sub.add_parser(
        "backup",
        help="copy the live ledger to DEST with SQLite's online backup API (safe while running)",
    )
    backup.add_argument("destination", metavar="DEST", help="file to write the copy to")
    _add_location(backup)
    backup.set_defaults(handler=_backup)
    restore = sub.add_parser(
        "restore",
        help="put a verified backup back after a loss (controller stopped; audited)",
    )
    restore.add_argument("backup", metavar="BACKUP", help="a file made by `ledger backup`")
    restore.add_argument("--by", metavar="NAME", help="who restores (recorded in the audit log)")
    restore.add_argument("--reason", metavar="TEXT", help="why (recorded in the audit log)")
    restore.add_argument(
        "--dry-run", action="store_true", help="verify and show what is missing; change nothing"
    )
    restore.add_argument(
        "--device-id", metavar="ID", help="this controller's device id (default: from --config)"
    )
    restore.add_argument(
        "--ward-anchor",
        metavar="FILE",
        action="append",
        help="the bed's retained `ledger/anchor` message the ward station kept, saved to a "
        "file; compared like the local anchors (repeatable)",
    )
    _add_location(restore)
    restore.set_defaults(handler=_restore)
