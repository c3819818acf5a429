"""A NATS link stand-in for the scale-out roles' unit tests: no server, every message recorded."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastrelay.scaleout.election import LeaseTaken
from fastrelay.scaleout.link import Handler, LinkStatistics


@dataclass
class Message:
    """What nats-py hands a subscription callback (the parts the roles use)."""

    subject: str
    data: bytes
    reply: str = ""
    answer: bytes | None = None

    async def respond(self, data: bytes) -> None:
        self.answer = data


class FakeSubscription:
    def __init__(self, link: FakeLink, subject: str) -> None:
        self._link = link
        self.subject = subject

    async def unsubscribe(self) -> None:
        self._link.subscribed.pop(self.subject, None)


class FakeKeyValue:
    """The lease key as JetStream keeps it: revisions only grow, a value older than the
    bucket's TTL is gone (by ``clock``), deletes and expiries are announced to watchers."""

    def __init__(self, clock: Callable[[], float], ttl: float = 1.5) -> None:
        self.clock = clock
        self.ttl = ttl
        self.revision = 0
        self.value: bytes | None = None
        self.written_at = 0.0
        self.down = False  # JetStream unreachable: every call fails
        self.watchers: list[Callable[[], None]] = []

    def _current(self) -> bytes | None:
        if self.value is not None and self.clock() - self.written_at >= self.ttl:
            self.value = None
            for gone in self.watchers:
                gone()
        return self.value

    def _check(self) -> None:
        if self.down:
            raise TimeoutError("fake JetStream down")

    def _write(self, value: bytes) -> int:
        self.revision += 1
        self.value, self.written_at = value, self.clock()
        return self.revision


class FakeLeaseStore:
    """One ingest's view of the key; ``cut`` partitions this ingest alone from JetStream."""

    def __init__(self, kv: FakeKeyValue) -> None:
        self.kv = kv
        self.ttl = kv.ttl
        self.cut = False

    async def create(self, value: bytes) -> int:
        self._check()
        if self.kv._current() is not None:
            raise LeaseTaken
        return self.kv._write(value)

    async def update(self, value: bytes, last: int) -> int:
        self._check()
        if self.kv._current() is None or self.kv.revision != last:
            raise LeaseTaken
        return self.kv._write(value)

    async def delete(self, last: int) -> None:
        self._check()
        if self.kv._current() is not None and self.kv.revision == last:
            self.kv.value = None
            self.kv.revision += 1
            for gone in self.kv.watchers:
                gone()

    async def watch(self, on_gone: Callable[[], None]) -> None:
        self._check()
        self.kv.watchers.append(on_gone)

    async def close(self) -> None:
        pass

    def _check(self) -> None:
        if self.cut:
            raise TimeoutError("fake JetStream unreachable from this ingest")
        self.kv._check()


class FakeLink:
    """``scaleout.link.Link`` in memory: ``deliver`` plays a message from NATS."""

    def __init__(self, kv: FakeKeyValue | None = None) -> None:
        self.kv = kv or FakeKeyValue(lambda: 0.0)
        self.stats = LinkStatistics()
        self.up = False
        self.published: list[tuple[str, bytes]] = []
        self.listening: dict[str, Handler] = {}
        self.subscribed: dict[str, Handler] = {}
        self.bad: list[str] = []
        self.answer: Callable[[str, bytes], bytes] | None = None  # plays the peer of a request
        self._on_up: Callable[[], Awaitable[None]] | None = None
        self._on_down: Callable[[], None] | None = None

    @property
    def connected(self) -> bool:
        return self.up

    @property
    def shown(self) -> str:
        return "nats://fake:4222"

    @property
    def max_payload(self) -> int:
        return 1024 * 1024

    def on_change(self, on_up: Callable[[], Awaitable[None]], on_down: Callable[[], None]) -> None:
        self._on_up = on_up
        self._on_down = on_down

    def listen(self, subject: str, handler: Handler) -> None:
        self.listening[subject] = handler

    def start(self) -> None:
        pass

    async def connect(self) -> None:
        self.up = True
        if self._on_up is not None:
            await self._on_up()

    def disconnect(self) -> None:
        self.up = False
        if self._on_down is not None:
            self._on_down()

    async def stop(self) -> None:
        self.up = False

    def publish_soon(self, subject: str, data: bytes) -> None:
        if self.up:
            self.published.append((subject, data))

    async def publish(self, subject: str, data: bytes) -> None:
        if not self.up:
            raise ConnectionError("fake NATS down")
        self.published.append((subject, data))

    async def request(self, subject: str, data: bytes) -> bytes:
        if not self.up or self.answer is None:
            raise TimeoutError("no answer")
        return self.answer(subject, data)

    async def subscribe(self, subject: str, handler: Handler) -> Any:
        self.subscribed[subject] = handler
        return FakeSubscription(self, subject)

    async def say_goodbye(self, subject: str, data: bytes) -> None:
        self.publish_soon(subject, data)

    def lease_store(self, bucket: str, ttl: float, replicas: int) -> FakeLeaseStore:
        self.store = FakeLeaseStore(self.kv)
        return self.store

    def skip_bad(self, what: str, exc: Exception) -> None:
        self.stats.bad_messages += 1
        self.bad.append(f"{what}: {exc}")

    async def deliver(self, subject: str, data: bytes, reply: str = "") -> Message:
        """A message arrives on ``subject``: to the standing listener or the data subscription."""
        message = Message(subject, data, reply)
        handler = self.listening.get(subject) or self.subscribed[subject]
        await handler(message)
        return message

    def sent_on(self, subject: str) -> list[bytes]:
        return [data for s, data in self.published if s == subject]
