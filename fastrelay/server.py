"""The downstream picows server: Massive-compatible paths and plain HTTP probes.

A thin shell: each connection gets a ``ClientSession`` (pure protocol rules)
and a ``Member`` whose ``write`` is the socket's own ``write``, so frames
built once by the outbox go to the kernel with no copy and no Python framing.
Everything sent to a client, replies included, goes through the relay's
``Outbox`` (the one write path); only close frames go through picows.

Paths: ``/stocks``, ``/options``, ... behave like the Massive cluster of that
market; ``/api/socket`` serves every market on one socket (README,
"/api/socket"); ``/healthz`` and ``/readyz`` answer plain HTTP GETs, HEADs and OPTIONS.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeAlias
from urllib.parse import parse_qs

from picows import (
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
)

from fastrelay import deflate, markets, protocol
from fastrelay.addresses import AddressBook, AddressState
from fastrelay.budget import BudgetLimits, ClientBudget, Reassembly, close_reply
from fastrelay.closes import CLOSE_LABELS, CloseReason
from fastrelay.front import Doorway, FrontDoor, RestConnection, is_rest, listen, picows_protocol_factory
from fastrelay.member import Member
from fastrelay.origins import OriginPolicy
from fastrelay.ratelimit import LogThrottle, TokenBucket
from fastrelay.restapi import Answer, RestEndpoint
from fastrelay.roles import Role
from fastrelay.session import ClientSession, Deferred, HistoryLimits, Reply, SessionContext, TokenCheck
from fastrelay.static import PACKAGED_WEB_ROOT, StaticFiles

log = logging.getLogger("fastrelay.server")

# What picows' listener factory may return: a listener (upgrade), a plain HTTP
# answer, or None (404).
Routed: TypeAlias = WSListener | WSUpgradeResponseWithListener | None

API_SOCKET_PATH = "/api/socket"
# Loop time per pass for deferred answers (history whose bars came in): the rest waits a pass.
ANSWER_SHARE = 0.002
# The path label of refusals on market paths this relay does not serve.
OTHER_PATH = "/other"
# Loop time one client's messages may take in one pass of the loop before the rest
# of what it sent waits for the next pass: a burst of heavy messages (a subscribe
# of 2,000 channels takes about 15 ms) must not hold everyone else up.
PASS_SHARE = 0.002
# A closed client gets this long to take its last status and the close frame
# before the socket is aborted (a slow consumer may never read again).
CLOSE_GRACE = 1.0
_LINGER_RESET = struct.pack("ii", 1, 0)  # struct linger {l_onoff = 1, l_linger = 0}
TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)  # Linux's value


@dataclass
class ServerStatistics:
    """Plain counters the metrics collector reads at scrape time."""

    connected: dict[str, int]  # by path (ClientSession paths: each market's, /api/socket)
    accepted: dict[str, int]  # by path
    closed_by_path: dict[str, dict[str, int]]  # by path, then reason
    closed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CLOSE_LABELS, 0))  # by reason
    rest_responses: dict[int, int] = field(default_factory=dict)  # REST answers by HTTP status
    deflate_connections: int = 0  # upgrades that negotiated permessage-deflate

    @classmethod
    def for_markets(cls, served: tuple[str, ...]) -> ServerStatistics:
        paths = [f"/{m}" for m in served] + [API_SOCKET_PATH, OTHER_PATH]
        return cls(
            dict.fromkeys(paths, 0),
            dict.fromkeys(paths, 0),
            {p: dict.fromkeys(CLOSE_LABELS, 0) for p in paths},
        )

    def count_close(self, path: str, reason: CloseReason) -> None:
        self.closed_by_path[path][reason.label] += 1
        self.closed[reason.label] += 1


class ClientConnection(WSListener):
    """One downstream WebSocket connection (a ``member.Connection``)."""

    # Thousands of these stay open: slots keep each one small.
    __slots__ = (
        "_address",
        "_address_state",
        "_budget",
        "_close_reason",
        "_conflates",
        "_deflate",
        "_forwarded",
        "_fragments",
        "_market",
        "_path",
        "_queue",
        "_server",
        "_spent",
        "heard",
        "pinged",
        "session",
        "transport",
    )

    def __init__(
        self,
        server: RelayServer,
        market: str | None,
        path: str,
        forwarded: str | None,
        conflates: bool = False,
        deflate: bool = False,
    ) -> None:
        self._server = server
        self._market = market
        self._path = path
        self._conflates = conflates  # behind, it gets the conflated stream (conflation.py)
        self._deflate = deflate  # negotiated permessage-deflate
        self._forwarded = forwarded  # X-Forwarded-For as sent, judged once the peer is known
        self._address: str | None = None
        self._address_state: AddressState | None = None
        self._close_reason: CloseReason | None = None
        self._budget: ClientBudget | None = None
        self._fragments: Reassembly | None = None  # a fragmented message being received
        # Messages waiting their turn: (binary, payload, compressed).
        self._queue: collections.deque[tuple[bool, bytes, bool]] | None = None
        self._spent = 0.0  # loop time its messages took in this pass
        self.transport: WSTransport | None = None
        self.session: ClientSession | None = None
        self.heard = True  # received a frame (any, pongs included) since the last ping sweep
        self.pinged = False  # a ping is out and nothing came back yet

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        server = self._server
        raw = transport.underlying_transport
        # The peer is only known here (picows' listener factory sees the
        # request, not the socket), so the per-address limit closes after the
        # upgrade, with 1013: try again later.
        address = server.addresses.client_address(raw.get_extra_info("peername"), self._forwarded)
        self._forwarded = None
        state = server.addresses.admit(address)
        if state is None:
            self._close_reason = CloseReason.LIMIT
            server.stats.count_close(self._path, CloseReason.LIMIT)
            transport.send_close(
                WSCloseCode(CloseReason.LIMIT.code), b"too many connections from your address"
            )
            transport.disconnect(graceful=True)
            return
        self._address = address
        self._address_state = state
        member = Member(
            raw.write,
            raw.get_write_buffer_size,
            self,
            tags_markets=self._market is None,
            address=state,
            conflates=self._conflates,
            deflate=self._deflate,
        )
        conflator = server.relay.hub.conflator
        if self._conflates and conflator is not None:
            # resume_writing (below) fires when the buffer drains to the low mark: a
            # conflating client's queue goes out then.
            policy = conflator.policy
            raw.set_write_buffer_limits(high=policy.hold_above, low=policy.resume_at)
            # The kernel keeps at most this much unsent beyond what is in flight; the rest
            # waits in the transport's buffer, where the backlog (and conflation) sees it.
            # Without it Linux grows a slow client's send buffer to megabytes (tcp_wmem),
            # seconds of stale data that conflation could never replace.
            sock = raw.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, policy.resume_at)
        server.relay.hub.attach(member)
        self.session = ClientSession(server.session_context, member, self._market)
        server.connections.add(self)
        server.auth_deadline.add(self)
        server.stats.connected[self._path] += 1
        server.stats.accepted[self._path] += 1
        server.relay.outbox.send(member, [self.session.opened()])
        if log.isEnabledFor(logging.DEBUG):
            log.debug("client connected (%s)", self.describe(), extra=self.log_fields())

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        # picows hands over every frame of a read at once: once closing, the
        # rest of a flood costs this one comparison each.
        if self._close_reason is not None:
            return
        session = self.session
        if session is None:
            return
        self.heard = True
        self.pinged = False
        server = self._server
        now = server.clock()
        if not self._budget_at(now).take(frame.payload_size, now):
            self._flooded()
            return
        msg_type = frame.msg_type
        data = msg_type is WSMsgType.TEXT or msg_type is WSMsgType.BINARY
        # RSV1 marks a compressed message, on its first frame only, once negotiated (RFC 7692 6).
        compressed = bool(frame.rsv1)
        if frame.rsv2 or frame.rsv3 or (compressed and not (data and self._deflate)):
            self._protocol_error("reserved bits set without a negotiated extension")
            return
        if data:
            if self._fragments is not None:
                self._protocol_error("a new message inside a fragmented one")
            elif frame.fin:
                self._message(msg_type is WSMsgType.BINARY, frame.get_payload_as_bytes(), compressed)
            else:
                limit = server.relay.config.max_message_size
                self._fragments = Reassembly(
                    msg_type is WSMsgType.BINARY, frame.get_payload_as_bytes(), limit, compressed
                )
        elif msg_type is WSMsgType.CONTINUATION:
            self._continuation(frame)
        elif msg_type is WSMsgType.PING:
            # Answered here, not by picows: the pong is charged to this client's
            # budget and backlog like every other byte it causes.
            server.relay.outbox.pong(session.member, frame.get_payload_as_bytes())
        elif msg_type is WSMsgType.CLOSE:
            self._closed_by_client(transport, frame)
        # A PONG only marks the peer alive (above).

    def pause_writing(self) -> None:
        """Over the transport's high-water mark: the outbox watches backlogs itself."""

    def resume_writing(self) -> None:
        """Drained to the low-water mark: a conflating client's queue can go out."""
        if self.session is not None and self._close_reason is None:
            self._server.relay.hub.drained(self.session.member)

    def _message(self, binary: bool, payload: bytes, compressed: bool) -> None:
        """A whole message: handled now, or queued behind the ones this client already has
        waiting (in order) when it used up its share of this pass of the loop."""
        queue = self._queue
        if queue is not None:
            queue.append((binary, payload, compressed))
            return
        self._handle(binary, payload, compressed)

    def _handle(self, binary: bool, payload: bytes, compressed: bool) -> None:
        session = self.session
        assert session is not None
        started = time.perf_counter()
        if compressed:  # inflated in the client's own time, under the message size cap
            inflated = self._inflate(payload)
            if inflated is None:
                return
            payload = inflated
        if binary:
            self._deliver(session.binary_received())
        else:
            self._deliver(session.receive(payload))
            if session.authenticated:
                self._server.auth_deadline.discard(self)
        spent = time.perf_counter() - started
        budget = self._budget
        if self._close_reason is not None or budget is None:
            return
        if not budget.charge_cpu(spent):
            self._flooded("loop time")
            return
        if self._spent == 0.0:  # the first message of this pass: count from zero next pass
            asyncio.get_running_loop().call_soon(self._next_pass)
        self._spent += spent
        if self._spent > PASS_SHARE and self._queue is None:
            # Used up its share of this pass: the rest of what it sent waits for the next
            # passes (in order), and nothing more is read from it until it is through.
            self._queue = collections.deque()
            self._reading(False)

    def _inflate(self, payload: bytes) -> bytes | None:
        """A compressed message inflated, its extra bytes charged to the client; None: closed."""
        try:
            data = deflate.inflate(payload, self._server.relay.config.max_message_size)
        except deflate.TooBig:
            self.close(CloseReason.MESSAGE_TOO_BIG, "message too big")
            return None
        except deflate.InflateError:
            self._protocol_error("invalid compressed data")
            return None
        budget = self._budget
        if budget is not None and not budget.charge(len(data) - len(payload)):
            self._flooded()
            return None
        return data

    def _next_pass(self) -> None:
        self._spent = 0.0
        queue = self._queue
        if queue is None:
            return
        while queue and self._spent <= PASS_SHARE and self._close_reason is None:
            self._handle(*queue.popleft())
        if not queue and self._close_reason is None:
            self._queue = None
            self._reading(True)

    def _reading(self, on: bool) -> None:
        """Resume or pause reading from the socket (a transport already closing may refuse)."""
        transport = self.transport
        if transport is None:
            return
        raw = transport.underlying_transport
        with contextlib.suppress(Exception):
            raw.resume_reading() if on else raw.pause_reading()

    def _continuation(self, frame: WSFrame) -> None:
        fragments = self._fragments
        if fragments is None:
            self._protocol_error("a continuation frame outside a fragmented message")
        elif not fragments.add(frame.get_payload_as_bytes()):
            self._fragments = None
            self.close(CloseReason.MESSAGE_TOO_BIG, "message too big")
        elif frame.fin:
            self._fragments = None
            self._message(fragments.binary, fragments.message(), fragments.compressed)

    def _closed_by_client(self, transport: WSTransport, frame: WSFrame) -> None:
        code = frame.get_close_code()
        answer = close_reply(code.value)
        if answer is None:
            self._close_reason = CloseReason.NORMAL
            transport.send(WSMsgType.CLOSE, b"")  # an empty close answers an empty close
        elif answer == code.value:
            self._close_reason = CloseReason.NORMAL
            transport.send_close(code)
        else:
            self._close_reason = CloseReason.PROTOCOL_ERROR
            transport.send_close(WSCloseCode.PROTOCOL_ERROR, b"invalid close code")
        transport.disconnect()

    def _protocol_error(self, why: str) -> None:
        self._server.rejections.log(
            logging.INFO,
            "closed a client (%s): protocol error: %s",
            self.describe(),
            why,
            extra={
                **self.log_fields(),
                "reason": "protocol_error",
                "close_code": CloseReason.PROTOCOL_ERROR.code,
            },
        )
        self.close(CloseReason.PROTOCOL_ERROR, "protocol error")

    def _flooded(self, what: str = "frames or bytes") -> None:
        """Over its budget: stop reading at once and close; nothing else is answered."""
        self._reading(False)
        limits = self._server.budget_limits
        self._server.rejections.log(
            logging.WARNING,
            "closed a client (%s): over its budget of %s (%g frames/s, %d bytes/s, %g ms of loop/s)",
            self.describe(),
            what,
            limits.frames_per_second,
            int(limits.bytes_per_second),
            limits.cpu_per_second * 1000,
            extra={**self.log_fields(), "reason": "flood", "close_code": CloseReason.FLOOD.code},
        )
        self.close(CloseReason.FLOOD, "over its budget")

    def _deliver(self, reply: Reply) -> None:
        """Carry out what the session answered: frames, a close, a deferred answer."""
        session = self.session
        assert session is not None
        outbox = self._server.relay.outbox
        member = session.member
        outbox.send(member, reply.frames)
        # Answers cost the wire what messages cost the relay: an unsubscribe of a
        # thousand channels brings a thousand acknowledgements. They come out of
        # the same budget (history replies have limits of their own).
        budget = self._budget
        if budget is not None and reply.frames and not budget.charge(sum(map(len, reply.frames))):
            self._flooded()
            return
        if reply.more is not None:
            for payload in reply.more:
                if member.closed:  # dropped for its backlog: build no more of it
                    break
                outbox.send(member, [payload])
        if reply.close is not None:
            reason, message = reply.close
            if reason is CloseReason.AUTH_FAILED:
                self._server.rejections.log(
                    logging.WARNING,
                    "auth failed for a client (%s)",
                    self.describe(),
                    extra={**self.log_fields(), "reason": "auth_failed", "close_code": reason.code},
                )
            self.close(reason, message)
        later = reply.later
        if later is not None:
            if later.wait is not None:
                self._server.track(asyncio.get_running_loop().create_task(self._after(later)))
            else:
                self._when_filled(later)

    async def _after(self, later: Deferred) -> None:
        """REST bars first (their own task: a client that leaves cancels only its wait), then
        the answer, in turn with every other one that became ready at the same moment."""
        assert later.wait is not None
        await later.wait()
        self._server.in_turn(lambda: self._answer_later(later))

    def _answer_later(self, later: Deferred) -> None:
        if self.session is not None and not self.session.member.closed:
            self._when_filled(later)

    def _when_filled(self, later: Deferred) -> None:
        fills = self._server.session_context.fills
        if fills is None or not later.channels:
            self._deliver(later.build())
            return
        fills.when_filled(later.channels, lambda: self._deliver(later.build()))

    def close(self, reason: CloseReason, message: str, grace: float = CLOSE_GRACE) -> None:
        """Close with ``reason``'s code; abort if the peer has not taken it within ``grace``."""
        transport = self.transport
        if transport is None or transport.is_disconnected or self._close_reason is not None:
            return
        self._close_reason = reason
        if self.session is not None:
            self.session.leave()
        self._server.connections.discard(self)  # closing: no more pings or shutdown closes
        transport.send_close(WSCloseCode(reason.code), message.encode())
        transport.disconnect(graceful=True)
        # A graceful close waits for the write buffer to drain, which a peer
        # that stopped reading never lets happen.
        asyncio.get_running_loop().call_later(grace, self._abort)

    def _abort(self) -> None:
        transport = self.transport
        if transport is not None and not transport.is_disconnected:
            # Reset, not FIN: with a FIN the kernel keeps the unsent backlog (up to
            # --max-client-buffer plus socket buffers) in an orphaned socket for
            # minutes, retrying a peer that stopped reading; SO_LINGER {1, 0} frees it now.
            sock = transport.underlying_transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            transport.disconnect(graceful=False)

    def _budget_at(self, now: float) -> ClientBudget:
        budget = self._budget
        if budget is None:  # made at the first need: idle connections carry none
            budget = self._budget = ClientBudget(self._server.budget_limits, now)
        return budget

    def charge_loop_time(self, seconds: float) -> bool:
        now = self._server.clock()
        return self._budget_at(now).spend_cpu(seconds, now)

    def describe(self) -> str:
        """Who this is, for logs: address, path, channel count (never a token)."""
        channels = len(self.session.member.channels) if self.session is not None else 0
        return f"{self._address or 'unknown'} on {self._path} with {channels} channels"

    def log_fields(self) -> dict[str, object]:
        channels = len(self.session.member.channels) if self.session is not None else 0
        return {"client": self._address or "unknown", "path": self._path, "channels": channels}

    def auth_timed_out(self, timeout: float) -> None:
        if self.session is None or self._close_reason is not None:
            return
        message = f"no auth within {timeout:g} s of connecting"
        self._server.relay.outbox.send(
            self.session.member, [protocol.status_frame(protocol.AUTH_TIMEOUT, message)]
        )
        self.close(CloseReason.AUTH_TIMEOUT, "authentication timeout")

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if self.session is None:
            return  # never upgraded, or refused by a limit
        self.session.leave()
        server = self._server
        if self._address_state is not None:
            server.addresses.release(self._address_state)
        server.connections.discard(self)
        server.auth_deadline.discard(self)
        server.stats.connected[self._path] -= 1
        reason = self._close_reason
        if reason is None:
            # picows closed it itself (a frame over the size limit, a protocol
            # error): the client broke a rule. Otherwise the peer vanished.
            reason = CloseReason.POLICY if transport.close_handshake is not None else CloseReason.ERROR
        server.stats.count_close(self._path, reason)
        if log.isEnabledFor(logging.DEBUG):
            fields = {**self.log_fields(), "reason": reason.label, "close_code": reason.code}
            log.debug("client disconnected (%s): %s", self.describe(), reason.label, extra=fields)


