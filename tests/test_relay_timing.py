"""The relay's timing without sockets: flush policy and one upstream message per pass."""

from __future__ import annotations

import asyncio
import time

import orjson

from fastrelay.events import decode_frame
from fastrelay.member import Member
from fastrelay.protocol import Channel
from fastrelay.relay import Relay
from fastrelay.session import ClientSession, SessionContext, TokenCheck
from tests.sinks import RecordingSink
from tests.utils import TIMEOUT, fast_relay_config, wait_until


class RecordingUpstream:
    """Stands in for an UpstreamSession: records what would go upstream."""

    def __init__(self) -> None:
        self.sent: list[tuple[list[str], list[str]]] = []
        self.changed = asyncio.Event()

    def send_subscriptions(self, subscribe: list[str], unsubscribe: list[str]) -> None:
        self.sent.append((subscribe, unsubscribe))
        self.changed.set()


def relay_with_recorder(**overrides: object) -> tuple[Relay, RecordingUpstream]:
    relay = Relay(fast_relay_config("ws://127.0.0.1:9", "k", markets=("stocks",), **overrides))
    recorder = RecordingUpstream()
    relay.feeds["stocks"] = recorder  # type: ignore[assignment]
    return relay, recorder


def client(relay: Relay) -> tuple[ClientSession, RecordingSink]:
    sink = RecordingSink()
    member = Member(sink.write, sink.buffered, sink)
    relay.hub.attach(member)
    context = SessionContext(relay.hub, relay.cache, TokenCheck([]), relay.config.max_frame_size)
    session = ClientSession(context, member, "stocks")
    session.receive(b'{"action":"auth","params":"x"}')
    return session, sink


async def test_changes_of_one_pass_go_upstream_as_one_message_per_direction() -> None:
    """Three clients subscribing in one pass of the loop cause one subscribe message."""
    relay, upstream = relay_with_recorder(linger=0.0)
    sessions = [client(relay)[0] for _ in range(3)]
    for session, params in zip(sessions, ["T.AAPL", "T.MSFT,Q.AAPL", "T.AAPL"], strict=True):
        session.receive(orjson.dumps({"action": "subscribe", "params": params}))
    assert upstream.sent == []  # nothing before the end of the pass
    await asyncio.wait_for(upstream.changed.wait(), TIMEOUT)
    assert upstream.sent == [(["Q.AAPL", "T.AAPL", "T.MSFT"], [])]
    upstream.changed.clear()
    sessions[0].leave()
    sessions[1].receive(b'{"action":"unsubscribe","params":"T.MSFT,Q.AAPL"}')
    await asyncio.wait_for(upstream.changed.wait(), TIMEOUT)
    assert upstream.sent[1] == ([], ["Q.AAPL", "T.MSFT"])  # T.AAPL still held by the third client


async def test_linger_expiry_unsubscribes_upstream() -> None:
    """The last unsubscribe goes upstream only when the linger timer fires."""
    relay, upstream = relay_with_recorder(linger=0.05)
    session, _ = client(relay)
    session.receive(b'{"action":"subscribe","params":"T.AAPL"}')
    await asyncio.wait_for(upstream.changed.wait(), TIMEOUT)
    upstream.changed.clear()
    session.receive(b'{"action":"unsubscribe","params":"T.AAPL"}')
    start = relay.loop.time()
    await asyncio.wait_for(upstream.changed.wait(), TIMEOUT)
    assert upstream.sent[-1] == ([], ["T.AAPL"])
    assert relay.loop.time() - start >= 0.05 * 0.9


def frame(q: int) -> tuple[list, list]:  # type: ignore[type-arg]
    return decode_frame(orjson.dumps([{"ev": "T", "sym": "AAPL", "q": q}]))


async def test_zero_flush_interval_flushes_at_the_end_of_each_read() -> None:
    """flush_interval 0: frames of one read leave together when the last one is handled."""
    relay, _ = relay_with_recorder(flush_interval=0.0)
    session, sink = client(relay)
    relay.hub.subscribe(session.member, [Channel("stocks", "T", "*")])
    relay.feed_events("stocks", *frame(1), time.perf_counter(), False)
    relay.feed_events("stocks", *frame(2), time.perf_counter(), False)
    assert sink.writes == []
    relay.feed_events("stocks", *frame(3), time.perf_counter(), True)
    assert len(sink.writes) == 1 and [e["q"] for e in sink.events()] == [1, 2, 3]


async def test_flush_window_has_a_leading_edge_then_coalesces() -> None:
    """A quiet audience is written at once; events within its window leave together when it ends."""
    relay, _ = relay_with_recorder(flush_interval=20.0)
    session, sink = client(relay)
    relay.hub.subscribe(session.member, [Channel("stocks", "T", "*")])
    for q in range(5):
        relay.feed_events("stocks", *frame(q), time.perf_counter(), True)
    assert [e["q"] for e in sink.events()] == [0]  # leading edge: no window for the first
    await wait_until(lambda: len(sink.writes) == 2, what="the window's write")
    assert [e["q"] for e in sink.events()] == [0, 1, 2, 3, 4]


async def test_sparse_audiences_pay_no_window() -> None:
    """Different audiences, each quiet, are each written at the end of the read."""
    relay, _ = relay_with_recorder(flush_interval=1000.0)
    (a, a_sink), (b, b_sink) = client(relay), client(relay)
    relay.hub.subscribe(a.member, [Channel("stocks", "T", "AAPL")])
    relay.hub.subscribe(b.member, [Channel("stocks", "T", "MSFT")])
    payload = orjson.dumps([{"ev": "T", "sym": "AAPL", "q": 1}])
    relay.feed_events("stocks", *decode_frame(payload), time.perf_counter(), True)
    payload = orjson.dumps([{"ev": "T", "sym": "MSFT", "q": 1}])
    relay.feed_events("stocks", *decode_frame(payload), time.perf_counter(), True)
    assert len(a_sink.writes) == 1 and len(b_sink.writes) == 1
