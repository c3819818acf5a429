"""Scale-out over a real nats-server (issue #7): one ingest, two edges, in this process.

The simulator stands in for Massive; nats-server (Debian's package) runs as a child
process on 127.0.0.1 and is stopped and restarted on the same port by one test. Every
timer is shrunk (heartbeats 0.2 s, peers gone after 1 s, linger 0.2 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import nats
import orjson
import pytest
import websockets

from fastrelay.app import RunningRelay, running_relay
from fastrelay.config import RelayConfig
from fastrelay.scaleout import messages
from fastrelay.scaleout.edge import Edge
from fastrelay.scaleout.ingest import Ingest
from fastrelay.scaleout.subjects import seal
from fastrelay.sim import Simulator
from tests.conftest import sim_config
from tests.natsserver import NatsServer, running_nats
from tests.utils import TIMEOUT, Client, fast_relay_config, http_get, sequence_gaps, wait_until
from tests.webtools import free_port, running_nginx

HEARTBEAT, PEER_TIMEOUT = 0.2, 1.0


@dataclass
class Deployment:
    nats: NatsServer
    sim: Simulator
    ingest: RunningRelay
    edges: list[RunningRelay]
    ingest_config: RelayConfig
    ingest_stack: contextlib.AsyncExitStack

    @property
    def ingest_role(self) -> Ingest:
        assert isinstance(self.ingest.role, Ingest)
        return self.ingest.role

    def edge_role(self, index: int) -> Edge:
        edge = self.edges[index].role
        assert isinstance(edge, Edge)
        return edge

    def url(self, index: int, path: str = "/stocks") -> str:
        return f"ws://127.0.0.1:{self.edges[index].port}{path}"

    def upstream_channels(self) -> set[str]:
        """What the ingest's upstream connection carries, as the simulator (Massive) sees it."""
        return set(self.sim.stats()["markets"]["stocks"]["subscriptions"])

    async def stop_ingest(self) -> None:
        await self.ingest_stack.aclose()

    async def start_ingest(self, name: str) -> None:
        self.ingest_stack = contextlib.AsyncExitStack()
        config = replace(self.ingest_config, instance_name=name)
        self.ingest = await self.ingest_stack.enter_async_context(running_relay(config))


@contextlib.asynccontextmanager
async def deployed(tmp_path: Path, granularity: str, **overrides: Any) -> AsyncIterator[Deployment]:
    """nats-server, the simulator, one ingest and two edges (``overrides``: their settings)."""
    async with running_nats(tmp_path / "nats.log") as nats, Simulator(sim_config()) as sim:
        base = fast_relay_config(
            sim.base_url,
            "sim-key",
            nats=nats.url,
            heartbeat_interval=HEARTBEAT,
            peer_timeout=PEER_TIMEOUT,
            nats_granularity=granularity,
            **overrides,
        )
        ingest_config = replace(base, role="ingest", instance_name="ingest")
        async with (
            contextlib.AsyncExitStack() as ingest_stack,
            running_relay(replace(base, role="edge", instance_name="edge-1")) as edge1,
            running_relay(replace(base, role="edge", instance_name="edge-2")) as edge2,
        ):
            ingest = await ingest_stack.enter_async_context(running_relay(ingest_config))
            deployment = Deployment(nats, sim, ingest, [edge1, edge2], ingest_config, ingest_stack)
            for running in (ingest, edge1, edge2):
                await wait_until(lambda r=running: r.ready, what=f"{running.relay.config.role} ready")
            try:
                yield deployment
            finally:
                await deployment.stop_ingest()


@pytest.fixture(params=["batch", "event"])
async def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Deployment]:
    async with deployed(tmp_path, request.param) as found:
        yield found


def by_channel(events: list[dict[str, Any]]) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for event in events:
        found.setdefault(f"{event['ev']}.{event['sym']}", []).append(event["q"])
    return found


