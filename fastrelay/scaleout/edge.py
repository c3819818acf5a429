"""The edge role: clients in, the ingest's events from NATS instead of Massive.

An edge is the one-process relay with its upstream sessions replaced by
``EdgeFeed``s: everything about clients (hub, audiences, flush windows,
limits, outage statuses) is unchanged. What the edge's clients want
(``MarketInterest``, with its linger) becomes NATS subscriptions on the data
subjects and, in heartbeats, the edge's interest at the ingest.

A market is live on an edge while NATS is connected, the ingest has been
heard within ``--peer-timeout`` and it reports that market's upstream live;
otherwise the edge's clients get the usual ``feed interrupted`` status, with
the reason (``nats``, ``ingest`` or the ingest's own upstream reason).

What a new subscriber should see at once (last values, history) and this edge
lacks comes from the ingest: ``fills.Fills``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from typing import Any

from fastrelay.config import RelayConfig
from fastrelay.events import FrameError, decode_frame, timestamp_ms
from fastrelay.histogram import FEED_LATENCY_BOUNDS, Histogram
from fastrelay.ratelimit import LogThrottle
from fastrelay.relay import Relay
from fastrelay.scaleout import messages
from fastrelay.scaleout.fills import Fills
from fastrelay.scaleout.link import NatsLink
from fastrelay.scaleout.subjects import Subjects, open_envelope
from fastrelay.upstream import UpstreamStatistics

log = logging.getLogger("fastrelay.edge")

# Why a market is down on an edge, beyond the ingest's own upstream reasons.
NATS_DOWN = "nats"
INGEST_SILENT = "ingest"
LAG_BOUNDS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class EdgeFeed:
    """One market as the relay sees it on an edge (``relay.Feed``)."""

    def __init__(self, market: str, edge: Edge) -> None:
        self.market = market
        self._edge = edge
        self.stats = UpstreamStatistics()
        for reason in (NATS_DOWN, INGEST_SILENT):
            self.stats.reconnects[reason] = 0
        self.feed_latency = Histogram(FEED_LATENCY_BOUNDS)
        self.last_event_at = 0.0
        self.is_live = False

    @property
    def live(self) -> bool:
        return self.is_live

    def start(self) -> None:
        """The edge's one NATS link serves every market: nothing per market to start."""

    async def stop(self) -> None:
        """See ``start``."""

    def send_subscriptions(self, subscribe: list[str], unsubscribe: list[str]) -> None:
        # The edge derives NATS subscriptions and its interest from the hub's
        # MarketInterest, already updated by the relay: only the nudge matters.
        self._edge.interest_changed()


