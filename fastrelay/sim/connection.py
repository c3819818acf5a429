"""One client connection of the simulator: auth, subscribe, sending with a backlog limit, stall, close.

It sees its server and its market's feed through two small protocols
(``Server``, ``MarketFeed``): server.py and feed.py import this module, never
the reverse.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Final, Protocol

from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport

from fastrelay import markets, protocol
from fastrelay.sim.config import SimulatorConfig

log = logging.getLogger("fastrelay.sim")

# Massive's wording (docs/protocol.md, "Statuses"): a market the plan leaves out, a
# channel it leaves out (no channel named), a subscribe past the options contract cap.
PLAN_REFUSAL: Final = (
    "Your plan doesn't include websocket access. Visit https://massive.com/pricing to upgrade."
)
NOT_AUTHORIZED: Final = "not authorized"
CAP_REFUSAL: Final = "Subscription limit reached for feed. Please remove some subscriptions and try again."

MAX_CONNECTIONS_MESSAGE: Final = (
    "Maximum number of websocket connections exceeded. You have reached the connection limit "
    "for your account. Please contact support at https://massive.com/contact to increase your limit."
)
# After our CLOSE, how long a client gets to answer before the socket is cut.
CLOSE_TIMEOUT: Final = 1.0
_OPEN_FRAME: Final = protocol.status_frame(protocol.CONNECTED, "Connected Successfully")


class Server(Protocol):
    """What a connection needs of the simulator it belongs to."""

    @property
    def config(self) -> SimulatorConfig: ...

    def connections_changed(self) -> None:
        """A connection came, went, authenticated or changed its subscriptions."""


class MarketFeed(Protocol):
    """What a connection needs of its market path's feed."""

    @property
    def market(self) -> str: ...

    @property
    def max_connections(self) -> bool:
        """The max_connections fault is on: evict after a successful auth."""

    @property
    def auth_fail_old(self) -> bool:
        """Refuse auths in the older servers' form (an ``error`` status)."""

    def attach(self, conn: Connection) -> None: ...

    def detach(self, conn: Connection) -> None: ...

    def connections(self) -> list[Connection]:
        """Every open connection of this market path."""

    def refresh(self) -> None:
        """Recompute who receives what, after a change of state or subscriptions."""

    def count_auth(self, key_ok: bool) -> bool:
        """Count an auth attempt; whether it succeeds (a right key and no auth_fail fault)."""

    def count_subscribe(self, asked: int, refused: int) -> None:
        """Count the channels a subscribe asked for and how many were refused."""


