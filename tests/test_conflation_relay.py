"""Conflation through a real relay: a client on a slow link stays, gets every trade and the latest quotes."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from bench.attacks import RawClient, ThrottledReader, text
from fastrelay.app import RunningRelay, running_relay
from fastrelay.conflation import Conflator
from fastrelay.server import conflation_wanted
from fastrelay.sim import Simulator
from tests.conftest import sim_config
from tests.test_metrics import scrape, value
from tests.utils import TIMEOUT, Client, fast_relay_config, sequence_gaps, wait_until

KIB = 1024
# The link of the slow client, bytes/s: under the feed it subscribes (T.AAPL and Q.* of four
# tickers: about 120 KB/s at 600 frames/s of 2 events), over its trades alone (about 20 KB/s).
LINK = 40_000


def last_q(events: list[dict[str, Any]], ev: str) -> dict[str, int]:
    found: dict[str, int] = {}
    for event in events:
        if event["ev"] == ev:
            found[event["sym"]] = event["q"]
    return found


def cached_last_quotes(relay: RunningRelay) -> dict[str, int]:
    cache = relay.relay.cache["stocks"]
    found = {}
    for sym in ("AAPL", "MSFT", "TSLA", "BRK.B"):
        raw = cache.last_value("Q", sym)
        if raw is not None:
            found[sym] = orjson.loads(raw)["q"]
    return found


@dataclass
class SlowLink:
    """A relay, a client on /api/socket that keeps up, and one on a slow link, now conflating."""

    sim: Simulator
    relay: RunningRelay
    fast: Client
    slow: ThrottledReader

    @property
    def conflator(self) -> Conflator:
        conflator = self.relay.relay.hub.conflator
        assert conflator is not None
        return conflator

    def describe(self) -> str:
        """Both clients' last trades and the slow one's state, for a timeout's message."""
        conflator = self.conflator
        queued = {
            "conflating": [
                (member.buffered(), len(state.pending), state.pending_bytes)
                for member, state in conflator._states.items()
            ]
        }
        slow = self.slow
        return (
            f"fast T {last_q(self.fast.events, 'T')} Q {last_q(self.fast.events, 'Q')}; "
            f"slow T {last_q(slow.events, 'T')} Q {last_q(slow.events, 'Q')}, "
            f"statuses {slow.status_names()}, close {slow.close_code} eof {slow.eof} reset {slow.reset}, "
            f"received {slow.received} B, unparsed {len(slow.buffer)} B; relay {queued}, "
            f"stats {conflator.stats}, closed {dict(self.relay.server.stats.closed)}"
        )


@contextlib.asynccontextmanager
async def slow_link(**relay_settings: Any) -> AsyncIterator[SlowLink]:
    """Both clients on T.AAPL,Q.* of /api/socket, 600 frames/s of 2 events: the fast one with
    ?conflate=0 (this busy test loop may let it lag; it must never be the one conflating), the
    slow one reading LINK bytes/s; yielded once the slow one has its conflating status."""
    async with (
        Simulator(sim_config(rate=600.0, events_per_frame=2)) as sim,
        running_relay(
            fast_relay_config(
                sim.base_url,
                "sim-key",
                max_client_buffer=512 * KIB,
                conflate_above=32 * KIB,
                metrics_interval=0.1,
                **relay_settings,
            )
        ) as relay,
    ):
        await wait_until(lambda: relay.ready, what="relay ready")
        fast = await Client.connect(f"ws://127.0.0.1:{relay.port}/api/socket?conflate=0")
        await fast.subscribe("T.AAPL,Q.*")
        slow = await ThrottledReader.open(relay.port, "/api/socket", "T.AAPL,Q.*", LINK)
        try:
            await wait_until(lambda: "conflating" in slow.status_names(), TIMEOUT * 3, "conflating status")
            yield SlowLink(sim, relay, fast, slow)
        finally:
            await slow.close()
            await fast.close()


