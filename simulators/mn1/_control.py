"""Fault-injection control protocol: JSON lines over a Unix socket.

One request per line, one reply per line. A request is a JSON object with a
`cmd` field; `rx` and `tx` are objects with any of `bit_error_rate`,
`drop_rate`, `duplicate_rate` and `delay_ms`. A reply is
`{"ok": true, "state": {...}}` (the model's truth after the command) or
`{"ok": false, "error": "..."}`. Commands:

| cmd | fields | effect |
|---|---|---|
| `ping` | — | nothing (liveness) |
| `state` | — | nothing; the reply carries the truth |
| `fault` | `name`, `active` (default true) | a fault's physical cause appears / goes |
| `clog` | `drift_pct_per_min` | output drifts down while nebulising |
| `button` | `name`: `stop` or `confirm` | a press on the head |
| `refill` | `volume_ul` (default: the power-up fill) | liquid poured in |
| `set_reservoir` | `volume_ul` | liquid set exactly |
| `reboot` | `boot_ms` (default 0) | power cycle |
| `link` | `rx`, `tx`, `drop_answer_rate`, `silent` (any) | link faults; fields not given stay |
| `link_reset` | — | every link fault off |
| `defect` | `name`, `enabled` (default true) | firmware defect mode |
| `apnoea` | `seconds` | the patient stops breathing (ICD 1.1 heads) |
| `mask` | `off` (default true) | mask or mouthpiece off / back on |
| `sensor_stuck` | `active` (default true) | the flow sensor reads a constant |
| `pattern` | `name` | breathing pattern from the next breath (`PATTERN_NAMES`) |
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import socket
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final, Self

from ._breathing import PATTERN_NAMES
from ._device_types import DEFECTS, FAULT_NAMES
from ._link_faults import ChannelFaults, LinkFaults
from ._model import DeviceModel

__all__ = [
    "CONTROL_COMMANDS",
    "ControlServer",
    "SimulatorControlClient",
    "SimulatorControlError",
    "control_request_sync",
    "execute_control",
]

_MAX_LINE: Final = 64 * 1024
_CHANNEL_FIELDS: Final = frozenset(f.name for f in dataclasses.fields(ChannelFaults))


class SimulatorControlError(RuntimeError):
    """The simulator refused a control command (the message says why)."""


def _number(request: dict[str, Any], name: str, default: float | None = None) -> float:
    value = request.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name!r} must be a number, got {value!r}")
    return float(value)


def _flag(request: dict[str, Any], name: str, default: bool) -> bool:
    value = request.get(name, default)
    if not isinstance(value, bool):
        raise TypeError(f"{name!r} must be true or false, got {value!r}")
    return value


def _channel(current: ChannelFaults, update: object, direction: str) -> ChannelFaults:
    if update is None:
        return current
    if not isinstance(update, dict):
        raise TypeError(f"{direction!r} must be an object with {sorted(_CHANNEL_FIELDS)}")
    unknown = set(update) - _CHANNEL_FIELDS
    if unknown:
        raise ValueError(f"{direction!r} has unknown fields {sorted(unknown)}")
    values: dict[str, Any] = {}
    for name in update:
        number = _number(update, name)
        values[name] = int(number) if name == "delay_ms" else number
    return dataclasses.replace(current, **values)


def _link(model: DeviceModel, request: dict[str, Any]) -> LinkFaults:
    current = model.link_faults
    return LinkFaults(
        rx=_channel(current.rx, request.get("rx"), "rx"),
        tx=_channel(current.tx, request.get("tx"), "tx"),
        drop_answer_rate=_number(request, "drop_answer_rate", current.drop_answer_rate),
        silent=_flag(request, "silent", current.silent),
    )


def _named(request: dict[str, Any], allowed: tuple[str, ...], what: str) -> str:
    name = request.get("name")
    if name not in allowed:
        raise ValueError(f"unknown {what} {name!r}; use one of {', '.join(allowed)}")
    return str(name)


def _cmd_state(model: DeviceModel, request: dict[str, Any], now_ms: int) -> None:
    model.advance(now_ms)


def _cmd_fault(model: DeviceModel, request: dict[str, Any], now_ms: int) -> None:
    if request.get("name") == "watchdog":
        raise ValueError(
            "WATCHDOG is raised by host silence: stop sending for 1 s while nebulising"
        )
    name = _named(request, FAULT_NAMES, "fault")
    model.set_condition(name, _flag(request, "active", True), now_ms=now_ms)


def _cmd_clog(model: DeviceModel, request: dict[str, Any], now_ms: int) -> None:
    model.set_clog_drift(_number(request, "drift_pct_per_min"), now_ms=now_ms)


def _cmd_button(model: DeviceModel, request: dict[str, Any], now_ms: int) -> None:
    if _named(request, ("stop", "confirm"), "button") == "stop":
        model.press_stop_button(now_ms=now_ms)
    else:
        model.press_confirm_button(now_ms=now_ms)


def _cmd_refill(model: DeviceModel, request: dict[str, Any], now_ms: int) -> None:
    model.refill(_number(request, "volume_ul", model.fill_ul), now_ms=now_ms)


def _cmd_set_reservoir(model: DeviceModel, request: dict[str, Any], now_ms: int) -> None:
    model.set_reservoir(_number(request, "volume_ul"), now_ms=now_ms)


def _cmd_reboot(model: DeviceModel, request: dict[str, Any], now_ms: int) -> None:
    model.reboot(now_ms=now_ms, boot_ms=int(_number(request, "boot_ms", 0)))


def _cmd_link(model: DeviceModel, request: dict[str, Any], now_ms: int) -> None:
    model.set_link_faults(_link(model, request), now_ms=now_ms)


def _cmd_link_reset(model: DeviceModel, request: dict[str, Any], now_ms: int) -> None:
    model.set_link_faults(LinkFaults(), now_ms=now_ms)


def _cmd_defect(model: DeviceModel, request: dict[str, Any], now_ms: int) -> None:
    name = _named(request, DEFECTS, "defect")
    model.set_defect(name, _flag(request, "enabled", True), now_ms=now_ms)


def _cmd_apnoea(model: DeviceModel, request: dict[str, Any], now_ms: int) -> None:
    seconds = _number(request, "seconds")
    if not 0 <= seconds <= 3600:
        raise ValueError(f"'seconds' must be 0..3600, got {seconds}")
    model.breathing_apnoea(seconds, now_ms=now_ms)


def _cmd_mask(model: DeviceModel, request: dict[str, Any], now_ms: int) -> None:
    model.set_mask_off(_flag(request, "off", True), now_ms=now_ms)


def _cmd_sensor_stuck(model: DeviceModel, request: dict[str, Any], now_ms: int) -> None:
    model.set_sensor_stuck(_flag(request, "active", True), now_ms=now_ms)


def _cmd_pattern(model: DeviceModel, request: dict[str, Any], now_ms: int) -> None:
    model.set_breathing_pattern(_named(request, PATTERN_NAMES, "pattern"), now_ms=now_ms)


_COMMANDS: Final[dict[str, Callable[[DeviceModel, dict[str, Any], int], None]]] = {
    "ping": _cmd_state,
    "state": _cmd_state,
    "fault": _cmd_fault,
    "clog": _cmd_clog,
    "button": _cmd_button,
    "refill": _cmd_refill,
    "set_reservoir": _cmd_set_reservoir,
    "reboot": _cmd_reboot,
    "link": _cmd_link,
    "link_reset": _cmd_link_reset,
    "defect": _cmd_defect,
    "apnoea": _cmd_apnoea,
    "mask": _cmd_mask,
    "sensor_stuck": _cmd_sensor_stuck,
    "pattern": _cmd_pattern,
}
CONTROL_COMMANDS: Final = tuple(_COMMANDS)


def execute_control(model: DeviceModel, request: object, *, now_ms: int) -> dict[str, Any]:
    """Apply one control request to `model` at `now_ms`; never raises, returns the reply."""
    if not isinstance(request, dict):
        return {"ok": False, "error": 'a request must be a JSON object like {"cmd": "state"}'}
    command = _COMMANDS.get(request.get("cmd"))  # type: ignore[arg-type]
    if command is None:
        known = ", ".join(CONTROL_COMMANDS)
        return {"ok": False, "error": f"unknown cmd {request.get('cmd')!r}; use one of {known}"}
    try:
        command(model, request, now_ms)
    except (ValueError, TypeError) as exc:
        return {"ok": False, "error": str(exc)}
    return {"ok": True, "state": model.truth().as_dict()}


class ControlServer:
    """The listening control socket and its open connections."""

    def __init__(self, *, path: str, handle: Callable[[object], dict[str, Any]]) -> None:
        self.path = path
        self._handle = handle
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        """Listen (a leftover socket file from a killed simulator is replaced)."""
        _remove_stale_socket(self.path)
        self._server = await asyncio.start_unix_server(
            self._on_client, path=self.path, limit=_MAX_LINE
        )

    async def aclose(self) -> None:
        """Stop listening, close every connection and remove the socket file."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        if self._server is not None:
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while line := await reader.readline():
                try:
                    request: object = json.loads(line)
                except json.JSONDecodeError as exc:
                    reply: dict[str, Any] = {"ok": False, "error": f"not JSON: {exc}"}
                else:
                    reply = self._handle(request)
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, ValueError):
            pass  # client went away or sent an over-long line: drop it, keep serving
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


