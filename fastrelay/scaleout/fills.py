"""Last values and history for an edge's new subscribers, fetched from the ingest.

A new subscriber of an exact state channel gets its last value at once when
the edge has one. When it does not (nobody on this edge wanted the channel
before), the hub calls ``missing`` and the edge asks the ingest (``snapshot``
request over NATS, one per loop pass per market, in chunks so each reply fits
one NATS message), then writes the answer to the subscribers still waiting,
unless a live event overtook it (the hub keeps the first value it gets). The
same request brings the ingest's history of aggregate channels the edge has
not recorded; a ``history`` request for a channel being fetched is answered
once the fetch is in (``when_filled``), so a chart on a fresh edge fills as on
one process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

from fastrelay.cache import Cache
from fastrelay.member import Member
from fastrelay.outbox import Outbox
from fastrelay.protocol import Channel, parse_channel
from fastrelay.ratelimit import LogThrottle
from fastrelay.scaleout import messages

log = logging.getLogger("fastrelay.edge")

CHUNK = 50  # channels per request
Key = tuple[str, str]  # (market, channel name)
# Asks the ingest for these channels' last values and history (raises on failure).
Ask = Callable[[messages.SnapshotRequest], Awaitable[messages.SnapshotReply]]


class Fills:
    """An edge's ``session.FillSource``: fetches from the ingest, delivered through the outbox."""

    def __init__(
        self,
        cache: Cache,
        outbox: Outbox,
        outages: Mapping[str, str],
        ask: Ask,
        connected: Callable[[], bool],
    ) -> None:
        self._cache = cache
        self._outbox = outbox
        self._outages = outages
        self._ask = ask
        self._connected = connected
        self._waiting: dict[Key, list[Member]] = {}  # fetches on their way, and who waits
        self._queue: dict[str, set[str]] = {}  # market -> names to ask at the end of this pass
        self._scheduled = False
        self._done: dict[Key, list[Callable[[Key], None]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._throttle = LogThrottle(log, interval=10.0)
        self.requested = 0  # channels asked for
        self.failed = 0  # channels whose request failed (no ingest, timeout, bad reply)
        self.delivered = 0  # values written to subscribers

    def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    def missing(self, member: Member, channels: list[Channel]) -> None:
        """The cache has no last value (or no history) for these channels of a new subscriber."""
        if not self._connected():
            return
        for channel in channels:
            waiting = self._waiting.setdefault((channel.market, channel.name), [])
            if not waiting:  # else a request for it is on its way
                self._queue.setdefault(channel.market, set()).add(channel.name)
            waiting.append(member)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._send)

    def filling(self, channel: Channel) -> bool:
        return (channel.market, channel.name) in self._waiting

    def when_filled(self, channels: list[Channel], callback: Callable[[], None]) -> None:
        """Call back once every one of these channels' fetches is in (or failed)."""
        remaining = {(c.market, c.name) for c in channels}

        def done(key: Key) -> None:
            remaining.discard(key)
            if not remaining:
                callback()

        for key in remaining:
            self._done.setdefault(key, []).append(done)

    def _send(self) -> None:
        self._scheduled = False
        queue, self._queue = self._queue, {}
        for market, names in queue.items():
            ordered = sorted(names)
            for start in range(0, len(ordered), CHUNK):
                self._spawn(self._fetch(market, ordered[start : start + CHUNK]))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _fetch(self, market: str, names: list[str]) -> None:
        self.requested += len(names)
        reply: messages.SnapshotReply | None = None
        try:
            reply = await self._ask(messages.SnapshotRequest(market, last=names, history=names))
        except Exception as exc:
            self.failed += len(names)
            self._throttle.log(
                logging.INFO, "no last values from the ingest for %s: %s", market, type(exc).__name__
            )
        for name in names:
            waiters = self._waiting.pop((market, name), [])
            try:
                if reply is not None:
                    self._fill(market, name, waiters, reply)
            finally:
                for done in self._done.pop((market, name), []):
                    done((market, name))

    def _fill(self, market: str, name: str, waiters: list[Member], reply: messages.SnapshotReply) -> None:
        if market in self._outages:
            return  # from before the outage: stale (Relay.feed_down)
        channel = parse_channel(name, market)
        cache = self._cache[market]
        history = reply.history.get(name)
        if history:
            cache.seed_history(channel.ev, channel.ticker, [bytes(e) for e in history])
        raw = reply.last.get(name)
        # Not seeded = a live event came first, and the waiters had it.
        if raw is None or not cache.seed_last_value(channel.ev, channel.ticker, bytes(raw)):
            return
        for member in waiters:
            if member.closed or channel not in member.channels:
                continue
            found, _ = self._cache.last_values([channel], member.tags_markets)
            self._outbox.send_events(member, found)
            self.delivered += len(found)
