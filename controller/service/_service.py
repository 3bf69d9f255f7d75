"""`nebuliser serve`: the bedside controller process.

Wiring only: the ledger on its writer thread, the serial link, the supervisor,
the local control socket, optional MQTT publishing, the supervision tick, and a
graceful SIGTERM (stop any running session, record it, then exit).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import signal
import sys
from collections.abc import Coroutine
from typing import Any, Final

from controller.alarms import AlarmCode, AlarmNotActiveError, AlarmSettings
from controller.clock import Clock, ClockTrustMonitor, ClockTrustPolicy, SystemClock
from controller.config import (
    LoadedPrescription,
    NebuliserConfig,
    PrescriptionSourceError,
    load_service_prescription,
)
from controller.control import (
    ControlAccess,
    ControlError,
    ControlRequest,
    ControlServer,
    Reply,
    resolve_group,
)
from controller.exitcodes import ExitCode
from controller.ledger import (
    Ledger,
    LedgerDiscontinuityError,
    LedgerError,
    LedgerLocation,
    open_checked,
)
from controller.logging import bind_device, get_logger
from drivers.mn1 import PortInUseError, SerialLink

from ._commands import security_task
from ._confirm import bedside_scan, confirm_at_bedside, reduced_dose_reason, reduced_offer_json
from ._context import ServiceContext
from ._ledger_anchor import anchor_publication
from ._override_check import OverrideRefusedError, override_from_request
from ._pending_starts import PendingStarts
from ._recorder import Recorder
from ._refusal_alarm import clear_refusal_on_ward, device_seq_floor, publish_refusal_alarm
from ._supervisor import Supervisor
from ._systemd import systemd_notify_task
from ._telemetry import run_telemetry, telemetry_publications
from ._ward_anchor import WardAnchorFetch, fetch_ward_anchor

__all__ = [
    "EXIT_LEDGER",
    "EXIT_PORT",
    "EXIT_PRESCRIPTION",
    "EXIT_STOP_UNCONFIRMED",
    "ServiceContext",
    "run_service",
]

_log = get_logger(__name__)

# Aliases kept for importers; the table lives in controller/exitcodes.py.
EXIT_PORT = ExitCode.PORT
EXIT_LEDGER = ExitCode.LEDGER
EXIT_PRESCRIPTION = ExitCode.PRESCRIPTION
#: Shut down with a session the head did not confirm stopped (recorded UNCERTAIN,
#: HIGH alarm): systemd shows the unit failed.
EXIT_STOP_UNCONFIRMED = ExitCode.STOP_UNCONFIRMED
#: How long shutdown waits for the head's SESSION_END after STOP.
SHUTDOWN_STOP_WAIT_S = 3.0


def _open_ledger(config: NebuliserConfig, ward: WardAnchorFetch | None = None) -> Ledger:
    """Open the existing ledger only if it continues its anchors (docs/ledger.md).

    Never creates one (`nebuliser ledger init` does); a missing, empty, unreadable,
    rolled-back, swapped or foreign ledger raises a `LedgerError` (exit 4) after the
    suspect file was set aside and the `ledger_discontinuity` alarm was audited.
    A refusal alarm an earlier start-up published is cleared on the ward.
    `ward` is this bed's retained ledger anchor as the broker gave it at start-up.
    """
    location = LedgerLocation(data_dir=config.storage.data_dir)
    ledger = open_checked(
        location,
        device_id=config.device.device_id,
        outbox_budget_bytes=config.storage.outbox_budget_mb * 1024 * 1024,
        progress_interval_ms=int(config.session.progress_sample_s * 1000),
        reserve_bytes=config.storage.ledger_reserve_mb * 1024 * 1024,
        # With [mqtt]: the retained `ledger/anchor` message, queued in the outbox after
        # every anchor (the ward station keeps the newest: docs/ledger.md, "Continuity").
        anchor_message=anchor_publication(config),
        # Seqs used outside this ledger (acknowledged messages, a refusal's alarm):
        # a restored or new ledger's messages continue above them, never repeat them.
        seq_floor=device_seq_floor(config.storage.data_dir),
        # With [mqtt]: the ward station's retained anchor, the third continuity source
        # (a data directory lost or rolled back as a whole: issue 12).
        ward_anchor=None if ward is None else ward.anchor,
        ward_topic="" if ward is None else ward.topic,
    )
    try:
        clear_refusal_on_ward(config, ledger, location)
    except (OSError, LedgerError) as exc:
        # A display matter, not a dose one: tried again at the next start.
        _log.error("the ward's ledger refusal alarm could not be cleared", error=str(exc))
    return ledger


class _Handlers:
    """Control-socket operations, each a thin layer over the supervisor."""

    def __init__(
        self,
        *,
        supervisor: Supervisor,
        config: NebuliserConfig,
        clock: Clock,
        pending: PendingStarts | None = None,
    ) -> None:
        self._sup = supervisor
        self._config = config
        self._clock = clock
        self._pending = pending if pending is not None else PendingStarts()

    def table(self) -> dict[str, Any]:
        return {
            "session.status": self.status,
            "session.stop": self.stop,
            "session.start": self.start,
            "alarm.list": self.alarm_list,
            "alarm.ack": self.alarm_ack,
            "device.clear_faults": self.clear_faults,
        }

    async def clear_faults(self, request: ControlRequest, _reply: Reply) -> dict[str, Any]:
        by = str(request.args.get("by", "")).strip()
        if not by:
            raise ControlError("say who clears the faults: --by NAME")
        cleared, reason = await self._sup.clear_faults(by=by)
        self._sup.control_request(
            op="device.clear_faults",
            by=by,
            peer=_peer(request),
            outcome={"cleared": cleared, "reason": reason},
        )
        return {"ok": cleared, "cleared": cleared, "reason": reason}

    async def status(self, _request: ControlRequest, _reply: Reply) -> dict[str, Any]:
        checks = self._sup.prescription.checks
        return {
            "ok": True,
            **self._sup.snapshot(),
            "pending_starts": self._pending.views(),
            # What `session start` must ask the nurse to scan (issue 20, five rights).
            "checks": {"scan_subject": checks.scan_subject, "scan_lot": checks.scan_lot},
        }

    async def stop(self, request: ControlRequest, _reply: Reply) -> dict[str, Any]:
        by = str(request.args.get("by", "local operator"))
        # A start still waiting for CONFIRM is cancelled too (nothing was sent for it).
        cancelled = self._pending.cancel_all(f"{by} (session stop)")
        stopped = self._sup.stop_now(f"operator_stop:{by}")
        # Safe state first, record second: the row is queued after the STOP went out.
        self._sup.control_request(
            op="session.stop",
            by=by,
            peer=_peer(request),
            outcome={"stopped": stopped, "cancelled_starts": cancelled},
        )
        return {
            "ok": True,
            "stopped": stopped,
            "cancelled_starts": cancelled,
            "state": self._sup.runtime.state.value,
        }

    async def alarm_list(self, _request: ControlRequest, _reply: Reply) -> dict[str, Any]:
        return {"ok": True, "alarms": self._sup.snapshot()["alarms"]}

    async def alarm_ack(self, request: ControlRequest, _reply: Reply) -> dict[str, Any]:
        code_text = str(request.args.get("code", ""))
        by = str(request.args.get("by", "")).strip()
        try:
            code = AlarmCode(code_text)
        except ValueError:
            active = self._sup.runtime.alarms.active
            known = ", ".join(sorted(str(a.code) for a in active)) or "none"
            raise ControlError(f"unknown alarm code {code_text!r}; active: {known}") from None
        if not by:
            raise ControlError("say who acknowledges: --by NAME")
        try:
            events = self._sup.acknowledge_alarm(code, by)
        except AlarmNotActiveError as exc:
            self._sup.control_request(
                op="alarm.ack",
                by=by,
                peer=_peer(request),
                outcome={"alarm_code": str(code), "acknowledged": False, "reason": str(exc)},
            )
            raise ControlError(str(exc)) from None
        self._sup.control_request(
            op="alarm.ack",
            by=by,
            peer=_peer(request),
            outcome={"alarm_code": str(code), "acknowledged": True},
        )
        return {"ok": True, "acknowledged": [str(e.code) for e in events]}

    async def start(self, request: ControlRequest, reply: Reply) -> dict[str, Any]:
        """A bedside start; its outcome is recorded with the asking peer, whatever it is."""
        by = str(request.args.get("by") or "").strip() or "local control socket"
        try:
            result = await self._start(request, reply)
        except ControlError as exc:  # bad arguments: refused, and still on the record
            self._sup.control_request(
                op="session.start",
                by=by,
                peer=_peer(request),
                outcome={"started": False, "reasons": [str(exc)]},
            )
            raise
        session_id = result.get("session_id")
        self._sup.control_request(
            op="session.start",
            by=by,
            peer=_peer(request),
            outcome={
                "started": bool(result.get("started")),
                "reasons": list(result.get("reasons", [])),
                **({"confirmed_by": result["confirmed_by"]} if "confirmed_by" in result else {}),
            },
            session_id=session_id if isinstance(session_id, int) else None,
        )
        return result

    async def _start(self, request: ControlRequest, reply: Reply) -> dict[str, Any]:
        args = request.args
        requested = args.get("requested_ul")
        if requested is not None and (not isinstance(requested, int) or requested < 1):
            raise ControlError("requested_ul must be a whole number of µL ≥ 1")
        accept = args.get("accept_reduced_ul")
        if accept is not None and (not isinstance(accept, int) or accept < 1):
            raise ControlError("accept_reduced_ul must be a whole number of µL ≥ 1")
        try:
            override = await override_from_request(args, config=self._config, clock=self._clock)
        except OverrideRefusedError as exc:
            by = str(args.get("by") or "").strip() or "local control socket"
            self._sup.override_refused(by=by, reason=str(exc), peer=_peer(request))
            return {"ok": False, "started": False, "reasons": [str(exc)]}
        continue_last = bool(args.get("continue", False))
        scan = bedside_scan(args.get("subject"), args.get("lot"))
        admit = functools.partial(
            self._sup.admit,
            requested_ul=requested,
            override=override,
            accept_reduced_ul=accept,
            continue_last=continue_last,
            scan=scan,
        )
        decision = await admit()
        refusals = self._sup.controller_refusals()
        if refusals or not decision.allowed:
            offer = None if refusals else decision.reduced_dose_offer
            return {
                "ok": False,
                "started": False,
                "reasons": refusals + list(decision.refusal_reasons),
                "reduced_dose_offer": None if offer is None else reduced_offer_json(offer),
            }
        timeout_s = self._config.session.confirm_timeout_s
        requested_by = str(args.get("by") or "").strip() or "local control socket"
        cancelled = asyncio.Event()
        await reply.progress(
            {
                "event": "awaiting_confirm",
                "subject_id": self._sup.prescription.subject_id,
                "cap_ul": decision.session_cap_ul,
                "max_duration_s": decision.max_duration_s,
                "timeout_s": timeout_s,
                "continues_administration": decision.continues_administration,
                "reduced_dose": reduced_dose_reason(decision),
                "scanned": {"subject_id": scan.subject_id, "lot_id": scan.lot_id},
            }
        )
        with self._pending.waiting(
            requested_by=requested_by,
            channel="control socket",
            cap_ul=decision.session_cap_ul,
            timeout_s=timeout_s,
            cancel=lambda _by: cancelled.set(),
        ) as waiting:
            how = await self._await_confirm(reply, timeout_s, cancelled)
        if waiting.cancelled_by is not None:
            return {
                "ok": False,
                "started": False,
                "reasons": [
                    f"start cancelled by {waiting.cancelled_by} before the bedside "
                    "CONFIRM; nothing started"
                ],
            }
        if how is None:
            return {
                "ok": False,
                "started": False,
                "reasons": [f"not confirmed at the bedside within {timeout_s} s; nothing started"],
            }
        decision = await admit()
        outcome = await self._sup.start(decision)
        return {
            "ok": outcome.started,
            "started": outcome.started,
            "confirmed_by": how,
            "session_id": outcome.session_id,
            "cap_ul": decision.session_cap_ul,
            "reasons": list(outcome.reasons),
        }

    async def _await_confirm(
        self, reply: Reply, timeout_s: float, cancelled: asyncio.Event
    ) -> str | None:
        """The head's CONFIRM button, or `{"op": "confirm"}` from the bedside terminal."""

        async def terminal() -> str | None:
            while True:
                line = await reply.next_request()
                if line is None or line.op == "cancel":
                    return None
                if line.op == "confirm":
                    self._sup.control_request(
                        op="confirm",
                        by="bedside terminal",
                        peer=_peer(line),
                        outcome={"confirmed": True},
                    )
                    return "bedside terminal"

        return await confirm_at_bedside(
            self._sup, timeout_s=timeout_s, terminal=terminal, cancelled=cancelled
        )


