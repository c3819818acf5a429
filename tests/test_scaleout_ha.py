"""High availability of the scale-out without NATS: the lease, the election, fencing at the
ingests and at the edges (fake links sharing one fake key-value bucket, real time, short leases)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import orjson
import pytest

from fastrelay.events import decode_frame
from fastrelay.member import Member
from fastrelay.scaleout import election, messages
from fastrelay.scaleout.edge import STALE, Edge
from fastrelay.scaleout.election import Election, Lease
from fastrelay.scaleout.ingest import Ingest
from fastrelay.scaleout.subjects import open_envelope, seal
from fastrelay.session import ClientSession, SessionContext, TokenCheck
from tests.fakelink import FakeKeyValue, FakeLeaseStore, FakeLink
from tests.sinks import RecordingFeed, RecordingSink
from tests.utils import fast_relay_config, wait_until

TTL = 0.4  # short leases: these tests run in real time


def test_the_lease_ends_before_the_servers_copy() -> None:
    """The deadline counts from when the renewal was asked for, minus a margin: a leader
    always stops before the key can expire on the server and another ingest win it."""
    lease = Lease(ttl=1.5, margin=0.25)
    assert not lease.held(0.0) and lease.term == 0
    lease.won(revision=7, asked_at=10.0)
    assert lease.term == 7 and lease.held(11.2) and not lease.held(11.25)
    lease.renewed(revision=9, asked_at=11.0)
    assert lease.term == 7 and lease.revision == 9 and lease.held(12.2)
    assert lease.lose() == 9 and lease.term == 0 and not lease.held(11.5)


def test_bucket_names_are_valid_for_any_prefix() -> None:
    assert election.bucket_name("fastrelay") == "fastrelay_leader"
    assert election.bucket_name("fast-relay.prod#2") == "fast-relay_prod_2_leader"


class Campaign:
    """An ``Election`` on a fake store, recording what it was told."""

    def __init__(self, kv: FakeKeyValue, name: str) -> None:
        self.store = FakeLeaseStore(kv)
        self.events: list[tuple[str, Any, float]] = []
        self.election = Election(name.encode(), kv.ttl, time.monotonic, self._elected, self._deposed)

    def _elected(self, term: int) -> None:
        self.events.append(("elected", term, time.monotonic()))

    async def _deposed(self, reason: str) -> None:
        self.events.append(("deposed", reason, time.monotonic()))

    def start(self) -> None:
        self.election.attach(self.store)

    def crash(self) -> None:
        """kill -9: the campaign stops, nothing is deleted, the key expires on its own."""
        task = self.election._task
        assert task is not None
        task.cancel()


@pytest.fixture
async def kv() -> AsyncIterator[FakeKeyValue]:
    yield FakeKeyValue(time.monotonic, ttl=TTL)


async def test_one_of_two_wins_and_the_other_takes_over_after_a_crash(kv: FakeKeyValue) -> None:
    """Bug: a second ingest doubled every event. Now one leads; the standby waits; when the
    leader dies (no goodbye) the standby wins once the lease ran out, with a higher term."""
    a, b = Campaign(kv, "a"), Campaign(kv, "b")
    a.start()
    await wait_until(a.election.leading, what="a leads")
    b.start()
    await asyncio.sleep(TTL * 1.5)  # several retries and renewals
    assert a.election.leading() and not b.election.leading() and b.events == []
    first = a.election.term
    a.crash()
    crashed = time.monotonic()
    await wait_until(b.election.leading, what="b takes over")
    assert b.election.term > first
    took = b.events[0][2] - crashed
    assert TTL - 0.3 < took < TTL + 0.5, took  # after the lease, within a retry or two of it


async def test_a_resigning_leader_hands_over_at_once(kv: FakeKeyValue) -> None:
    """A graceful stop deletes the key: the watching standby wins without waiting for the TTL."""
    a, b = Campaign(kv, "a"), Campaign(kv, "b")
    a.start()
    await wait_until(a.election.leading, what="a leads")
    b.start()
    await asyncio.sleep(0.05)
    resigned = time.monotonic()
    await a.election.resign()
    assert a.events[-1][:2] == ("deposed", election.RESIGNED)
    await wait_until(b.election.leading, what="b takes over")
    assert b.events[0][2] - resigned < TTL / 2


async def test_a_partitioned_leader_steps_down_before_anyone_else_can_win(kv: FakeKeyValue) -> None:
    """Cut off from JetStream, the leader cannot renew: its own deadline deposes it before the
    key expires on the server, so two leaders never overlap."""
    a, b = Campaign(kv, "a"), Campaign(kv, "b")
    a.start()
    await wait_until(a.election.leading, what="a leads")
    b.start()
    a.store.cut = True
    await wait_until(b.election.leading, what="b takes over")
    deposed = [e for e in a.events if e[0] == "deposed"]
    assert deposed and deposed[0][1] == election.LEASE_EXPIRED
    assert deposed[0][2] < b.events[0][2]  # a stopped before b started
    assert a.election.renewals_failed >= 1
    a.store.cut = False
    await asyncio.sleep(TTL)
    assert not a.election.leading() and b.election.leading()  # a is a standby now


async def test_a_refused_renewal_deposes_at_once(kv: FakeKeyValue) -> None:
    """The key moved on (another writer): the CAS fails and the leader steps down."""
    a = Campaign(kv, "a")
    a.start()
    await wait_until(a.election.leading, what="a leads")
    kv.revision += 1  # someone else wrote the key
    await wait_until(lambda: not a.election.leading(), what="a deposed")
    assert ("deposed", election.LEASE_TAKEN) in [e[:2] for e in a.events]


# --- the ingest --------------------------------------------------------------------------


def role_config(role: str, name: str) -> Any:
    return replace(
        fast_relay_config("ws://127.0.0.1:9", "k", markets=("stocks",)),
        role=role,
        instance_name=name,
        heartbeat_interval=1.0,
        peer_timeout=5.0,
        nats_window=0.0,
        lease_ttl=TTL,
        ingest_timeout=0.2,
    )


async def make_ingest(kv: FakeKeyValue, name: str) -> tuple[Ingest, FakeLink]:
    link = FakeLink(kv)
    role = Ingest(role_config("ingest", name), link=link)
    role.relay.feeds["stocks"] = RecordingFeed("stocks")  # type: ignore[assignment]
    role.start()
    await link.connect()
    return role, link


def interest(edge: str, channels: list[str]) -> bytes:
    return messages.encode(messages.EdgeInterest(edge, {"stocks": channels}, 1, "i1", messages.VERSION))


def trade(q: int) -> bytes:
    return orjson.dumps([{"ev": "T", "sym": "AAPL", "q": q}])


async def test_standby_follows_the_edges_and_leads_after_the_leader_dies(kv: FakeKeyValue) -> None:
    """Only the leader connects upstream and publishes; the standby holds the edges' interest
    without a connection, and on taking over connects with all of it at once."""
    a, link_a = await make_ingest(kv, "a")
    await wait_until(lambda: a.leading, what="a leads")
    b, link_b = await make_ingest(kv, "b")
    try:
        for link in (link_a, link_b):
            await link.deliver("fastrelay.interest", interest("edge-1", ["T.AAPL", "Q.MSFT"]))
        feed_a, feed_b = a.relay.feeds["stocks"], b.relay.feeds["stocks"]
        assert feed_a.started and not feed_b.started  # type: ignore[attr-defined]
        assert b.relay.demand["stocks"].refcount("T.AAPL") == 1  # warm
        await asyncio.sleep(0.1)
        assert link_a.sent_on("fastrelay.ingest") and not link_b.sent_on("fastrelay.ingest")
        request = messages.encode(messages.SnapshotRequest("stocks", last=["Q.MSFT"]))
        assert (await link_b.deliver("fastrelay.snapshot", request, reply="_INBOX.1")).answer is None
        crash(a)  # the leader dies without a word
        await wait_until(lambda: b.leading, what="b takes over")
        assert feed_b.started  # type: ignore[attr-defined]
        state = messages.decode(link_b.sent_on("fastrelay.ingest")[-1])
        assert isinstance(state, messages.IngestState) and state.term == b.election.term > 0
        assert state.version == messages.VERSION
    finally:
        await b.stop()
        await a.stop()


def crash(role: Ingest) -> None:
    """kill -9 of an ingest's election: no renewal, no goodbye, no delete; the key expires."""
    assert role.election._task is not None
    role.election._task.cancel()
    role.election._store = None