async def test_a_client_on_a_slow_link_is_conflated_gets_every_trade_and_the_latest_quotes() -> None:
    """/api/socket (conflation on by default), a link at a third of its feed: a conflating status,
    no drop, every trade in order, quotes never out of order; once the feed stops, the latest quote
    of every ticker; when its link carries the feed again, caught_up. A client that keeps up gets all."""
    async with slow_link() as link:
        sim, relay, fast, slow, conflator = link.sim, link.relay, link.fast, link.slow, link.conflator
        assert conflator.stats.episodes == 1 and conflator.stats.conflating == 1
        # A while on the conflated stream, then the feed stops.
        seen = len(slow.events)
        await wait_until(lambda: len(slow.events) > seen + 200, TIMEOUT * 2, "conflated events")
        sim.fault("slow", "stocks", factor=0.0, delay=0.0)
        latest: dict[str, int] = {}

        def fast_has_all() -> bool:
            latest.update(cached_last_quotes(relay))
            return len(latest) == 4 and last_q(fast.events, "Q") == latest

        await fast.wait_for(fast_has_all, TIMEOUT * 2, "the fast client to have every last quote")
        await wait_until(
            lambda: last_q(slow.events, "Q") == latest, TIMEOUT * 3, "the latest quotes", link.describe
        )
        # The fast client's stream is read here only: settling takes in what it has been sent.
        await fast.settle_until(
            lambda: last_q(slow.events, "T") == last_q(fast.events, "T"),
            TIMEOUT * 3,
            "the last trade",
            link.describe,
        )
        trades = [e for e in slow.events if e["ev"] == "T"]
        assert trades and sequence_gaps(trades) == []  # every trade, in order
        for sym in latest:
            quotes = [e["q"] for e in slow.events if e["ev"] == "Q" and e["sym"] == sym]
            assert quotes == sorted(set(quotes)), sym  # never an older quote after a newer one
        fast_quotes = sum(1 for e in fast.events if e["ev"] == "Q")
        assert sum(1 for e in slow.events if e["ev"] == "Q") < fast_quotes
        assert conflator.stats.superseded > 0
        assert sequence_gaps(fast.events) == []
        # A trickle the link carries: nothing held for CATCH_UP_QUIET, then caught_up.
        sim.fault("slow", "stocks", factor=0.05, delay=0.0)
        await wait_until(lambda: "caught_up" in slow.status_names(), TIMEOUT * 2, "caught_up status")
        assert slow.status_names().count("conflating") == 1
        assert conflator.stats.conflating == 0 and conflator.stats.caught_up == 1
        assert slow.close_code is None and not slow.eof
        assert relay.server.stats.closed["slow_consumer"] == 0
        assert relay.relay.outbox.stats.slow_consumers == 0
        text = await scrape(relay)
        assert value(text, "fastrelay_client_conflating") == 0
        assert value(text, "fastrelay_client_conflation_episodes_total") == 1
        assert value(text, "fastrelay_client_conflation_caught_up_total") == 1
        assert value(text, "fastrelay_client_conflated_events_total") == conflator.stats.superseded > 0


async def test_a_client_that_opts_out_is_dropped_with_1013_as_before() -> None:
    """/api/socket?conflate=0 and not reading: slow_consumer, then 1013, no conflation episode."""
    async with (
        Simulator(sim_config(rate=2000.0, events_per_frame=5)) as sim,
        running_relay(fast_relay_config(sim.base_url, "sim-key", max_client_buffer=64 * KIB)) as relay,
    ):
        await wait_until(lambda: relay.ready, what="relay ready")
        stuck = await RawClient.connect(
            "127.0.0.1", relay.port, "/api/socket?conflate=0", receive_buffer=4096
        )
        try:
            assert stuck.upgraded
            await stuck.send(
                text({"action": "auth", "params": "x"}) + text({"action": "subscribe", "params": "T.*,Q.*"})
            )
            outbox = relay.relay.outbox
            await wait_until(lambda: outbox.stats.slow_consumers >= 1, TIMEOUT * 3, "slow consumer drop")
            messages = await stuck.messages(TIMEOUT)
            assert stuck.close_code == 1013 or stuck.reset
            statuses = [m["status"] for m in messages if m.get("ev") == "status"]
            assert "slow_consumer" in statuses or stuck.reset
            assert "conflating" not in statuses
            conflator = relay.relay.hub.conflator
            assert conflator is not None and conflator.stats.episodes == 0
            assert relay.server.stats.closed_by_path["/api/socket"]["slow_consumer"] == 1
        finally:
            stuck.writer.close()


async def test_a_conflated_stream_over_the_clients_loop_time_budget_is_dropped_with_1013() -> None:
    """The loop time the relay spends on a conflating client is its own: with a budget far under
    what its conflated stream costs, it is dropped (slow_consumer, 1013), counted and exported;
    a client that keeps up, on the same feed and budget, stays."""
    async with slow_link(max_cpu_ms_per_second=0.01, cpu_burst_ms=20.0) as link:
        relay, fast, slow, conflator = link.relay, link.fast, link.slow, link.conflator
        await wait_until(lambda: conflator.stats.over_budget == 1, TIMEOUT * 3, "the over-budget drop")
        await wait_until(lambda: slow.eof, TIMEOUT * 2, "the slow client closed")
        # 1013 when the close frame got through its backlog; the relay resets a dropped
        # slow consumer's socket rather than keep its backlog, so it may not have.
        assert slow.close_code in (1013, None)
        assert relay.server.stats.closed_by_path["/api/socket"]["slow_consumer"] == 1
        assert conflator.stats.conflating == 0
        text = await scrape(relay)
        assert value(text, "fastrelay_client_conflation_over_budget_total") == 1
        seen = len(fast.events)
        await fast.wait_for(lambda: len(fast.events) > seen + 100, TIMEOUT, "the fast client still fed")
        assert sequence_gaps(fast.events) == []


async def test_a_bad_conflate_parameter_is_refused_before_the_upgrade(relay: RunningRelay) -> None:
    """?conflate=maybe: HTTP 400 naming the parameter, no connection."""
    client = await RawClient.connect("127.0.0.1", relay.port, "/stocks?conflate=maybe")
    try:
        assert not client.upgraded and b" 400 " in client.status_line
    finally:
        client.writer.close()


@pytest.mark.parametrize(
    ("query", "default", "wanted"),
    [
        ("", True, True),
        ("", False, False),
        ("conflate=0", True, False),
        ("conflate=1", False, True),
        ("apiKey=x&conflate=1", False, True),
        ("conflatex=1", False, False),
        ("conflate=yes", True, None),
        ("conflate=1&conflate=0", True, None),
        ("conflate=", True, None),
    ],
)
def test_the_conflate_parameter(query: str, default: bool, wanted: bool | None) -> None:
    assert conflation_wanted(query, default) is wanted
