"""The ingest's and the edge's logic without NATS: a fake link, a fake clock, recording feeds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import msgspec
import orjson
import pytest

from fastrelay.closes import CloseReason
from fastrelay.events import decode_frame
from fastrelay.member import Member
from fastrelay.protocol import Channel
from fastrelay.scaleout import messages
from fastrelay.scaleout.edge import INGEST_SILENT, NATS_DOWN, Edge
from fastrelay.scaleout.ingest import Ingest
from fastrelay.scaleout.subjects import open_envelope, seal
from fastrelay.session import ClientSession, SessionContext, TokenCheck
from tests.fakelink import FakeLink
from tests.sinks import RecordingFeed, RecordingSink
from tests.utils import TIMEOUT, fast_relay_config, wait_until


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def config(role: str) -> Any:
    return replace(
        fast_relay_config("ws://127.0.0.1:9", "k", markets=("stocks", "options")),
        role=role,
        instance_name=f"{role}-1",
        heartbeat_interval=1.0,
        peer_timeout=5.0,
        nats_window=0.0,
    )


@pytest.fixture
async def ingest() -> AsyncIterator[tuple[Ingest, FakeLink, Clock]]:
    link, clock = FakeLink(), Clock()
    role = Ingest(config("ingest"), link=link, clock=clock)
    for market in role.relay.feeds:
        role.relay.feeds[market] = RecordingFeed(market)  # type: ignore[assignment]
    await link.connect()
    await wait_until(lambda: role.leading, what="the lease")
    yield role, link, clock
    await role.stop()


def interest(edge: str, channels: dict[str, list[str]], incarnation: str = "i1") -> bytes:
    return messages.encode(messages.EdgeInterest(edge, channels, 1, incarnation))


async def settle() -> None:
    """Let the loop run the callbacks scheduled for the end of this pass."""
    for _ in range(3):
        await asyncio.sleep(0)


async def test_ingest_turns_edge_interest_into_references_and_one_plan(ingest: Any) -> None:
    """Two edges wanting T.AAPL: one upstream subscription, two references; both leaving: unsubscribed."""
    role, link, _ = ingest
    await link.deliver("fastrelay.interest", interest("a", {"stocks": ["T.AAPL", "Q.MSFT"]}))
    await link.deliver("fastrelay.interest", interest("b", {"stocks": ["T.AAPL"]}))
    await settle()
    feed = role.relay.feeds["stocks"]
    assert feed.sent == [(["Q.MSFT", "T.AAPL"], [])]
    assert role.relay.demand["stocks"].refcount("T.AAPL") == 2
    for edge in ("a", "b"):
        await link.deliver("fastrelay.interest", interest(edge, {}))
    await settle()
    assert role.relay.demand["stocks"].wanted() == {"Q.MSFT", "T.AAPL"}  # lingering
    assert role.relay.demand["stocks"].refcount("T.AAPL") == 0


async def test_ingest_refuses_bad_channels_unserved_markets_and_strangers(ingest: Any) -> None:
    """Malformed names and markets it does not serve are counted and skipped; garbage is a bad message."""
    role, link, _ = ingest
    await link.deliver(
        "fastrelay.interest", interest("a", {"stocks": ["T.AA PL", "T.MSFT"], "crypto": ["XT.*"]})
    )
    await settle()
    assert role.refused == 2
    assert role.relay.demand["stocks"].refcount("T.MSFT") == 1
    await link.deliver("fastrelay.interest", b"not json")
    state = messages.encode(messages.IngestState("x", "batch", {}))
    await link.deliver("fastrelay.interest", state)  # a valid message of the wrong kind
    assert link.stats.bad_messages == 2


async def test_ingest_expires_silent_edges_except_while_it_was_cut_off(ingest: Any) -> None:
    """An edge silent past --peer-timeout loses its references; silence during our outage does not count."""
    role, link, clock = ingest
    await link.deliver("fastrelay.interest", interest("a", {"stocks": ["T.AAPL"]}))
    link.disconnect()
    ticks(role, clock, 60)
    assert role.relay.demand["stocks"].refcount("T.AAPL") == 1
    await link.connect()  # grace: every edge's clock restarts
    ticks(role, clock, 4)
    assert role.relay.demand["stocks"].refcount("T.AAPL") == 1
    ticks(role, clock, 2)
    assert role.relay.demand["stocks"].refcount("T.AAPL") == 0
    assert role.registry.expired_total == 1 and role.stalls == 0


def ticks(role: Ingest, clock: Clock, seconds: int) -> None:
    """The ingest's once-a-second check, ``seconds`` times, as its running loop does it."""
    for _ in range(seconds):
        clock.now += 1.0
        role.expire_silent_edges()