def _remove_stale_socket(path: str) -> None:
    if not os.path.exists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody listens: a leftover from a killed simulator
    else:
        raise FileExistsError(f"control socket {path} is in use by a running simulator")
    finally:
        probe.close()


class SimulatorControlClient:
    """Async client for the control socket: `async with SimulatorControlClient(path=...)`."""

    def __init__(self, *, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()

    async def connect(self) -> None:
        """Open the connection (done by `async with` and on first use)."""
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_unix_connection(
                self.path, limit=16 * _MAX_LINE
            )

    async def aclose(self) -> None:
        """Close the connection."""
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def request(self, command: dict[str, Any]) -> dict[str, Any]:
        """Send one command; return the model truth after it. Raises SimulatorControlError."""
        async with self._lock:
            await self.connect()
            assert self._reader is not None
            assert self._writer is not None
            self._writer.write(json.dumps(command).encode() + b"\n")
            await self._writer.drain()
            line = await self._reader.readline()
        if not line:
            raise SimulatorControlError(f"the simulator closed the control socket {self.path}")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise SimulatorControlError(str(reply.get("error")))
        state: dict[str, Any] = reply["state"]
        return state

    async def state(self) -> dict[str, Any]:
        """The model's truth (delivered, session, faults, reservoir, ...)."""
        return await self.request({"cmd": "state"})

    async def fault(self, name: str, *, active: bool = True) -> dict[str, Any]:
        """Make a fault's cause present (or gone with `active=False`); see FAULT_NAMES."""
        return await self.request({"cmd": "fault", "name": name, "active": active})

    async def clog_drift(self, pct_per_min: float) -> dict[str, Any]:
        """Output falls by `pct_per_min` % of nominal per minute of nebulising."""
        return await self.request({"cmd": "clog", "drift_pct_per_min": pct_per_min})

    async def press_button(self, name: str) -> dict[str, Any]:
        """Press the head's `stop` or `confirm` button."""
        return await self.request({"cmd": "button", "name": name})

    async def refill(self, volume_ul: float | None = None) -> dict[str, Any]:
        """Pour liquid in (default: the power-up fill volume)."""
        command: dict[str, Any] = {"cmd": "refill"}
        if volume_ul is not None:
            command["volume_ul"] = volume_ul
        return await self.request(command)

    async def set_reservoir(self, volume_ul: float) -> dict[str, Any]:
        """Set the liquid in the cup exactly."""
        return await self.request({"cmd": "set_reservoir", "volume_ul": volume_ul})

    async def reboot(self, *, boot_ms: int = 0) -> dict[str, Any]:
        """Power-cycle the device (silent for `boot_ms`)."""
        return await self.request({"cmd": "reboot", "boot_ms": boot_ms})

    async def set_link_faults(
        self,
        *,
        rx: dict[str, float] | None = None,
        tx: dict[str, float] | None = None,
        drop_answer_rate: float | None = None,
        silent: bool | None = None,
    ) -> dict[str, Any]:
        """Change link faults; arguments left at None keep their value."""
        changes = {"rx": rx, "tx": tx, "drop_answer_rate": drop_answer_rate, "silent": silent}
        command = {"cmd": "link", **{k: v for k, v in changes.items() if v is not None}}
        return await self.request(command)

    async def reset_link(self) -> dict[str, Any]:
        """Every link fault off."""
        return await self.request({"cmd": "link_reset"})

    async def set_defect(self, name: str, *, enabled: bool = True) -> dict[str, Any]:
        """Turn a firmware defect mode on or off; see DEFECTS."""
        return await self.request({"cmd": "defect", "name": name, "enabled": enabled})

    async def apnoea(self, seconds: float) -> dict[str, Any]:
        """The patient stops breathing for `seconds` (ICD 1.1 heads)."""
        return await self.request({"cmd": "apnoea", "seconds": seconds})

    async def set_mask_off(self, off: bool = True) -> dict[str, Any]:
        """Mask or mouthpiece off (or back on with `off=False`)."""
        return await self.request({"cmd": "mask", "off": off})

    async def set_sensor_stuck(self, active: bool = True) -> dict[str, Any]:
        """The flow sensor reads a constant (or works again with `active=False`)."""
        return await self.request({"cmd": "sensor_stuck", "active": active})

    async def set_pattern(self, name: str) -> dict[str, Any]:
        """The patient breathes with pattern `name` from the next breath; see PATTERN_NAMES."""
        return await self.request({"cmd": "pattern", "name": name})


def control_request_sync(
    path: str | os.PathLike[str], command: dict[str, Any], *, timeout_s: float = 5.0
) -> dict[str, Any]:
    """Blocking one-shot request (for scripts and synchronous tests); returns the reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(os.fspath(path))
        sock.sendall(json.dumps(command).encode() + b"\n")
        with sock.makefile("rb") as stream:
            line = stream.readline(16 * _MAX_LINE)
    if not line:
        raise SimulatorControlError(f"the simulator closed the control socket {path}")
    reply: dict[str, Any] = json.loads(line)
    return reply
