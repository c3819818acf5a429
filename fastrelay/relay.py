"""The relay: upstream sessions, the hub, and the timing that ties them.

Owns when things happen, not what: routing is the hub's, protocol rules the
sessions'. Three timings matter here:

* flush: at the end of each upstream read, every audience that was not
  written within the last ``--flush-interval`` is written at once (a quiet
  channel pays no window); busier ones are written when their window ends,
  so each client gets at most one write per window;
* interest: subscription changes made while handling client messages are
  sent upstream once per pass of the loop (``call_soon``), one message per
  direction per market;
* linger: a channel nobody wants any more is unsubscribed when its linger
  expires (``call_at``).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any, Protocol

from fastrelay import protocol
from fastrelay.config import RelayConfig
from fastrelay.events import EventHead
from fastrelay.histogram import Histogram
from fastrelay.hub import Hub, Member
from fastrelay.interest import MarketInterest
from fastrelay.ratelimit import LogThrottle
from fastrelay.upstream import DisconnectReason, UpstreamSession, UpstreamStatistics

log = logging.getLogger("fastrelay.relay")


class Feed(Protocol):
    """Where a market's events come from: Massive (``UpstreamSession``) in one
    process and on a scale-out ingest, the ingest over NATS on an edge
    (``scaleout.edge.EdgeFeed``). It reports to the relay through
    ``upstream_live``, ``upstream_events`` and ``upstream_down``."""

    market: str
    stats: UpstreamStatistics
    feed_latency: Histogram
    last_event_at: float

    @property
    def live(self) -> bool: ...
    def start(self) -> None: ...
    async def stop(self) -> None: ...
    def send_subscriptions(self, subscribe: list[str], unsubscribe: list[str]) -> None: ...


class Tap(Protocol):
    """Sees what the relay receives: a scale-out ingest publishes it to NATS."""

    def events(self, market: str, heads: list[EventHead], raws: list[Any]) -> None: ...
    def feed_changed(self, market: str) -> None: ...


class Relay:
    def __init__(self, config: RelayConfig, make_feed: Callable[[str, Relay], Feed] | None = None) -> None:
        self.config = config
        self.loop = asyncio.get_running_loop()
        interests = {m: MarketInterest(m, config.linger, self.loop.time) for m in config.markets}
        self.hub = Hub(
            interests,
            max_frame_payload=config.max_frame_size,
            max_client_buffer=config.max_client_buffer,
            max_channels_per_client=config.max_channels,
            on_slow_consumer=self._slow_consumer,
            history_size=config.history_size,
        )
        self.upstreams: dict[str, Feed] = {
            m: (make_feed or self._massive_feed)(m, self) for m in config.markets
        }
        for name in config.keep_channels:  # validated in config.validate
            self.hub.hold(protocol.parse_api_channel(name))
        self.tap: Tap | None = None
        # Further conditions of readiness (a scale-out role's NATS link): each
        # returns why the relay is not ready, or None.
        self.readiness_checks: list[Callable[[], str | None]] = []
        self._flush_interval = config.flush_interval / 1000.0
        self._flush_timer: asyncio.TimerHandle | None = None
        self._flush_due = 0.0  # perf_counter() time the flush timer is set for
        self._sync_scheduled = False
        self._linger_timer: asyncio.TimerHandle | None = None
        self._slow_log = LogThrottle(log, interval=10.0)

    @staticmethod
    def _massive_feed(market: str, relay: Relay) -> Feed:
        config = relay.config
        ssl_context = None
        if config.upstream.startswith("wss://"):
            ssl_context = ssl.create_default_context(cafile=config.upstream_ca)
        return UpstreamSession(
            market,
            config.upstream,
            config.api_key,
            relay,
            timers=config.upstream_timers,
            ssl_context=ssl_context,
        )

    # --- lifecycle --------------------------------------------------------------------
    def start(self) -> None:
        for session in self.upstreams.values():
            session.start()

    async def stop(self) -> None:
        for timer in (self._flush_timer, self._linger_timer):
            if timer is not None:
                timer.cancel()
        await asyncio.gather(*(s.stop() for s in self.upstreams.values()))

    @property
    def ready(self) -> bool:
        """Every configured upstream is authenticated (and every further check passes)."""
        return self.not_ready_reason() is None

    def link_down_reason(self) -> str | None:
        """Why this scale-out role's own link (NATS, the ingest) is down, if it is."""
        for check in self.readiness_checks:
            reason = check()
            if reason is not None:
                return reason
        return None

    def not_ready_reason(self) -> str | None:
        # A role's own link first: "NATS not connected" explains the feeds being down.
        reason = self.link_down_reason()
        if reason is not None:
            return reason
        down = [m for m, s in self.upstreams.items() if not s.live]
        if down:
            return f"upstream down: {', '.join(down)}"
        return None

    # --- upstream handler ---------------------------------------------------------------
    def upstream_live(self, session: Feed) -> None:
        market = session.market
        channels = self.hub.interests[market].resubscribe_all()
        if channels:
            log.info("upstream %s: resubscribing %d channels", market, len(channels))
        session.send_subscriptions(channels, [])
        if market in self.hub.outages:
            del self.hub.outages[market]
            self.hub.announce(market, protocol.feed_restored_frame(market))
        if self.tap is not None:
            self.tap.feed_changed(market)

    def upstream_down(self, session: Feed, reason: DisconnectReason | str) -> None:
        market = session.market
        why = reason if isinstance(reason, str) else reason.value
        log.info("upstream %s: down (%s); clients stay connected", market, why)
        # A last value from before the outage would fill a new subscriber with
        # stale data (Massive does not replay): the next live event refills it.
        self.hub.forget_market_last_values(market)
        if market not in self.hub.outages:
            # Clients that subscribe during the outage are told too (ClientSession).
            self.hub.outages[market] = why
            self.hub.announce(market, protocol.feed_interrupted_frame(market, why))
        if self.tap is not None:
            self.tap.feed_changed(market)

    def upstream_events(
        self, market: str, heads: list[EventHead], raws: list[Any], arrival: float, last_in_buffer: bool
    ) -> None:
        hub = self.hub
        hub.route(market, heads, raws, arrival)
        if self.tap is not None:
            self.tap.events(market, heads, raws)
        # More frames of the same read follow: coalesce them too.
        if last_in_buffer and hub.has_pending():
            self._flush()

    def _flush(self) -> None:
        """Write what is due; keep busy audiences' events until their window ends."""
        now = time.perf_counter()
        due = self.hub.flush(now, self._flush_interval)
        if due is None:
            return
        # One timer for the earliest window end; re-armed only when an earlier one appears.
        if self._flush_timer is not None:
            if self._flush_due <= due:
                return
            self._flush_timer.cancel()
        self._flush_due = due
        self._flush_timer = self.loop.call_later(max(due - now, 0.0), self._window_ended)

    def _window_ended(self) -> None:
        self._flush_timer = None
        self._flush()

    # --- upstream interest ----------------------------------------------------------------
    def interest_changed(self) -> None:
        """Client subscriptions changed: sync the upstream at the end of this pass."""
        if not self._sync_scheduled:
            self._sync_scheduled = True
            self.loop.call_soon(self._sync_upstream)

    def _sync_upstream(self) -> None:
        self._sync_scheduled = False
        hub = self.hub
        dirty = hub.dirty_markets or set(hub.interests)
        hub.dirty_markets = set()
        for market in dirty:
            interest = hub.interests[market]
            plan = interest.plan()
            if plan:
                log.debug("upstream %s: +%s -%s", market, plan.subscribe, plan.unsubscribe)
                self.upstreams[market].send_subscriptions(plan.subscribe, plan.unsubscribe)
                if plan.unsubscribe:
                    hub.forget_last_values(market, plan.unsubscribe)
        self._schedule_linger()

    def _schedule_linger(self) -> None:
        expiries = [e for i in self.hub.interests.values() if (e := i.next_expiry()) is not None]
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        if expiries:
            self._linger_timer = self.loop.call_at(min(expiries), self._linger_expired)

    def _linger_expired(self) -> None:
        self._linger_timer = None
        self.hub.dirty_markets.update(self.hub.interests)
        self._sync_upstream()

    # --- clients ------------------------------------------------------------------------------
    def _slow_consumer(self, member: Member) -> None:
        self._slow_log.log(
            logging.WARNING,
            "dropped a slow consumer (%s): more than %d bytes unsent (total dropped: %d)",
            member.owner.describe(),
            self.config.max_client_buffer,
            self.hub.stats.slow_consumers,
        )
        member.owner.drop_slow_consumer()
