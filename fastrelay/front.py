"""A port's front door: REST requests are answered here, everything else goes to picows.

picows answers plain HTTP itself, synchronously, one request per connection:
right for pages, probes and upgrades, but a REST answer may have to wait (for
Massive, or for the simulator's ``rest_slow`` fault). So the listening socket's
protocol first reads the request line. A request for a REST path (``/v1/``,
``/v2/``, ``/v3/``, ``/vX/``) stays here and is served with h11 (keep-alive, one
request at a time, bounded in size and time) by an async *answerer*; anything
else is handed, bytes included, to a picows ``WSProtocol`` built exactly as
``picows.ws_create_server`` builds it, and from then on picows alone reads the
socket (no cost per frame).

The relay (``server.py``: Massive's aggregates, restapi.py) and the simulator
(``sim/server.py``: its REST stand-in, sim/rest.py) both listen through it.
``WSProtocol``'s constructor is picows' internal API: pyproject pins picows below
2.4, and ``picows_protocol_factory`` is called once at start-up so a change fails
there, clearly.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any, Final

import h11
from picows import WSAutoPingStrategy
from picows.picows import WSProtocol  # type: ignore[attr-defined]

from fastrelay.restapi import Answer

log = logging.getLogger("fastrelay.front")

MAX_REQUEST_LINE: Final = 8192  # longer: not ours; picows answers it (400)
MAX_REQUEST: Final = 16 * 1024
IDLE_TIMEOUT: Final = 30.0  # a kept-alive REST connection with nothing to ask is closed
REST_PREFIXES: Final = (b"/v1/", b"/v2/", b"/v3/", b"/vX/")
_REASONS: Final = {status.value: status.phrase.encode() for status in HTTPStatus}


# (method, target, headers with lower-case names, scheme://host asked, peer address) -> answer
Answerer = Callable[[str, str, dict[str, str], str, str], Awaitable[Answer]]


def is_rest(target: bytes) -> bool:
    return target.startswith(REST_PREFIXES)


class ListenError(Exception):
    """A port that cannot be listened on: one line naming the address and the cause."""


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _cause(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "address already in use (another process listens there)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "address not available on this machine"
    if exc.errno == errno.EACCES:
        return "permission denied (ports below 1024 need privileges)"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host ({exc.strerror or exc})"
    return (exc.strerror or str(exc)).lower()


async def listen(
    factory: Callable[[], asyncio.BaseProtocol], host: str, port: int, **options: Any
) -> asyncio.Server:
    """``loop.create_server``, its failure one ``ListenError`` instead of a traceback."""
    try:
        return await asyncio.get_running_loop().create_server(factory, host, port, **options)
    except OSError as exc:
        raise ListenError(f"cannot listen on {host_port(host, port)}: {_cause(exc)}") from None


def check_host(flag: str, host: str) -> str | None:
    """Why ``host`` cannot be listened on (not an address, no such name), or None."""
    try:
        socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        return f"{flag}={host!r}: not an address nor a name this machine resolves ({exc})"
    return None


def picows_protocol_factory(listener_factory: Any, **options: Any) -> Callable[[], Any]:
    """``WSProtocol``s as ``ws_create_server`` makes them (picows 2.3's arguments); raises
    TypeError now if this picows builds them differently."""
    logger = logging.getLogger(f"picows.{options.get('logger_name', 'server')}")

    def make() -> Any:
        return WSProtocol(
            None,  # host and port: a server's own
            None,  # ws path
            False,  # is_client_side
            listener_factory,
            logger,
            True,  # disconnect_on_exception
            options.get("websocket_handshake_timeout", 5.0),
            options.get("enable_auto_ping", False),
            20.0,  # auto ping idle timeout (unused: auto ping off)
            20.0,  # auto ping reply timeout
            WSAutoPingStrategy.PING_WHEN_IDLE,
            options.get("enable_auto_pong", True),
            options.get("max_frame_size", 10 * 1024 * 1024),
            None,  # extra headers
            options.get("read_buffer_init_size", 16 * 1024),
        )

    make()  # fail at start-up, not at the first connection
    return make


class Doorway:
    """Connections still to send their request line, and one timer for all of them: a timer
    per connection would keep each door (and its memory) alive for the whole timeout."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._waiting: dict[FrontDoor, float] = {}
        self._timer: asyncio.TimerHandle | None = None

    def enter(self, door: FrontDoor) -> None:
        loop = asyncio.get_running_loop()
        self._waiting[door] = loop.time()
        if self._timer is None:
            self._timer = loop.call_later(self.timeout, self._sweep)

    def leave(self, door: FrontDoor) -> None:
        self._waiting.pop(door, None)

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = None
        late = loop.time() - self.timeout
        for door in [d for d, entered in self._waiting.items() if entered <= late]:
            self._waiting.pop(door, None)
            door.expired()
        if self._waiting:
            oldest = min(self._waiting.values())
            self._timer = loop.call_later(max(0.05, oldest + self.timeout - loop.time()), self._sweep)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class FrontDoor(asyncio.Protocol):
    """Reads the request line, then serves REST here or hands the connection to picows."""

    __slots__ = (
        "_answer",
        "_buffer",
        "_doorway",
        "_http",
        "_make_picows",
        "_methods",
        "_open_rest",
        "_scheme",
        "_transport",
    )

    def __init__(
        self,
        make_picows: Callable[[], Any],
        answer: Answerer,
        doorway: Doorway,
        scheme: str = "http",
        open_rest: set[RestConnection] | None = None,
        methods: bool = False,
    ) -> None:
        self._make_picows = make_picows
        self._answer = answer
        self._doorway = doorway
        self._scheme = scheme
        self._open_rest = open_rest
        # Also answer methods other than GET on any path (HEAD, OPTIONS): picows 2.3
        # refuses them all with 400 (docs/picows-methods.md).
        self._methods = methods
        self._buffer = bytearray()
        self._transport: Any = None  # uvloop's TCPTransport is not an asyncio.Transport subclass
        self._http: RestConnection | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._doorway.enter(self)

    def expired(self) -> None:
        # No request line in time (slowloris): nothing to answer.
        if self._transport is not None and self._http is None:
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._http is not None:
            self._http.received(data)
            return
        self._buffer += data
        end = self._buffer.find(b"\r\n")
        if end < 0 and len(self._buffer) <= MAX_REQUEST_LINE:
            return  # the request line is not complete yet
        method, _, rest = bytes(self._buffer[: max(end, 0)]).partition(b" ")
        target = rest.partition(b" ")[0]
        self._doorway.leave(self)
        rest_path = is_rest(target)
        if end >= 0 and (rest_path or (self._methods and method != b"GET")):
            # A REST connection is kept alive; one asking another method of a picows path is
            # closed after its answer, so that its next request (an upgrade) starts afresh.
            self._http = RestConnection(
                self._transport, self._answer, self._scheme, self._open_rest, keep_alive=rest_path
            )
            self._http.received(bytes(self._buffer))
            self._buffer.clear()
        else:
            self._hand_over()

    def _hand_over(self) -> None:
        """From now on picows reads this socket, starting with what came already."""
        transport = self._transport
        self._transport = None
        protocol = self._make_picows()
        transport.set_protocol(protocol)
        # uvloop chose its read callbacks when reading started (a plain protocol's, with a
        # copy into data_received): restart reading so picows reads into its own buffer,
        # exactly as on a connection it accepted itself.
        transport.pause_reading()
        transport.resume_reading()
        protocol.connection_made(transport)
        data = memoryview(bytes(self._buffer))
        self._buffer = bytearray()
        while data and not transport.is_closing():
            buffer = memoryview(protocol.get_buffer(len(data)))
            size = min(len(buffer), len(data))
            buffer[:size] = data[:size]
            protocol.buffer_updated(size)
            data = data[size:]

    def connection_lost(self, exc: Exception | None) -> None:
        self._doorway.leave(self)
        if self._http is not None:
            self._http.lost()


class RestConnection:
    """One keep-alive HTTP/1.1 connection of REST requests (h11), one request at a time
    (``keep_alive=False``: closed after the first answer, as picows answers probes)."""

    def __init__(
        self,
        transport: Any,
        answer: Answerer,
        scheme: str,
        open_rest: set[RestConnection] | None,
        keep_alive: bool = True,
    ) -> None:
        self._transport = transport
        self._keep_alive = keep_alive
        self._answer = answer
        self._scheme = scheme
        self._open = open_rest
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST)
        self._request: h11.Request | None = None
        self._busy = False
        self._idle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        peer = transport.get_extra_info("peername")
        self._address = str(peer[0]) if peer else "?"
        if open_rest is not None:
            open_rest.add(self)

    def received(self, data: bytes) -> None:
        self._h11.receive_data(data)
        if not self._busy:
            self._next()

    def _next(self) -> None:
        while not self._busy:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError:
                self._send(Answer(400, b'{"status":"ERROR","error":"malformed HTTP request"}'), close=True)
                return
            if event is h11.NEED_DATA:
                self._arm_idle()
                return
            if isinstance(event, h11.Request):
                self._request = event
            elif isinstance(event, h11.EndOfMessage) and self._request is not None:
                self._busy = True
                self._serve(self._request)
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return

    def _arm_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._idle = asyncio.get_running_loop().call_later(IDLE_TIMEOUT, self.close)

    def _serve(self, request: h11.Request) -> None:
        if self._idle is not None:
            self._idle.cancel()
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in request.headers}
        origin = f"{self._scheme}://{headers.get('host') or 'localhost'}"
        method, target = request.method.decode("latin-1"), request.target.decode("latin-1")
        self._task = asyncio.get_running_loop().create_task(self._reply(method, target, headers, origin))

    async def _reply(self, method: str, target: str, headers: dict[str, str], origin: str) -> None:
        try:
            answer = await self._answer(method, target, headers, origin, self._address)
        except Exception:
            # The path only: the query may hold a key.
            log.exception("REST %s %s failed", method, target.partition("?")[0])
            answer = Answer(500, b'{"status":"ERROR","error":"internal error"}')
        self._send(answer, close=not self._keep_alive, head=method == "HEAD")

    def _send(self, answer: Answer, close: bool = False, head: bool = False) -> None:
        if self._transport.is_closing():
            return
        close = close or not self._keep_alive
        headers = [] if answer.status == 204 else [("Content-Type", answer.content_type)]
        if answer.status != 204:  # no body, and RFC 9110 8.6: no Content-Length either
            headers.append(("Content-Length", str(len(answer.body))))
        if not any(name.lower() == "cache-control" for name, _ in answer.headers):
            headers.append(("Cache-Control", "no-store"))
        headers += answer.headers
        if close:
            headers.append(("Connection", "close"))
        try:
            reason = _REASONS.get(answer.status, b"")
            out = (
                self._h11.send(h11.Response(status_code=answer.status, headers=headers, reason=reason)) or b""
            )
            if not head and answer.body:
                out += self._h11.send(h11.Data(data=answer.body)) or b""
            out += self._h11.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:
            self.close()
            return
        self._transport.write(out)
        if close or self._h11.our_state is h11.MUST_CLOSE:
            self.close()
            return
        self._busy = False
        self._request = None
        try:
            self._h11.start_next_cycle()
        except h11.LocalProtocolError:
            self.close()
            return
        self._next()

    def close(self) -> None:
        """Close (idle, a protocol error, the server stopping); a pending answer is dropped."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if not self._transport.is_closing():
            self._transport.close()

    def lost(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self._open is not None:
            self._open.discard(self)