class UnservedMarket(WSListener):
    """A client on a market path this relay does not serve: told so in Massive's terms.

    Upgraded, then ``connected``, then an ``error`` status naming the market and
    the served ones, then a close with 1008, so an official client surfaces
    the mistake instead of retrying a failed upgrade silently for ever.
    """

    def __init__(self, server: RelayServer, market: str, forwarded: str | None) -> None:
        self._server = server
        self._market = market
        self._forwarded = forwarded

    def on_ws_connected(self, transport: WSTransport) -> None:
        server = self._server
        served = ", ".join(server.relay.config.markets)
        peer = transport.underlying_transport.get_extra_info("peername")
        address = server.addresses.client_address(peer, self._forwarded)
        server.rejections.log(
            logging.INFO,
            "refused a client (%s) on /%s: market not served",
            address,
            self._market,
            extra={
                "client": address,
                "market": self._market,
                "reason": "unserved",
                "close_code": CloseReason.UNSERVED.code,
            },
        )
        server.stats.count_close(OTHER_PATH, CloseReason.UNSERVED)
        message = f"market {self._market} is not served by this relay (it serves {served})"
        transport.send(WSMsgType.TEXT, protocol.status_frame(protocol.CONNECTED, "Connected Successfully"))
        transport.send(WSMsgType.TEXT, protocol.status_frame(protocol.ERROR, message))
        transport.send_close(WSCloseCode(CloseReason.UNSERVED.code), b"market not served")
        transport.disconnect(graceful=True)


