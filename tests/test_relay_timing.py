"""The relay's timing without sockets: flush policy and one upstream message per pass."""

from __future__ import annotations

import asyncio

import orjson

from fastrelay.events import decode_frame
from fastrelay.protocol import Channel
from fastrelay.relay import Relay
from fastrelay.session import ClientSession, TokenCheck
from tests.sinks import RecordingSink
from tests.utils import TIMEOUT, fast_relay_config


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
    relay.upstreams["stocks"] = recorder  # type: ignore[assignment]
    return relay, recorder


def client(relay: Relay) -> tuple[ClientSession, RecordingSink]:
    from fastrelay.hub import Member

    sink = RecordingSink()
    member = Member(sink.write, sink.buffered)
    relay.hub.attach(member)
    session = ClientSession(relay.hub, member, "stocks", TokenCheck([]), relay.interest_changed)
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
    sessions[0].closed()
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
    relay.upstream_events("stocks", *frame(1), 0.0, False)
    relay.upstream_events("stocks", *frame(2), 0.0, False)
    assert sink.writes == []
    relay.upstream_events("stocks", *frame(3), 0.0, True)
    assert len(sink.writes) == 1 and [e["q"] for e in sink.events()] == [1, 2, 3]


async def test_flush_window_coalesces_reads() -> None:
    """A flush window collects several reads into one write when it closes."""
    relay, _ = relay_with_recorder(flush_interval=20.0)
    session, sink = client(relay)
    relay.hub.subscribe(session.member, [Channel("stocks", "T", "*")])
    flushed = asyncio.Event()
    original = relay.hub.flush

    def flush_and_signal() -> None:
        original()
        flushed.set()

    relay.hub.flush = flush_and_signal  # type: ignore[method-assign]
    for q in range(5):
        relay.upstream_events("stocks", *frame(q), 0.0, True)
    assert sink.writes == []
    await asyncio.wait_for(flushed.wait(), TIMEOUT)
    assert len(sink.writes) == 1 and [e["q"] for e in sink.events()] == list(range(5))