class Edge:
    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self.subjects = Subjects(config.nats_prefix)
        self.feeds: dict[str, EdgeFeed] = {}
        self.relay = Relay(config, make_feed=self._make_feed)
        self.relay.readiness_checks.insert(0, self._not_ready)
        self.link = NatsLink(
            config.nats, f"fastrelay-edge-{config.instance_name}", self._link_up, self._link_down
        )
        self.fills = Fills(self.relay.hub, self.link, self.subjects.snapshot)
        self.link.listen(self.subjects.ingest, self._on_ingest)
        self.lag = Histogram(LAG_BOUNDS)
        # What the ingest last said (None: not heard since start or since NATS came back).
        self.ingest: str | None = None
        self.granularity: str | None = None
        self.ingest_markets: dict[str, str] = {}
        self._ingest_heard = 0.0
        self._data_subscriptions: dict[str, Any] = {}
        self._sync_task: asyncio.Task[None] | None = None
        self._sync_wanted = False
        self._seq = 0
        self._incarnation = secrets.token_hex(6)
        self._heartbeat: asyncio.TimerHandle | None = None
        self._throttle = LogThrottle(log, interval=10.0)

    def _make_feed(self, market: str, relay: Relay) -> EdgeFeed:
        feed = self.feeds[market] = EdgeFeed(market, self)
        return feed

    # --- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        self.link.start()
        self._tick()

    async def stop(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        # Goodbye: the ingest lets go of our channels now, not after the timeout.
        await self.link.say_goodbye(self.subjects.interest, self._interest_message(goodbye=True))
        self.fills.stop()
        if self._sync_task is not None:
            self._sync_task.cancel()
        await self.link.stop()

    def _not_ready(self) -> str | None:
        if not self.link.connected:
            return f"NATS {self.link.shown} not connected"
        if self.ingest is None:
            return "no ingest heard on NATS"
        return None

    async def _link_up(self) -> None:
        # nats-py resubscribes the data subjects itself after a reconnection.
        self._publish_interest()

    def _link_down(self) -> None:
        self.ingest = None
        self._refresh_markets()

    # --- the ingest's state ---------------------------------------------------------------
    async def _on_ingest(self, msg: Any) -> None:
        try:
            state = messages.decode_state(msg.data)
        except messages.MessageError as exc:
            self.link.skip_bad("an ingest state", exc)
            return
        now = time.monotonic()
        said_goodbye = all(v == messages.STOPPED for v in self.ingest_markets.values())
        recently = now - self._ingest_heard < 2 * self.config.heartbeat_interval
        if self.ingest is not None and state.ingest != self.ingest and recently and not said_goodbye:
            # Two ingests on one prefix: with one key Massive evicts one of them, and
            # each publishes what it gets: clients would see every event twice.
            self._throttle.log(
                logging.ERROR,
                "two ingests on %s.*: %s and %s",
                self.subjects.prefix,
                self.ingest,
                state.ingest,
            )
        self._ingest_heard = now
        if state.ingest != self.ingest:
            log.info("ingest %s heard (granularity %s)", state.ingest, state.granularity)
            self.ingest = state.ingest
            self._publish_interest()  # a new ingest learns our interest now
        if state.granularity != self.granularity:
            self.granularity = state.granularity
            self.interest_changed()  # data subjects follow the ingest's granularity
        self.ingest_markets = state.markets
        self._refresh_markets()

    def _tick(self) -> None:
        self._heartbeat = asyncio.get_running_loop().call_later(self.config.heartbeat_interval, self._tick)
        if self.ingest is not None and time.monotonic() - self._ingest_heard > self.config.peer_timeout:
            log.warning("ingest %s silent for %.1f s", self.ingest, self.config.peer_timeout)
            self.ingest = None
        self._refresh_markets()
        self._publish_interest()

    def _down_reason(self, market: str) -> str | None:
        if not self.link.connected:
            return NATS_DOWN
        if self.ingest is None:
            return INGEST_SILENT
        state = self.ingest_markets.get(market, INGEST_SILENT)
        return None if state == messages.LIVE else state

    def _refresh_markets(self) -> None:
        for market, feed in self.feeds.items():
            reason = self._down_reason(market)
            if reason is None and not feed.is_live:
                feed.is_live = True
                feed.stats.connects += 1
                self.relay.upstream_live(feed)
            elif reason is not None and feed.is_live:
                feed.is_live = False
                feed.stats.reconnects[reason] = feed.stats.reconnects.get(reason, 0) + 1
                self.relay.upstream_down(feed, reason)

    # --- interest: NATS subscriptions and heartbeats ------------------------------------------
    def interest_changed(self) -> None:
        self._sync_wanted = True
        if self._sync_task is None or self._sync_task.done():
            self._sync_task = asyncio.get_running_loop().create_task(self._sync_loop(), name="edge-sync")

    async def _sync_loop(self) -> None:
        while self._sync_wanted:
            self._sync_wanted = False
            if self.link.connected:
                await self._sync_subscriptions()
                self._publish_interest()

    def _wanted_channels(self) -> dict[str, list[str]]:
        interests = self.relay.hub.interests
        return {m: sorted(interests[m].subscribed_upstream) for m in self.feeds}

    async def _sync_subscriptions(self) -> None:
        wanted: set[str] = set()
        if self.granularity is not None:
            for market, names in self._wanted_channels().items():
                wanted.update(self.subjects.for_channel(market, n, self.granularity) for n in names)
        current = self._data_subscriptions
        # New subjects first, then the old ones go: when T.* replaces T.AAPL (event
        # granularity) an event may come twice for a moment, but none is missed.
        for subject in sorted(wanted - current.keys()):
            try:
                current[subject] = await self.link.subscribe(subject, self._on_data)
            except Exception as exc:
                self._throttle.log(
                    logging.WARNING, "NATS subscribe %s failed: %s", subject, type(exc).__name__
                )
                self._sync_wanted = True
                return
        for subject in [s for s in current if s not in wanted]:
            subscription = current.pop(subject)
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()

    def _interest_message(self, goodbye: bool = False) -> bytes:
        self._seq += 1
        channels = {} if goodbye else self._wanted_channels()
        interest = messages.EdgeInterest(self.config.instance_name, channels, self._seq, self._incarnation)
        return messages.encode(interest)

    def _publish_interest(self) -> None:
        if not self.link.connected:
            return
        message = self._interest_message()
        if len(message) > self.link.max_payload:
            # About 60,000 channel names at NATS' default 1 MiB: raise max_payload in nats-server.
            self._throttle.log(
                logging.ERROR,
                "this edge's interest (%d bytes) exceeds NATS' max_payload (%d): the ingest cannot learn it",
                len(message),
                self.link.max_payload,
            )
            return
        self.link.publish_soon(self.subjects.interest, message)

    # --- data in --------------------------------------------------------------------------
    async def _on_data(self, msg: Any) -> None:
        arrival = time.perf_counter()
        data = msg.data
        stats = self.link.stats
        stats.received += 1
        stats.received_bytes += len(data)
        try:
            sent_at, body = open_envelope(data)
            heads, raws = decode_frame(body)
        except (ValueError, FrameError) as exc:
            self.link.skip_bad(f"a data message on {msg.subject}", exc)
            return
        feed = self.feeds.get(self.subjects.market_of(msg.subject))
        if feed is None or not heads:
            return
        now = time.time()
        self.lag.observe(max(0.0, now - sent_at))
        feed.stats.frames += 1
        feed.stats.events += len(heads)
        feed.stats.bytes += len(body)
        feed.last_event_at = now
        sent_ms = timestamp_ms(heads[0])
        if sent_ms is not None:
            feed.feed_latency.observe(max(0.0, now - sent_ms / 1000.0))
        self.relay.upstream_events(feed.market, heads, raws, arrival, True)
