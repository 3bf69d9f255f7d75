"""Client side of the control socket, used by `nebuliser session|alarm ...`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from ._protocol import MAX_LINE_BYTES, encode_line

__all__ = ["ControlClient", "ControlUnavailableError"]


class ControlUnavailableError(ConnectionError):
    """No controller is listening on the socket."""


class ControlClient:
    """One connection to a running controller."""

    def __init__(self, *, path: Path) -> None:
        self._path = path
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> Self:
        try:
            self._reader, self._writer = await asyncio.open_unix_connection(
                str(self._path), limit=MAX_LINE_BYTES * 8
            )
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise ControlUnavailableError(
                f"no controller is running at {self._path} ({exc.strerror}); start "
                "`nebuliser serve` or pass the same --config/--data-dir as the service"
            ) from None
        except PermissionError:
            raise ControlUnavailableError(
                f"permission denied on {self._path}: run as a member of the service's group"
            ) from None
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._writer is not None:
            self._writer.close()

    async def send(self, op: str, **args: Any) -> None:
        """Send one request line."""
        assert self._writer is not None, "use `async with ControlClient(...)`"
        self._writer.write(encode_line({"op": op, **args}))
        await self._writer.drain()

    async def receive(self) -> dict[str, Any]:
        """Read one reply line."""
        assert self._reader is not None, "use `async with ControlClient(...)`"
        line = await self._reader.readline()
        if not line:
            raise ControlUnavailableError("the controller closed the connection")
        message: dict[str, Any] = json.loads(line)
        return message

    async def call(self, op: str, **args: Any) -> dict[str, Any]:
        """Send a request and return its final reply (progress lines are skipped)."""
        await self.send(op, **args)
        while True:
            message = await self.receive()
            if message.get("final", True):
                return message