async def test_ingest_frozen_past_the_peer_timeout_keeps_its_edges(ingest: Any) -> None:
    """Bug: a SIGSTOPped ingest dropped every edge when it resumed. Its own freeze is not
    the edges' silence: their clocks restart, and only a silence after it counts."""
    role, link, clock = ingest
    await link.deliver("fastrelay.interest", interest("a", {"stocks": ["T.AAPL"]}))
    clock.now += 10.0  # no tick ran: the loop was frozen
    role.expire_silent_edges()
    assert role.relay.demand["stocks"].refcount("T.AAPL") == 1 and role.stalls == 1
    ticks(role, clock, 6)  # then a real silence
    assert role.relay.demand["stocks"].refcount("T.AAPL") == 0


async def test_ingest_publishes_one_message_per_subject_per_window(ingest: Any) -> None:
    """Frames of one pass leave as one NATS message per subject, events in arrival order."""
    role, link, _ = ingest
    role.start()
    for q in range(3):
        role.events("stocks", *decode_frame(orjson.dumps([{"ev": "T", "sym": "AAPL", "q": q}])))
    role.events("stocks", *decode_frame(orjson.dumps([{"ev": "Q", "sym": "AAPL", "q": 0}])))
    await wait_until(lambda: len(link.sent_on("fastrelay.data.stocks.Q")) == 1, what="a publishing pass")
    [trades] = link.sent_on("fastrelay.data.stocks.T")
    term, _, body = open_envelope(trades)
    assert [e["q"] for e in orjson.loads(bytes(body))] == [0, 1, 2] and term == role.election.term > 0
    assert link.stats.published == 2


async def test_ingest_answers_snapshots_and_reports_market_states(ingest: Any) -> None:
    """A snapshot request gets the kept last value; the heartbeat says each market's state."""
    role, link, _ = ingest
    await link.deliver("fastrelay.interest", interest("a", {"stocks": ["Q.AAPL"]}))
    quote = b'{"ev":"Q","sym":"AAPL","q":7}'
    role.relay.feed_events("stocks", *decode_frame(b"[" + quote + b"]"), 0.0, True)
    request = messages.encode(messages.SnapshotRequest("stocks", last=["Q.AAPL", "Q.MSFT"]))
    answered = await link.deliver("fastrelay.snapshot", request, reply="_INBOX.1")
    assert answered.answer is not None
    reply = messages.decode(answered.answer)
    assert isinstance(reply, messages.SnapshotReply) and bytes(reply.last["Q.AAPL"]) == quote
    role.relay.feeds["options"].live = False
    role.relay.outages["options"] = "auth_failed"
    state = messages.decode(role._state())
    assert isinstance(state, messages.IngestState)
    assert state.markets == {"stocks": messages.LIVE, "options": "auth_failed"}


# --- the edge ------------------------------------------------------------------------------------


@pytest.fixture
async def edge() -> AsyncIterator[tuple[Edge, FakeLink, Clock]]:
    link, clock = FakeLink(), Clock()
    role = Edge(config("edge"), link=link, clock=clock)
    await link.connect()
    yield role, link, clock
    await role.stop()


def ingest_state(
    markets: dict[str, str], granularity: str = "batch", name: str = "ingest-1", term: int = 0
) -> bytes:
    version = messages.VERSION if term else 1
    return messages.encode(messages.IngestState(name, granularity, markets, {}, term, version))


def looks(role: Edge, clock: Clock, seconds: float) -> None:
    """The edge's looks at the ingest, four per --ingest-timeout, for ``seconds``."""
    step = role.config.ingest_timeout / 4
    for _ in range(round(seconds / step)):
        clock.now += step
        role.check_ingest()


def client(relay: Any, market: str = "stocks") -> tuple[ClientSession, RecordingSink]:
    sink = RecordingSink()
    member = Member(sink.write, sink.buffered, sink)
    relay.hub.attach(member)
    context = SessionContext(
        relay.hub, relay.cache, TokenCheck([]), 1 << 20, relay.outages, fills=relay.fills
    )
    session = ClientSession(context, member, market)
    session.receive(b'{"action":"auth","params":"x"}')
    return session, sink


