"""asyncio Unix-socket server for the control interface."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from controller.logging import get_logger

from ._access import ControlAccess, PeerCredentials, peer_credentials, socket_mode_problem
from ._protocol import MAX_LINE_BYTES, ControlError, ControlRequest, decode_line, encode_line

__all__ = ["ControlServer", "Handler", "Reply"]

_log = get_logger(__name__)


class Reply:
    """What a handler uses to answer: progress lines, further request lines, the final line."""

    def __init__(
        self,
        *,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: PeerCredentials | None = None,
        access: ControlAccess | None = None,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._access = access or ControlAccess()
        self.peer = peer

    async def progress(self, message: dict[str, Any]) -> None:
        """Send a non-final line (e.g. 'awaiting confirm')."""
        self._writer.write(encode_line({**message, "final": False}))
        await self._writer.drain()

    async def next_request(self) -> ControlRequest | None:
        """Read the client's next line on this connection (None when it hung up)."""
        line = await self._reader.readline()
        if not line:
            return None
        request = dataclasses.replace(decode_line(line.strip()), peer=self.peer)
        _log.info("control request", op=request.op, peer=_peer_record(self.peer))
        refusal = self._access.refusal(request.op, self.peer)
        if refusal is not None:
            _log.warning("control request refused", op=request.op, reason=refusal)
            raise ControlError(refusal)
        return request


Handler = Callable[[ControlRequest, Reply], Awaitable[dict[str, Any]]]


class ControlServer:
    """Serves `handlers` (op name → async handler returning the final reply)."""

    def __init__(
        self,
        *,
        path: Path,
        handlers: Mapping[str, Handler],
        mode: int = 0o660,
        access: ControlAccess | None = None,
    ) -> None:
        problem = socket_mode_problem(mode)
        if problem is not None:
            raise ValueError(problem)
        self._path = path
        self._handlers = dict(handlers)
        self._mode = mode
        self._access = access or ControlAccess()

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[Path]:
        """Listen on the socket for the duration of the context."""
        self._path.parent.mkdir(parents=True, exist_ok=True)
        if self._path.is_socket():
            await self._refuse_if_live()
            self._path.unlink()
        sock = _bound_socket(self._path, self._mode)
        try:
            server = await asyncio.start_unix_server(
                self._serve_client, sock=sock, limit=MAX_LINE_BYTES + 2
            )
        except BaseException:
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()
            raise
        try:
            async with server:
                yield self._path
        finally:
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()

    async def _refuse_if_live(self) -> None:
        try:
            _reader, writer = await asyncio.open_unix_connection(str(self._path))
        except OSError:
            return  # stale socket file from a crash: safe to replace
        writer.close()
        raise RuntimeError(
            f"another controller is already serving {self._path}; stop it first or use "
            "a different --data-dir"
        )

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        sock = writer.get_extra_info("socket")
        peer = None if sock is None else peer_credentials(sock)
        reply = Reply(reader=reader, writer=writer, peer=peer, access=self._access)
        try:
            while True:
                try:
                    request = await reply.next_request()
                except ControlError as exc:
                    writer.write(encode_line({"ok": False, "error": str(exc), "final": True}))
                    continue
                except ValueError:  # line longer than the stream limit
                    writer.write(
                        encode_line({"ok": False, "error": "request line too long", "final": True})
                    )
                    break
                if request is None:
                    break
                handler = self._handlers.get(request.op)
                if handler is None:
                    known = ", ".join(sorted(self._handlers))
                    final = {"ok": False, "error": f"unknown op {request.op!r}; known: {known}"}
                else:
                    try:
                        final = await handler(request, reply)
                    except ControlError as exc:
                        final = {"ok": False, "error": str(exc)}
                writer.write(encode_line({**final, "final": True}))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            _log.info("control client disconnected")
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


def _peer_record(peer: PeerCredentials | None) -> dict[str, int | list[int] | str | None] | None:
    return None if peer is None else peer.record()


def _bound_socket(path: Path, mode: int) -> socket.socket:
    """A Unix socket bound at `path` with `mode`, not yet listening.

    Bound under a temporary name, given its mode, then renamed into place: nobody can
    connect before `listen()` (a bound socket that does not listen refuses), and the
    process umask is never changed — it is process-wide, and the ledger, audit and
    telemetry writer threads create files at any moment."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(temporary))
        os.chmod(temporary, mode)
        os.rename(temporary, path)
    except BaseException:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise
    return sock
