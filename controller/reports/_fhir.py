"""`nebuliser report fhir`: a FHIR R4 Bundle of MedicationAdministration resources (pure).

One MedicationAdministration per session, the Medication (drug and lot) and the
Device, in a `collection` Bundle; for a run on a breath-aware head (ICD 1.1) one
Observation of its breathing and aerosol by breath phase, `partOf` the run's
MedicationAdministration (R4 Observation.partOf: "a larger event of which this
Observation is a component or step"; `derivedFrom` cannot name a
MedicationAdministration and `focus` would say the observation is *about* the
administration rather than the patient). Plain JSON-ready dicts: the controller needs no FHIR
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

from ._breathing import RunBreathing
from ._course import CourseSession, ReportContext
from ._outcome import AdministrationStatus, local_time, round_dose, session_outcome

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
_OUTCOME_SYSTEM = "urn:nebuliser:administration-status"
_SUBJECT_SYSTEM = "urn:nebuliser:subject"
_DEVICE_SYSTEM = "urn:nebuliser:device-id"
_BREATH_SYSTEM = "urn:nebuliser:breath"
LOINC = "http://loinc.org"
RESPIRATORY_RATE_LOINC = ("9279-1", "Respiratory rate")
_SERIAL_SYSTEM = "urn:nebuliser:mn1-serial"
_UCUM_CODES = {"mg": "mg", "ug": "ug", "vesicles": "{vesicles}"}
_NAMESPACE = uuid.UUID("0b7f3c0e-7d55-4d55-9a53-6f1f5e0c9a11")  # fixed: stable ids per ledger


def _urn(*parts: object) -> str:
    return f"urn:uuid:{uuid.uuid5(_NAMESPACE, '/'.join(str(p) for p in parts))}"


def administration_status(
    session: CourseSession, context: ReportContext | None = None
) -> tuple[str, str | None]:
    """The FHIR status and the report label (None for a plain completed) of one session.

    The label is the one every report prints (`partial (FAULT)`, `completed to
    dryness`, `uncertain (controller_restart)`; see `AdministrationStatus`); the FHIR
    status is its R4 code: completed, stopped, not-done, unknown, in-progress.
    """
    outcome = session_outcome(session, delivery=None if context is None else context.delivery)
    label = None if outcome.status is AdministrationStatus.COMPLETED else outcome.label
    return outcome.status.fhir_status, label


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
        "value": round_dose(amount),
        "unit": context.dose_unit,
        "system": UCUM,
        "code": _UCUM_CODES[context.dose_unit],
    }


def _notes(session: CourseSession, context: ReportContext) -> list[dict[str, Any]]:
    s = session.summary
    outcome = session_outcome(session, delivery=context.delivery)
    notes = [
        f"{outcome.label}: delivered "
        f"{'unknown' if s.delivered_ul is None else s.delivered_ul} uL of a planned "
        f"cap of {s.planned_cap_ul} uL (ledger session {s.session_id})"
    ]
    notes += [outcome.detail] if outcome.detail else []
    notes += [
        f"alarm {a.alarm_code} {a.action.value} by {a.actor} at "
        f"{local_time(a.utc, context.timezone)}"
        for a in session.alarms
    ]
    notes += [
        f"override by {o.get('role')}: {o.get('reason')} "
        f"({', '.join(str(c) for c in o.get('constraint_codes', []))})"
        + (f", signed by {o['signed_by']}" if o.get("signed_by") else "")
        for o in session.overrides
    ]
    return [{"text": text} for text in notes]


def _part_of(session: CourseSession, *, ledger_id: str, exported: set[int]) -> dict[str, Any]:
    """The reference from a continuation run to the first run of its administration.

    One administration given in several runs (issue 15: a dose ended early and was
    continued) is one first MedicationAdministration and its continuation runs, each
    `partOf` the first; the reference is by fullUrl when the first run is in the bundle,
    else by its ledger identifier."""
    first = session.summary.administration_id
    assert first is not None
    if first in exported:
        return {"reference": _urn(ledger_id, "session", first), "type": "MedicationAdministration"}
    return {
        "identifier": {"system": f"urn:nebuliser:ledger:{ledger_id}", "value": str(first)},
        "type": "MedicationAdministration",
    }


def _administration(
    session: CourseSession,
    *,
    ledger_id: str,
    medication_url: str,
    device_url: str,
    context: ReportContext,
    exported: set[int],
) -> dict[str, Any]:
    s = session.summary
    status, label = administration_status(session, context)
    zone = context.timezone
    period: dict[str, Any] = {"start": local_time(session.started_utc or s.intent_at.utc, zone)}
    if session.ended_utc is not None:
        period["end"] = local_time(session.ended_utc, zone)
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
        "note": _notes(session, context),
    }
    first = s.administration_id
    if first is not None and first != s.session_id:
        resource["partOf"] = [_part_of(session, ledger_id=ledger_id, exported=exported)]
    if label is not None:
        outcome = session_outcome(session, delivery=context.delivery)
        coding = [{"system": _OUTCOME_SYSTEM, "code": outcome.status.name.lower()}]
        if outcome.reason:
            end_code = outcome.reason.split(":", 1)[0].split(";", 1)[0].split(",", 1)[0]
            coding.append({"system": _END_REASON_SYSTEM, "code": end_code})
        resource["statusReason"] = [{"coding": coding, "text": label}]
    return resource


def _quantity(value: float, unit: str, code: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM, "code": code}


def _component(code: str, text: str, quantity: dict[str, Any]) -> dict[str, Any]:
    return {
        "code": {"coding": [_coding(_BREATH_SYSTEM, code, text)], "text": text},
        "valueQuantity": quantity,
    }


def _breath_components(
    session: CourseSession, breathing: RunBreathing, context: ReportContext
) -> list[dict[str, Any]]:
    """Breathing, then the emitted dose and the inspiratory-phase estimate side by side."""
    per_min = ("/min", "/min")
    components = [
        _component("breaths", "breaths", _quantity(breathing.breaths, "breaths", "{breaths}"))
    ]
    rates = (
        ("rate-mean", "mean respiratory rate", breathing.rate_mean_bpm),
        ("rate-min", "lowest respiratory rate", breathing.rate_min_bpm),
        ("rate-max", "highest respiratory rate", breathing.rate_max_bpm),
    )
    for code, text, value in rates:
        if value is None:
            continue
        component = _component(code, text, _quantity(round(value, 1), *per_min))
        if code == "rate-mean":  # also coded as LOINC's respiratory rate
            component["code"]["coding"].append(_coding(LOINC, *RESPIRATORY_RATE_LOINC))
        components.append(component)
    if breathing.tidal_mean_ml is not None:
        components.append(
            _component(
                "tidal-mean",
                "mean tidal volume",
                _quantity(round(breathing.tidal_mean_ml), "mL", "mL"),
            )
        )
    delivered = session.summary.delivered_ul
    if delivered is not None:
        components.append(
            _component("emitted", "emitted (delivered) volume", _quantity(delivered, "uL", "uL"))
        )
    components += [
        _component(
            "aerosol-inspiratory",
            "inspiratory-phase aerosol (estimate)",
            _quantity(breathing.aerosol_insp_ul, "uL", "uL"),
        ),
        _component(
            "aerosol-expiratory",
            "expiratory-phase aerosol (released to the room)",
            _quantity(breathing.aerosol_exp_ul, "uL", "uL"),
        ),
    ]
    unit = breathing.dose_unit
    if unit is not None and unit in _UCUM_CODES:  # never when blinded (no unit then)
        emitted_dose = session.dose(context)
        doses = (
            ("emitted-dose", "emitted dose", emitted_dose),
            (
                "aerosol-inspiratory-dose",
                "inspiratory-phase dose (estimate)",
                breathing.aerosol_insp_dose,
            ),
            ("aerosol-expiratory-dose", "expiratory-phase dose", breathing.aerosol_exp_dose),
        )
        components += [
            _component(code, text, _quantity(round_dose(value), unit, _UCUM_CODES[unit]))
            for code, text, value in doses
            if value is not None
        ]
    components += [
        _component(
            "waiting", "time waiting for a breath", _quantity(breathing.waiting_s, "s", "s")
        ),
        _component(
            "lost-reports",
            "lost BREATH reports",
            _quantity(breathing.lost_reports, "reports", "{reports}"),
        ),
    ]
    return components


def _breath_observation(
    session: CourseSession,
    breathing: RunBreathing,
    *,
    administration_url: str,
    device_url: str,
    context: ReportContext,
) -> dict[str, Any]:
    """The run's breath summary as an Observation, part of its MedicationAdministration."""
    s = session.summary
    zone = context.timezone
    period: dict[str, Any] = {"start": local_time(session.started_utc or s.intent_at.utc, zone)}
    if session.ended_utc is not None:
        period["end"] = local_time(session.ended_utc, zone)
    emitted = "unknown" if s.delivered_ul is None else f"{s.delivered_ul} uL"
    return {
        "resourceType": "Observation",
        "id": f"session-{s.session_id}-breathing",
        "status": "final",
        "partOf": [{"reference": administration_url, "type": "MedicationAdministration"}],
        "code": {
            "coding": [_coding(_BREATH_SYSTEM, "breath-summary", "breathing during nebulisation")],
            "text": f"breathing and aerosol by breath phase ({breathing.mode} run)",
        },
        "subject": {"identifier": {"system": _SUBJECT_SYSTEM, "value": s.subject_id}},
        "effectivePeriod": period,
        "device": {"reference": device_url},
        "method": {"text": f"MN-1 head breath sensor (ICD addendum 1.1), {breathing.mode}"},
        "note": [
            {
                "text": f"emitted {emitted} is the administered volume; the inspiratory-phase "
                "figure is an estimate from the head's breath reports, not a measured lung dose"
            }
        ],
        "component": _breath_components(session, breathing, context),
    }


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
    drug = context.drug
    if drug is None and not context.blinded:
        drug = next((s.summary.drug for s in sessions if s.summary.drug), None)
    medication: dict[str, Any] = {
        "resourceType": "Medication",
        "id": "medication",
        "code": {"text": drug or "drug not recorded"},
    }
    if context.lot_id:
        medication["batch"] = {"lotNumber": context.lot_id}
    if context.arm_id:  # unblinded: the study arm and cohort, for the trial's records
        arm = f"study arm {context.arm_id}" + (
            f", cohort {context.cohort}" if context.cohort else ""
        )
        medication["code"]["text"] = f"{medication['code']['text']} ({arm})"
    entries: list[dict[str, Any]] = [
        {"fullUrl": device_url, "resource": device},
        {"fullUrl": medication_url, "resource": medication},
    ]
    exported = {s.summary.session_id for s in sessions}
    for s in sessions:
        administration_url = _urn(ledger_id, "session", s.session_id)
        entries.append(
            {
                "fullUrl": administration_url,
                "resource": _administration(
                    s,
                    ledger_id=ledger_id,
                    medication_url=medication_url,
                    device_url=device_url,
                    context=context,
                    exported=exported,
                ),
            }
        )
        breathing = s.breathing_shown(context)
        if breathing is not None:
            entries.append(
                {
                    "fullUrl": _urn(ledger_id, "breathing", s.session_id),
                    "resource": _breath_observation(
                        s,
                        breathing,
                        administration_url=administration_url,
                        device_url=device_url,
                        context=context,
                    ),
                }
            )
    return {
        "resourceType": "Bundle",
        "id": _urn(ledger_id, "bundle", generated_at.isoformat()).removeprefix("urn:uuid:"),
        "type": "collection",
        "timestamp": generated_at.isoformat(),
        "entry": entries,
    }