def conflation_wanted(query: str, default: bool) -> bool | None:
    """A client's ``?conflate=0`` or ``1`` (else the path's default), None if it is neither."""
    if "conflate" not in query:
        return default
    values = parse_qs(query, keep_blank_values=True).get("conflate")
    if values is None:
        return default
    if len(values) == 1 and values[0] in ("0", "1"):
        return values[0] == "1"
    return None


def _normalise_upgrade_headers(request: WSUpgradeRequest) -> None:
    """Accept ``Connection: keep-alive, Upgrade`` (Firefox).

    RFC 6455 4.2.1 asks for a Connection header that *includes* the
    ``Upgrade`` token; picows 2.3 accepts only the exact value ``upgrade``,
    and its listener factory sees the headers before it validates them.
    """
    connection = request.headers.get("connection")
    if connection is None:
        return
    tokens = [t.strip().lower() for t in connection.split(",")]
    if "upgrade" in tokens:
        request.headers["Connection"] = "upgrade"


# Headers nginx also adds to the page (nginx/fastrelay.conf), for when browsers
# reach the relay directly (`fastrelay run`). The Content-Security-Policy stays
# nginx's: production pages go through it, and the tests use the relay's page to
# drive the client against stand-in servers on other ports.
STATIC_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


PLAIN_TEXT = "text/plain; charset=utf-8"
PAGE_METHODS = "GET, HEAD, OPTIONS"
UPGRADE_HEADERS = (("Upgrade", "websocket"),)


