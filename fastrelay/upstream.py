"""One authenticated connection to one Massive cluster (market), kept alive.

The thin picows shell around ``upstream_core.UpstreamCore``, which makes
every decision (handshake, pings, backoff). This module connects, hands every
data frame to the relay at once and carries out what the core answers: the
reader never blocks and never awaits per frame, because Massive disconnects a
consumer whose buffer fills (``slow_consumer``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any

import orjson
from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from fastrelay import protocol
from fastrelay.backoff import Backoff
from fastrelay.config import UpstreamTimers
from fastrelay.events import EventHead, FrameError, decode_frame
from fastrelay.feed import DisconnectReason, FeedHandler, FeedStatistics
from fastrelay.ratelimit import LogThrottle
from fastrelay.rejections import SubscribeTracker
from fastrelay.upstream_core import Action, UpstreamCore

log = logging.getLogger("fastrelay.upstream")

# Massive's answers to one subscribe come within this long of each other: then the
# channels it did not take are settled (rejections.py).
REJECTION_SETTLE = 0.5


class _Listener(WSListener):
    def __init__(self, session: UpstreamSession) -> None:
        self._session = session

    def on_ws_connected(self, transport: WSTransport) -> None:
        self._session._opened(transport)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        session = self._session
        session.core.received()
        msg_type = frame.msg_type
        if msg_type is WSMsgType.TEXT:
            # Copy once at the edge: the frame is a view into the read buffer.
            session._text(frame.get_payload_as_bytes(), frame.last_in_buffer)
        elif msg_type is WSMsgType.CLOSE:
            session.closed_by_peer = (frame.get_close_code(), frame.get_close_reason())

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self._session._disconnected()


class UpstreamSession:
    """Keeps one authenticated connection to ``{upstream}/{market}`` (a ``feed.Feed``)."""

    def __init__(
        self,
        market: str,
        base_url: str,
        api_key: str,
        handler: FeedHandler,
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
        self.core = UpstreamCore(
            self.timers, backoff or Backoff(self.timers.backoff_base, self.timers.backoff_cap), clock
        )
        self.stats = FeedStatistics()
        self.closed_by_peer: tuple[Any, str] | None = None
        self.refused: str | None = None  # Massive's word on the key or plan, while it refuses
        self._transport: WSTransport | None = None
        self._task: asyncio.Task[None] | None = None
        self._ping_timer: asyncio.TimerHandle | None = None
        self._clock = clock
        self._subscribes = SubscribeTracker(REJECTION_SETTLE, clock)
        self._settle_timer: asyncio.TimerHandle | None = None
        self._stopping = False
        # One line per kind of fault per interval: a broken feed must not
        # turn into a log storm.
        self._throttle = LogThrottle(log, interval=10.0)

    # --- public ------------------------------------------------------------------
    @property
    def live(self) -> bool:
        return self.core.live and self._transport is not None

    @property
    def where(self) -> str:
        return self.url

    def start(self) -> None:
        """Connect (again, after ``stop``: a re-elected ingest)."""
        self._stopping = False
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
        if subscribe:
            self._subscribe(subscribe)
        if unsubscribe:
            self._send({"action": "unsubscribe", "params": ",".join(unsubscribe)})

    def _subscribe(self, names: list[str]) -> None:
        self._send({"action": "subscribe", "params": ",".join(names)})
        self._subscribes.sent(names)
        self._settle_later()

    def _settle_later(self) -> None:
        due = self._subscribes.due()
        if due is None or self._settle_timer is not None:
            return
        delay = max(0.0, due - self._clock())
        self._settle_timer = asyncio.get_running_loop().call_later(delay, self._settle)

    def _settle(self) -> None:
        """Channels Massive refused go back to the relay; unmatched errors are narrowed down."""
        if self._settle_timer is not None:
            self._settle_timer.cancel()
            self._settle_timer = None
        verdict = self._subscribes.poll()
        if verdict.refused:
            self._handler.feed_rejected(self, verdict.refused)
        for name in verdict.retry_singly:
            if self.live:
                self._subscribe([name])
        self._settle_later()

    # --- connection loop -----------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            self.core.attempt()
            self.closed_by_peer = None
            deadline = loop.call_later(self.timers.handshake_timeout, self._handshake_expired)
            transport: WSTransport | None = None
            try:
                transport, _ = await asyncio.wait_for(self._open(), self.timers.handshake_timeout)
            except Exception as exc:  # every failure leads to the same backoff
                transport = self._transport
                if transport is None:
                    self._failed(exc)
                else:  # up, but the timeout struck before ws_connect returned
                    transport.disconnect(graceful=False)
            try:
                if transport is not None:
                    # Live within the handshake timeout (the deadline aborts it
                    # otherwise), then up until picows reports the disconnection.
                    await transport.wait_disconnected()
            finally:
                deadline.cancel()
            if self._stopping:
                return
            await asyncio.sleep(self.core.next_delay())

    async def _open(self) -> tuple[WSTransport, WSListener]:
        return await ws_connect(
            lambda: _Listener(self),
            self.url,
            ssl_context=self._ssl_context,
            websocket_handshake_timeout=self.timers.handshake_timeout,
            logger_name="upstream",
            # Wildcard subscriptions send frames over 1 MiB (docs/protocol.md):
            # accept any size Massive sends.
            max_frame_size=2**31 - 1,
            read_buffer_init_size=256 * 1024,
            use_aiofastnet=False,
        )

    def _failed(self, exc: BaseException) -> None:
        self.core.failed()
        if isinstance(exc, asyncio.TimeoutError):
            text = "timed out connecting or authenticating"
        else:
            text = f"{type(exc).__name__}: {exc}"
        self._throttle.log(
            logging.WARNING,
            "upstream %s: connection failed: %s",
            self.market,
            text,
            extra={"market": self.market, "reason": "connect_failed"},
        )
        self.stats.lost(DisconnectReason.DROP.value)

    def _handshake_expired(self) -> None:
        if self._transport is not None and self.core.handshake_expired():
            self._throttle.log(
                logging.WARNING,
                "upstream %s: not authenticated within %g s",
                self.market,
                self.timers.handshake_timeout,
                extra={"market": self.market, "reason": "handshake_timeout"},
            )
            self._transport.disconnect(graceful=False)

    # --- listener callbacks ------------------------------------------------------------
    def _opened(self, transport: WSTransport) -> None:
        self._transport = transport
        self.stats.connects += 1
        self.core.opened()
        self._check_liveness()

    def _text(self, payload: bytes, last_in_buffer: bool) -> None:
        arrival = time.perf_counter()
        try:
            heads, raws = decode_frame(payload)
        except FrameError as exc:
            self.stats.decode_errors += 1
            self._throttle.log(
                logging.WARNING,
                "upstream %s: skipped a bad frame (%d so far): %s",
                self.market,
                self.stats.decode_errors,
                exc,
                extra={"market": self.market, "reason": "bad_frame", "count": self.stats.decode_errors},
            )
            return
        # Statuses are rare: a substring search in C keeps them off the hot path.
        if b'"status"' in payload:
            keep = [i for i, h in enumerate(heads) if h.ev != "status"]
            for head in heads:
                if head.ev == "status":
                    self._status(head)
            if not self.live:
                return
            heads = [heads[i] for i in keep]
            raws = [raws[i] for i in keep]
            if not heads:
                return
        elif not self.live:
            return  # data before auth completes: not ours to route yet
        self.stats.received(heads, len(payload))
        self._handler.feed_events(self.market, heads, raws, arrival, last_in_buffer)

    def _status(self, head: EventHead) -> None:
        status = head.status if isinstance(head.status, str) else ""
        message = head.message if isinstance(head.message, str) else ""
        action = self.core.status(status, message)
        if action is Action.SEND_AUTH:
            self._send({"action": "auth", "params": self._api_key})
        elif action is Action.GO_LIVE:
            log.info("upstream %s: authenticated", self.market, extra={"market": self.market})
            self.refused = None
            self._handler.feed_live(self)
        elif action is Action.AUTH_FAILED:
            self.refused = f"auth_failed: {message or 'no reason given'}"[:200]
            self._handler.feed_refused(self)
            log.error(
                "upstream %s: authentication failed (%s): check the API key and its plan; retrying in %g s",
                self.market,
                message or "no reason given",
                self.timers.auth_retry,
                extra={"market": self.market, "reason": "auth_failed"},
            )
            self._abort()
        elif action is Action.MAX_CONNECTIONS:
            log.error(
                "upstream %s: Massive reports max_connections: another process uses the same API key "
                "on this market (only one connection per market is allowed); cooling down %g s",
                self.market,
                self.timers.max_connections_cooldown,
                extra={"market": self.market, "reason": "max_connections"},
            )
            self._abort()
        elif status == protocol.ERROR:
            self._throttle.log(
                logging.WARNING,
                "upstream %s: error status: %s",
                self.market,
                message,
                extra={"market": self.market, "reason": "error_status"},
            )
            self._subscribes.answered(status, message)
            self._settle()
        elif status == protocol.SUCCESS and self.live:
            self._subscribes.answered(status, message)
            if self._settle_timer is None:
                self._settle()
        elif status in (protocol.FORCE_DISCONNECT, protocol.SLOW_CONSUMER):
            log.warning(
                "upstream %s: %s: %s",
                self.market,
                status,
                message,
                extra={"market": self.market, "reason": status},
            )
        else:
            log.debug("upstream %s: status %s: %s", self.market, status, message)

    def _disconnected(self) -> None:
        if self._ping_timer is not None:
            self._ping_timer.cancel()
            self._ping_timer = None
        if self._settle_timer is not None:
            self._settle_timer.cancel()
            self._settle_timer = None
        self._subscribes.reset()
        reason, was_live = self.core.closed()
        if not self._stopping:
            closed = self.closed_by_peer
            detail = f" (close {closed[0]} {closed[1]!r})" if closed else ""
            if reason in (DisconnectReason.DROP, DisconnectReason.STALL):
                self._throttle.log(
                    logging.WARNING,
                    "upstream %s: lost (%s)%s",
                    self.market,
                    reason.value,
                    detail,
                    extra={
                        "market": self.market,
                        "reason": reason.value,
                        "close_code": closed[0] if closed else None,
                    },
                )
            self.stats.lost(reason.value)
        self._transport = None
        if was_live and not self._stopping:
            self._handler.feed_down(self, reason.value)

    # --- dead-upstream detection ----------------------------------------------------------
    def _check_liveness(self) -> None:
        self._ping_timer = None
        transport = self._transport
        if transport is None:
            return
        action, delay = self.core.check_liveness()
        if action is Action.STALL:
            self._abort()
            return
        if action is Action.PING:
            transport.send_ping()
        self._ping_timer = asyncio.get_running_loop().call_later(max(delay, 0.01), self._check_liveness)

    # --- helpers ---------------------------------------------------------------------------------
    def _send(self, message: dict[str, str]) -> None:
        if self._transport is not None:
            self._transport.send(WSMsgType.TEXT, orjson.dumps(message))

    def _abort(self) -> None:
        if self._transport is not None:
            self._transport.disconnect(graceful=False)