@pytest.mark.parametrize("granularity", ["batch", "event"])
async def test_a_last_value_fetched_from_the_ingest_is_never_sent_twice(
    tmp_path: Path, granularity: str
) -> None:
    """The ingest records an event in its cache when it arrives and publishes it at the end of its
    --nats-window: a snapshot taken in between holds an event still waiting to be published. Its
    reply must not overtake that event, or a new subscriber on an edge gets the event twice (as its
    last value, then live). A 200 ms window makes the overlap near certain; CI once saw it at 5 ms."""
    async with deployed(tmp_path, granularity, nats_window=200.0) as deployment:
        watcher = await Client.connect(deployment.url(1))
        await watcher.subscribe("Q.*")  # the ingest holds every quote: any ticker has a last value
        await watcher.wait_for(lambda: len(by_channel(watcher.events)) >= 4, what="quotes at the ingest")
        clients = []
        for ticker in ("AAPL", "MSFT", "TSLA", "BRK.B"):  # each one a fetch from the ingest
            client = await Client.connect(deployment.url(0))
            await client.subscribe(f"Q.{ticker}")
            clients.append(client)
        for client in clients:
            await client.wait_for(lambda c=client: len(c.events) >= 10, what="10 quotes")
            assert sequence_gaps(client.events) == [], client.events[:3]
        assert deployment.edge_role(0).fills.requested >= 4  # each asked of the ingest
        for client in (*clients, watcher):
            await client.close()


async def test_clients_on_both_edges_get_the_same_events_in_order(deployment: Deployment) -> None:
    channels = "T.AAPL,Q.MSFT,T.BRK.B,Q.*"
    clients = [await Client.connect(deployment.url(i)) for i in (0, 1)]
    for client in clients:
        await client.subscribe(channels)
    for client in clients:
        await client.wait_for(
            lambda c=client: (
                all(len(v) >= 20 for v in by_channel(c.events).values()) and len(by_channel(c.events)) >= 4
            ),
            what="20 events on each of T.AAPL, T.BRK.B and two Q channels",
        )
    assert deployment.upstream_channels() == {"T.AAPL", "T.BRK.B", "Q.*"}
    seen = [by_channel(c.events) for c in clients]
    for events in (clients[0].events, clients[1].events):
        assert sequence_gaps(events) == []
    # The same events in the same order wherever both clients were subscribed.
    for channel in seen[0].keys() & seen[1].keys():
        first, second = seen[0][channel], seen[1][channel]
        common = sorted(set(first) & set(second))
        assert len(common) >= 10, channel
        assert [q for q in first if q in common] == [q for q in second if q in common] == common
    for client in clients:
        await client.close()


async def test_a_subscriber_on_any_edge_gets_the_last_value(deployment: Deployment) -> None:
    """Edge 2 never carried Q.MSFT: its new subscriber is filled from the ingest's last value."""
    first = await Client.connect(deployment.url(0))
    await first.subscribe("Q.MSFT")
    await first.wait_events(3)
    deployment.sim.slow("stocks", factor=0.0)  # no more events: only a stored value can arrive
    ingest_cache = deployment.ingest.relay.cache["stocks"]

    def ingest_last_q() -> int | None:
        stored = ingest_cache.last_value("Q", "MSFT")
        return orjson.loads(stored)["q"] if stored else None

    # Events already on their way still arrive: wait until the client has what the ingest has.
    await first.wait_for(
        lambda: ingest_last_q() == first.events[-1]["q"], what="the client to catch up with the ingest"
    )
    second = await Client.connect(deployment.url(1))
    await second.subscribe("Q.MSFT")
    [value] = await second.wait_events(1)
    assert value == first.events[-1]
    assert deployment.edge_role(1).fills.delivered == 1
    deployment.sim.unslow("stocks")
    await second.wait_events(4)
    assert sequence_gaps(second.events) == []