async def test_edge_markets_follow_the_ingest_nats_and_silence(edge: Any) -> None:
    """Live once the ingest says so; down with the ingest's reason, on silence, or without NATS."""
    role, link, clock = edge
    assert role.refusal() == "no ingest heard on NATS"
    await link.deliver("fastrelay.ingest", ingest_state({"stocks": "live", "options": "auth_failed"}))
    assert role.feeds["stocks"].live and not role.feeds["options"].live
    # Massive refuses the ingest's options (its key or plan): reported, not waited for.
    assert role.refusal() is None and role.not_ready_reason() is None
    assert role.readiness_notes() == ["options: refused by Massive (auth_failed)"]
    await link.deliver("fastrelay.ingest", ingest_state({"stocks": "live", "options": "live"}))
    assert role.not_ready_reason() is None
    looks(role, clock, 1.25)  # --ingest-timeout 1 s of silence, looked at 4 times a second
    assert role.relay.outages == {"stocks": INGEST_SILENT, "options": INGEST_SILENT}
    await link.deliver("fastrelay.ingest", ingest_state({"stocks": "live", "options": "live"}))
    assert role.relay.outages == {}
    link.disconnect()
    assert role.relay.outages == {"stocks": NATS_DOWN, "options": NATS_DOWN}
    assert role.refusal() == "NATS nats://fake:4222 not connected"


async def test_edge_subscribes_and_announces_the_plan_it_was_given(edge: Any) -> None:
    """A client's channels become the edge's interest at the ingest and its NATS data subscriptions."""
    role, link, _ = edge
    await link.deliver("fastrelay.ingest", ingest_state({"stocks": "live", "options": "live"}))
    session, _ = client(role.relay)
    session.receive(b'{"action":"subscribe","params":"T.AAPL,Q.*"}')
    await wait_until(lambda: "fastrelay.data.stocks.T" in link.subscribed, what="data subscriptions")
    assert set(link.subscribed) == {"fastrelay.data.stocks.T", "fastrelay.data.stocks.Q"}
    announced = messages.decode(link.sent_on("fastrelay.interest")[-1])
    assert isinstance(announced, messages.EdgeInterest)
    assert announced.channels == {"stocks": ["Q.*", "T.AAPL"], "options": []}
    session.leave()
    await asyncio.sleep(0.25)  # the test config's linger (0.2 s)
    await wait_until(lambda: not link.subscribed, what="unsubscribed after the linger")


async def test_edge_routes_data_messages_and_counts_bad_ones(edge: Any) -> None:
    """A sealed data message reaches the client's frames; a torn one is counted and skipped."""
    role, link, _ = edge
    await link.deliver("fastrelay.ingest", ingest_state({"stocks": "live", "options": "live"}))
    session, sink = client(role.relay)
    session.receive(b'{"action":"subscribe","params":"T.AAPL"}')
    await wait_until(lambda: "fastrelay.data.stocks.T" in link.subscribed, what="subscribed")
    trade = b'{"ev":"T","sym":"AAPL","q":1}'
    await link.deliver("fastrelay.data.stocks.T", seal(b"[" + trade + b"]", time.time(), 0))
    await wait_until(lambda: any(e.get("q") == 1 for e in sink.events()), what="the trade")
    await link.deliver("fastrelay.data.stocks.T", b"short")
    await link.deliver("fastrelay.data.stocks.T", seal(b"[{not json", time.time(), 0))
    assert link.stats.bad_messages == 2
    assert role.feeds["stocks"].stats.events == 1


async def test_edge_fills_a_new_subscriber_and_defers_history_until_the_fetch_is_in(edge: Any) -> None:
    """Nothing kept here: the last value and history come from the ingest; history waits for them."""
    role, link, _ = edge
    await link.deliver("fastrelay.ingest", ingest_state({"stocks": "live", "options": "live"}))
    candle = b'{"ev":"AM","sym":"AAPL","s":1,"q":1}'

    def answer(subject: str, data: bytes) -> bytes:
        return messages.encode(
            messages.SnapshotReply(last={"AM.AAPL": _raw(candle)}, history={"AM.AAPL": [_raw(candle)]})
        )

    link.answer = answer
    session, sink = client(role.relay)
    reply = session.receive(b'{"action":"subscribe","params":"AM.AAPL"}')
    history = session.receive(b'{"action":"history","params":"AM.AAPL"}')
    assert history.later is not None and history.frames == []  # deferred: a fetch is on its way
    role.relay.outbox.send(session.member, reply.frames)
    delivered: list[Any] = []
    role.fills.when_filled([Channel("stocks", "AM", "AAPL")], lambda: delivered.append(history.later.build()))
    await wait_until(lambda: bool(delivered), timeout=TIMEOUT, what="the fetch")
    assert [e["q"] for e in sink.events()] == [1]  # the last value, written by the fill
    assert orjson.loads(next(delivered[0].more)) == [orjson.loads(candle)]
    assert role.fills.delivered == 1


