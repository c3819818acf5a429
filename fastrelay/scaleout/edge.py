"""The edge role: clients in, the ingest's events from NATS instead of Massive.

An edge is the one-process relay with its upstream sessions replaced by
``EdgeFeed``s: everything about clients (hub, audiences, flush windows,
limits, outage statuses) is unchanged. What the edge's clients want
(``MarketInterest``, with its linger) becomes NATS subscriptions on the data
subjects and, in heartbeats, the edge's interest at the ingest.

A market is live on an edge while NATS is connected, the leader ingest has
been heard within ``--ingest-timeout`` and it reports that market's upstream
live; otherwise the edge's clients get the usual ``feed interrupted`` status,
with the reason (``nats``, ``ingest``, ``stale`` or the ingest's own upstream
reason). Data only reaches clients while its market is live, so the
``restored`` status always comes before the data, as in one process.

Fencing: the edge follows the ingest with the highest term (election.py) and
drops data and states of older terms; data of a newer term than the state it
follows means the leader changed: the markets go down until that leader's
state arrives. Data read by the ingest more than ``--max-event-age`` ago is
dropped too (a frozen ingest's backlog), and the market is reported down
until fresh data comes.

What a new subscriber should see at once (last values, history) and this edge
lacks comes from the ingest: ``fills.Fills``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections.abc import Callable
from typing import Any

from prometheus_client.registry import Collector

from fastrelay.config import RelayConfig, redact, tokens_summary
from fastrelay.events import FrameError, decode_frame
from fastrelay.feed import MASSIVE_REASONS, FeedStatistics
from fastrelay.histogram import Histogram
from fastrelay.ratelimit import LogThrottle
from fastrelay.relay import Relay
from fastrelay.scaleout import messages, natsauth
from fastrelay.scaleout.fills import Fills
from fastrelay.scaleout.link import Link, NatsLink, received
from fastrelay.scaleout.metrics import LAG_BOUNDS, EdgeCollector
from fastrelay.scaleout.subjects import Subjects, VersionError, open_envelope

log = logging.getLogger("fastrelay.edge")

# Why a market is down on an edge, beyond the ingest's own upstream reasons.
NATS_DOWN = "nats"
INGEST_SILENT = "ingest"
STALE = "stale"  # the ingest's data arrives older than --max-event-age


class EdgeFeed:
    """One market as the relay sees it on an edge (a ``feed.Feed``).

    It keeps the channels the relay's plans asked for (``subscribed``): the
    edge turns them into NATS subscriptions and into its interest at the ingest.
    """

    def __init__(self, market: str, edge: Edge) -> None:
        self.market = market
        self._edge = edge
        self.stats = FeedStatistics((*MASSIVE_REASONS, NATS_DOWN, INGEST_SILENT, STALE))
        self.subscribed: set[str] = set()
        self.is_live = False
        self.stale = False  # the last data message was older than --max-event-age
        self.stale_at = -math.inf  # when stale data last came (monotonic)

    @property
    def live(self) -> bool:
        return self.is_live

    @property
    def where(self) -> str:
        return f"NATS {self._edge.link.shown}"

    @property
    def refused(self) -> str | None:
        """The ingest's upstream for this market is refused by Massive (key or plan)."""
        state = self._edge.ingest_markets.get(self.market, "") if self._edge.ingest else ""
        return state if state.startswith("auth_failed") else None

    def start(self) -> None:
        """The edge's one NATS link serves every market: nothing per market to start."""

    async def stop(self) -> None:
        """See ``start``."""

    def send_subscriptions(self, subscribe: list[str], unsubscribe: list[str]) -> None:
        # Kept whether or not the market is live: the edge's interest at the
        # ingest is what brings the market back.
        self.subscribed.update(subscribe)
        self.subscribed.difference_update(unsubscribe)
        self._edge.interest_changed()