async def test_upstream_interest_follows_the_edges_and_a_dead_edge_stops_counting(
    deployment: Deployment,
) -> None:
    one = await Client.connect(deployment.url(0))
    two = await Client.connect(deployment.url(1))
    await one.subscribe("T.AAPL,Q.TSLA")
    await two.subscribe("T.AAPL")
    await wait_until(
        lambda: deployment.upstream_channels() == {"T.AAPL", "Q.TSLA"}, what="the union upstream"
    )
    # A client leaving an edge: the channel goes upstream after the edge's and the ingest's linger.
    await one.send({"action": "unsubscribe", "params": "Q.TSLA"})
    await wait_until(lambda: deployment.upstream_channels() == {"T.AAPL"}, what="Q.TSLA unsubscribed")
    await one.subscribe("Q.TSLA")
    await wait_until(lambda: "Q.TSLA" in deployment.upstream_channels(), what="Q.TSLA back")

    # Edge 1 dies without a goodbye: silent on NATS (its process is killed in test_scaleout_browser).
    await deployment.edge_role(0).link.stop()
    ingest = deployment.ingest_role
    await wait_until(lambda: len(ingest.registry) == 1, timeout=PEER_TIMEOUT + TIMEOUT, what="edge 1 expired")
    await wait_until(lambda: deployment.upstream_channels() == {"T.AAPL"}, what="only edge 2's channel left")
    assert ingest.registry.expired_total == 1
    await two.wait_events(len(two.events) + 5)  # edge 2 is unaffected
    await two.close()


async def test_nats_restart_edges_unready_then_recover_and_ingest_keeps_upstream(
    deployment: Deployment,
) -> None:
    client = await Client.connect(deployment.url(0))
    await client.subscribe("T.AAPL,Q.MSFT")
    await client.wait_events(10)
    upstream_sessions = deployment.ingest.relay.feeds
    connects = {m: s.stats.connects for m, s in upstream_sessions.items()}

    deployment.nats.stop()
    await client.wait_status("error")  # stocks feed interrupted (nats)
    assert "stocks feed interrupted (nats)" in client.statuses[-1]["message"]
    for edge in deployment.edges:
        await wait_until(lambda e=edge: not e.ready, what="edge unready")
        status, body = await http_get(edge.port, "/readyz")
        assert status == 503 and b"NATS" in body, body
    status, body = await http_get(deployment.ingest.port, "/readyz")
    assert status == 503 and b"NATS" in body, body
    # A cut-off edge takes no new client (nginx tries the next edge); its clients stay.
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(deployment.url(1), open_timeout=TIMEOUT)
    assert refused.value.response.status_code == 503
    assert b"NATS" in refused.value.response.body
    # The ingest's upstream stays connected and subscribed while NATS is away.
    assert all(s.live for s in upstream_sessions.values())
    assert deployment.upstream_channels() == {"T.AAPL", "Q.MSFT"}

    await deployment.nats.start()
    for running in (deployment.ingest, *deployment.edges):
        await wait_until(lambda r=running: r.ready, timeout=3 * TIMEOUT, what="ready again")
    await client.wait_status("success")  # stocks feed restored
    assert "stocks feed restored" in client.statuses[-1]["message"]
    count = len(client.events)
    await client.wait_events(count + 10)
    assert {m: s.stats.connects for m, s in upstream_sessions.items()} == connects
    assert deployment.upstream_channels() == {"T.AAPL", "Q.MSFT"}
    assert len(deployment.ingest_role.registry) == 2
    await client.close()


