"""HTTP for the supervisor: its ``--metrics-port`` (the whole tree's /metrics, /readyz and
/healthz) served with front.py's ``RestConnection`` (h11, keep-alive, bounded requests), and
the plain GETs that read each worker's own probes on its private loopback port.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import h11

from fastrelay.front import RestConnection
from fastrelay.restapi import Answer
from fastrelay.workers.plan import LOOPBACK

TEXT = "text/plain; charset=utf-8"
# A worker's probe answers within this (it renders /metrics on a timer and serves the text).
WORKER_TIMEOUT = 2.0
MAX_ANSWER = 64 * 1024 * 1024

Route = Callable[[str], Awaitable[Answer]]  # path -> answer


class _ProbeDoor(asyncio.Protocol):
    def __init__(self, route: Route, open_connections: set[RestConnection]) -> None:
        self._route = route
        self._open = open_connections
        self._connection: RestConnection | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # One answer per connection, as the workers' own probes (picows) answer.
        self._connection = RestConnection(transport, self._answer, "http", self._open, keep_alive=False)

    async def _answer(
        self, method: str, target: str, headers: dict[str, str], origin: str, peer: str
    ) -> Answer:
        if method not in ("GET", "HEAD"):
            return Answer(405, b"GET only\n", TEXT)
        return await self._route(target.partition("?")[0])

    def data_received(self, data: bytes) -> None:
        assert self._connection is not None
        self._connection.received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._connection is not None:
            self._connection.lost()


class ProbeServer:
    """Listens on ``host:port`` and answers each GET with ``route(path)``."""

    def __init__(self, route: Route) -> None:
        self._route = route
        self._open: set[RestConnection] = set()
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _ProbeDoor(self._route, self._open), host, port
        )
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for connection in list(self._open):
            connection.close()
        await self._server.wait_closed()


async def get(port: int, path: str, timeout: float = WORKER_TIMEOUT) -> tuple[int, bytes] | None:
    """Status and body of ``GET path`` on a worker's loopback port; None when it does not answer."""
    with contextlib.suppress(OSError, TimeoutError, h11.ProtocolError):
        return await asyncio.wait_for(_get(port, path), timeout)
    return None


async def _get(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        connection = h11.Connection(h11.CLIENT)
        headers = [("Host", LOOPBACK), ("Connection", "close")]
        request = h11.Request(method="GET", target=path, headers=headers)
        writer.write((connection.send(request) or b"") + (connection.send(h11.EndOfMessage()) or b""))
        status, body = 0, bytearray()
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                connection.receive_data(await reader.read(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_ANSWER:
                    raise OSError("answer too large")
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return status, bytes(body)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