def _method_answer(
    method: str, page: tuple[int, bytes, str] | None, extra: tuple[tuple[str, str], ...] = ()
) -> Answer:
    """What a plain page (``page``: its GET answer, None: no such page) answers to ``method``
    (RFC 9110 9.3: HEAD is GET without the body, OPTIONS names the methods)."""
    if page is None:
        return Answer(404, b"not found\n", PLAIN_TEXT)
    if method == "OPTIONS":
        return Answer(204, b"", headers=(("Allow", PAGE_METHODS),))
    if method not in ("GET", "HEAD"):
        return Answer(405, b"method not allowed\n", PLAIN_TEXT, (("Allow", PAGE_METHODS),))
    status, body, content_type = page
    cache = (("Cache-Control", "no-cache"),) if status == 200 else ()
    return Answer(status, body, content_type, cache + extra)


def _plain(
    status: int,
    body: bytes,
    content_type: str = "text/plain; charset=utf-8",
    extra: dict[str, str] | None = None,
) -> WSUpgradeResponseWithListener:
    if status == 200:
        # Probes, metrics and the page change while running: never cache them.
        headers = {"Content-Type": content_type, "Cache-Control": "no-cache", **(extra or {})}
        response = WSUpgradeResponse.create_ok_response(body, headers)
    else:
        headers = {"Content-Type": content_type, **(extra or {})}
        response = WSUpgradeResponse.create_error_response(status, body, headers)
    return WSUpgradeResponseWithListener(response, None)