async def test_history_for_the_first_subscriber_on_an_edge_comes_from_the_ingest(
    deployment: Deployment,
) -> None:
    """Edge 2 has recorded nothing for A.AAPL: its first client's `history` is the ingest's."""
    first = await Client.connect(deployment.url(0))
    await first.subscribe("A.AAPL")
    await first.wait_events(3)
    second = await Client.connect(deployment.url(1))
    # Subscribe and ask at once, as the dashboard does: the answer waits for the fetch.
    await second.send({"action": "subscribe", "params": "A.AAPL"})
    await second.send({"action": "history", "params": "A.AAPL"})
    await second.wait_status("success")  # subscribed
    done = await second.wait_status("success")
    count = int(re.fullmatch(r"history: A\.AAPL \((\d+) events\)", done["message"]).group(1))  # type: ignore[union-attr]
    assert count >= 3
    history_qs = [e["q"] for e in second.events][-count:]
    assert set(e["q"] for e in first.events[:3]) <= set(history_qs)
    assert history_qs == sorted(history_qs)


async def test_bad_nats_messages_are_counted_and_skipped(deployment: Deployment) -> None:
    """Garbage on every subject: counted, logged, skipped; clients and the upstream carry on."""
    client = await Client.connect(deployment.url(0))
    await client.subscribe("T.AAPL")
    await client.wait_events(3)
    ingest, edge = deployment.ingest_role, deployment.edge_role(0)
    prefix = deployment.ingest.relay.config.nats_prefix
    stranger = await nats.connect(deployment.nats.url)
    try:
        term = ingest.election.term
        for data in (b"short", b"12345678 not json", seal(b'[{"not": "an event"', time.time(), term)):
            await stranger.publish(f"{prefix}.data.stocks.T", data)
            await stranger.publish(f"{prefix}.data.stocks.T.AAPL", data)
        # A claim of a newer term in data alone: dropped, counted; the leader is not deposed.
        claim = seal(b'[{"ev":"T","sym":"AAPL","q":1}]', time.time(), term + 1000)
        await stranger.publish(f"{prefix}.data.stocks.T", claim)
        await stranger.publish(f"{prefix}.data.stocks.T.AAPL", claim)
        await stranger.publish(f"{prefix}.ingest", b"\xff garbage")
        await stranger.publish(f"{prefix}.interest", b"[1, 2, 3]")
        bad_names = messages.EdgeInterest("stranger", {"stocks": ["T.AA PL", "nonsense"], "nowhere": ["T.X"]})
        await stranger.publish(f"{prefix}.interest", messages.encode(bad_names))
        answer = await stranger.request(f"{prefix}.snapshot", b"{}", timeout=TIMEOUT)
        assert "bad control message" in messages.decode(answer.data).error
    finally:
        await stranger.close()
    # The edge is subscribed to one of the two data subjects (batch: ...T, event: ...T.AAPL).
    await wait_until(
        lambda: (
            edge.link.stats.bad_messages == 3 + 1
            and edge.early == 1
            and ingest.link.stats.bad_messages == 2
            and ingest.refused == 3
        ),
        what="every bad message counted",
    )
    count = len(client.events)
    await client.wait_events(count + 5)
    assert sequence_gaps(client.events) == []
    assert deployment.upstream_channels() == {"T.AAPL"}
    assert deployment.edges[0].ready and deployment.ingest.ready


async def test_an_ingest_restart_interrupts_then_restores_every_edge(deployment: Deployment) -> None:
    """A new ingest learns the edges' interest from their heartbeats and takes over."""
    clients = [await Client.connect(deployment.url(i)) for i in (0, 1)]
    await clients[0].subscribe("T.AAPL")
    await clients[1].subscribe("Q.MSFT")
    for client in clients:
        await client.wait_events(3)
    await deployment.stop_ingest()
    for client in clients:  # at once (the ingest's goodbye), not after --peer-timeout
        status = await client.wait_status("error", timeout=PEER_TIMEOUT / 2)
        assert status["message"].startswith("stocks feed interrupted (ingest_stopped)"), status
    await wait_until(lambda: deployment.upstream_channels() == set(), what="the old upstream gone")

    await deployment.start_ingest("ingest-2")
    await wait_until(
        lambda: deployment.upstream_channels() == {"T.AAPL", "Q.MSFT"}, what="the new ingest subscribed"
    )
    for client in clients:
        status = await client.wait_status("success")
        assert status["message"] == "stocks feed restored: subscriptions resumed", status
        count = len(client.events)
        await client.wait_events(count + 5)
        await client.close()