def _peer(request: ControlRequest) -> dict[str, object] | None:
    """The kernel's word on who sent `request` (SO_PEERCRED), as recorded."""
    return None if request.peer is None else dict(request.peer.record())


#: How long another thread may hold the GIL while the event loop waits for it.
_GIL_SWITCH_INTERVAL_S: Final = 0.0005


def _clear_the_stop_path() -> None:
    """After start-up, keep the interpreter out of the STOP path's way (issue 14;
    figures in docs/performance.md).

    What start-up made (modules, models, configuration) lives as long as the service:
    it is taken out of the cyclic collector's reach. A full (generation 2) collection
    otherwise walks all of it — 12-17 ms measured, on whichever thread happens to
    allocate, the event loop included — and a STOP due meanwhile waits."""
    gc.collect()
    gc.freeze()
    # The event loop shares the GIL with the ledger, audit and MQTT threads: hand it
    # back within 0.5 ms, not the default 5 ms, when the loop has a STATUS to read.
    sys.setswitchinterval(_GIL_SWITCH_INTERVAL_S)


async def _pump_events(link: SerialLink, supervisor: Supervisor) -> None:
    async for event in link.events():
        supervisor.handle_event(event)


def _service_tasks(ctx: ServiceContext) -> list[Coroutine[Any, Any, None]]:
    """Optional long-running parts of the service, each run in the service's TaskGroup."""
    tasks: list[Coroutine[Any, Any, None]] = [systemd_notify_task(ctx)]
    if ctx.config.mqtt is not None:
        tasks.append(run_telemetry(ctx))
    tasks.append(security_task(ctx))  # audit log; signed commands with [mqtt] and [security]
    return tasks


