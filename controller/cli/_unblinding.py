"""The unblinding gate of `nebuliser report` (issue 20): blinded by default, unblinded
only with a coordinator's signed credential, and every attempt audited.

A report of a blinded arm names no drug, lot, arm, cohort or concentration unless
`--unblinded --unblind-credential FILE` is given and the credential verifies
(`controller.security.verify_unblinding`: signed by one of the prescription's
`unblinding_keys`, for this device, subject and report, within its validity, not
replayed). The outcome — granted or refused, who signed, which report, why, and the
local account and process that asked (the peer) — is appended to the hash-chained
audit log BEFORE anything unblinded is written; if it cannot be audited, it is refused.
"""

from __future__ import annotations

import argparse
import getpass
import os
import socket
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from controller.config import NebuliserConfig, PrescriptionSourceError, load_service_prescription
from controller.dosing import Prescription
from controller.reports import ReportContext, report_context, report_prescription
from controller.security import (
    AUDIT_DB_NAME,
    AuditKind,
    AuditLog,
    CommandLimits,
    SqliteCounterStore,
    Unblinding,
    UnblindingRefusedError,
    UnblindReport,
    verify_unblinding,
)

__all__ = ["UnblindingRefusedError", "add_unblinding_options", "context_for_report"]

_HOW: Final = (
    "a coordinator signs one with `nebuliser report sign-unblinding --key KEY.key "
    "--key-id ID --device DEVICE --subject SUBJECT --report REPORT --reason TEXT -o FILE` "
    "and you pass `--unblinded --unblind-credential FILE` (docs/trials.md, Blinding)"
)


def add_unblinding_options(parser: argparse.ArgumentParser) -> None:
    """`--unblinded` and `--unblind-credential FILE` for one `report` subcommand."""
    parser.add_argument(
        "--unblinded",
        action="store_true",
        help="name the drug, lot, arm, cohort and doses of a blinded arm (needs "
        "--unblind-credential; every attempt is audited)",
    )
    parser.add_argument(
        "--unblind-credential",
        type=Path,
        metavar="FILE",
        help="a coordinator's signed unblinding credential (`report sign-unblinding`)",
    )


