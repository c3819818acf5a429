"""The simulator port's front door: each connection's request line says who answers it.

REST paths (``/v1/``, ``/v2/``, ``/v3/``...) are answered here, over plain
HTTP/1.1, one request per connection (``Connection: close``), by an async
callback, so an answer can be late (the ``rest_slow`` fault) without holding up
the loop. Everything else (the WebSocket market paths, ``/sim/...``) is handed,
with the bytes read so far, to a picows protocol, which then owns the connection
as if it had accepted it: picows's listener factory is synchronous and cannot
answer late.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Final, Protocol, cast

log = logging.getLogger("fastrelay.sim")

# Like picows: a request head bigger than this is refused, one slower than this dropped.
MAX_HEAD: Final = 16 * 1024
HEAD_TIMEOUT: Final = 5.0
_REST_PATH: Final = re.compile(rb"/v\d+(/|$)")
_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


class Reply(Protocol):
    @property
    def status(self) -> int: ...

    @property
    def body(self) -> bytes: ...

    @property
    def content_type(self) -> str: ...


# (method, target, headers with lower-case names, scheme://host of the request) -> the reply.
Answerer = Callable[[str, str, Mapping[str, str], str], Awaitable[Reply]]


def is_rest(target: bytes) -> bool:
    return _REST_PATH.match(target) is not None


def response(status: int, body: bytes, content_type: str = "application/json") -> bytes:
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


class FrontDoor(asyncio.Protocol):
    """One accepted connection, until its request line shows whether REST answers it or picows takes it."""

    def __init__(
        self,
        answer: Answerer,
        websocket: Callable[[], asyncio.BaseProtocol],
        doors: set[FrontDoor],
        scheme: str,
    ) -> None:
        self._answer = answer
        self._websocket = websocket
        self._doors = doors
        self._scheme = scheme
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._rest = False
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but they are transports.
        self._transport = cast(asyncio.Transport, transport)
        self._doors.add(self)
        self._timer = asyncio.get_running_loop().call_later(HEAD_TIMEOUT, self.close)

    def data_received(self, data: bytes) -> None:
        if self._task is not None or self._transport is None:
            return  # one request per connection: anything after it is ignored
        self._buffer += data
        if not self._rest:
            line_end = self._buffer.find(b"\r\n")
            if line_end < 0:
                if len(self._buffer) > MAX_HEAD:
                    self._refuse(431)
                return
            parts = bytes(self._buffer[:line_end]).split(b" ")
            if len(parts) != 3 or not is_rest(parts[1]):
                self._hand_over()
                return
            self._rest = True
        head_end = self._buffer.find(b"\r\n\r\n")
        if head_end < 0:
            if len(self._buffer) > MAX_HEAD:
                self._refuse(431)
            return
        lines = bytes(self._buffer[:head_end]).decode("latin-1").split("\r\n")
        method, target, _version = lines[0].split(" ")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        self._cancel_timer()
        origin = f"{self._scheme}://{headers.get('host') or 'localhost'}"
        self._task = asyncio.get_running_loop().create_task(
            self._reply(method, target, headers, origin), name="simulator-rest"
        )

    async def _reply(self, method: str, target: str, headers: Mapping[str, str], origin: str) -> None:
        try:
            reply = await self._answer(method, target, headers, origin)
            payload = response(reply.status, b"" if method == "HEAD" else reply.body, reply.content_type)
        except Exception:
            # The path only: the query may hold the API key.
            log.exception("simulator: REST %s %s failed", method, target.partition("?")[0])
            payload = response(500, b'{"status":"ERROR","error":"internal error"}')
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(payload)
            transport.close()

    def _hand_over(self) -> None:
        """picows takes the connection, and the bytes read so far, from here on."""
        transport = self._transport
        assert transport is not None
        self._cancel_timer()
        self._doors.discard(self)
        self._transport = None
        data = bytes(self._buffer)
        self._buffer.clear()
        protocol = self._websocket()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if not isinstance(protocol, asyncio.BufferedProtocol):
            cast(asyncio.Protocol, protocol).data_received(data)
            return
        view = memoryview(data)
        while view and not transport.is_closing():
            buffer = memoryview(protocol.get_buffer(len(view)))
            n = min(len(buffer), len(view))
            buffer[:n] = view[:n]
            protocol.buffer_updated(n)
            view = view[n:]

    def _refuse(self, status: int) -> None:
        transport = self._transport
        if transport is not None:
            transport.write(response(status, b""))
        self.close()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        """Close the connection (a slow request head, the simulator stopping); a pending answer is dropped."""
        self._cancel_timer()
        if self._task is not None:
            self._task.cancel()
        if self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._doors.discard(self)
        self._transport = None
