"""`nebuliser serve`: the bedside controller process.

Wiring only: the ledger on its writer thread, the serial link, the supervisor,
the local control socket, optional MQTT publishing, the supervision tick, and a
graceful SIGTERM (stop any running session, record it, then exit).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

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
from controller.dosing import Override
from controller.ledger import LEDGER_FILE_NAME, Ledger, LedgerError
from controller.logging import bind_device, get_logger
from drivers.mn1 import PortInUseError, SerialLink

from ._commands import security_task
from ._confirm import confirm_at_bedside
from ._recorder import Recorder
from ._supervisor import TICK_MS, Supervisor
from ._systemd import systemd_notify_task
from ._telemetry import run_telemetry, telemetry_publications

__all__ = ["EXIT_LEDGER", "EXIT_PORT", "EXIT_PRESCRIPTION", "ServiceContext", "run_service"]

_log = get_logger(__name__)

EXIT_PORT = 3
EXIT_LEDGER = 4
EXIT_PRESCRIPTION = 5
_SHUTDOWN_STOP_WAIT_S = 3.0


def _open_ledger(config: NebuliserConfig) -> Ledger:
    config.storage.data_dir.mkdir(parents=True, exist_ok=True)
    return Ledger.open(
        config.storage.data_dir / LEDGER_FILE_NAME,
        outbox_budget_bytes=config.storage.outbox_budget_mb * 1024 * 1024,
        progress_interval_ms=int(config.session.progress_sample_s * 1000),
    )


class _Handlers:
    """Control-socket operations, each a thin layer over the supervisor."""

    def __init__(self, *, supervisor: Supervisor, config: NebuliserConfig) -> None:
        self._sup = supervisor
        self._config = config

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
        return {"ok": cleared, "cleared": cleared, "reason": reason}

    async def status(self, _request: ControlRequest, _reply: Reply) -> dict[str, Any]:
        return {"ok": True, **self._sup.snapshot()}

    async def stop(self, request: ControlRequest, _reply: Reply) -> dict[str, Any]:
        by = str(request.args.get("by", "local operator"))
        stopped = self._sup.stop_now(f"operator_stop:{by}")
        return {"ok": True, "stopped": stopped, "state": self._sup.state.value}

    async def alarm_list(self, _request: ControlRequest, _reply: Reply) -> dict[str, Any]:
        return {"ok": True, "alarms": self._sup.snapshot()["alarms"]}

    async def alarm_ack(self, request: ControlRequest, _reply: Reply) -> dict[str, Any]:
        code_text = str(request.args.get("code", ""))
        by = str(request.args.get("by", "")).strip()
        try:
            code = AlarmCode(code_text)
        except ValueError:
            known = ", ".join(sorted(str(a.code) for a in self._sup.alarms.active)) or "none"
            raise ControlError(f"unknown alarm code {code_text!r}; active: {known}") from None
        if not by:
            raise ControlError("say who acknowledges: --by NAME")
        try:
            events = self._sup.acknowledge_alarm(code, by)
        except AlarmNotActiveError as exc:
            raise ControlError(str(exc)) from None
        return {"ok": True, "acknowledged": [str(e.code) for e in events]}

    async def start(self, request: ControlRequest, reply: Reply) -> dict[str, Any]:
        args = request.args
        requested = args.get("requested_ul")
        if requested is not None and (not isinstance(requested, int) or requested < 1):
            raise ControlError("requested_ul must be a whole number of µL ≥ 1")
        override = None
        if args.get("override_role"):
            override = Override(
                role=str(args["override_role"]),
                reason=str(args.get("override_reason", "")),
                constraint_codes=frozenset(str(c) for c in args.get("override_codes", [])),
            )
        decision = await self._sup.admit(requested_ul=requested, override=override)
        refusals = self._sup.controller_refusals()
        if refusals or not decision.allowed:
            return {
                "ok": False,
                "started": False,
                "reasons": refusals + list(decision.refusal_reasons),
            }
        timeout_s = self._config.session.confirm_timeout_s
        await reply.progress(
            {
                "event": "awaiting_confirm",
                "subject_id": self._sup.prescription.subject_id,
                "cap_ul": decision.session_cap_ul,
                "max_duration_s": decision.max_duration_s,
                "timeout_s": timeout_s,
            }
        )
        how = await self._await_confirm(reply, timeout_s)
        if how is None:
            return {
                "ok": False,
                "started": False,
                "reasons": [f"not confirmed at the bedside within {timeout_s} s; nothing started"],
            }
        decision = await self._sup.admit(requested_ul=requested, override=override)
        outcome = await self._sup.start(decision)
        return {
            "ok": outcome.started,
            "started": outcome.started,
            "confirmed_by": how,
            "session_id": outcome.session_id,
            "cap_ul": decision.session_cap_ul,
            "reasons": list(outcome.reasons),
        }

    async def _await_confirm(self, reply: Reply, timeout_s: float) -> str | None:
        """The head's CONFIRM button, or `{"op": "confirm"}` from the bedside terminal."""

        async def terminal() -> str | None:
            while True:
                line = await reply.next_request()
                if line is None or line.op == "cancel":
                    return None
                if line.op == "confirm":
                    return "bedside terminal"

        return await confirm_at_bedside(self._sup, timeout_s=timeout_s, terminal=terminal)