async def test_a_deposed_leader_publishes_nothing_and_closes_its_upstreams(kv: FakeKeyValue) -> None:
    """Fencing at the source: past its deadline nothing leaves the ingest, what waited is
    counted, and the upstream connections close (the next leader's must be the only ones)."""
    a, link = await make_ingest(kv, "a")
    try:
        await wait_until(lambda: a.leading, what="a leads")
        a.events("stocks", *decode_frame(trade(1)))
        await wait_until(lambda: link.sent_on("fastrelay.data.stocks.T"), what="published")
        link.store.cut = True  # type: ignore[attr-defined]
        await wait_until(lambda: not a.leading, what="a deposed")
        a.events("stocks", *decode_frame(trade(2)))
        await wait_until(lambda: a.relay.feeds["stocks"].stopped, what="upstream closed")  # type: ignore[attr-defined]
        assert len(link.sent_on("fastrelay.data.stocks.T")) == 1 and a.fenced == 1
        assert a.not_ready_reason() is None and a.readiness_notes() == ["standby: another ingest leads"]
    finally:
        await a.stop()


async def test_data_read_after_a_freeze_carries_the_time_the_loop_last_ran(kv: FakeKeyValue) -> None:
    """Bug: after SIGSTOP/SIGCONT clients got seconds-old events. A frame read when the loop
    has not run for a while may have waited since then: it is stamped so, and edges drop it."""
    a, link = await make_ingest(kv, "a")
    try:
        await wait_until(lambda: a.leading, what="a leads")
        a._alive_at = time.time() - 5.0  # the loop's last beat, 5 s ago
        a.events("stocks", *decode_frame(trade(1)))
        await wait_until(lambda: link.sent_on("fastrelay.data.stocks.T"), what="published")
        term, read_at, _ = open_envelope(link.sent_on("fastrelay.data.stocks.T")[0])
        assert time.time() - read_at > 4.9 and term == a.election.term
    finally:
        await a.stop()