async def run_service(
    config: NebuliserConfig,
    *,
    stop_requested: asyncio.Event | None = None,
    clock: Clock | None = None,
    loaded: LoadedPrescription | None = None,
) -> int:
    """Run the controller until SIGTERM/SIGINT (or `stop_requested`); returns the exit code.

    `clock` is injectable so that tests step the wall clock without touching the machine's.
    `loaded` is the prescription `preflight()` already verified (`serve` passes it, so the
    service runs exactly the prescription that was checked, read and verified once).
    """
    try:
        if loaded is None:
            loaded = load_service_prescription(config)  # signed unless explicitly not required
    except PrescriptionSourceError as exc:
        _log.error("prescription refused", error=str(exc))
        print(f"nebuliser serve: {exc}")  # noqa: T201 - the operator must see this
        return EXIT_PRESCRIPTION
    prescription = loaded.prescription
    # From here on every part (supervisor, telemetry, audit) sees the verified prescription.
    config = config.model_copy(update={"prescription": prescription})
    bind_device(config.device.device_id)
    clock = clock if clock is not None else SystemClock()
    trust = ClockTrustMonitor(
        clock=clock,
        policy=ClockTrustPolicy(
            mode=config.clock.mode,
            step_threshold_s=config.clock.step_threshold_s,
            retrust_after_s=config.clock.retrust_after_s,
        ),
    )
    ward = await fetch_ward_anchor(config)  # bounded; never refuses by itself
    recorder: Recorder[Ledger] = Recorder(
        opener=lambda: _open_ledger(config, ward), closer=lambda ledger: ledger.close()
    )
    if stop_requested is None:
        stop_requested = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop_requested.set)
    try:
        async with recorder.running():
            try:
                async with SerialLink(url=config.device.port) as link:
                    supervisor = Supervisor(
                        link=link,
                        recorder=recorder,
                        prescription=prescription,
                        clock=clock,
                        trust=trust,
                        data_dir_for_storage=config.storage.data_dir,
                        free_space_floor_mb=config.storage.free_space_floor_mb,
                        emergency_free_mb=config.storage.effective_emergency_free_mb,
                        stop_latency_ms=config.session.stop_latency_ms,
                        expected_serial=config.device.expected_serial,
                        progress_interval_ms=int(config.session.progress_sample_s * 1000),
                        publications=telemetry_publications(config),
                        alarm_settings=AlarmSettings(
                            output_low_pct=config.session.output_low_pct,
                            output_low_for_ms=config.session.output_low_s * 1000,
                        ),
                    )
                    await supervisor.recover()
                    _clear_the_stop_path()
                    context = ServiceContext(
                        config=config,
                        supervisor=supervisor,
                        link=link,
                        recorder=recorder,
                        clock=clock,
                        stop_requested=stop_requested,
                        prescription_source=loaded,
                    )
                    if not await _serve(context):
                        return EXIT_STOP_UNCONFIRMED
            except PortInUseError as exc:
                _log.error("serial port in use", error=str(exc))
                print(f"nebuliser serve: {exc}")  # noqa: T201 - the operator must see this
                return EXIT_PORT
    except LedgerError as exc:
        _log.error("ledger unavailable: delivery stopped", error=str(exc))
        print(  # noqa: T201 - the operator must see this
            f"nebuliser serve: the dose ledger cannot be used; no session will be started. {exc}"
        )
        if isinstance(exc, LedgerDiscontinuityError):
            # The HIGH alarm is in the audit log; the ward sees it too if the broker
            # answers within the bound (never a longer wait for the exit).
            await publish_refusal_alarm(config, exc)
        return EXIT_LEDGER
    return 0


