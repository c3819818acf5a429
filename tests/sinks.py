"""The relay's core without sockets: recording sinks for clients, wired as ``Relay`` wires it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import orjson

from fastrelay.cache import Cache
from fastrelay.closes import CloseReason
from fastrelay.conflation import ConflationPolicy
from fastrelay.deflate import SharedDeflater
from fastrelay.events import decode_frame
from fastrelay.feed import FeedStatistics
from fastrelay.hub import Hub
from fastrelay.interest import Demand
from fastrelay.member import Member
from fastrelay.outbox import Outbox
from fastrelay.protocol import parse_channel
from fastrelay.session import ClientSession, SessionContext, TokenCheck


class RecordingSink:
    """A client socket and connection stand-in: records every write and close.

    ``backlog`` plays the socket's unsent bytes; ``on_close`` plays the
    server, which releases the member when its connection closes.
    """

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.backlog = 0
        self.closes: list[tuple[CloseReason, str]] = []
        self.on_close = lambda: None
        # Loop time charged to this client (conflation), and how much it may still take.
        self.charged = 0.0
        self.loop_time_left = float("inf")

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def buffered(self) -> int:
        return self.backlog

    def describe(self) -> str:
        return "a recording sink"

    def close(self, reason: CloseReason, message: str) -> None:
        self.closes.append((reason, message))
        self.on_close()

    def charge_loop_time(self, seconds: float) -> bool:
        self.charged += seconds
        self.loop_time_left -= seconds
        return self.loop_time_left >= 0

    def payloads(self) -> list[bytes]:
        """Every frame's payload, in order."""
        out = []
        for frame in self.writes:
            length = frame[1] & 0x7F
            offset = {126: 4, 127: 10}.get(length, 2)
            out.append(frame[offset:])
        return out

    def messages(self) -> list[dict[str, object]]:
        """Every object written (events and statuses), decoded from the frames."""
        return [item for payload in self.payloads() for item in orjson.loads(payload)]

    def events(self) -> list[dict[str, object]]:
        """Every event written (statuses left out)."""
        return [m for m in self.messages() if m.get("ev") != "status"]

    def statuses(self) -> list[tuple[object, object]]:
        return [(m["status"], m["message"]) for m in self.messages() if m.get("ev") == "status"]


@dataclass
class Core:
    """Hub, cache, demand and outbox wired as the relay wires them, on a fake clock."""

    hub: Hub
    cache: Cache
    demand: Demand
    outbox: Outbox
    dropped: list[Member] = field(default_factory=list)  # members whose connection the outbox closed

    def route(self, market: str, payload: bytes) -> None:
        """One upstream frame, as ``Relay.feed_events`` takes it."""
        heads, raws = decode_frame(payload)
        self.cache[market].record(heads, raws)
        self.hub.route(market, heads, raws)

    def member(
        self, tags_markets: bool = False, conflates: bool = False, deflate: bool = False
    ) -> tuple[Member, RecordingSink]:
        sink = RecordingSink()
        m = Member(
            sink.write, sink.buffered, sink, tags_markets=tags_markets, conflates=conflates, deflate=deflate
        )

        def closed() -> None:
            self.dropped.append(m)
            self.hub.detach(m)

        sink.on_close = closed
        self.hub.attach(m)
        return m, sink

    def sync(self) -> dict[str, list[str]]:
        """The upstream changes due, applied to the cache as ``Relay._sync_upstream`` does."""
        changes = {}
        for market, plan in self.demand.plans().items():
            if plan.unsubscribe:
                gone = [parse_channel(name, market) for name in plan.unsubscribe]
                self.cache[market].forget(gone, self.demand.is_wanted)
            changes[market] = plan.subscribe + [f"-{n}" for n in plan.unsubscribe]
        return changes

    def context(self, tokens: list[str] | None = None) -> SessionContext:
        return SessionContext(
            hub=self.hub,
            cache=self.cache,
            tokens=TokenCheck(tokens or []),
            max_frame_payload=self.outbox.max_frame_payload,
        )

    def session(self, market: str | None = "stocks", tokens: list[str] | None = None) -> ClientSession:
        m, _ = self.member(tags_markets=market is None)
        return ClientSession(self.context(tokens), m, market)


def make_core(
    markets: tuple[str, ...] = ("stocks", "options", "futures"),
    max_client_buffer: int = 1 << 20,
    max_channels: int = 100,
    max_frame_payload: int = 64 * 1024,
    history_size: int = 500,
    linger: float = 0.0,
    conflation: ConflationPolicy | None = None,
    clock: Callable[[], float] = lambda: 0.0,
    deflater: SharedDeflater | None = None,
) -> Core:
    cache = Cache(markets, history_size)
    demand = Demand(markets, linger, lambda: 0.0, on_first=cache.watch, on_last=cache.unwatch)
    outbox = Outbox(max_frame_payload, max_client_buffer, deflater)
    hub = Hub(markets, outbox, demand, max_channels, conflation=conflation, clock=clock)
    return Core(hub, cache, demand, outbox)


class RecordingFeed:
    """A Massive feed stand-in: live on demand, records the plans it is given."""

    def __init__(self, market: str) -> None:
        self.market = market
        self.stats = FeedStatistics()
        self.sent: list[tuple[list[str], list[str]]] = []
        self.live = True
        self.where = "recording"
        self.refused: str | None = None
        self.started = False
        self.stopped = False

    def start(self) -> None:
        self.started, self.stopped = True, False

    async def stop(self) -> None:
        self.started, self.stopped = False, True

    def send_subscriptions(self, subscribe: list[str], unsubscribe: list[str]) -> None:
        self.sent.append((subscribe, unsubscribe))