async def test_edge_drops_fills_that_arrive_during_an_outage(edge: Any) -> None:
    """A fetched value from before an outage would be stale: not stored, not sent."""
    role, link, _ = edge
    await link.deliver("fastrelay.ingest", ingest_state({"stocks": "live", "options": "live"}))
    answered = asyncio.Event()

    def answer(subject: str, data: bytes) -> bytes:
        answered.set()
        return messages.encode(messages.SnapshotReply(last={"Q.AAPL": _raw(b'{"ev":"Q","sym":"AAPL"}')}))

    link.answer = answer
    session, sink = client(role.relay)
    session.receive(b'{"action":"subscribe","params":"Q.AAPL"}')
    await link.deliver("fastrelay.ingest", ingest_state({"stocks": "drop", "options": "live"}))
    await asyncio.wait_for(answered.wait(), TIMEOUT)
    await settle()
    assert sink.events() == []
    assert role.relay.cache["stocks"].last_value("Q", "AAPL") is None
    assert session.member.closed is False and CloseReason.SLOW_CONSUMER not in [c for c, _ in sink.closes]


def _raw(data: bytes) -> msgspec.Raw:
    return msgspec.Raw(data)


async def test_ingest_tells_the_edges_what_massive_refused_and_refuses_it_again(ingest: Any) -> None:
    """Massive refuses Q.AAPL: the ingest lets it go, names it in its state for the edges,
    and an edge heartbeat offering it again is refused, not asked of Massive again."""
    role, link, _ = ingest
    await link.deliver("fastrelay.interest", interest("a", {"stocks": ["T.AAPL", "Q.AAPL"]}))
    await settle()
    feed = role.relay.feeds["stocks"]
    role.relay.feed_rejected(feed, [("Q.AAPL", "not authorized")])
    state = messages.decode(role._state())
    assert isinstance(state, messages.IngestState)
    assert state.rejected == {"stocks": {"Q.AAPL": "not authorized"}}
    assert role.relay.demand["stocks"].refcount("Q.AAPL") == 0
    refused_before = role.refused
    await link.deliver("fastrelay.interest", interest("a", {"stocks": ["T.AAPL", "Q.AAPL"]}))
    await settle()
    assert role.relay.demand["stocks"].refcount("Q.AAPL") == 0
    assert role.refused == refused_before + 1
    assert role.relay.demand["stocks"].refcount("T.AAPL") == 1
    assert all("Q.AAPL" not in subscribe for subscribe, _ in feed.sent[1:])


async def test_edge_clients_hear_of_a_refusal_in_the_ingest_state(edge: Any) -> None:
    """The ingest's state names Q.AAPL as refused: the edge's client holding it is told
    in Massive's words, the edge lets it go, and the next client is refused at once."""
    role, link, _ = edge
    await link.deliver("fastrelay.ingest", ingest_state({"stocks": "live", "options": "live"}))
    session, sink = client(role.relay)
    session.receive(b'{"action":"subscribe","params":"T.AAPL,Q.AAPL"}')
    await wait_until(lambda: "fastrelay.data.stocks.Q" in link.subscribed, what="subscribed")
    state = messages.IngestState("ingest-1", "batch", {"stocks": "live", "options": "live"})
    state.rejected = {"stocks": {"Q.AAPL": "not authorized", "Q.MSFT": "not authorized"}}
    await link.deliver("fastrelay.ingest", messages.encode(state))
    assert ("error", "Q.AAPL: not authorized") in sink.statuses()
    assert not any("Q.MSFT" in str(message) for _, message in sink.statuses())  # held by nobody here
    await wait_until(lambda: "fastrelay.data.stocks.Q" not in link.subscribed, what="let go")
    other, _ = client(role.relay)
    reply = other.receive(b'{"action":"subscribe","params":"Q.AAPL"}')
    answers = [(m["status"], m["message"]) for frame in reply.frames for m in orjson.loads(frame)]
    assert answers == [("error", "Q.AAPL: not authorized")]