async def test_a_frame_over_nats_max_payload_reaches_clients_split_in_order(deployment: Deployment) -> None:
    """Massive may send a frame over 1 MiB, NATS' default max_payload: it goes out in
    several messages, every event once, in order."""
    client = await Client.connect(deployment.url(0))
    await client.subscribe("T.AAPL,Q.AAPL")
    await client.wait_events(3)
    published = deployment.ingest_role.link.stats.published
    assert deployment.sim.huge("stocks") == 1
    before = len(client.events)
    await client.wait_for(lambda: len(client.events) > before + 2000, what="the huge frame's events")
    stats = deployment.ingest_role.link.stats
    assert stats.publish_failed == stats.publish_dropped_down == 0
    assert deployment.ingest_role.link.stats.published >= published + 2
    assert sequence_gaps(client.events) == []


async def test_roles_stop_cleanly_while_nats_is_down(deployment: Deployment) -> None:
    """A shutdown during a NATS outage exits cleanly, within its deadline."""
    deployment.nats.stop()
    await asyncio.wait_for(deployment.stop_ingest(), TIMEOUT)
    for index in (0, 1):
        await asyncio.wait_for(deployment.edge_role(index).stop(), TIMEOUT)
    await deployment.nats.start()  # the fixture's teardown finds what it started


async def test_nginx_sends_clients_past_an_edge_cut_off_from_nats(
    deployment: Deployment, tmp_path: Path
) -> None:
    """An edge that cannot reach NATS answers upgrades with 503; nginx (the shipped config)
    retries the next edge, so every client lands on the healthy one."""
    cut_off = replace(
        deployment.edges[0].relay.config, instance_name="cut-off", nats=f"nats://127.0.0.1:{free_port()}"
    )
    async with running_relay(cut_off) as lonely:
        healthy = deployment.edges[0]
        async with running_nginx(tmp_path / "nginx", [lonely.port, healthy.port]) as nginx:
            clients = [await Client.connect(f"{nginx.ws_url}/stocks") for _ in range(4)]
            for client in clients:
                await client.subscribe("T.AAPL")
                await client.wait_events(1)
            assert lonely.relay.hub.members == 0 and healthy.relay.hub.members == 4
            for client in clients:
                await client.close()
        tried = [line for line in nginx.log_lines() if f"127.0.0.1:{lonely.port}" in line]
        assert tried and all("/503, " in line for line in tried), tried


async def test_two_edges_under_one_name_are_still_two(deployment: Deployment) -> None:
    """A copied env file gives two edges one --instance-name: their interests must not
    replace each other at every heartbeat (upstream churn); each counts on its own."""
    twin_config = replace(deployment.edges[0].relay.config, instance_name="edge-1")
    async with running_relay(twin_config) as twin:
        await wait_until(lambda: twin.ready, what="the twin ready")
        one = await Client.connect(deployment.url(0))
        other = await Client.connect(f"ws://127.0.0.1:{twin.port}/stocks")
        await one.subscribe("T.AAPL")
        await other.subscribe("Q.TSLA")
        await wait_until(lambda: deployment.upstream_channels() == {"T.AAPL", "Q.TSLA"}, what="both")
        registry = deployment.ingest_role.registry
        assert len(registry) == 3
        # Over five heartbeats, still both, never one replacing the other.
        deadline = asyncio.get_running_loop().time() + 5 * HEARTBEAT
        while asyncio.get_running_loop().time() < deadline:
            assert deployment.upstream_channels() == {"T.AAPL", "Q.TSLA"}
            assert len(registry) == 3
            await asyncio.sleep(HEARTBEAT / 4)  # sampling a state over time, not waiting for it
        await one.close()
        await other.close()