class Edge:
    """The edge role (``roles.Role``): clients served from an ingest over NATS."""

    name = "edge"
    serves_clients = True

    def __init__(
        self, config: RelayConfig, link: Link | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self.config = config
        self.subjects = Subjects(config.nats_prefix)
        self.feeds: dict[str, EdgeFeed] = {}
        self.relay = Relay(config, make_feed=self._make_feed)
        self.link = link or NatsLink(
            config.nats,
            f"fastrelay-edge-{config.instance_name}",
            security=natsauth.connect_options(config),
        )
        self.link.on_change(self._link_up, self._link_down)
        self.fills = Fills(
            self.relay.cache,
            self.relay.outbox,
            self.relay.outages,
            self._ask_ingest,
            lambda: self.link.connected,
        )
        self.relay.fills = self.fills
        self.link.listen(self.subjects.ingest, self._on_ingest)
        self.lag = Histogram(LAG_BOUNDS)
        # What the ingest last said (None: not heard since start or since NATS came back).
        self.ingest: str | None = None
        self.granularity: str | None = None
        self.ingest_markets: dict[str, str] = {}
        self._ingest_heard = -math.inf
        self._last_check = clock()
        # The leader's term this edge follows (the highest seen; 0: a version-1 ingest).
        self.term = 0
        self.leader_changes = 0
        self.fenced = 0  # data and state messages of an older term, dropped
        self.early = 0  # data of a newer term than the state followed, dropped
        self.not_live = 0  # events dropped because their market was not live (yet)
        self.stale_dropped = 0  # events older than --max-event-age, dropped
        self._data_subscriptions: dict[str, Any] = {}
        self._sync_task: asyncio.Task[None] | None = None
        self._sync_wanted = False
        self._seq = 0
        self._incarnation = secrets.token_hex(6)
        self._heartbeat: asyncio.TimerHandle | None = None
        self._watcher: asyncio.TimerHandle | None = None
        self._throttle = LogThrottle(log, interval=10.0)

    def _make_feed(self, market: str, relay: Relay) -> EdgeFeed:
        feed = self.feeds[market] = EdgeFeed(market, self)
        return feed

    # --- the role ----------------------------------------------------------------------
    def start(self) -> None:
        self.link.start()
        self._tick()
        self._watch()
        self.relay.start()

    async def stop(self) -> None:
        for timer in (self._heartbeat, self._watcher):
            if timer is not None:
                timer.cancel()
        # Goodbye: the ingest lets go of our channels now, not after the timeout.
        await self.link.say_goodbye(self.subjects.interest, self._interest_message(goodbye=True))
        self.fills.stop()
        if self._sync_task is not None:
            self._sync_task.cancel()
        await self.link.stop()
        await self.relay.stop()

    def refusal(self) -> str | None:
        """Cut off from NATS or the ingest, an edge has nothing to serve: nginx tries the next one.

        A Massive outage is not such a reason: as in one process, clients
        connect and wait for `feed restored`.
        """
        if not self.link.connected:
            return f"NATS {self.link.shown} not connected"
        if self.ingest is None and self._clock() - self._ingest_heard > self.config.peer_timeout:
            # Not during a failover (the next leader is seconds away): clients wait for
            # `restored` here as they would in one process.
            return "no ingest heard on NATS"
        return None

    def not_ready_reason(self) -> str | None:
        # The link first: "NATS not connected" explains the feeds being down.
        reason = self.refusal()
        if reason is not None:
            return reason
        return self.relay.market_readiness()[0]

    def readiness_notes(self) -> list[str]:
        return self.relay.market_readiness()[1]

    def collectors(self) -> list[Collector]:
        return [EdgeCollector(self)]

    @property
    def ingest_heard(self) -> bool:
        return self.ingest is not None

    def describe(self) -> str:
        return self.describe_config(self.config)

    @staticmethod
    def describe_config(config: RelayConfig) -> str:
        return (
            f"edge {config.instance_name}: markets "
            f"{','.join(config.markets)} from NATS {redact(config.nats)} "
            f"({config.nats_prefix}, {natsauth.summary(config)}), "
            f"{tokens_summary(config)}"
        )

    async def _ask_ingest(self, request: messages.SnapshotRequest) -> messages.SnapshotReply:
        answer = await self.link.request(self.subjects.snapshot, messages.encode(request))
        return messages.decode_as(answer, messages.SnapshotReply)

    async def _link_up(self) -> None:
        # nats-py resubscribes the data subjects itself after a reconnection.
        self._publish_interest()

    def _link_down(self) -> None:
        self.ingest = None
        self._refresh_markets()

    # --- the ingest's state ---------------------------------------------------------------
    async def _on_ingest(self, msg: Any) -> None:
        state = received(self.link, msg, messages.IngestState)
        if state is not None:
            self._ingest_said(state)

    def _ingest_said(self, state: messages.IngestState) -> None:
        if state.version > messages.VERSION:
            self.link.skip_bad(
                f"the state of ingest {state.ingest}",
                VersionError(
                    f"version {state.version}; this edge reads {messages.VERSION} and "
                    f"{messages.VERSION - 1}: upgrade edges before ingests"
                ),
            )
            return
        now = self._clock()
        if state.term < self.term and self.ingest is not None:
            # A deposed leader's late word (or a version-1 ingest beside a leader): not ours.
            self.fenced += 1
            self._throttle.log(
                logging.WARNING,
                "ingest %s speaks for term %d, the leader's is %d: ignored",
                state.ingest,
                state.term,
                self.term,
                extra={"ingest": state.ingest, "term": state.term, "reason": "old_term"},
            )
            return
        if state.term == self.term and self.ingest is not None and state.ingest != self.ingest:
            # Two ingests in one term: version-1 ingests (no election) side by side;
            # each publishes what it gets, so clients would see every event twice.
            self._throttle.log(
                logging.ERROR,
                "two ingests on %s.*: %s and %s",
                self.subjects.prefix,
                self.ingest,
                state.ingest,
            )
        self._ingest_heard = now
        if state.term > self.term and self.ingest is not None:
            # A new leader while the old one seemed alive (a handover faster than our
            # timeout): what fell between them is a gap, so say so around it.
            self.ingest = None
            self._refresh_markets()
        if state.term != self.term or state.ingest != self.ingest:
            if self.term and state.term != self.term:
                self.leader_changes += 1
            log.info(
                "ingest %s heard, term %d (granularity %s)",
                state.ingest,
                state.term,
                state.granularity,
                extra={"ingest": state.ingest, "term": state.term},
            )
            self.ingest = state.ingest
            self.term = state.term
            self._publish_interest()  # a new ingest learns our interest now
        if state.granularity != self.granularity:
            self.granularity = state.granularity
            self.interest_changed()  # data subjects follow the ingest's granularity
        self.ingest_markets = state.markets
        for each in self.feeds.values():
            # The ingest speaks now: what it sends next is fresh, unless stale data kept
            # coming all along (clocks apart by more than --max-event-age: stay down,
            # rather than flap with every state).
            if each.stale and now - each.stale_at > self.config.max_event_age:
                each.stale = False
        self._refresh_markets()
        for market, refused in state.rejected.items():
            feed = self.feeds.get(market)
            hits = [(name, message) for name, message in refused.items() if feed and name in feed.subscribed]
            if feed is not None and hits:
                self.relay.feed_rejected(feed, hits)

    def _tick(self) -> None:
        self._heartbeat = asyncio.get_running_loop().call_later(self.config.heartbeat_interval, self._tick)
        self._publish_interest()

    def _watch(self) -> None:
        """Four looks per --ingest-timeout: a dead leader is noticed within it."""
        self._watcher = asyncio.get_running_loop().call_later(self.config.ingest_timeout / 4, self._watch)
        self.check_ingest()

    def check_ingest(self) -> None:
        """An ingest silent past --ingest-timeout is gone: its markets go down."""
        now = self._clock()
        timeout = self.config.ingest_timeout
        if now - self._last_check > timeout:
            # This loop did not run for a while (a freeze): the ingest's states wait
            # unread, so its silence is ours. Listen for one more timeout.
            self._ingest_heard = max(self._ingest_heard, now - timeout / 2)
        self._last_check = now
        if self.ingest is not None and now - self._ingest_heard > timeout:
            log.warning(
                "ingest %s silent for %.1f s",
                self.ingest,
                timeout,
                extra={"ingest": self.ingest, "reason": "ingest_silent", "seconds": timeout},
            )
            self.ingest = None
        self._refresh_markets()

    def _down_reason(self, market: str) -> str | None:
        if not self.link.connected:
            return NATS_DOWN
        if self.ingest is None:
            return INGEST_SILENT
        state = self.ingest_markets.get(market, INGEST_SILENT)
        if state != messages.LIVE:
            return state
        return STALE if self.feeds[market].stale else None

    def _refresh_markets(self) -> None:
        for market, feed in self.feeds.items():
            reason = self._down_reason(market)
            if reason is None and not feed.is_live:
                feed.is_live = True
                feed.stats.connects += 1
                self.relay.feed_live(feed)
            elif reason is not None and feed.is_live:
                feed.is_live = False
                feed.stats.lost(reason)
                self.relay.feed_down(feed, reason)

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
        return {m: sorted(feed.subscribed) for m, feed in self.feeds.items()}

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
        interest = messages.EdgeInterest(
            self.config.instance_name, channels, self._seq, self._incarnation, messages.VERSION
        )
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
            term, read_at, body = open_envelope(data)
        except ValueError as exc:  # VersionError included
            self.link.skip_bad(f"a data message on {msg.subject}", exc)
            return
        if term != self.term:
            self._other_term(term)
            return
        feed = self.feeds.get(self.subjects.market_of(msg.subject))
        if feed is None:
            return
        now = time.time()
        age = now - read_at
        if age > self.config.max_event_age:
            # A frozen ingest's backlog: the market is down until fresh data comes.
            self.stale_dropped += _count_events(body)
            feed.stale_at = self._clock()
            if not feed.stale:
                feed.stale = True
                self._throttle.log(
                    logging.WARNING,
                    "%s: data %.1f s old dropped",
                    feed.market,
                    age,
                    extra={"market": feed.market, "reason": "stale", "age": round(age, 3)},
                )
                self._refresh_markets()
            return
        if feed.stale:
            feed.stale = False
            self._refresh_markets()  # restored first, then this data
        if not feed.is_live:
            # Before `restored` (its state comes at the next beat): clients never see
            # data before the status, as in one process.
            self.not_live += _count_events(body)
            return
        try:
            heads, raws = decode_frame(body)
        except FrameError as exc:
            self.link.skip_bad(f"a data message on {msg.subject}", exc)
            return
        if not heads:
            return
        self.lag.observe(max(0.0, age))
        feed.stats.received(heads, len(body), now)
        self.relay.feed_events(feed.market, heads, raws, arrival, True)

    def _other_term(self, term: int) -> None:
        if term < self.term:
            self.fenced += 1  # a deposed leader's last messages
        else:
            # A new leader's data before its state (which decides, on the control
            # subject: data alone cannot depose the leader followed).
            self.early += 1


def _count_events(body: memoryview) -> int:
    """Events in a JSON array of objects, without decoding it (dropped data is counted)."""
    return max(1, bytes(body).count(b'"ev"'))
