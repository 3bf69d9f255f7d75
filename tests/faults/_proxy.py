"""A small TCP proxy between the controller and the broker, to cut the network.

`partition()` black-holes every connection (bytes are swallowed, nothing is closed,
as when a switch or Wi-Fi link dies); `heal()` closes the black-holed connections
(as their TCP timeouts eventually would) and forwards new ones again.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

__all__ = ["TcpProxy", "tcp_proxy"]


@dataclass
class TcpProxy:
    """State of the proxy; `port` is where the controller connects."""

    target_host: str
    target_port: int
    port: int = 0
    partitioned: bool = False
    connections: int = 0
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    def partition(self) -> None:
        """Stop forwarding in both directions (connections stay open, silent)."""
        self.partitioned = True

    def heal(self) -> None:
        """Close the connections that lived through the partition; forward again."""
        self.partitioned = False
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, cut: asyncio.Event
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while chunk := await reader.read(65536):
                if self.partitioned:
                    cut.set()
                if cut.is_set():
                    continue  # black hole: swallowed
                writer.write(chunk)
                await writer.drain()
        writer.transport.abort()

    async def handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        """One client connection, piped to the broker until either side ends."""
        self.connections += 1
        try:
            broker_r, broker_w = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            client_w.transport.abort()
            return
        self._writers.update((client_w, broker_w))
        cut = asyncio.Event()
        if self.partitioned:
            cut.set()
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._pipe(client_r, broker_w, cut))
                group.create_task(self._pipe(broker_r, client_w, cut))
        finally:
            self._writers.discard(client_w)
            self._writers.discard(broker_w)


@contextlib.asynccontextmanager
async def tcp_proxy(target_host: str, target_port: int) -> AsyncIterator[TcpProxy]:
    """Run a proxy on a free loopback port for the duration of the block."""
    proxy = TcpProxy(target_host=target_host, target_port=target_port)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0, family=socket.AF_INET)
    proxy.port = server.sockets[0].getsockname()[1]
    async with server:
        try:
            yield proxy
        finally:
            proxy.heal()
            server.close()
