"""Chart history end to end: the simulator plays Massive's WebSocket and REST APIs, the relay
serves both from one port; what the simulator counts is what Massive would bill."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import trustme

from fastrelay.app import RunningRelay, running_relay
from fastrelay.sim import Simulator, SimulatorConfig
from tests.utils import TIMEOUT, Client, fast_relay_config

KEY = "sim-key"


@contextlib.asynccontextmanager
async def stack(**overrides: Any) -> AsyncIterator[tuple[RunningRelay, Simulator]]:
    async with Simulator(SimulatorConfig(api_key=KEY, markets=("stocks",), rate=50.0, seed=3)) as sim:
        settings: dict[str, Any] = {"history_per_minute": 600.0, "rest_url": sim.rest_url, **overrides}
        config = fast_relay_config(sim.base_url, KEY, markets=("stocks",), **settings)
        async with running_relay(config) as relay:
            yield relay, sim


def rest_requests(sim: Simulator) -> int:
    return int(sim.stats()["rest"]["requests"])


async def history(client: Client, params: str, **options: Any) -> tuple[list[dict[str, Any]], str]:
    """One history request's bars and its closing status (success or the first error)."""
    start = len(client.events)
    await client.send({"action": "history", "params": params, **options})
    await client.wait_for(
        lambda: any(s["message"].startswith("history:") for s in client._unseen), what="history's status"
    )
    status = next(s for s in client._unseen if s["message"].startswith("history:"))
    client._unseen.remove(status)
    return client.events[start:], status["message"]


async def test_five_hundred_charts_opening_at_once_cost_one_rest_call() -> None:
    """100 connections asking 5 times each, all at once, for the same chart: one call at Massive."""
    async with stack() as (relay, sim):
        clients = [await Client.connect(f"ws://127.0.0.1:{relay.port}/stocks") for _ in range(100)]
        before = rest_requests(sim)
        for client in clients:
            for _ in range(5):
                await client.send({"action": "history", "params": "AM.AAPL"})

        async def five_answers(client: Client) -> list[str]:
            await client.wait_for(
                lambda: sum(s["message"].startswith("history: AM.AAPL") for s in client.statuses) >= 5,
                timeout=TIMEOUT * 3,
                what="five history answers",
            )
            return [s["message"] for s in client.statuses if s["message"].startswith("history:")]

        answers = await asyncio.gather(*(five_answers(c) for c in clients))
        counts = {message for messages in answers for message in messages}
        assert len(counts) == 1 and counts.pop().endswith("events)")  # everyone got the same bars
        assert rest_requests(sim) - before == 1
        for client in clients:
            await client.close()


async def test_history_is_a_day_of_minutes_ending_in_the_live_bars() -> None:
    """A bare history: Massive's minute bars up to now, the relay's live ones at the end, then
    live bars keep coming after it, without a duplicate window."""
    async with stack() as (relay, _):
        client = await Client.connect(f"ws://127.0.0.1:{relay.port}/stocks")
        await client.subscribe("AM.AAPL")
        bars, status = await history(client, "AM.AAPL")
        starts = [bar["s"] for bar in bars]
        assert len(bars) > 300 and status == f"history: AM.AAPL ({len(bars)} events)"
        assert starts == sorted(set(starts)) and all(b["e"] - b["s"] == 60_000 for b in bars[:-1])
        assert all(b["ev"] == "AM" and b["sym"] == "AAPL" for b in bars)


async def test_the_official_rest_client_through_the_relay_gets_what_massive_gives() -> None:
    """RESTClient pointed at the relay (any token, open mode) and at the simulator (its key):
    the same bars."""
    from massive import RESTClient

    async with stack() as (relay, sim):

        def fetch(base: str, key: str) -> list[tuple[int, float, float]]:
            client = RESTClient(api_key=key, base=base, retries=0)
            bars = client.list_aggs("MSFT", 1, "minute", "2026-11-30", "2026-12-02", limit=2000)
            return [(bar.timestamp, bar.open, bar.close) for bar in bars]

        through_relay = await asyncio.to_thread(fetch, f"http://127.0.0.1:{relay.port}", "any-token")
        direct = await asyncio.to_thread(fetch, sim.rest_url, KEY)
        assert through_relay == direct and len(direct) > 2000  # paged, both ways


async def test_massives_429_is_said_and_not_retried_in_a_storm() -> None:
    async with stack() as (relay, sim):
        client = await Client.connect(f"ws://127.0.0.1:{relay.port}/stocks")
        sim.fault("rest_429")
        before = rest_requests(sim)
        await client.send({"action": "history", "params": "AM.AAPL"})
        error = await client.wait_status("error")
        assert "rate limit" in error["message"]
        for ticker in ("MSFT", "NVDA", "TSLA"):
            await client.send({"action": "history", "params": f"AM.{ticker}"})
            assert "rate limit" in (await client.wait_status("error"))["message"]
        assert rest_requests(sim) - before == 1  # the pause: nothing more went to Massive
        await client.close()


async def test_rest_over_tls_trusts_the_given_ca_only(tmp_path: Path) -> None:
    """--rest-ca: Massive's REST over TLS with a private CA (the simulator's); without it the
    certificate is refused and the client is told Massive is unreachable."""
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    config = SimulatorConfig(api_key=KEY, markets=("stocks",), rate=50.0)
    async with Simulator(config, ssl_context=server) as sim:
        assert sim.rest_url.startswith("https://")
        for rest_ca, expected in ((str(ca_file), "success"), (None, "error")):
            relay_config = fast_relay_config(
                sim.base_url, KEY, markets=("stocks",), rest_url=sim.rest_url, rest_ca=rest_ca,
                upstream_ca=str(ca_file),
            )  # fmt: skip
            async with running_relay(relay_config) as relay:
                client = await Client.connect(f"ws://127.0.0.1:{relay.port}/stocks")
                _, status = await history(client, "AM.AAPL")
                if expected == "success":
                    assert status.startswith("history: AM.AAPL (") and not status.endswith("(0 events)")
                else:
                    assert "unreachable" in status
                await client.close()
