"""The client port's front door: REST requests to the relay, everything else to picows.

picows answers plain HTTP itself, synchronously, one request per connection:
right for the page, probes and upgrades, but a REST answer may wait for
Massive. So the listening socket's protocol first reads the request line. A
request for a REST path (``restapi.is_rest``) stays here and is served with
h11 (keep-alive, one request at a time, bounded in size and time); anything
else is handed, bytes included, to a picows ``WSProtocol`` built exactly as
``picows.ws_create_server`` builds it, and from then on picows alone reads the
socket (no cost per frame).

That constructor is picows' internal API (pyproject pins picows below 2.4;
``tests/test_rest_front.py`` fails loudly if it changes).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

import h11
from picows import WSAutoPingStrategy
from picows.picows import WSProtocol  # type: ignore[attr-defined]

from fastrelay import restapi
from fastrelay.aggs import BarsError

log = logging.getLogger("fastrelay.front")

MAX_REQUEST_LINE: Final = 8192  # longer: not ours; picows answers it (400)
MAX_REQUEST: Final = 16 * 1024
IDLE_TIMEOUT: Final = 30.0  # a kept-alive REST connection with nothing to ask is closed

Fetch = Callable[[str, Any], Awaitable[list[dict[str, Any]]]]


def picows_protocol_factory(listener_factory: Any, **options: Any) -> Callable[[], Any]:
    """``WSProtocol``s as ``ws_create_server`` makes them (picows 2.3's arguments)."""
    logger = logging.getLogger(f"picows.{options.get('logger_name', 'server')}")

    def make() -> Any:
        return WSProtocol(
            None,  # host and port: a server's own
            None,  # ws path
            False,  # is_client_side
            listener_factory,
            logger,
            True,  # disconnect_on_exception
            options["websocket_handshake_timeout"],
            options["enable_auto_ping"],
            20.0,  # auto ping idle timeout (unused: auto ping off)
            20.0,  # auto ping reply timeout
            WSAutoPingStrategy.PING_WHEN_IDLE,
            options["enable_auto_pong"],
            options["max_frame_size"],
            None,  # extra headers
            options["read_buffer_init_size"],
        )

    return make


class RestService:
    """What the front door needs to answer REST: tokens, markets, bars, a per-address limit."""

    def __init__(
        self,
        accepts: Callable[[str], bool],
        served: tuple[str, ...],
        fetch: Fetch | None,
        allow: Callable[[str], bool],
        responses: dict[int, int] | None = None,
    ) -> None:
        self.accepts = accepts
        self.served = served
        self.fetch = fetch
        self.allow = allow  # an address's REST requests within its budget
        self.requests: dict[int, int] = {} if responses is None else responses  # by HTTP status
        self.tasks: set[asyncio.Task[None]] = set()

    def count(self, status: int) -> None:
        self.requests[status] = self.requests.get(status, 0) + 1


class FrontProtocol(asyncio.Protocol):
    """Reads the request line, then serves REST here or hands the connection to picows."""

    def __init__(self, make_picows: Callable[[], Any], rest: RestService, handshake_timeout: float) -> None:
        self._make_picows = make_picows
        self._rest = rest
        self._timeout = handshake_timeout
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._http: RestConnection | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's TCPTransport
        self._timer = asyncio.get_running_loop().call_later(self._timeout, self._expired)

    def _expired(self) -> None:
        # No request line in time (slowloris): picows' own handshake timeout would say
        # the same; nothing to answer.
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
        _, _, rest = bytes(self._buffer[: max(end, 0)]).partition(b" ")
        target = rest.partition(b" ")[0]
        if self._timer is not None:
            self._timer.cancel()
        if end >= 0 and restapi.is_rest(target):
            assert self._transport is not None
            self._http = RestConnection(self._transport, self._rest)
            self._http.received(bytes(self._buffer))
            self._buffer.clear()
        else:
            self._hand_over()

    def _hand_over(self) -> None:
        """From now on picows reads this socket, starting with what came already."""
        transport = self._transport
        assert transport is not None
        protocol = self._make_picows()
        transport.set_protocol(protocol)
        # uvloop chose its read callbacks when reading started (a plain protocol's, with a
        # copy into data_received): restart reading so picows reads into its own buffer,
        # exactly as on a connection it accepted itself.
        transport.pause_reading()
        transport.resume_reading()
        protocol.connection_made(transport)
        data = memoryview(bytes(self._buffer))
        self._buffer.clear()
        while data:
            buffer = protocol.get_buffer(len(data))
            size = min(len(buffer), len(data))
            buffer[:size] = data[:size]
            protocol.buffer_updated(size)
            data = data[size:]

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._http is not None:
            self._http.lost()


class RestConnection:
    """One keep-alive HTTP/1.1 connection of REST requests (h11), one request at a time."""

    def __init__(self, transport: asyncio.Transport, rest: RestService) -> None:
        self._transport = transport
        self._rest = rest
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST)
        self._request: h11.Request | None = None
        self._busy = False
        self._idle: asyncio.TimerHandle | None = None
        peer = transport.get_extra_info("peername")
        self._address = str(peer[0]) if peer else "?"

    def received(self, data: bytes) -> None:
        self._h11.receive_data(data)
        if not self._busy:
            self._next()

    def _next(self) -> None:
        while not self._busy:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError:
                self._send_answer(restapi.error(400, "malformed HTTP request"), close=True)
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
        self._idle = asyncio.get_running_loop().call_later(IDLE_TIMEOUT, self._transport.close)

    def _serve(self, request: h11.Request) -> None:
        if self._idle is not None:
            self._idle.cancel()
        rest = self._rest
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in request.headers}
        if not rest.allow(self._address):
            self._send_answer(restapi.error(429, "too many requests from your address: slow down"))
            return
        routed = restapi.route(
            request.method.decode("latin-1"),
            request.target.decode("latin-1"),
            headers,
            rest.accepts,
            rest.served,
        )
        if isinstance(routed, restapi.Answer):
            self._send_answer(routed)
            return
        if rest.fetch is None:
            self._send_answer(restapi.error(503, "this relay has no REST source (no Massive key)"))
            return
        task = asyncio.get_running_loop().create_task(self._fetch(routed, rest.fetch))
        rest.tasks.add(task)
        task.add_done_callback(rest.tasks.discard)

    async def _fetch(self, routed: restapi.BarsRequest, fetch: Fetch) -> None:
        try:
            bars = await fetch(routed.market, routed.query)
        except BarsError as exc:
            status = {"rate_limited": 429, "upstream_429": 429, "not_found": 404}.get(exc.reason, 502)
            self._send_answer(restapi.error(status, str(exc).removeprefix("history: ")))
            return
        self._send_answer(restapi.bars_answer(routed, bars))

    def _send_answer(self, answer: restapi.Answer, close: bool = False) -> None:
        self._rest.count(answer.status)
        if self._transport.is_closing():
            return
        headers = [*restapi.JSON_HEADERS, ("Content-Length", str(len(answer.body)))]
        if close:
            headers.append(("Connection", "close"))
        try:
            out = self._h11.send(h11.Response(status_code=answer.status, headers=headers))
            out += self._h11.send(h11.Data(data=answer.body)) or b""
            out += self._h11.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:
            self._transport.close()
            return
        self._transport.write(out or b"")
        if close or self._h11.our_state is h11.MUST_CLOSE:
            self._transport.close()
            return
        self._busy = False
        self._request = None
        try:
            self._h11.start_next_cycle()
        except h11.LocalProtocolError:
            self._transport.close()
            return
        self._next()

    def lost(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