async def test_a_resigning_leader_says_goodbye_in_its_term(kv: FakeKeyValue) -> None:
    a, link = await make_ingest(kv, "a")
    await wait_until(lambda: a.leading, what="a leads")
    term = a.election.term
    await a.stop()
    goodbye = messages.decode(link.sent_on("fastrelay.ingest")[-1])
    assert isinstance(goodbye, messages.IngestState) and goodbye.term == term
    assert set(goodbye.markets.values()) == {messages.STOPPED}
    assert kv.value is None  # the key is free for the standby


# --- the edge -----------------------------------------------------------------------------


@pytest.fixture
async def edge() -> AsyncIterator[tuple[Edge, FakeLink, RecordingSink]]:
    link = FakeLink()
    role = Edge(role_config("edge", "edge-1"), link=link)
    await link.connect()
    sink = RecordingSink()
    member = Member(sink.write, sink.buffered, sink)
    role.relay.hub.attach(member)
    context = SessionContext(role.relay.hub, role.relay.cache, TokenCheck([]), 1 << 20, role.relay.outages)
    session = ClientSession(context, member, "stocks")
    session.receive(b'{"action":"auth","params":"x"}')
    session.receive(b'{"action":"subscribe","params":"T.AAPL"}')
    yield role, link, sink
    await role.stop()


def state(term: int, markets: str = "live", name: str = "ingest-a") -> bytes:
    return messages.encode(
        messages.IngestState(name, "batch", {"stocks": markets}, {}, term, messages.VERSION)
    )


def data(term: int, q: int, read_at: float | None = None) -> bytes:
    body = orjson.dumps([{"ev": "T", "sym": "AAPL", "q": q}])
    return seal(body, time.time() if read_at is None else read_at, term)


def seen(sink: RecordingSink) -> list[Any]:
    """What the client read, in order: event q numbers and status messages."""
    return [
        m.get("q", m.get("message"))
        for m in sink.messages()
        if m.get("ev") != "status" or " feed " in str(m.get("message"))
    ]


async def delivered(link: FakeLink, message: bytes) -> None:
    await link.deliver("fastrelay.data.stocks.T", message)
    await asyncio.sleep(0.02)  # the flush window