async def _serve(ctx: ServiceContext) -> bool:
    """Serve until asked to stop; False when a session was left unconfirmed."""
    config, link, supervisor = ctx.config, ctx.link, ctx.supervisor
    clean = True
    handlers = _Handlers(
        supervisor=supervisor, config=config, clock=ctx.clock, pending=ctx.pending_starts
    )
    bedside = config.control.bedside_group  # issue 13: start/confirm need the bedside role
    server = ControlServer(
        path=config.control_socket,
        handlers=handlers.table(),
        mode=config.control.socket_mode,
        access=ControlAccess(bedside_gid=None if bedside is None else resolve_group(bedside)),
    )
    async with server.serving() as socket_path:
        _log.info("controller ready", port=config.device.port, control=str(socket_path))
        async with asyncio.TaskGroup() as group:
            workers = [
                group.create_task(_pump_events(link, supervisor)),
                group.create_task(supervisor.run_ticks()),
                group.create_task(supervisor.watch_conditions()),
            ]
            workers += [group.create_task(task) for task in _service_tasks(ctx)]
            await ctx.stop_requested.wait()
            # Graceful shutdown: stop any running session first, record it, then exit.
            # A head that does not confirm the stop is not left silently: UNCERTAIN,
            # HIGH alarm, error log, non-zero exit (only its watchdog is left).
            if supervisor.runtime.session is not None:
                supervisor.stop_now("shutdown")
                if not await supervisor.wait_idle(SHUTDOWN_STOP_WAIT_S):
                    supervisor.shutdown_unconfirmed()
                    clean = False
            for worker in workers:
                worker.cancel()
    if clean:
        _log.info("controller stopped")
    else:
        _log.error(
            "controller stopped with a session the head did not confirm stopped",
            exit_code=EXIT_STOP_UNCONFIRMED,
        )
    return clean
