"""`nebuliser report fhir`: a FHIR R4 Bundle of MedicationAdministration resources (pure).

One MedicationAdministration per session, the Medication (drug and lot) and the
Device, in a `collection` Bundle. Plain JSON-ready dicts: the controller needs no FHIR
library; the tests validate the output with the `fhir.resources` R4B models (R4B
leaves MedicationAdministration, Medication, Device and Bundle as in R4).

Codes (SNOMED CT International edition; see docs/reports.md):
- route 447694001 |Respiratory tract route (qualifier value)|
- method 738995006 |Inhale (administration method)|, text "nebulisation (vibrating mesh)"
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from ._course import CourseSession, ReportContext

__all__ = [
    "METHOD_INHALE",
    "ROUTE_RESPIRATORY_TRACT",
    "SNOMED_CT",
    "administration_status",
    "fhir_bundle",
]

SNOMED_CT = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
ROUTE_RESPIRATORY_TRACT = ("447694001", "Respiratory tract route")
METHOD_INHALE = ("738995006", "Inhale")
_END_REASON_SYSTEM = "urn:nebuliser:end-reason"
_SUBJECT_SYSTEM = "urn:nebuliser:subject"
_DEVICE_SYSTEM = "urn:nebuliser:device-id"
_SERIAL_SYSTEM = "urn:nebuliser:mn1-serial"
_UCUM_CODES = {"mg": "mg", "ug": "ug", "vesicles": "{vesicles}"}
_NAMESPACE = uuid.UUID("0b7f3c0e-7d55-4d55-9a53-6f1f5e0c9a11")  # fixed: stable ids per ledger


def _urn(*parts: object) -> str:
    return f"urn:uuid:{uuid.uuid5(_NAMESPACE, '/'.join(str(p) for p in parts))}"


def administration_status(session: CourseSession) -> tuple[str, str | None]:
    """The FHIR status and the reason (None for completed) of one session.

    completed: the planned volume was reached. stopped: it started and ended for any
    other reason. not-done: it never started. unknown: uncertain and not reconciled
    (it counts its full planned cap). in-progress: still open.
    """
    s = session.summary
    if s.status.value == "open":
        return "in-progress", None
    if session.uncertain and not session.reconciled:
        return "unknown", f"uncertain: {s.uncertain_reason}; not reconciled from the device"
    if not s.started:
        return "not-done", s.end_reason or "not started"
    if session.completed:
        return "completed", None
    if s.end_reason is None and session.reconciled:
        return "stopped", (
            f"uncertain: {s.uncertain_reason}; delivered volume reconciled from "
            f"{s.reconcile_source}"
        )
    return "stopped", s.end_reason or "stopped"


def _coding(system: str, code: str, display: str) -> dict[str, Any]:
    return {"system": system, "code": code, "display": display}


def _dose(session: CourseSession, context: ReportContext) -> dict[str, Any] | None:
    delivered = session.summary.delivered_ul
    if delivered is None:
        return None
    amount = session.dose(context)
    if amount is None or context.dose_unit not in _UCUM_CODES:
        return {"value": delivered / 1000, "unit": "mL", "system": UCUM, "code": "mL"}
    return {
        "value": round(amount, 6),
        "unit": context.dose_unit,
        "system": UCUM,
        "code": _UCUM_CODES[context.dose_unit],
    }


def _notes(session: CourseSession) -> list[dict[str, Any]]:
    s = session.summary
    notes = [
        f"delivered {'unknown' if s.delivered_ul is None else s.delivered_ul} uL of a planned "
        f"cap of {s.planned_cap_ul} uL (ledger session {s.session_id})"
    ]
    notes += [
        f"alarm {a.alarm_code} {a.action.value} by {a.actor} at {a.utc.isoformat()}"
        for a in session.alarms
    ]
    notes += [
        f"override by {o.get('role')}: {o.get('reason')} "
        f"({', '.join(str(c) for c in o.get('constraint_codes', []))})"
        for o in session.overrides
    ]
    return [{"text": text} for text in notes]


def _administration(
    session: CourseSession,
    *,
    ledger_id: str,
    medication_url: str,
    device_url: str,
    context: ReportContext,
) -> dict[str, Any]:
    s = session.summary
    status, reason = administration_status(session)
    period: dict[str, Any] = {"start": (session.started_utc or s.intent_at.utc).isoformat()}
    if session.ended_utc is not None:
        period["end"] = session.ended_utc.isoformat()
    dosage: dict[str, Any] = {
        "text": f"nebulised, device cap {s.device_target_ul} uL at {s.output_pct} % output",
        "route": {
            "coding": [_coding(SNOMED_CT, *ROUTE_RESPIRATORY_TRACT)],
            "text": "respiratory tract (inhaled)",
        },
        "method": {
            "coding": [_coding(SNOMED_CT, *METHOD_INHALE)],
            "text": "nebulisation (vibrating mesh)",
        },
    }
    dose = _dose(session, context)
    if dose is not None:
        dosage["dose"] = dose
    resource: dict[str, Any] = {
        "resourceType": "MedicationAdministration",
        "id": f"session-{s.session_id}",
        "identifier": [{"system": f"urn:nebuliser:ledger:{ledger_id}", "value": str(s.session_id)}],
        "status": status,
        "medicationReference": {"reference": medication_url},
        "subject": {
            "identifier": {"system": _SUBJECT_SYSTEM, "value": s.subject_id},
            "display": f"trial subject {s.subject_id}",
        },
        "effectivePeriod": period,
        "device": [{"reference": device_url}],
        "dosage": dosage,
        "note": _notes(session),
    }
    if reason is not None:
        resource["statusReason"] = [
            {
                "coding": [{"system": _END_REASON_SYSTEM, "code": reason.split(":", 1)[0]}],
                "text": reason,
            }
        ]
    return resource


def fhir_bundle(
    sessions: Sequence[CourseSession],
    *,
    context: ReportContext,
    ledger_id: str,
    generated_at: datetime,
) -> dict[str, Any]:
    """A FHIR R4 `collection` Bundle: Device, Medication, one MedicationAdministration each.

    Full URLs are name-based UUIDs of the ledger id and session id, so exporting the
    same ledger twice gives the same references (a receiver can de-duplicate).
    """
    device_url = _urn(ledger_id, "device", context.device_id)
    medication_url = _urn(ledger_id, "medication", context.drug, context.lot_id)
    identifiers = [{"system": _DEVICE_SYSTEM, "value": context.device_id}]
    if context.expected_serial:
        identifiers.append({"system": _SERIAL_SYSTEM, "value": context.expected_serial})
    device = {
        "resourceType": "Device",
        "id": "nebuliser",
        "identifier": identifiers,
        "status": "active",
        "deviceName": [
            {"name": "MN-1 vibrating-mesh nebuliser head", "type": "model-name"},
            {"name": context.device_id, "type": "user-friendly-name"},
        ],
        "type": {"text": "vibrating mesh nebuliser"},
    }
    drug = context.drug or next((s.summary.drug for s in sessions if s.summary.drug), None)
    medication: dict[str, Any] = {
        "resourceType": "Medication",
        "id": "medication",
        "code": {"text": drug or "drug not recorded"},
    }
    if context.lot_id:
        medication["batch"] = {"lotNumber": context.lot_id}
    entries: list[dict[str, Any]] = [
        {"fullUrl": device_url, "resource": device},
        {"fullUrl": medication_url, "resource": medication},
    ]
    entries += [
        {
            "fullUrl": _urn(ledger_id, "session", s.session_id),
            "resource": _administration(
                s,
                ledger_id=ledger_id,
                medication_url=medication_url,
                device_url=device_url,
                context=context,
            ),
        }
        for s in sessions
    ]
    return {
        "resourceType": "Bundle",
        "id": _urn(ledger_id, "bundle", generated_at.isoformat()).removeprefix("urn:uuid:"),
        "type": "collection",
        "timestamp": generated_at.isoformat(),
        "entry": entries,
    }
