"""The relay: the core wired together, and the timing that ties it to its feeds.

Owns when things happen, not what: routing is the hub's, memory the
cache's, upstream interest the demand's, protocol rules the sessions', writes
the outbox's. The data path runs one way::

    feed (Massive or NATS) -> feed_events -> cache.record + hub.route
        -> hub.flush -> outbox.fan_out -> client sockets

and the control path the other::

    client message -> session -> hub (membership) -> demand (references)
        -> interest_changed -> _sync_upstream -> feed.send_subscriptions

Three timings matter here:

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
from collections.abc import Callable, Sequence
from typing import Protocol

from fastrelay import markets, protocol
from fastrelay.bars import AccountBars
from fastrelay.cache import Cache
from fastrelay.config import RelayConfig, api_key_of, conflate_above, upstream_of
from fastrelay.conflation import ConflationPolicy
from fastrelay.deflate import SharedDeflater
from fastrelay.events import EventHead, RawEvent
from fastrelay.feed import Feed
from fastrelay.hub import Hub
from fastrelay.interest import Demand
from fastrelay.outbox import Outbox
from fastrelay.protocol import Channel
from fastrelay.ratelimit import LogThrottle
from fastrelay.session import FillSource
from fastrelay.upstream import UpstreamSession

# Seconds between two sweeps of the conflating clients (a quiet feed flushes nothing).
CONFLATION_SWEEP = 1.0

log = logging.getLogger("fastrelay.relay")

# A channel Massive refused is refused at once (and not asked again) for this long:
# plans change rarely, and one client must not make the relay ask again and again.
REFUSAL_MEMORY = 60.0


class Tap(Protocol):
    """Sees what the relay receives: a scale-out ingest publishes it to NATS."""

    def events(self, market: str, heads: list[EventHead], raws: Sequence[RawEvent]) -> None: ...
    def feed_changed(self, market: str) -> None: ...
    def rejected(self, market: str, name: str, message: str) -> None: ...


def massive_feed(market: str, relay: Relay) -> Feed:
    """The feed of one process and of an ingest: Massive's cluster for ``market``, on the
    market's own host and key where it has one (--upstream-for, --api-key-for)."""
    config = relay.config
    base_url = upstream_of(config, market)
    ssl_context = None
    if base_url.startswith("wss://"):
        ssl_context = ssl.create_default_context(cafile=config.upstream_ca)
    return UpstreamSession(
        market,
        base_url,
        api_key_of(config, market),
        relay,
        timers=config.upstream_timers,
        ssl_context=ssl_context,
    )