async def test_edge_follows_the_newest_term_and_drops_the_older(edge: Any) -> None:
    role, link, sink = edge
    await link.deliver("fastrelay.ingest", state(5))
    await wait_until(lambda: "fastrelay.data.stocks.T" in link.subscribed, what="subscribed")
    await delivered(link, data(5, 1))
    await delivered(link, data(4, 2))  # a deposed leader's straggler
    await link.deliver("fastrelay.ingest", state(4, name="ingest-old"))  # and its state
    assert role.fenced == 2 and role.term == 5 and role.ingest == "ingest-a"
    assert seen(sink) == [1]


async def test_a_new_leaders_data_before_its_state_waits_for_restored(edge: Any) -> None:
    """Bug: after a NATS restart data came before `feed restored`. Data of a newer term, or of
    a market not live yet, is dropped; the new leader's state says interrupted and restored
    around the gap, then data flows."""
    role, link, sink = edge
    await link.deliver("fastrelay.ingest", state(5))
    await wait_until(lambda: "fastrelay.data.stocks.T" in link.subscribed, what="subscribed")
    await delivered(link, data(5, 1))
    await delivered(link, data(9, 2))  # the leader changed under us: dropped until its state
    assert role.relay.outages == {} and role.early == 1 and role.ingest == "ingest-a"
    await link.deliver("fastrelay.ingest", state(9, name="ingest-b"))
    await delivered(link, data(9, 3))
    assert seen(sink) == [
        1,
        "stocks feed interrupted (ingest): reconnecting; events during the outage are not replayed",
        "stocks feed restored: subscriptions resumed",
        3,
    ]
    assert role.leader_changes == 1


async def test_stale_data_is_dropped_between_interrupted_and_restored(edge: Any) -> None:
    role, link, sink = edge
    await link.deliver("fastrelay.ingest", state(5))
    await wait_until(lambda: "fastrelay.data.stocks.T" in link.subscribed, what="subscribed")
    await delivered(link, data(5, 1, read_at=time.time() - 10))
    assert role.relay.outages == {"stocks": STALE} and role.stale_dropped == 1
    await delivered(link, data(5, 2))
    assert seen(sink)[-2:] == ["stocks feed restored: subscriptions resumed", 2]
    assert seen(sink)[0].startswith("stocks feed interrupted (stale)")


async def test_a_newer_version_is_refused_with_a_clear_word(edge: Any) -> None:
    role, link, _ = edge
    newer = messages.IngestState("ingest-z", "batch", {"stocks": "live"}, {}, 3, messages.VERSION + 1)
    await link.deliver("fastrelay.ingest", messages.encode(newer))
    assert role.ingest is None and "upgrade edges before ingests" in link.bad[-1]


async def test_a_frozen_edge_does_not_blame_the_ingest(edge: Any) -> None:
    """The edge's own freeze (no look for seconds) is not the ingest's silence."""
    role, link, _ = edge
    await link.deliver("fastrelay.ingest", state(5))
    role._last_check -= 10.0
    role._ingest_heard -= 10.0
    role.check_ingest()
    assert role.ingest == "ingest-a" and role.relay.outages == {}
    for _ in range(6):  # a real silence, looked at as the running edge does, still counts
        await asyncio.sleep(role.config.ingest_timeout / 4)
        role.check_ingest()
    assert role.ingest is None


async def test_clocks_apart_keep_the_market_down_without_flapping(edge: Any) -> None:
    """Every message stale (the ingest's clock behind by more than --max-event-age): the market
    stays down across the leader's states, instead of restored/interrupted four times a second."""
    role, link, sink = edge
    await link.deliver("fastrelay.ingest", state(5))
    await wait_until(lambda: "fastrelay.data.stocks.T" in link.subscribed, what="subscribed")
    for q in range(1, 6):
        await delivered(link, data(5, q, read_at=time.time() - 10))
        await link.deliver("fastrelay.ingest", state(5))
    statuses = [m for m in seen(sink) if isinstance(m, str)]
    assert len(statuses) == 1 and statuses[0].startswith("stocks feed interrupted (stale)")
    assert role.stale_dropped == 5
