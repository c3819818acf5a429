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
from collections.abc import Callable, Coroutine
from typing import Any

from fastrelay.hub import Hub, Member
from fastrelay.protocol import Channel, parse_channel, text_frame
from fastrelay.ratelimit import LogThrottle
from fastrelay.scaleout import messages
from fastrelay.scaleout.link import NatsLink

log = logging.getLogger("fastrelay.edge")

CHUNK = 50  # channels per request
REQUEST_TIMEOUT = 2.0  # seconds; then the subscriber waits for the next live event
Key = tuple[str, str]  # (market, channel name)


class Fills:
    def __init__(self, hub: Hub, link: NatsLink, subject: str) -> None:
        self._hub = hub
        self._link = link
        self._subject = subject
        self._waiting: dict[Key, list[Member]] = {}  # fetches on their way, and who waits
        self._queue: dict[str, set[str]] = {}  # market -> names to ask at the end of this pass
        self._scheduled = False
        self._done: dict[Key, list[Callable[[Key], None]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._throttle = LogThrottle(log, interval=10.0)
        self.requested = 0  # channels asked for
        self.failed = 0  # channels whose request failed (no ingest, timeout, bad reply)
        self.delivered = 0  # values written to subscribers
        hub.fills = self

    def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    def missing(self, member: Member, channels: list[Channel]) -> None:
        """The hub has no last value (or no history) for these channels of a new subscriber."""
        if not self._link.connected:
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
        client = self._link.client
        try:
            if client is None:
                raise ConnectionError("NATS not connected")
            request = messages.encode(messages.SnapshotRequest(market, last=names, history=names))
            answer = await client.request(self._subject, request, timeout=REQUEST_TIMEOUT)
            reply = messages.decode_reply(answer.data)
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
        hub = self._hub
        if market in hub.outages:
            return  # from before the outage: stale (Relay.upstream_down)
        channel = parse_channel(name, market)
        history = reply.history.get(name)
        if history:
            hub.seed_history(channel, [bytes(e) for e in history])
        raw = reply.last.get(name)
        # Not seeded = a live event came first, and the waiters had it.
        if raw is None or not hub.seed_last_value(channel, bytes(raw)):
            return
        for member in waiters:
            if member.closed or channel not in member.channels:
                continue
            for event in hub.last_values(member, [channel], fetch_missing=False):
                member.write(text_frame(b"[" + event + b"]"))
                self.delivered += 1
