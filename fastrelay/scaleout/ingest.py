"""The ingest role: Massive upstreams in, NATS out; no browsers.

It is the one-process relay (``Relay``: upstream sessions, reference counts,
linger, last values, history) with two changes: references come from edges
(``EdgeRegistry``, from their heartbeats) instead of clients, and everything
received is published to NATS (``Tap.events``). Publishing is never awaited in
the upstream reader: events wait in one list per subject, and a publisher task
sends each list as one message (split under NATS' max_payload) once per
``--nats-window``: nats-py's cost is per message and per write, not per event.

Any number of ingests may run: they elect one leader on NATS (``election.py``),
which alone connects to Massive and publishes; the others are standbys that
follow the edges' interest and take over when the leader is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
from prometheus_client.registry import Collector

from fastrelay.config import RelayConfig, redact, tokens_summary, upstreams_summary
from fastrelay.events import EventHead, RawEvent, ticker_of
from fastrelay.framing import event_array_payloads
from fastrelay.protocol import Channel, ChannelError, parse_channel
from fastrelay.ratelimit import LogThrottle
from fastrelay.relay import Relay
from fastrelay.scaleout import election, messages, natsauth
from fastrelay.scaleout.election import Election
from fastrelay.scaleout.link import Link, NatsLink, received
from fastrelay.scaleout.metrics import IngestCollector
from fastrelay.scaleout.registry import Change, Diff, EdgeRegistry
from fastrelay.scaleout.subjects import BATCH, ENVELOPE_HEADER, Subjects, seal

log = logging.getLogger("fastrelay.ingest")

# The loop beats this often at least; a frame read later than STALL after the
# last beat may have waited in the socket since then (``Ingest.events``).
STALL = 0.1


class Ingest:
    """The ingest role (``roles.Role``): a ``Relay`` on Massive, its tap publishing to NATS."""

    name = "ingest"
    serves_clients = False  # its clients are the edges, over NATS

    def __init__(
        self, config: RelayConfig, link: Link | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self.relay = relay = Relay(config)
        self.config = config
        self.subjects = Subjects(config.nats_prefix)
        self.granularity = config.nats_granularity
        self.registry = EdgeRegistry(config.peer_timeout)
        self.link = link or NatsLink(
            config.nats,
            f"fastrelay-ingest-{config.instance_name}",
            security=natsauth.connect_options(config),
        )
        self.link.on_change(self._link_up, self._link_down)
        # subject -> events waiting for the next publishing pass (in arrival order)
        self._pending: dict[str, list[RawEvent]] = {}
        self._window = config.nats_window / 1000.0
        self._armed = False
        self._wake = asyncio.Event()
        # Publishing passes the loop has taken, and finished (every event of them handed to
        # NATS or dropped): a snapshot reply waits for the pass that holds its newest events.
        self._passes_taken = 0
        self._passes_done = 0
        self._pass_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._publisher: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.TimerHandle | None = None
        self._beat: asyncio.TimerHandle | None = None
        self._last_tick = clock()
        self._throttle = LogThrottle(log, interval=10.0)
        self.refused = 0  # edge channels not taken: bad names, unserved markets, the contract cap
        self.fenced = 0  # events not published: the lease ran out before they could go
        self.stalls = 0  # times the loop was found frozen for longer than --peer-timeout / 2
        self.election = Election(
            messages.encode_identity(config.instance_name),
            config.lease_ttl,
            clock,
            self._elected,
            self._deposed,
        )
        # The loop's last sign of life (wall clock): data read after a freeze is stamped
        # with it, the earliest it can have arrived, so edges can tell it is stale.
        self._alive_at = self._read_at = time.time()
        self._last_term = 0  # the term of the last state sent (a goodbye repeats it)
        self._state_sent_at = 0.0
        self.link.listen(self.subjects.interest, self._on_interest)
        self.link.listen(self.subjects.snapshot, self._on_snapshot)
        relay.tap = self

    # --- the role ----------------------------------------------------------------------
    def start(self) -> None:
        self.link.start()
        self._publisher = asyncio.get_running_loop().create_task(self._publish_loop(), name="nats-publisher")
        self._tick()
        self._pulse()
        # The relay starts when this ingest wins the lease (_elected): a standby holds no
        # Massive connection.

    async def stop(self) -> None:
        for timer in (self._heartbeat, self._beat):
            if timer is not None:
                timer.cancel()
        # A leader closes its upstreams, says goodbye (edges tell their clients now)
        # and frees the lease: a standby takes over at once.
        await self.election.resign()
        if self._publisher is not None:
            self._publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._publisher
            self._passes_taken += 1  # the last events were dropped: nobody waits for them
            self._pass_done()
        await self.link.stop()
        await self.relay.stop()

    @property
    def leading(self) -> bool:
        return self.election.leading()

    def not_ready_reason(self) -> str | None:
        if not self.link.connected:
            return f"NATS {self.link.shown} not connected"
        if not self.leading:
            return None  # a standby is ready as a standby: it has nothing else to wait for
        return self.relay.market_readiness()[0]

    def readiness_notes(self) -> list[str]:
        if not self.leading:
            return ["standby: another ingest leads"]
        return [f"leader (term {self.election.term})", *self.relay.market_readiness()[1]]

    def refusal(self) -> str | None:
        return None  # no clients connect to an ingest (the server answers them 404)

    def collectors(self) -> list[Collector]:
        return [IngestCollector(self)]

    def describe(self) -> str:
        return self.describe_config(self.config)

    @staticmethod
    def describe_config(config: RelayConfig) -> str:
        return (
            f"ingest {config.instance_name} to NATS {redact(config.nats)} "
            f"({config.nats_prefix}, {config.nats_granularity}, {natsauth.summary(config)}), "
            f"markets {upstreams_summary(config)}, {tokens_summary(config)}"
        )

    async def _link_up(self) -> None:
        # Silence while we were cut off says nothing about the edges.
        self.registry.grace(self._clock())
        self.election.attach(
            self.link.lease_store(
                election.bucket_name(self.subjects.prefix), self.config.lease_ttl, self.config.lease_replicas
            )
        )
        self._publish_state()

    # --- leadership ------------------------------------------------------------------------
    def _elected(self, term: int) -> None:
        """The lease is ours: connect to Massive (the edges' interest is already held)."""
        self.relay.start()
        self._publish_state()

    async def _deposed(self, reason: str) -> None:
        """No longer leader: nothing more goes out (``events`` and the publisher ask the
        lease), and the Massive connections close so the next leader's are the only ones."""
        self.fenced += sum(map(len, self._pending.values()))
        self._pending.clear()
        if reason == election.RESIGNED:
            # Goodbye while the term is still the edges' newest: they report the markets
            # down now, and the next leader's state restores them.
            await self.link.say_goodbye(
                self.subjects.ingest, self._state(stopping=True, term=self._last_term)
            )
        await self.relay.stop_feeds("standby")

    def _link_down(self) -> None:
        self.link.stats.publish_dropped_down += sum(map(len, self._pending.values()))
        self._pending.clear()

    # --- data out (Tap) ----------------------------------------------------------------
    def events(self, market: str, heads: list[EventHead], raws: Sequence[RawEvent]) -> None:
        if not self.link.connected:
            self.link.stats.publish_dropped_down += len(heads)
            return
        if not self.election.leading():
            self.fenced += len(heads)
            return
        pending = self._pending
        subjects = self.subjects
        if self.granularity == BATCH:
            first = heads[0].ev
            if first.__class__ is str and all(h.ev == first for h in heads):  # one ev per frame: common
                subject = subjects.batch(market, first)
                found = pending.get(subject)
                if found is None:
                    pending[subject] = list(raws)
                else:
                    found.extend(raws)
            else:
                for head, raw in zip(heads, raws, strict=True):
                    if head.ev.__class__ is str:
                        pending.setdefault(subjects.batch(market, head.ev), []).append(raw)
        else:
            for head, raw in zip(heads, raws, strict=True):
                if head.ev.__class__ is str:
                    pending.setdefault(subjects.event(market, head.ev, ticker_of(head)), []).append(raw)
        if not self._armed:
            # One publishing pass per window, not per frame: nats-py's cost is per
            # message and per write (docs/scaleout.md, "Subjects and granularity").
            self._armed = True
            now = time.time()
            # Read after a freeze of the loop: it may have waited since the loop last ran.
            self._read_at = now if now - self._alive_at < STALL else self._alive_at
            if self._window > 0:
                asyncio.get_running_loop().call_later(self._window, self._wake.set)
            else:
                self._wake.set()

    def feed_changed(self, market: str) -> None:
        self._publish_state()

    def rejected(self, market: str, name: str, message: str) -> None:
        """Massive refused a channel edges wanted: the relay has let it go; the edges hear of it
        in the state (they tell their clients), and their heartbeats offering it again are
        refused while the relay remembers the refusal."""
        self.registry.forget_channel((market, name))
        self._publish_state()

    async def _publish_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._armed = False
            pending, self._pending = self._pending, {}
            self._passes_taken += 1
            try:
                await self._publish_pass(pending)
            finally:
                self._pass_done()

    def _pass_done(self) -> None:
        done = self._passes_done = self._passes_taken
        waiting = []
        for target, waiter in self._pass_waiters:
            if target > done:
                waiting.append((target, waiter))
            elif not waiter.done():
                waiter.set_result(None)
        self._pass_waiters = waiting

    async def published(self) -> None:
        """Return once every event recorded so far has been handed to NATS (or dropped).

        The relay records an event in its cache when it arrives and publishes it at the end
        of the window, so a snapshot may hold events not yet published. NATS keeps one
        connection's messages in order, so a reply sent after this reaches an edge after
        those events: it cannot overtake them (a new subscriber would get an event twice,
        as its last value and live, or an older one after a newer).
        """
        target = self._passes_taken + (1 if self._pending else 0)
        publisher = self._publisher
        if self._passes_done >= target or publisher is None or publisher.done():
            return  # nothing waiting, or nothing will publish it (not started, or stopped)
        waiter = asyncio.get_running_loop().create_future()
        self._pass_waiters.append((target, waiter))
        await waiter

    async def _publish_pass(self, pending: dict[str, list[RawEvent]]) -> None:
        stats = self.link.stats
        if not self.link.connected:
            stats.publish_dropped_down += sum(map(len, pending.values()))
            return
        read_at, term = self._read_at, self.election.term
        # A window of a busy feed (or one huge upstream frame) may pass NATS'
        # max_payload: split, in order, never cutting an event.
        limit = self.link.max_payload - ENVELOPE_HEADER
        for subject, events in pending.items():
            if not self.election.leading():  # fencing: the lease may end mid-window
                self.fenced += len(events)
                continue
            for payload in event_array_payloads(events, limit):
                data = seal(payload, read_at, term)
                try:
                    await self.link.publish(subject, data)
                except Exception as exc:
                    stats.publish_failed += 1
                    self._throttle.log(
                        logging.WARNING, "NATS publish to %s failed: %s", subject, type(exc).__name__
                    )
                    continue
                stats.published += 1
                stats.published_bytes += len(data)

    # --- control: heartbeats, edges' interest, snapshots ----------------------------------
    def _tick(self) -> None:
        self._heartbeat = asyncio.get_running_loop().call_later(self.config.heartbeat_interval, self._tick)
        self.expire_silent_edges()

    def _pulse(self) -> None:
        """The loop's sign of life for the read stamps, and the leader's state four times
        per --ingest-timeout (edges notice a dead leader within it)."""
        self._beat = asyncio.get_running_loop().call_later(STALL / 2, self._pulse)
        now = time.time()
        self._alive_at = now
        if now - self._state_sent_at >= self.config.ingest_timeout / 4:
            self._publish_state()

    def expire_silent_edges(self) -> None:
        """Edges silent past --peer-timeout are presumed dead: their references go."""
        now = self._clock()
        frozen = now - self._last_tick > self.config.heartbeat_interval + self.config.peer_timeout / 2
        self._last_tick = now
        if frozen:
            # This loop did not run (SIGSTOP, a VM pause, a long GC): the edges'
            # heartbeats are waiting unread, so their silence is ours, not theirs.
            self.stalls += 1
            log.warning("ingest loop was frozen: not holding the edges' silence against them")
            self.registry.grace(now)
            return
        if not self.link.connected:
            return  # we hear nobody: that says nothing about the edges (registry.grace)
        for edge, diff in self.registry.expire(self._clock()).items():
            log.warning(
                "edge %s silent for %.1f s: dropping its %d channels",
                edge,
                self.config.peer_timeout,
                len(diff.removed),
                extra={"edge": edge, "reason": "edge_silent", "channels": len(diff.removed)},
            )
            self._apply(diff)

    def _publish_state(self) -> None:
        if self.election.leading():  # standbys are silent: edges follow one ingest
            self._last_term = self.election.term
            self._state_sent_at = time.time()
            self.link.publish_soon(self.subjects.ingest, self._state(term=self._last_term))

    def _state(self, stopping: bool = False, term: int = 0) -> bytes:
        """Each market "live", or why not (edges pass the reason on to their clients)."""
        markets = {
            m: messages.STOPPED
            if stopping
            else messages.LIVE
            if feed.live
            else feed.refused or self.relay.outages.get(m, "connecting")
            for m, feed in self.relay.feeds.items()
        }
        rejected = self.relay.demand.refusals()  # the edges' clients are told and let go
        state = messages.IngestState(
            self.config.instance_name, self.granularity, markets, rejected, term, messages.VERSION
        )
        return messages.encode(state)

    async def _on_interest(self, msg: Any) -> None:
        interest = received(self.link, msg, messages.EdgeInterest)
        if interest is None:
            return
        if interest.version > messages.VERSION + 1:
            # Edges are upgraded first, so an ingest reads interest one version ahead.
            self.link.skip_bad(
                f"interest of edge {interest.edge}",
                messages.MessageError(
                    f"version {interest.version}; this ingest reads up to {messages.VERSION + 1}"
                ),
            )
            return
        self._edge_wants(interest)

    def _edge_wants(self, interest: messages.EdgeInterest) -> None:
        wanted: set[Change] = set()
        served = self.relay.demand.markets
        for market, names in interest.channels.items():
            for name in names:
                try:
                    if market not in served:
                        raise ChannelError(f"market {market!r} is not served by this ingest")
                    parse_channel(name, market)
                except ChannelError as exc:
                    self._refuse(interest.edge, market, name, exc)
                    continue
                wanted.add((market, name))
        diff = self.registry.update(interest.key, wanted, self._clock(), interest.seq)
        if diff:
            log.debug("edge %s: +%d -%d channels", interest.key, len(diff.added), len(diff.removed))
            self._apply(diff, interest.key)

    def _refuse(self, edge: str, market: str, name: str, exc: Exception) -> None:
        self.refused += 1
        self._throttle.log(
            logging.WARNING,
            "edge %s: channel %s:%s refused: %s",
            edge,
            market,
            name[:64],
            exc,
            extra={"edge": edge, "market": market, "channel": name[:64], "reason": "refused"},
        )

    def _apply(self, diff: Diff, edge: str | None = None) -> None:
        """One hub reference per edge per channel: the hub's counts and linger do the rest."""
        relay = self.relay
        for market, name in diff.removed:
            relay.let_go(parse_channel(name, market))
        rejected: list[Change] = []
        for market, name in diff.added:
            # Each edge keeps Massive's contract cap for its clients; their union may pass it.
            refusal = relay.demand.admit(market, [name])
            if refusal is not None:
                self._refuse(edge or "?", market, name, ValueError(refusal))
                rejected.append((market, name))
                continue
            relay.hold(parse_channel(name, market))
        if rejected and edge is not None:
            self.registry.reject(edge, rejected)

    async def _on_snapshot(self, msg: Any) -> None:
        if not self.election.leading():
            return  # the leader answers: a standby has no last values
        request = received(self.link, msg, messages.SnapshotRequest)
        reply = (
            self.snapshot(request)
            if request is not None
            else messages.SnapshotReply(error="bad control message: expected a snapshot request")
        )
        if msg.reply:
            await self.published()  # the snapshot's events go first (published, above)
            await msg.respond(messages.encode(reply))

    def snapshot(self, request: messages.SnapshotRequest) -> messages.SnapshotReply:
        """Last values and the newest history that fit one NATS message."""
        cache = self.relay.cache.markets.get(request.market)
        if cache is None:
            return messages.SnapshotReply(error=f"market {request.market!r} is not served by this ingest")
        last, history = cache.snapshot(
            _channels(request.market, request.last), _channels(request.market, request.history)
        )
        return messages.SnapshotReply(
            last={k: msgspec.Raw(v) for k, v in last.items()},
            history=_newest_within(history, int(self.link.max_payload * 0.9) - sum(map(len, last.values()))),
        )


def _channels(market: str, names: list[str]) -> list[Channel]:
    """The valid channels among ``names`` (an edge's request; a stranger's may hold junk)."""
    found = []
    for name in names:
        try:
            found.append(parse_channel(name, market))
        except ChannelError:
            continue
    return found


def _newest_within(history: dict[str, list[bytes]], budget: int) -> dict[str, list[msgspec.Raw]]:
    """The newest part of each history that fits the reply in one NATS message."""
    kept: dict[str, list[msgspec.Raw]] = {}
    for name, events in history.items():
        newest: list[msgspec.Raw] = []
        for event in reversed(events):
            budget -= len(event) + len(name) + 8
            if budget < 0:
                break
            newest.append(msgspec.Raw(event))
        if newest:
            kept[name] = newest[::-1]
        if budget < 0:
            break
    return kept