async def _pump_events(link: SerialLink, supervisor: Supervisor) -> None:
    async for event in link.events():
        supervisor.handle_event(event)


#: How often clock trust and free space are re-read while idle or running.
CONDITIONS_PERIOD_S = 30.0


async def _refresh_conditions(supervisor: Supervisor) -> None:
    while True:
        await supervisor.refresh_conditions()
        await asyncio.sleep(CONDITIONS_PERIOD_S)


async def _tick(supervisor: Supervisor) -> None:
    while True:
        supervisor.tick()
        await asyncio.sleep(TICK_MS / 1000)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceContext:
    """What a service task (telemetry, remote commands, systemd notify) may use."""

    config: NebuliserConfig
    supervisor: Supervisor
    link: SerialLink
    recorder: Recorder[Ledger]
    clock: Clock
    stop_requested: asyncio.Event
    prescription_source: LoadedPrescription | None = None


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
) -> int:
    """Run the controller until SIGTERM/SIGINT (or `stop_requested`); returns the exit code.

    `clock` is injectable so that tests step the wall clock without touching the machine's.
    """
    try:
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
    recorder: Recorder[Ledger] = Recorder(
        opener=lambda: _open_ledger(config), closer=lambda ledger: ledger.close()
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
                    context = ServiceContext(
                        config=config,
                        supervisor=supervisor,
                        link=link,
                        recorder=recorder,
                        clock=clock,
                        stop_requested=stop_requested,
                        prescription_source=loaded,
                    )
                    await _serve(context)
            except PortInUseError as exc:
                _log.error("serial port in use", error=str(exc))
                print(f"nebuliser serve: {exc}")  # noqa: T201 - the operator must see this
                return EXIT_PORT
    except LedgerError as exc:
        _log.error("ledger unavailable: delivery stopped", error=str(exc))
        print(  # noqa: T201 - the operator must see this
            f"nebuliser serve: the dose ledger cannot be used ({exc}). No session will be "
            "started. The damaged file was kept aside for forensics; see docs/ledger.md."
        )
        return EXIT_LEDGER
    return 0


async def _serve(ctx: ServiceContext) -> None:
    config, link, supervisor = ctx.config, ctx.link, ctx.supervisor
    handlers = _Handlers(supervisor=supervisor, config=config)
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
                group.create_task(_tick(supervisor)),
                group.create_task(_refresh_conditions(supervisor)),
            ]
            workers += [group.create_task(task) for task in _service_tasks(ctx)]
            await ctx.stop_requested.wait()
            # Graceful shutdown: stop any running session first, record it, then exit.
            if supervisor.session is not None:
                supervisor.stop_now("shutdown")
                await supervisor.wait_idle(_SHUTDOWN_STOP_WAIT_S)
            for worker in workers:
                worker.cancel()
    _log.info("controller stopped")