def _peer() -> dict[str, object]:
    """Who asked, as the operating system knows it (the local peer of the report)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container): the uid still says
        user = ""
    peer: dict[str, object] = {
        "uid": os.getuid(),
        "user": user,
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "host": socket.gethostname(),
    }
    if os.environ.get("SUDO_USER"):
        peer["sudo_user"] = os.environ["SUDO_USER"]
    return peer


class UnblindingNotAuditedError(UnblindingRefusedError):
    """The audit record could not be written: nothing unblinded may be shown."""


def _audit(config: NebuliserConfig, body: dict[str, object]) -> None:
    """Append the unblinding record (fsynced), with the service's HMAC key if it has one.

    Raises `UnblindingNotAuditedError` when it cannot: an unblinding that leaves no
    record is refused.
    """
    from controller.service import load_audit_hmac_key  # noqa: PLC0415 - only when unblinding

    security = config.security
    data_dir = config.storage.data_dir
    try:
        key = load_audit_hmac_key(None if security is None else security.audit_hmac_key_file)
        log = AuditLog.in_data_dir(data_dir, hmac_key=key)
        try:
            log.append(AuditKind.UNBLINDING, body, now=datetime.now(UTC))
        finally:
            log.close()
    except (OSError, ValueError, sqlite3.Error) as exc:
        raise UnblindingNotAuditedError(
            "audit_failed",
            f"the unblinding cannot be recorded in the audit log {data_dir / AUDIT_DB_NAME} "
            f"({exc}); nothing is unblinded. Run the report as the controller's service "
            "user (sudo -u nebuliser nebuliser report ...), which can write the audit log "
            "and read its HMAC key",
        ) from exc


def _verify(
    credential_path: Path, *, config: NebuliserConfig, prescription: Prescription, report: str
) -> Unblinding:
    try:
        raw = credential_path.read_bytes()
    except OSError as exc:
        raise UnblindingRefusedError(
            "no_credential", f"cannot read the unblinding credential {credential_path}: {exc}"
        ) from exc
    security = config.security
    limits = CommandLimits() if security is None else CommandLimits.from_settings(security)
    try:
        counters = SqliteCounterStore.in_data_dir(config.storage.data_dir)
    except (OSError, sqlite3.Error) as exc:
        raise UnblindingRefusedError(
            "counter_store_failed",
            f"cannot open the replay counters in {config.storage.data_dir} ({exc}); run the "
            "report as the controller's service user",
        ) from exc
    try:
        return verify_unblinding(
            raw,
            now=datetime.now(UTC),
            device_id=config.device.device_id,
            subject_id=prescription.subject_id,
            report=_report_name(report),
            keys=prescription.unblinding_keys,
            counters=counters,
            limits=limits,
        )
    finally:
        counters.close()


def _report_name(report: str) -> UnblindReport:
    if report == "sessions":
        return "sessions"
    if report == "fhir":
        return "fhir"
    return "plot"


def _grant(
    args: argparse.Namespace,
    *,
    config: NebuliserConfig,
    prescription: Prescription | None,
    problem: str | None,
    report: str,
) -> Unblinding:
    """The verified unblinding, or `UnblindingRefusedError` saying what is missing."""
    if prescription is None:
        raise UnblindingRefusedError(
            "no_prescription",
            "the prescription cannot be read or verified as `serve` would, so nobody can be "
            f"checked against its unblinding_keys: {problem}; pass the controller's --config",
        )
    if not args.unblinded:
        raise UnblindingRefusedError(
            "not_asked",
            "--unblind-credential was given without --unblinded: say that you mean to "
            "unblind (the report stays blinded otherwise)",
        )
    if args.unblind_credential is None:
        raise UnblindingRefusedError(
            "no_credential", f"--unblinded needs an unblinding credential: {_HOW}"
        )
    return _verify(args.unblind_credential, config=config, prescription=prescription, report=report)


def context_for_report(
    args: argparse.Namespace, config: NebuliserConfig, *, report: str
) -> ReportContext:
    """The report context: blinded for a blinded arm unless a credential unblinds it.

    Raises `UnblindingRefusedError` (after auditing the refusal) when `--unblinded`
    was asked without a valid credential; the caller prints it and exits REFUSED.
    """
    wanted = bool(args.unblinded or args.unblind_credential is not None)
    if not wanted:
        return report_context(config)
    try:
        shown = report_prescription(config)
    except PrescriptionSourceError:
        shown = None  # unreadable: the report is blinded; the gate below says why
    if shown is not None and not shown.arm.blinded:
        return report_context(config)  # an open-label arm: nothing to unblind
    # Who may unblind is read only from a prescription `serve` would accept: a pharmacy-
    # signed file (an inline table only where signatures are not required: a bench).
    try:
        prescription: Prescription | None = load_service_prescription(config).prescription
        problem = None
    except PrescriptionSourceError as exc:
        prescription, problem = None, str(exc)
    record: dict[str, object] = {
        "report": report,
        "subject_id": None if prescription is None else prescription.subject_id,
        "protocol_id": None if prescription is None else prescription.protocol_id,
        "peer": _peer(),
        "credential_file": None
        if args.unblind_credential is None
        else str(args.unblind_credential),
    }
    try:
        granted = _grant(
            args, config=config, prescription=prescription, problem=problem, report=report
        )
    except UnblindingRefusedError as exc:
        _audit(config, record | {"outcome": "refused", "code": exc.code, "reason": str(exc)})
        raise  # the refusal; or, if it could not be audited, that
    _audit(
        config,
        record
        | {
            "outcome": "granted",
            "signed_by": granted.signed_by,
            "key_id": granted.key_id,
            "credential_id": granted.credential_id,
            "purpose": granted.reason,
        },
    )
    return report_context(config, unblinded=True)