class Relay:
    def __init__(self, config: RelayConfig, make_feed: Callable[[str, Relay], Feed] = massive_feed) -> None:
        self.config = config
        self.loop = asyncio.get_running_loop()
        self.cache = Cache(config.markets, config.history_size)
        self.demand = Demand(
            config.markets,
            config.linger,
            self.loop.time,
            on_first=self.cache.watch,
            on_last=self.cache.unwatch,
            on_changed=self.interest_changed,
            max_channels=config.max_upstream_channels,
            capped_evs={
                m: markets.capped_evs(m, markets.feed_of(upstream_of(config, m))) for m in config.markets
            },
        )
        deflater = None
        if config.compression == "shared":
            deflater = SharedDeflater(
                config.compression_level, config.compression_threshold, config.compression_cpu
            )
        self.outbox = Outbox(config.max_frame_size, config.max_client_buffer, deflater)
        self.hub = Hub(
            config.markets,
            self.outbox,
            self.demand,
            config.max_channels,
            config.max_contracts_per_client,
            conflation=ConflationPolicy.of(conflate_above(config), config.max_client_buffer),
        )
        # market -> why its feed is down, while it is: new subscribers are told too.
        self.outages: dict[str, str] = {}
        self.feeds: dict[str, Feed] = {m: make_feed(m, self) for m in config.markets}
        self.tap: Tap | None = None
        self.fills: FillSource | None = None  # a scale-out edge's (scaleout/fills.py)
        # Massive's REST aggregates for chart history, with a key: a scale-out edge holds none
        # (none), the edges of a --workers tree do (their share of the account's budget).
        self.bars = AccountBars.from_config(config)
        self._flush_interval = config.flush_interval / 1000.0
        self._flush_timer: asyncio.TimerHandle | None = None
        self._flush_due = 0.0  # perf_counter() time the flush timer is set for
        self._sync_scheduled = False
        self._linger_timer: asyncio.TimerHandle | None = None
        self._start_outcomes: dict[str, str] | None = {}  # None once the summary is logged
        self._summary_timer: asyncio.TimerHandle | None = None
        self._conflation_timer: asyncio.TimerHandle | None = None
        self._rejections_log = LogThrottle(log, interval=10.0)
        for name in config.keep_channels:  # validated in config.validate
            self.hold(protocol.parse_api_channel(name))

    # --- lifecycle --------------------------------------------------------------------
    def start(self) -> None:
        """Connect the feeds (again after ``stop_feeds``: a re-elected ingest)."""
        for feed in self.feeds.values():
            feed.start()
        if self._start_outcomes is not None and self._summary_timer is None:
            # The start-up summary waits for every market's first outcome, or this long.
            self._summary_timer = self.loop.call_later(
                self.config.upstream_timers.handshake_timeout, self._log_start_summary
            )
        if self.hub.conflator is not None and self._conflation_timer is None:
            self._conflation_timer = self.loop.call_later(CONFLATION_SWEEP, self._sweep_conflation)

    async def stop_feeds(self, reason: str) -> None:
        """Close every upstream (a deposed ingest); live markets go down for ``reason``."""
        live = [feed for feed in self.feeds.values() if feed.live]
        await asyncio.gather(*(feed.stop() for feed in self.feeds.values()))
        for feed in live:
            self.feed_down(feed, reason)

    def _sweep_conflation(self) -> None:
        """Once a second: conflating clients of a quiet feed still get their queue and
        caught_up (conflation.py, Conflator.sweep); nothing to do while nobody conflates."""
        self.hub.sweep_conflation()
        self._conflation_timer = self.loop.call_later(CONFLATION_SWEEP, self._sweep_conflation)

    async def stop(self) -> None:
        timers = (self._flush_timer, self._linger_timer, self._summary_timer, self._conflation_timer)
        self._conflation_timer = None
        for timer in timers:
            if timer is not None:
                timer.cancel()
        await asyncio.gather(*(feed.stop() for feed in self.feeds.values()))
        if self.bars is not None:
            await self.bars.close()

    def feeds_down(self) -> list[str]:
        return [m for m, feed in self.feeds.items() if not feed.live]

    def market_readiness(self) -> tuple[str | None, list[str]]:
        """Why the markets hold readiness (None: they do not), and what else to report.

        Every configured market must be live, except one Massive refuses for the
        key or plan (``Feed.refused``): that is reported, not waited for, since it
        does not fix itself; ``--required-markets`` names markets that are waited
        for even then. A relay with no market live at all is never ready.
        """
        required = set(self.config.required_markets)
        down: list[str] = []
        notes: list[str] = []
        any_live = False
        for market, feed in self.feeds.items():
            if feed.live:
                any_live = True
                continue
            refused = feed.refused
            if refused is not None:
                notes.append(f"{market}: refused by Massive ({refused})")
                if market not in required:
                    continue
            down.append(market)
        if down:
            return f"upstream down: {', '.join(down)}", notes
        return (None if any_live else "no market live"), notes

    def hold(self, channel: Channel) -> None:
        """A reference that is not a client's: a kept channel, or a scale-out edge wanting it."""
        self.demand.add(channel)

    def let_go(self, channel: Channel) -> None:
        """Drop a reference taken with ``hold``."""
        self.demand.remove(channel)

    # --- what the feeds report (feed.FeedHandler) ----------------------------------------
    def feed_live(self, feed: Feed) -> None:
        market = feed.market
        self._record_outcome(market, "live")
        channels = self.demand[market].resubscribe_all()
        if channels:
            log.info(
                "upstream %s: resubscribing %d channels",
                market,
                len(channels),
                extra={"market": market, "channels": len(channels)},
            )
        # The status first, then the data: a client never sees events before `restored`.
        if market in self.outages:
            del self.outages[market]
            self.outbox.broadcast(self.hub.members_on(market), protocol.feed_restored_frame(market))
        feed.send_subscriptions(channels, [])
        if self.tap is not None:
            self.tap.feed_changed(market)

    def feed_refused(self, feed: Feed) -> None:
        self._record_outcome(feed.market, f"refused by Massive ({feed.refused})")

    def _record_outcome(self, market: str, outcome: str) -> None:
        """The first outcome of each market, for the start-up summary."""
        if self._start_outcomes is None or market in self._start_outcomes:
            return
        self._start_outcomes[market] = outcome
        if len(self._start_outcomes) == len(self.feeds):
            self._log_start_summary()

    def _log_start_summary(self) -> None:
        """One line at start-up: which markets are live, which failed and why."""
        outcomes, self._start_outcomes = self._start_outcomes, None
        if self._summary_timer is not None:
            self._summary_timer.cancel()
            self._summary_timer = None
        if outcomes is None:
            return
        parts = [
            f"{m} {outcomes.get(m, 'still connecting')} ({feed.where})" for m, feed in self.feeds.items()
        ]
        failed = [m for m in self.feeds if outcomes.get(m) != "live"]
        log.log(
            logging.WARNING if failed else logging.INFO,
            "markets: %s",
            "; ".join(parts),
            extra={
                "markets": {m: outcomes.get(m, "still connecting") for m in self.feeds},
                "upstreams": {m: feed.where for m, feed in self.feeds.items()},
            },
        )

    def feed_rejected(self, feed: Feed, refused: list[tuple[str, str]]) -> None:
        """Massive refused channels the relay had taken: each client holding one is told, in
        Massive's words, within a second of the answer, and the channel is let go (it holds
        neither the upstream nor a cap), and refused at once for a while."""
        market = feed.market
        for name, message in refused:
            try:
                channel = protocol.parse_channel(name, market)
            except protocol.ChannelError:
                continue  # not a name the relay sends
            feed.stats.rejected(message)
            self._rejections_log.log(
                logging.WARNING,
                "upstream %s: Massive refused %s: %s",
                market,
                name[:80],
                message[:200],
                extra={"market": market, "reason": "refused", "channel": name[:80]},
            )
            status = protocol.status_frame(protocol.ERROR, f"{name}: {message}")
            for member in self.hub.members_holding(channel):
                self.outbox.send(member, [status])
                self.hub.unsubscribe(member, [channel])
            self.demand.refuse(channel, message, REFUSAL_MEMORY)
            if self.tap is not None:
                self.tap.rejected(market, name, message)

    def feed_down(self, feed: Feed, reason: str) -> None:
        market = feed.market
        log.info(
            "upstream %s: down (%s); clients stay connected",
            market,
            reason,
            extra={"market": market, "reason": reason},
        )
        # A last value from before the outage would fill a new subscriber with
        # stale data (Massive does not replay): the next live event refills it.
        self.cache[market].forget_market()
        if market not in self.outages:
            # Events still in the coalescing window came before the outage: out first,
            # so nothing of the feed follows `interrupted` until `restored`.
            self.hub.flush()
            # Clients that subscribe during the outage are told too (ClientSession).
            self.outages[market] = reason
            self.outbox.broadcast(
                self.hub.members_on(market), protocol.feed_interrupted_frame(market, reason)
            )
        if self.tap is not None:
            self.tap.feed_changed(market)

    def feed_events(
        self,
        market: str,
        heads: list[EventHead],
        raws: Sequence[RawEvent],
        arrival: float,
        last_in_buffer: bool,
    ) -> None:
        hub = self.hub
        self.cache[market].record(heads, raws)
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
        """References changed: sync the upstreams at the end of this pass."""
        if not self._sync_scheduled:
            self._sync_scheduled = True
            self.loop.call_soon(self._sync_upstream)

    def _sync_upstream(self) -> None:
        self._sync_scheduled = False
        for market, plan in self.demand.plans().items():
            log.debug("upstream %s: +%s -%s", market, plan.subscribe, plan.unsubscribe)
            self.feeds[market].send_subscriptions(plan.subscribe, plan.unsubscribe)
            if plan.unsubscribe:
                gone = [protocol.parse_channel(name, market) for name in plan.unsubscribe]
                self.cache[market].forget(gone, self.demand.is_wanted)
        self._schedule_linger()

    def _schedule_linger(self) -> None:
        expiry = self.demand.next_expiry()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        if expiry is not None:
            self._linger_timer = self.loop.call_at(expiry, self._linger_expired)

    def _linger_expired(self) -> None:
        self._linger_timer = None
        self.demand.lingering_expired()
        self._sync_upstream()
