"""One NATS connection of a scale-out role: connect, stay connected, count.

nats-py reconnects by itself once connected (and resubscribes), but it
raises if the first connection fails; ``NatsLink`` keeps trying with backoff,
so a role may start before nats-server does. Connection changes are handed to
the role through ``on_up`` and ``on_down``. NATS URLs may carry credentials:
they are redacted wherever a URL or a client error is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import nats
from nats.aio.client import Client
from nats.errors import SlowConsumerError

from fastrelay.backoff import Backoff
from fastrelay.config import redact
from fastrelay.ratelimit import LogThrottle
from fastrelay.scaleout import messages
from fastrelay.scaleout.election import JetStreamLeaseStore, LeaseStore

log = logging.getLogger("fastrelay.nats")

# A snapshot request (an edge's fill) waits this long; then the subscriber
# waits for the next live event instead.
REQUEST_TIMEOUT = 2.0
Handler = Callable[[Any], Awaitable[None]]  # takes a nats-py Msg


@dataclass
class LinkStatistics:
    published: int = 0  # data messages
    published_bytes: int = 0
    # Data not published, in events: while NATS was down (stale data is not replayed)...
    publish_dropped_down: int = 0
    # ... and in messages: a publish that failed while connected (nats-py's buffer, a bug).
    publish_failed: int = 0
    received: int = 0
    received_bytes: int = 0
    bad_messages: int = 0  # undecodable data or control messages, skipped
    # nats-py dropped messages a subscription could not take fast enough (its
    # pending limits): the edge lags the ingest, and its clients see gaps.
    slow_consumer_drops: int = 0
    connects: int = 0
    disconnects: int = 0


Expected = TypeVar("Expected", messages.EdgeInterest, messages.IngestState, messages.SnapshotRequest)


def received(link: Link, msg: Any, kind: type[Expected]) -> Expected | None:
    """A control message of ``kind`` from ``msg``; anything else is counted, logged and skipped."""
    try:
        return messages.decode_as(msg.data, kind)
    except messages.MessageError as exc:
        link.skip_bad(f"a message on {msg.subject}", exc)
        return None


class Link(Protocol):
    """What a role needs of its NATS connection (``NatsLink``; a fake in unit tests)."""

    stats: LinkStatistics

    @property
    def connected(self) -> bool: ...
    @property
    def shown(self) -> str: ...
    @property
    def max_payload(self) -> int: ...
    def on_change(self, on_up: Callable[[], Awaitable[None]], on_down: Callable[[], None]) -> None: ...
    def listen(self, subject: str, handler: Handler) -> None: ...
    def start(self) -> None: ...
    async def stop(self) -> None: ...
    def publish_soon(self, subject: str, data: bytes) -> None: ...
    async def publish(self, subject: str, data: bytes) -> None: ...
    async def request(self, subject: str, data: bytes) -> bytes: ...
    async def subscribe(self, subject: str, handler: Handler) -> Any: ...
    async def say_goodbye(self, subject: str, data: bytes) -> None: ...
    def skip_bad(self, what: str, exc: Exception) -> None: ...
    def lease_store(self, bucket: str, ttl: float, replicas: int) -> LeaseStore: ...


async def _nothing() -> None:
    pass


class NatsLink:
    def __init__(
        self, servers: str, name: str, ping_interval: float = 5.0, security: Mapping[str, Any] | None = None
    ) -> None:
        self.servers = [s.strip() for s in servers.split(",") if s.strip()]
        # TLS context, NKey seed or .creds file: nats.connect's arguments (natsauth.connect_options).
        self._security = dict(security or {})
        self.name = name
        self.client: Client | None = None
        self.stats = LinkStatistics()
        self._on_up: Callable[[], Awaitable[None]] = _nothing
        self._on_down: Callable[[], None] = lambda: None
        self._ping_interval = ping_interval
        self._task: asyncio.Task[None] | None = None
        self._throttle = LogThrottle(log, interval=10.0)
        self.up = False
        # Subscriptions for the whole life of the role, made once: nats-py
        # renews them itself after a reconnection.
        self._standing: list[tuple[str, Handler]] = []
        self._publishing: set[asyncio.Task[None]] = set()

    def on_change(self, on_up: Callable[[], Awaitable[None]], on_down: Callable[[], None]) -> None:
        """Call ``on_up`` when connected (again), ``on_down`` when the connection is lost."""
        self._on_up = on_up
        self._on_down = on_down

    def listen(self, subject: str, handler: Handler) -> None:
        """Subscribe ``handler`` to ``subject`` once connected (call before ``start``)."""
        self._standing.append((subject, handler))

    @property
    def shown(self) -> str:
        return redact(",".join(self.servers))

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._connect(), name="nats-connect")

    async def _connect(self) -> None:
        backoff = Backoff(0.2, 5.0)
        while True:
            try:
                self.client = await nats.connect(
                    servers=self.servers,
                    name=self.name,
                    connect_timeout=2,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,  # forever: the role is useless without NATS
                    reconnect_time_wait=0.5,
                    ping_interval=max(1, int(self._ping_interval)),
                    max_outstanding_pings=2,
                    # Data published while NATS is down is dropped by the
                    # roles (stale market data is worse than none); this only
                    # buffers control messages across a reconnect.
                    pending_size=1024 * 1024,
                    disconnected_cb=self._disconnected,
                    reconnected_cb=self._reconnected,
                    error_cb=self._error,
                    closed_cb=self._closed,
                    # Our subjects are built from escaped tokens (subjects.py): valid by construction.
                    skip_subject_validation=True,
                    **self._security,
                )
            except Exception as exc:
                delay = backoff.next_delay()
                self._throttle.log(
                    logging.WARNING,
                    "NATS %s unreachable (%s); retrying in %.1f s",
                    self.shown,
                    redact(f"{type(exc).__name__}: {exc}"),
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            log.info("NATS %s connected as %s", self.shown, self.name)
            for subject, handler in self._standing:
                await self.client.subscribe(subject, cb=handler)
            await self._up()
            return

    async def _up(self) -> None:
        self.up = True
        self.stats.connects += 1
        await self._on_up()

    async def _disconnected(self) -> None:
        if self.up:
            self.up = False
            self.stats.disconnects += 1
            log.warning("NATS %s disconnected; reconnecting", self.shown)
            self._on_down()

    async def _reconnected(self) -> None:
        log.info("NATS %s reconnected", self.shown)
        await self._up()

    async def _error(self, exc: Exception) -> None:
        if isinstance(exc, SlowConsumerError):
            self.stats.slow_consumer_drops += 1
        # One line per kind of error per interval: a TLS refusal is not hidden behind the
        # "connection lost" that came just before it.
        self._throttle.log(logging.WARNING, f"NATS {type(exc).__name__}: %s", redact(str(exc)))

    async def _closed(self) -> None:
        if self.up:
            self.up = False
            self._on_down()

    @property
    def connected(self) -> bool:
        return self.up and self.client is not None and self.client.is_connected

    @property
    def max_payload(self) -> int:
        """The largest message the server takes (its INFO; 1 MiB by default)."""
        return self.client.max_payload if self.client is not None else 1024 * 1024

    async def say_goodbye(self, subject: str, data: bytes) -> None:
        """Publish a last message and wait (1 s at most) until the server has it."""
        client = self.client
        if client is None or not self.connected:
            return
        with contextlib.suppress(Exception):  # best effort: heartbeats' timeouts cover the rest
            await client.publish(subject, data)
            await asyncio.wait_for(client.flush(), 1.0)

    def lease_store(self, bucket: str, ttl: float, replicas: int) -> LeaseStore:
        """The leader's lease on this connection's JetStream (election.py)."""
        if self.client is None:
            raise ConnectionError("NATS not connected")
        return JetStreamLeaseStore(self.client, bucket, ttl, replicas)

    def skip_bad(self, what: str, exc: Exception) -> None:
        """A message that does not decode: counted, logged once per 10 s, skipped."""
        self.stats.bad_messages += 1
        self._throttle.log(logging.WARNING, "skipped %s: %s", what, exc)

    def publish_soon(self, subject: str, data: bytes) -> None:
        """Publish a control message from synchronous code; nothing while disconnected
        (control messages are state, re-sent on every heartbeat)."""
        client = self.client
        if client is None or not self.connected:
            return
        task = asyncio.get_running_loop().create_task(client.publish(subject, data))
        self._publishing.add(task)  # a task nobody references may be collected mid-flight
        task.add_done_callback(self._published)

    def _published(self, task: asyncio.Task[None]) -> None:
        self._publishing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._throttle.log(logging.WARNING, "NATS publish failed: %s", type(task.exception()).__name__)

    async def subscribe(self, subject: str, handler: Handler) -> Any:
        if self.client is None:
            raise ConnectionError("NATS not connected")
        return await self.client.subscribe(subject, cb=handler)

    async def publish(self, subject: str, data: bytes) -> None:
        if self.client is None:
            raise ConnectionError("NATS not connected")
        await self.client.publish(subject, data)

    async def request(self, subject: str, data: bytes) -> bytes:
        """A request's answer (``REQUEST_TIMEOUT``); raises if there is none."""
        if self.client is None:
            raise ConnectionError("NATS not connected")
        answer = await self.client.request(subject, data, timeout=REQUEST_TIMEOUT)
        return bytes(answer.data)

    async def stop(self) -> None:
        for task in list(self._publishing):
            task.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        client, self.client = self.client, None
        self.up = False
        if client is not None and not client.is_closed:
            try:
                await asyncio.wait_for(client.close(), 2.0)
            except asyncio.CancelledError:
                # nats-py cancels its own waits when it closes mid-reconnect (nats-server
                # gone at the same time); only a cancellation of this task goes on.
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
            except Exception:  # closing anyway: nothing left to do with the error
                pass
