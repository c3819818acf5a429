"""Micro-benchmarks of the hot paths, without sockets (`make bench-micro`).

Each case mirrors a `make bench` scenario at the scale of one flush, so a
regression shows here first: decoding a frame, routing a pass, building the
per-audience frames and writing them to 100 (recording) sinks.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from fastrelay.cache import Cache
from fastrelay.closes import CloseReason
from fastrelay.deflate import SharedDeflater
from fastrelay.events import decode_frame
from fastrelay.framing import event_array_frames
from fastrelay.hub import Hub
from fastrelay.interest import Demand
from fastrelay.member import Member
from fastrelay.outbox import Outbox
from fastrelay.protocol import Channel


def trade(symbol: str, q: int) -> dict[str, Any]:
    return {
        "ev": "T",
        "sym": symbol,
        "x": 4,
        "i": "12345",
        "z": 3,
        "p": 114.125,
        "s": 100,
        "c": [0, 12],
        "t": 1536036818784,
        "q": q,
    }


SINGLE = orjson.dumps([trade("AAPL", 1)])
BATCH20 = orjson.dumps([trade(f"S{i % 100:04d}", i) for i in range(20)])


class NullSink:
    """A socket and connection stand-in that costs as little as possible."""

    def write(self, data: bytes) -> None:
        pass

    def buffered(self) -> int:
        return 0

    def describe(self) -> str:
        return "null"

    def close(self, reason: CloseReason, message: str) -> None:
        pass

    def charge_loop_time(self, seconds: float) -> bool:
        return True


class Core:
    """The relay's data path without sockets: cache and hub, writing through an outbox."""

    def __init__(self, deflater: SharedDeflater | None = None) -> None:
        self.cache = Cache(("stocks",), 500)
        self.outbox = Outbox(256 * 1024, 1 << 22, deflater)
        demand = Demand(("stocks",), 0.0, lambda: 0.0, on_first=self.cache.watch, on_last=self.cache.unwatch)
        self.hub = Hub(("stocks",), self.outbox, demand, 2000)

    def route(self, heads: Any, raws: Any) -> None:
        """What Relay.feed_events does with one frame before the flush."""
        self.cache["stocks"].record(heads, raws)
        self.hub.route("stocks", heads, raws)


def hub_with(clients: int, channel_of: Any, deflate: bool = False) -> Core:
    """``clients`` members; with ``deflate``, a relay that compresses and members that negotiated it."""
    core = Core(SharedDeflater(6, 256, 1e9) if deflate else None)
    sink = NullSink()
    for index in range(clients):
        member = Member(sink.write, sink.buffered, sink, deflate=deflate)
        core.hub.attach(member)
        core.hub.subscribe(member, [channel_of(index)])
    return core


@pytest.mark.parametrize("payload", [SINGLE, BATCH20], ids=["1-event", "20-events"])
def test_decode_frame(benchmark: Any, payload: bytes) -> None:
    heads, _ = benchmark(decode_frame, payload)
    assert len(heads) in (1, 20)


@pytest.mark.parametrize("deflate", [False, True], ids=["plain", "deflate"])
def test_firehose_route_and_flush_100_clients(benchmark: Any, deflate: bool) -> None:
    """Scenario (a) per flush: 10 single-event frames to 100 clients on T.*; with ``deflate``
    every client negotiated compression (the 10 events, ~1.2 KB, are compressed once)."""
    core = hub_with(100, lambda i: Channel("stocks", "T", "*"), deflate)
    frames = [decode_frame(orjson.dumps([trade("AAPL", q)])) for q in range(10)]

    def one_flush() -> None:
        for heads, raws in frames:
            core.route(heads, raws)
        core.hub.flush()

    benchmark(one_flush)
    assert core.outbox.stats.deliveries > 0
    if deflate:
        assert core.outbox.deflater is not None and core.outbox.deflater.stats.frames > 0


@pytest.mark.parametrize("deflate", [False, True], ids=["plain", "deflate"])
def test_sparse_route_and_flush_1000_clients(benchmark: Any, deflate: bool) -> None:
    """Scenario (b) per flush: a 20-event frame over 100 symbols, 1,000 clients on one symbol each
    (with ``deflate``: every frame is one event, under the threshold, sent plain)."""
    core = hub_with(1000, lambda i: Channel("stocks", "T", f"S{i % 100:04d}"), deflate)
    heads, raws = decode_frame(BATCH20)

    def one_flush() -> None:
        core.route(heads, raws)
        core.hub.flush()

    benchmark(one_flush)
    assert core.outbox.stats.deliveries > 0


def test_build_frames(benchmark: Any) -> None:
    _, raws = decode_frame(BATCH20)
    frames = benchmark(event_array_frames, list(raws), 256 * 1024)
    assert len(frames) == 1
