"""What `nebuliser session status` shows: a plain view of the runtime (read only)."""

from __future__ import annotations

from typing import Any

from controller.session import SessionRuntime

__all__ = ["snapshot"]


def snapshot(runtime: SessionRuntime, *, link_up: bool, refusals: list[str]) -> dict[str, Any]:
    """The bed as the control interface reports it (JSON-ready)."""
    status = runtime.last_status
    session = runtime.session
    ident = runtime.ident
    last = runtime.last_ended
    return {
        "state": runtime.state.value,
        "device": None if ident is None else {"serial": ident.serial, "firmware": ident.firmware},
        "link_up": link_up,
        "subject_id": runtime.prescription.subject_id,
        "session": None
        if session is None
        else {
            "session_id": session.session_id,
            "delivered_ul": session.delivered_ul,
            "cap_ul": session.cap_ul,
            "flow_ul_min": session.flow_ul_min,
            "host_reason": session.host_reason,
        },
        "device_status": None
        if status is None
        else {
            # After our SESSION_END and before the next STATUS, the last STATUS still
            # says NEBULISING: say that it is out of date instead of showing it.
            "state": status.state.name if runtime.status_current else "SESSION_ENDED",
            "session_id": status.session_id,
            "delivered_ul": status.delivered_ul,
            "flow_ul_min": status.flow_ul_min,
            "reservoir_ul": status.reservoir_ul,
            "mesh_temp_c": status.mesh_temp_cC / 100,
            "faults": int(status.faults),
            "confirm_count": status.confirm_count,
        },
        "alarms": [
            {
                "code": str(a.code),
                "priority": str(a.priority),
                "message": a.message,
                "condition_present": a.condition_present,
                "acknowledged_by": a.acknowledged_by,
            }
            for a in runtime.alarms.active
        ],
        "uncertain_sessions": [u.session_id for u in runtime.uncertain_sessions],
        "unaccounted_sessions": [
            {
                "session_id": u.session_id,
                "reason": u.reason,
                "planned_cap_ul": u.planned_cap_ul,
                "acknowledged_by": u.acknowledged_by,
            }
            for u in runtime.uncertain_sessions
        ],
        "start_refusals": refusals,
        "last_session": None if last is None else last.body(),
    }