class AuthDeadline:
    """Closes clients that have not authenticated within ``timeout`` s of connecting.

    Without it a client that never sends ``auth`` holds a connection slot (and
    answers pings) for ever. Connections wait in arrival order, which is
    deadline order, so one timer serves all: it fires for the oldest and stops
    at the first that is not due.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._waiting: dict[ClientConnection, float] = {}  # insertion (= deadline) order
        self._timer: asyncio.TimerHandle | None = None
        self.expired = 0

    def add(self, connection: ClientConnection) -> None:
        if self.timeout <= 0:
            return
        loop = asyncio.get_running_loop()
        self._waiting[connection] = loop.time() + self.timeout
        if self._timer is None:
            self._timer = loop.call_later(self.timeout, self._expire)

    def discard(self, connection: ClientConnection) -> None:
        self._waiting.pop(connection, None)

    def _expire(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._waiting:
            connection, deadline = next(iter(self._waiting.items()))
            if deadline > now:
                self._timer = loop.call_at(deadline, self._expire)
                return
            del self._waiting[connection]
            self.expired += 1
            connection.auth_timed_out(self.timeout)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class PingSweeper:
    """Pings idle clients and reaps those that stay silent, with one timer for all.

    picows' own auto-ping runs a task per connection, about 2 KiB each (10.0
    vs 8.1 KiB RSS per idle connection measured with 2,000 clients); one sweep
    over every connection per interval costs microseconds per thousand.
    Every ``interval`` s, a client not heard from since the last sweep gets a
    ping; one still silent ``timeout`` s later is closed (``CloseReason.IDLE``).
    Pings also keep proxies such as nginx from timing idle sockets out.
    """

    def __init__(self, connections: set[ClientConnection], interval: float, timeout: float) -> None:
        self._connections = connections
        self._interval = interval
        self._timeout = timeout
        self._timer: asyncio.TimerHandle | None = None
        self.pings_sent = 0
        self.reaped = 0

    def start(self) -> None:
        if self._interval > 0:
            self._timer = asyncio.get_running_loop().call_later(self._interval, self._sweep)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        pinged = []
        for connection in self._connections:
            if connection.pinged:
                continue  # its reap is already scheduled
            if not connection.heard and connection.transport is not None:
                connection.pinged = True
                connection.transport.send_ping()
                pinged.append(connection)
            connection.heard = False
        self.pings_sent += len(pinged)
        if pinged:
            loop.call_later(self._timeout, self._reap, pinged)
        self._timer = loop.call_later(self._interval, self._sweep)

    def _reap(self, pinged: list[ClientConnection]) -> None:
        for connection in pinged:
            if connection.pinged and connection in self._connections:
                self.reaped += 1
                connection.close(CloseReason.IDLE, "no reply to ping")


class RelayServer:
    """Serves a role's relay: WebSocket clients, probes, metrics and the dashboard's files."""

    def __init__(
        self,
        role: Role,
        stats: ServerStatistics,
        metrics_page: Callable[[], tuple[bytes, str]] = lambda: (b"", "text/plain"),
    ) -> None:
        self.role = role
        self.relay = relay = role.relay
        config = relay.config
        self.stats = stats
        self._metrics_page = metrics_page  # the latest rendering and its content type
        self.tokens = TokenCheck(config.client_tokens)
        self.session_context = SessionContext(
            hub=relay.hub,
            cache=relay.cache,
            tokens=self.tokens,
            max_frame_payload=config.max_frame_size,
            outages=relay.outages,
            limiter=self.limiter,
            fills=relay.fills,
            history=HistoryLimits(
                config.history_max_channels, config.history_max_bytes, config.history_per_minute
            ),
            bars=relay.bars,
        )
        self.connections: set[ClientConnection] = set()
        self._tasks: set[asyncio.Task[None]] = set()  # deferred answers waiting for REST bars
        self._answers: deque[Callable[[], None]] = deque()  # deferred answers ready, in turn
        self._answering = False
        # REST aggregates at the client port (restapi.py): tokens as for WebSocket clients,
        # and each address within the history rate.
        per_address: dict[str, TokenBucket] = {}

        def allow(address: str) -> bool:
            bucket = per_address.get(address)
            if bucket is None:
                if len(per_address) > 10_000:
                    per_address.clear()  # bounded: a flood of addresses forgets, not grows
                rate = config.history_per_minute / 60.0
                bucket = per_address[address] = TokenBucket(rate, max(1.0, config.history_per_minute / 3))
            return bucket.take()

        self.rest = RestEndpoint(
            self.tokens.accepts,
            config.markets,
            # A scale-out ingest serves no clients: REST neither.
            relay.bars.fetch if relay.bars is not None and role.serves_clients else None,
            allow,
            self.stats.rest_responses,
        )
        self.open_rest: set[RestConnection] = set()
        self._doorway: Doorway | None = None
        self.budget_limits = BudgetLimits(
            config.max_frames_per_second,
            config.frame_burst,
            config.max_bytes_per_second,
            config.byte_burst,
            config.max_cpu_ms_per_second / 1000.0,
            config.cpu_burst_ms / 1000.0,
        )
        self.clock = time.monotonic
        # One line per kind of rejection per interval: an attacker must not be able to flood the log.
        self.rejections = LogThrottle(log, interval=10.0)
        self._server: asyncio.Server | None = None
        self._metrics_server: asyncio.Server | None = None
        self.pings = PingSweeper(self.connections, config.client_ping_interval, config.client_ping_timeout)
        self.auth_deadline = AuthDeadline(config.client_auth_timeout)
        self.addresses = AddressBook(
            config.max_connections_per_address, config.trusted_proxies, config.max_channels_per_address
        )
        self._origins = OriginPolicy(config.allowed_origins)
        self.draining = False
        web_root = (
            PACKAGED_WEB_ROOT
            if config.web_root is None
            else Path(config.web_root)
            if config.web_root
            else None
        )
        self.static = StaticFiles(web_root)

    async def start(self) -> None:
        config = self.relay.config
        make_picows = picows_protocol_factory(
            self._route,
            websocket_handshake_timeout=config.client_handshake_timeout,
            logger_name="server",
            enable_auto_ping=False,  # PingSweeper does it with one timer
            enable_auto_pong=False,  # answered through the outbox, within the client's budget
            max_frame_size=config.max_message_size,
            # Memory per idle connection (docs/performance.md, "idle"): uvloop's own transport
            # and the smallest read buffer picows allows.
            read_buffer_init_size=1024,
        )
        # The front door (front.py): REST paths are served here, the rest is picows'.
        # Both ports are bound before anything else starts: a port taken is one ListenError.
        doorway = self._doorway = Doorway(config.client_handshake_timeout)
        self._server = await listen(
            lambda: FrontDoor(
                make_picows, self._answer_client, doorway, open_rest=self.open_rest, methods=True
            ),
            config.host,
            config.port,
            # Sized for reconnect storms: every browser of a restarted relay comes
            # back within seconds (the kernel caps it at net.core.somaxconn).
            backlog=config.listen_backlog,
            # The edges of a --workers tree share the port (docs/workers.md).
            reuse_port=config.reuse_port or None,
        )
        if config.metrics_port is not None:
            make_probes = picows_protocol_factory(self._route_probes, logger_name="metrics")
            try:
                self._metrics_server = await listen(
                    lambda: FrontDoor(
                        make_probes, self._answer_probes, doorway, open_rest=self.open_rest, methods=True
                    ),
                    config.metrics_host or config.host,
                    config.metrics_port,
                )
            except BaseException:
                self._server.close()
                self._server = None
                raise
        self.pings.start()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def metrics_port(self) -> int | None:
        if self._metrics_server is None:
            return None
        return int(self._metrics_server.sockets[0].getsockname()[1])

    async def drain(self, spread: float, deadline: float) -> None:
        """Graceful shutdown: unready, stop accepting, close clients (``CloseReason.SHUTDOWN``).

        The closes are spread over ``spread`` seconds so that clients (and
        their backoff) do not all reconnect to the next instance at once.
        Returns when every client is gone or at ``deadline`` (loop time).
        """
        self.draining = True
        if self._server is not None:
            self._server.close()  # stop accepting; open connections stay
        loop = asyncio.get_running_loop()
        connections = list(self.connections)
        batches = max(1, min(len(connections), 20))
        for index in range(batches):
            batch = connections[index::batches]
            loop.call_later(spread * index / batches, self._close_batch, batch)
        while self.connections or any(c.transport and not c.transport.is_disconnected for c in connections):
            if loop.time() >= deadline:
                log.warning("shutdown deadline reached with %d clients still open", len(self.connections))
                return
            await asyncio.sleep(0.05)

    @staticmethod
    def _close_batch(batch: list[ClientConnection]) -> None:
        for connection in batch:
            connection.close(CloseReason.SHUTDOWN, "server shutting down", grace=0.5)

    def in_turn(self, answer: Callable[[], None]) -> None:
        """Run ``answer`` soon, a few milliseconds' worth per pass of the loop: a thousand
        charts whose bars arrive together must not hold the loop (and everyone's live data)
        until the last of them is answered."""
        self._answers.append(answer)
        if not self._answering:
            self._answering = True
            asyncio.get_running_loop().call_soon(self._answer_some)

    def _answer_some(self) -> None:
        answers = self._answers
        deadline = time.perf_counter() + ANSWER_SHARE
        while answers and time.perf_counter() < deadline:
            answers.popleft()()
        if answers:
            asyncio.get_running_loop().call_soon(self._answer_some)  # after the next I/O poll
        else:
            self._answering = False

    def track(self, task: asyncio.Task[None]) -> None:
        """Hold a task until it ends (the loop keeps only weak references), cancelled at stop."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for rest in list(self.open_rest):
            rest.close()
        if self._doorway is not None:
            self._doorway.close()
        self.pings.stop()
        self.auth_deadline.stop()
        if self._metrics_server is not None:
            self._metrics_server.close()
            await self._metrics_server.wait_closed()
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.close(CloseReason.SHUTDOWN, "server shutting down", grace=0.5)
        if self._server is not None:
            await self._server.wait_closed()

    def limiter(self) -> TokenBucket:
        config = self.relay.config
        return TokenBucket(config.max_messages_per_second, config.message_burst)

    def _route(self, request: WSUpgradeRequest) -> Routed:
        path, _, query = request.path.decode("latin-1").partition("?")
        if len(path) > 1:
            path = path.rstrip("/")
        market = path[1:]
        if not self.role.serves_clients and (path == API_SOCKET_PATH or markets.is_market(market)):
            return _plain(404, b"this is a fastrelay ingest: clients connect to an edge\n")
        if path == API_SOCKET_PATH or market in self.relay.config.markets:
            version = request.headers.get("sec-websocket-version")
            if version is not None and version.strip() != "13":
                # RFC 6455 4.2.2: name the version this server speaks (picows would also
                # take 7 and 8, drafts no client has sent for a decade).
                return _plain(426, b"WebSocket version 13 only\n", extra={"Sec-WebSocket-Version": "13"})
            refusal = self._refusal(request)
            if refusal is not None:
                self.stats.count_close(path, CloseReason.POLICY if refusal[0] == 403 else CloseReason.LIMIT)
                return _plain(*refusal)
            conflates = conflation_wanted(query, path in self.relay.config.conflate_paths)
            if conflates is None:
                return _plain(400, b"conflate: expected 0 or 1\n")
            _normalise_upgrade_headers(request)
            forwarded = request.headers.get("x-forwarded-for")
            extensions = self._extensions(request)
            connection = ClientConnection(
                self,
                None if path == API_SOCKET_PATH else market,
                path,
                forwarded,
                conflates,
                deflate=extensions is not None,
            )
            if extensions is None:
                return connection
            self.stats.deflate_connections += 1
            upgrade = WSUpgradeResponse.create_101_response({"Sec-WebSocket-Extensions": extensions})
            return WSUpgradeResponseWithListener(upgrade, connection)
        if markets.is_market(market):
            # Not a 404: Massive's clients hide a failed upgrade and retry it for ever.
            return UnservedMarket(self, market, request.headers.get("x-forwarded-for"))
        return self._route_client_http(request)

    def _extensions(self, request: WSUpgradeRequest) -> str | None:
        """The permessage-deflate answer to the client's offers (deflate.py), or None."""
        if self.relay.outbox.deflater is None:
            return None
        offers = request.headers.getall("sec-websocket-extensions", ())
        return deflate.negotiate(", ".join(offers)) if offers else None

    def _refusal(self, request: WSUpgradeRequest) -> tuple[int, bytes] | None:
        """Why a WebSocket request is refused before the upgrade, if it is."""
        if self.draining:
            return 503, b"shutting down: reconnect to another instance\n"
        # An edge cut off from NATS or the ingest has nothing to serve: nginx sends the
        # client to another edge (proxy_next_upstream http_503).
        reason = self.role.refusal()
        if reason is not None:
            return 503, f"not ready: {reason}: reconnect to another instance\n".encode()
        origin = request.headers.get("origin")
        # Browsers always send Origin; services (Massive's clients) do not and
        # are not refused by the allow-list.
        if not self._origins.allows(origin, request.headers.get("host")):
            return 403, b"origin not allowed\n"
        if len(self.connections) >= self.relay.config.max_connections:
            return 503, b"too many connections\n"
        return None

    def _route_client_http(self, request: WSUpgradeRequest) -> Routed:
        """Plain HTTP GETs on the client port: the page, /healthz, and /metrics and
        /readyz unless --metrics-port serves them (then they are internal only)."""
        path = request.path.decode("latin-1").split("?", 1)[0]
        if path in ("/metrics", "/readyz") and self.relay.config.metrics_port is not None:
            return None
        found = self.static.get(path)
        if found is not None:
            return _plain(200, *found, extra=STATIC_HEADERS)
        return self._route_probes(request)

    def _route_probes(self, request: WSUpgradeRequest) -> Routed:
        """Probes and metrics (also on --metrics-port)."""
        found = self._probe(request.path.decode("latin-1").split("?", 1)[0])
        return None if found is None else _plain(*found)

    def _probe(self, path: str) -> tuple[int, bytes, str] | None:
        """/metrics, /healthz, /readyz: status, body, content type (None: not a probe)."""
        if path == "/metrics":
            return (200, *self._metrics_page())
        if path == "/healthz":
            return 200, b"ok\n", PLAIN_TEXT
        if path == "/readyz":
            if self.draining:
                return 503, b"not ready: shutting down\n", PLAIN_TEXT
            reason = self.role.not_ready_reason()
            notes = "".join(f"{note}\n" for note in self.role.readiness_notes())
            if reason is None:
                return 200, f"ready\n{notes}".encode(), PLAIN_TEXT
            return 503, f"not ready: {reason}\n{notes}".encode(), PLAIN_TEXT
        return None

    # --- methods picows refuses (HEAD, OPTIONS, ...), answered by the front door -----------

    async def _answer_client(
        self, method: str, target: str, headers: dict[str, str], origin: str, peer: str
    ) -> Answer:
        """The client port: REST paths, and the other methods of the plain pages."""
        if is_rest(target.encode("latin-1")):
            return await self.rest.answer(method, target, headers, origin, peer)
        path = target.split("?", 1)[0]
        trimmed = path.rstrip("/") if len(path) > 1 else path
        if trimmed == API_SOCKET_PATH or markets.is_market(trimmed[1:]):
            # A WebSocket path: GET with an upgrade is all it takes (RFC 6455 4.1).
            if method == "OPTIONS":
                return Answer(204, b"", headers=(("Allow", "GET, OPTIONS"),))
            return Answer(
                426, b"a WebSocket path: GET with Upgrade: websocket\n", PLAIN_TEXT, UPGRADE_HEADERS
            )
        if path in ("/metrics", "/readyz") and self.relay.config.metrics_port is not None:
            return _method_answer(method, None)  # internal only, as for GET
        found = self.static.get(path)
        if found is not None:
            return _method_answer(method, (200, *found), tuple(STATIC_HEADERS.items()))
        return _method_answer(method, self._probe(path))

    async def _answer_probes(
        self, method: str, target: str, headers: dict[str, str], origin: str, peer: str
    ) -> Answer:
        """--metrics-port: the probes, whatever the method (REST is not served there)."""
        path = target.split("?", 1)[0]
        return _method_answer(method, None if is_rest(target.encode("latin-1")) else self._probe(path))
