"""One authenticated connection to one Massive cluster (market), kept alive.

The handshake is a small pure state machine (``Handshake``); the session
around it is a thin picows shell that reconnects with backoff, pings when the
line is idle, and hands every data frame to the relay at once: the reader
never blocks and never awaits per frame, because Massive disconnects a
consumer whose buffer fills (``slow_consumer``).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from fastrelay import protocol
from fastrelay.backoff import Backoff
from fastrelay.events import EventHead, FrameError, decode_frame, timestamp_ms
from fastrelay.histogram import FEED_LATENCY_BOUNDS, Histogram
from fastrelay.ratelimit import LogThrottle

log = logging.getLogger("fastrelay.upstream")


class Phase(enum.Enum):
    AWAIT_CONNECTED = "await_connected"
    AWAIT_AUTH = "await_auth"
    LIVE = "live"
    FAILED = "failed"


class Outcome(enum.Enum):
    """What a status asks the session to do."""

    NOTHING = "nothing"
    SEND_AUTH = "send_auth"
    LIVE = "live"
    AUTH_FAILED = "auth_failed"
    MAX_CONNECTIONS = "max_connections"


class Handshake:
    """Massive's connect/auth sequence, accepting the older ``success`` forms.

    ``connected`` (or old ``success``) -> send auth; ``auth_success`` (or old
    ``success``) -> live; ``auth_failed`` -> failed. ``max_connections`` can
    come at any time, even after ``auth_success`` (PROTOCOL.md, Endpoints).
    """

    def __init__(self) -> None:
        self.phase = Phase.AWAIT_CONNECTED

    def on_status(self, status: str) -> Outcome:
        if status == protocol.MAX_CONNECTIONS:
            self.phase = Phase.FAILED
            return Outcome.MAX_CONNECTIONS
        if status == protocol.AUTH_FAILED:
            self.phase = Phase.FAILED
            return Outcome.AUTH_FAILED
        if self.phase is Phase.AWAIT_CONNECTED and status in (protocol.CONNECTED, protocol.SUCCESS):
            self.phase = Phase.AWAIT_AUTH
            return Outcome.SEND_AUTH
        if self.phase is Phase.AWAIT_AUTH and status in (protocol.AUTH_SUCCESS, protocol.SUCCESS):
            self.phase = Phase.LIVE
            return Outcome.LIVE
        return Outcome.NOTHING


class DisconnectReason(enum.Enum):
    DROP = "drop"
    STALL = "stall"
    AUTH_FAILED = "auth_failed"
    MAX_CONNECTIONS = "max_connections"


@dataclass
class UpstreamTimers:
    """Every timer of the upstream policy; tests shrink them to run in seconds."""

    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    healthy_after: float = 10.0  # connected this long -> backoff resets
    auth_retry: float = 60.0  # after auth_failed: a wrong key will not fix itself
    max_connections_cooldown: float = 60.0  # another process holds the key's slot
    ping_interval: float = 20.0  # ping after this long without incoming data
    ping_timeout: float = 10.0  # no data nor pong this long after a ping = stalled
    handshake_timeout: float = 10.0  # open to authenticated


class UpstreamHandler(Protocol):
    def upstream_live(self, session: UpstreamSession) -> None: ...
    def upstream_events(
        self, market: str, heads: list[EventHead], raws: list[Any], arrival: float, last_in_buffer: bool
    ) -> None: ...
    def upstream_down(self, session: UpstreamSession, reason: DisconnectReason) -> None: ...


@dataclass
class UpstreamStatistics:
    frames: int = 0
    events: int = 0
    bytes: int = 0
    decode_errors: int = 0
    connects: int = 0
    reconnects: dict[str, int] = field(default_factory=lambda: {r.value: 0 for r in DisconnectReason})


class _Listener(WSListener):
    def __init__(self, session: UpstreamSession) -> None:
        self._session = session

    def on_ws_connected(self, transport: WSTransport) -> None:
        self._session._connected(transport)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        session = self._session
        session.last_rx = time.monotonic()
        msg_type = frame.msg_type
        if msg_type is WSMsgType.TEXT:
            # Copy once at the edge: the frame is a view into the read buffer.
            session._text(frame.get_payload_as_bytes(), frame.last_in_buffer)
        elif msg_type is WSMsgType.CLOSE:
            session._close_frame(frame.get_close_code(), frame.get_close_reason())
        elif msg_type is WSMsgType.PONG:
            session.awaiting_pong = False

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self._session._disconnected()


class UpstreamSession:
    """Keeps one authenticated connection to ``{upstream}/{market}``."""

    def __init__(
        self,
        market: str,
        base_url: str,
        api_key: str,
        handler: UpstreamHandler,
        timers: UpstreamTimers | None = None,
        ssl_context: ssl.SSLContext | None = None,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.market = market
        self.url = f"{base_url.rstrip('/')}/{market}"
        self._api_key = api_key
        self._handler = handler
        self.timers = timers or UpstreamTimers()
        self._ssl_context = ssl_context
        self.backoff = backoff or Backoff(self.timers.backoff_base, self.timers.backoff_cap)
        self._clock = clock
        self.stats = UpstreamStatistics()
        self.feed_latency = Histogram(FEED_LATENCY_BOUNDS)
        self.last_event_at = 0.0  # wall-clock time of the last data frame (0: none yet)
        self._transport: WSTransport | None = None
        self._handshake = Handshake()
        self._reason: DisconnectReason | None = None
        self._closed_by_peer: tuple[Any, str] | None = None
        self._live_since: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._ping_timer: asyncio.TimerHandle | None = None
        self._disconnected_event = asyncio.Event()
        self._stopping = False
        self._live_event = asyncio.Event()
        self.last_rx = 0.0
        self.awaiting_pong = False
        self._ping_sent_at = 0.0
        # One line per kind of fault per interval: a broken feed must not
        # turn into a log storm.
        self._throttle = LogThrottle(log, interval=10.0)

    # --- public ------------------------------------------------------------------
    @property
    def live(self) -> bool:
        return self._handshake.phase is Phase.LIVE and self._transport is not None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"upstream-{self.market}")

    async def stop(self) -> None:
        self._stopping = True
        if self._transport is not None:
            self._transport.send_close(WSCloseCode.OK)
            self._transport.disconnect()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def send_subscriptions(self, subscribe: list[str], unsubscribe: list[str]) -> None:
        """One message per direction; nothing to send while not live (resubscribe covers it)."""
        if not self.live:
            return
        assert self._transport is not None
        if subscribe:
            self._send({"action": "subscribe", "params": ",".join(subscribe)})
        if unsubscribe:
            self._send({"action": "unsubscribe", "params": ",".join(unsubscribe)})

    def drop(self) -> None:
        """Force a reconnect (tests, operators)."""
        if self._transport is not None:
            self._reason = DisconnectReason.DROP
            self._transport.disconnect(graceful=False)

    # --- connection loop -----------------------------------------------------------
    async def _run(self) -> None:
        while not self._stopping:
            self._reset_connection_state()
            try:
                await asyncio.wait_for(self._open(), self.timers.handshake_timeout)
            except Exception as exc:  # every failure leads to the same backoff
                if self._transport is not None:
                    self._transport.disconnect(graceful=False)
                else:
                    self._note_failure(exc)
            if self._transport is not None:
                await self._disconnected_event.wait()
            if self._stopping:
                return
            await asyncio.sleep(self._next_delay())

    def _reset_connection_state(self) -> None:
        self._transport = None
        self._handshake = Handshake()
        self._reason = None
        self._closed_by_peer = None
        self._live_since = None
        self._disconnected_event = asyncio.Event()
        self._live_event = asyncio.Event()

    async def _open(self) -> None:
        await ws_connect(
            lambda: _Listener(self),
            self.url,
            ssl_context=self._ssl_context,
            websocket_handshake_timeout=self.timers.handshake_timeout,
            logger_name="upstream",
            # Wildcard subscriptions send frames over 1 MiB (PROTOCOL.md):
            # accept any size Massive sends.
            max_frame_size=2**31 - 1,
            read_buffer_init_size=256 * 1024,
            use_aiofastnet=False,
        )
        # Live (authenticated) within the handshake timeout, or retry.
        await self._live_event.wait()

    def _note_failure(self, exc: BaseException) -> None:
        self._reason = DisconnectReason.DROP
        if isinstance(exc, asyncio.TimeoutError):
            text = "timed out connecting or authenticating"
        else:
            text = f"{type(exc).__name__}: {exc}"
        self._log_once(logging.WARNING, "upstream %s: connection failed: %s", self.market, text)
        self._count_down(DisconnectReason.DROP)

    def _next_delay(self) -> float:
        reason = self._reason
        if reason is DisconnectReason.AUTH_FAILED:
            return max(self.timers.auth_retry, self.backoff.next_delay())
        if reason is DisconnectReason.MAX_CONNECTIONS:
            return max(self.timers.max_connections_cooldown, self.backoff.next_delay())
        return self.backoff.next_delay()

    # --- listener callbacks ------------------------------------------------------------
    def _connected(self, transport: WSTransport) -> None:
        self._transport = transport
        self.stats.connects += 1
        self.last_rx = time.monotonic()
        self._schedule_ping_check(self.timers.ping_interval)

    def _text(self, payload: bytes, last_in_buffer: bool) -> None:
        stats = self.stats
        stats.frames += 1
        stats.bytes += len(payload)
        arrival = time.perf_counter()
        try:
            heads, raws = decode_frame(payload)
        except FrameError as exc:
            stats.decode_errors += 1
            self._throttle.log(
                logging.WARNING,
                "upstream %s: skipped a bad frame (%d so far): %s",
                self.market,
                stats.decode_errors,
                exc,
            )
            return
        # Statuses are rare: a substring search in C keeps them off the hot path.
        if b'"status"' in payload:
            keep = [i for i, h in enumerate(heads) if h.ev != "status"]
            for head in heads:
                if head.ev == "status":
                    self._status(head)
            if self._handshake.phase is not Phase.LIVE:
                return
            heads = [heads[i] for i in keep]
            raws = [raws[i] for i in keep]
            if not heads:
                return
        elif self._handshake.phase is not Phase.LIVE:
            return  # data before auth completes: not ours to route yet
        stats.events += len(heads)
        now = self.last_event_at = time.time()
        # Sampled: the first event of each frame, so the cost is per frame, not per event.
        sent_ms = timestamp_ms(heads[0])
        if sent_ms is not None:
            self.feed_latency.observe(max(0.0, now - sent_ms / 1000.0))
        self._handler.upstream_events(self.market, heads, raws, arrival, last_in_buffer)

    def _status(self, head: EventHead) -> None:
        status = head.status if isinstance(head.status, str) else ""
        message = head.message if isinstance(head.message, str) else ""
        outcome = self._handshake.on_status(status)
        if outcome is Outcome.SEND_AUTH:
            self._send({"action": "auth", "params": self._api_key})
        elif outcome is Outcome.LIVE:
            self._live_since = self._clock()
            log.info("upstream %s: authenticated", self.market)
            self._live_event.set()
            self._handler.upstream_live(self)
        elif outcome is Outcome.AUTH_FAILED:
            self._reason = DisconnectReason.AUTH_FAILED
            log.error(
                "upstream %s: authentication failed (%s): check the API key and its plan; retrying in %g s",
                self.market,
                message or "no reason given",
                self.timers.auth_retry,
            )
            self._abort()
        elif outcome is Outcome.MAX_CONNECTIONS:
            self._reason = DisconnectReason.MAX_CONNECTIONS
            log.error(
                "upstream %s: Massive reports max_connections: another process uses the same API key "
                "on this market (only one connection per market is allowed); cooling down %g s",
                self.market,
                self.timers.max_connections_cooldown,
            )
            self._abort()
        elif status == protocol.ERROR:
            self._log_once(logging.WARNING, "upstream %s: error status: %s", self.market, message)
        elif status in (protocol.FORCE_DISCONNECT, protocol.SLOW_CONSUMER):
            log.warning("upstream %s: %s: %s", self.market, status, message)
        else:
            log.debug("upstream %s: status %s: %s", self.market, status, message)

    def _close_frame(self, code: Any, reason: str) -> None:
        self._closed_by_peer = (code, reason)

    def _disconnected(self) -> None:
        if self._ping_timer is not None:
            self._ping_timer.cancel()
            self._ping_timer = None
        was_live = self._live_since is not None
        reason = self._reason or DisconnectReason.DROP
        self._reason = reason
        if self._live_since is not None and self._clock() - self._live_since >= self.timers.healthy_after:
            self.backoff.reset()
        if not self._stopping:
            detail = (
                f" (close {self._closed_by_peer[0]} {self._closed_by_peer[1]!r})"
                if self._closed_by_peer
                else ""
            )
            if reason in (DisconnectReason.DROP, DisconnectReason.STALL):
                self._log_once(logging.WARNING, "upstream %s: lost (%s)%s", self.market, reason.value, detail)
            self._count_down(reason)
        self._transport = None
        self._handshake.phase = Phase.FAILED
        self._disconnected_event.set()
        self._live_event.set()  # unblock _open(); the loop checks _transport
        if was_live and not self._stopping:
            self._handler.upstream_down(self, reason)

    def _count_down(self, reason: DisconnectReason) -> None:
        self.stats.reconnects[reason.value] += 1

    # --- dead-upstream detection ----------------------------------------------------------
    # Silence alone is not a fault (markets close, quiet channels are normal):
    # only a ping left unanswered is.
    def _schedule_ping_check(self, delay: float) -> None:
        loop = asyncio.get_running_loop()
        self._ping_timer = loop.call_later(max(delay, 0.01), self._ping_check)

    def _ping_check(self) -> None:
        self._ping_timer = None
        transport = self._transport
        if transport is None:
            return
        now = time.monotonic()
        if self.awaiting_pong and self.last_rx >= self._ping_sent_at:
            self.awaiting_pong = False  # any data proves the line alive, not only a pong
        if self.awaiting_pong:
            if now - self._ping_sent_at >= self.timers.ping_timeout:
                self._reason = DisconnectReason.STALL
                self._abort()
                return
            self._schedule_ping_check(self._ping_sent_at + self.timers.ping_timeout - now)
            return
        idle = now - self.last_rx
        if idle >= self.timers.ping_interval:
            self.awaiting_pong = True
            self._ping_sent_at = now
            transport.send_ping()
            self._schedule_ping_check(self.timers.ping_timeout)
        else:
            self._schedule_ping_check(self.timers.ping_interval - idle)

    # --- helpers ---------------------------------------------------------------------------------
    def _send(self, message: dict[str, str]) -> None:
        if self._transport is not None:
            self._transport.send(WSMsgType.TEXT, orjson.dumps(message))

    def _abort(self) -> None:
        if self._transport is not None:
            self._transport.disconnect(graceful=False)

    def _log_once(self, level: int, msg: str, *args: Any) -> None:
        self._throttle.log(level, msg, *args)