class Connection(WSListener):
    """One client of one market path."""

    def __init__(self, server: Server, feed: MarketFeed) -> None:
        super().__init__()
        self.server = server
        self.feed = feed
        self.transport: WSTransport | None = None
        self.authenticated = False
        self.stalled = False
        self.closing = False
        self.write_paused = False
        self.wild: set[str] = set()
        self.exact: set[str] = set()
        self.events_sent = 0
        self._timer: asyncio.TimerHandle | None = None

    # --- picows callbacks ---

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.feed.attach(self)
        self.server.connections_changed()
        self.send(_OPEN_FRAME)
        timeout = self.server.config.auth_timeout
        if timeout is not None:
            self._arm(self._auth_timed_out, timeout)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        msg_type = frame.msg_type
        if msg_type == WSMsgType.TEXT or msg_type == WSMsgType.BINARY:
            self._on_message(frame.get_payload_as_bytes())
        elif msg_type == WSMsgType.PING:
            # Auto-pong is off so that a stalled connection can ignore pings.
            if not self.stalled:
                transport.send_pong(frame.get_payload_as_bytes())
        elif msg_type == WSMsgType.CLOSE:
            if not self.closing:
                self.closing = True
                self.feed.refresh()
            if not transport.is_close_frame_sent:
                try:
                    code = frame.get_close_code()
                except ValueError:  # an application code (3000-4999) picows has no enum member for
                    code = WSCloseCode.OK
                transport.send_close(code if code != WSCloseCode.NO_INFO else WSCloseCode.OK)
            transport.disconnect()
            # A graceful close waits for the send buffer to drain, forever if
            # the client stopped reading: bound it.
            self._arm(self.abort)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.feed.detach(self)
        self.server.connections_changed()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False

    # --- sending ---

    def send(self, payload: bytes) -> None:
        transport = self.transport
        if transport is None:
            return
        transport.send(WSMsgType.TEXT, payload)
        if self.write_paused:
            self._check_backlog()

    def send_data(self, payload: bytes, events: int) -> None:
        transport = self.transport
        if transport is None:
            return
        transport.send(WSMsgType.TEXT, payload)
        self.events_sent += events
        if self.write_paused:
            self._check_backlog()

    def _status(self, status: str, message: str) -> None:
        self.send(protocol.status_frame(status, message))

    def _check_backlog(self) -> None:
        limit = self.server.config.slow_consumer_bytes
        transport = self.transport
        if not limit or transport is None or self.closing:
            return
        if transport.underlying_transport.get_write_buffer_size() > limit:
            log.warning("simulator %s: slow consumer, closing", self.feed.market)
            self._status(protocol.SLOW_CONSUMER, "slow consumer: the server buffer is full")
            self.close(WSCloseCode.POLICY_VIOLATION, "slow consumer")

    # --- client messages ---

    def _on_message(self, payload: bytes) -> None:
        # Messages read just before a stall still go unanswered: a stalled server says nothing.
        if self.closing or self.stalled:
            return
        try:
            message = protocol.decode_client_message(payload)
        except protocol.ClientMessageError as exc:
            self._status(protocol.ERROR, str(exc))
            return
        match message:
            case protocol.Auth(params=key):
                self._auth(key)
            case protocol.Subscribe(params=params):
                self._subscribe(params, True)
            case protocol.Unsubscribe(params=params):
                self._subscribe(params, False)
            case _:  # fastrelay's own extensions are not Massive's
                self._status(protocol.ERROR, "unknown action: history")

    def _auth(self, key: str) -> None:
        feed = self.feed
        if not feed.count_auth(key == self.server.config.api_key):
            if feed.auth_fail_old:
                self._status(protocol.ERROR, "authentication failed")
            else:
                self._status(protocol.AUTH_FAILED, "authentication failed")
            self.close(WSCloseCode.POLICY_VIOLATION, "authentication failed")
            return
        plan = self.server.config.plan
        if plan is not None and feed.market not in plan:
            # Massive's wording for a key whose plan leaves the market out.
            self._status(protocol.AUTH_FAILED, PLAN_REFUSAL)
            self.close(WSCloseCode.POLICY_VIOLATION, "authentication failed")
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.authenticated = True
        self._status(protocol.AUTH_SUCCESS, "authenticated")
        if feed.max_connections:
            # Massive completes the auth, then evicts: clients must handle both in a row.
            self.evict()
            return
        if self.server.config.one_connection_per_key:
            for older in [
                c for c in feed.connections() if c is not self and c.authenticated and not c.closing
            ]:
                older.evict()
        feed.refresh()
        self.server.connections_changed()

    def _subscribe(self, params: str, subscribe: bool) -> None:
        if not self.authenticated:
            self._status(protocol.AUTH_REQUIRED, "authentication required")
            return
        names = protocol.split_params(params)
        if not names:
            self._status(protocol.ERROR, "no channels given")
            return
        market = self.feed.market
        capped = markets.capped_evs(market, self.server.config.feed)
        allowed = (
            None if self.server.config.plan is None else self.server.config.plan.get(market, frozenset())
        )
        if subscribe:
            self.feed.count_subscribe(len(names), 0)
        if subscribe and capped and self._past_cap(names, capped):
            # Massive refuses the whole message that would take a connection past the cap.
            self.feed.count_subscribe(0, len(names))
            self._status(protocol.ERROR, CAP_REFUSAL)
            return
        for name in names:
            try:
                channel = protocol.parse_channel(name, market)
            except protocol.ChannelError as exc:
                self._status(protocol.ERROR, str(exc))
                continue
            if subscribe:
                if allowed is not None and channel.ev not in allowed:
                    # Massive names no channel here, and does not acknowledge it.
                    self.feed.count_subscribe(0, 1)
                    self._status(protocol.ERROR, NOT_AUTHORIZED)
                    continue
                if channel.is_wildcard and channel.ev in capped:
                    # The parser refuses the real-time feed's capped wildcards; this, another feed's.
                    self.feed.count_subscribe(0, 1)
                    self._status(protocol.ERROR, f"{name}: wildcard not allowed for this feed")
                    continue
                if channel.is_wildcard:
                    self.wild.add(channel.ev)
                else:
                    self.exact.add(channel.name)
                # Massive acknowledges the channel as the client wrote it.
                self._status(protocol.SUCCESS, protocol.subscribed_message(name))
            else:
                if channel.is_wildcard:
                    self.wild.discard(channel.ev)
                else:
                    self.exact.discard(channel.name)
                self._status(protocol.SUCCESS, protocol.unsubscribed_message(name))
        self.feed.refresh()
        self.server.connections_changed()

    def _past_cap(self, names: list[str], capped: frozenset[str]) -> bool:
        """Taking the new capped contracts among ``names`` would pass the connection's cap."""
        new: set[str] = set()
        for name in names:
            try:
                channel = protocol.parse_channel(name, self.feed.market)
            except protocol.ChannelError:
                continue
            if channel.ev in capped and not channel.is_wildcard and channel.name not in self.exact:
                new.add(channel.name)
        used = sum(1 for name in self.exact if name.partition(".")[0] in capped)
        return bool(new) and used + len(new) > self.server.config.contract_cap

    # --- ending ---

    def _auth_timed_out(self) -> None:
        self._timer = None
        if not self.authenticated and not self.closing:
            self._status(protocol.AUTH_TIMEOUT, "authentication timed out")
            self.close(WSCloseCode.POLICY_VIOLATION, "authentication timed out")

    def evict(self) -> None:
        self._status(protocol.MAX_CONNECTIONS, MAX_CONNECTIONS_MESSAGE)
        self.close(WSCloseCode.POLICY_VIOLATION, "max connections")

    def close(self, code: WSCloseCode, reason: str) -> None:
        """Start the closing handshake; cut the socket if the client does not answer."""
        transport = self.transport
        if self.closing or transport is None:
            return
        self.closing = True
        self.feed.refresh()
        if self.stalled:
            # A stalled socket would never read the client's CLOSE.
            transport.disconnect(graceful=False)
            return
        transport.send_close(code, reason.encode())
        self._arm(self.abort)

    def _arm(self, callback: Callable[[], None], delay: float = CLOSE_TIMEOUT) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(delay, callback)

    def abort(self) -> None:
        self._timer = None
        if self.transport is not None:
            self.transport.disconnect(graceful=False)

    def stall(self) -> None:
        if self.stalled or self.transport is None:
            return
        self.stalled = True
        with contextlib.suppress(RuntimeError):
            self.transport.underlying_transport.pause_reading()

    def unstall(self) -> None:
        if not self.stalled or self.transport is None:
            return
        self.stalled = False
        if not self.transport.is_disconnected:
            with contextlib.suppress(RuntimeError):
                self.transport.underlying_transport.resume_reading()

    def describe(self) -> dict[str, Any]:
        peer = None
        if self.transport is not None:
            peer = self.transport.underlying_transport.get_extra_info("peername")
        return {
            "market": self.feed.market,
            "peer": f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else None,
            "authenticated": self.authenticated,
            "stalled": self.stalled,
            "subscriptions": sorted([*(f"{ev}.*" for ev in self.wild), *self.exact]),
            "events_sent": self.events_sent,
        }
