"""Real Massive accounts: plans that leave a market out, a market per host and key, readiness."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest

from fastrelay.app import running_relay
from fastrelay.sim import Simulator
from tests.conftest import sim_config
from tests.test_metrics import scrape, value
from tests.utils import TIMEOUT, Client, fast_relay_config, http_get, wait_until


async def test_a_market_outside_the_plan_is_reported_and_not_waited_for(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A key without options: stocks serves, /readyz is 200 and names options' refusal, the
    metric says so, and the start-up log says plainly which market is live and which failed."""
    async with Simulator(sim_config()) as sim:
        sim.auth_fail("options")
        with caplog.at_level(logging.INFO, logger="fastrelay"):
            async with running_relay(
                fast_relay_config(sim.base_url, "sim-key", metrics_interval=0.05)
            ) as relay:
                await wait_until(lambda: relay.relay.feeds["options"].refused is not None, what="refused")
                await wait_until(lambda: relay.ready, what="ready without options")
                status, body = await http_get(relay.port, "/readyz")
                assert status == 200 and b"options: refused by Massive (auth_failed" in body
                text = await scrape(relay)
                assert value(text, "fastrelay_upstream_refused", market="options") == 1
                assert value(text, "fastrelay_upstream_refused", market="stocks") == 0
                client = await Client.connect(f"ws://127.0.0.1:{relay.port}/stocks")
                await client.subscribe("T.*")
                await client.wait_events(3)
                await client.close()
        summaries = [r for r in caplog.records if r.getMessage().startswith("markets: ")]
        assert len(summaries) == 1 and summaries[0].levelno == logging.WARNING
        assert "stocks live" in summaries[0].getMessage()
        assert "options refused by Massive (auth_failed: authentication failed)" in summaries[0].getMessage()


async def test_required_markets_are_waited_for_even_when_refused() -> None:
    """--required-markets options: a refused options market holds readiness (503 naming it)."""
    async with Simulator(sim_config()) as sim:
        sim.auth_fail("options")
        config = fast_relay_config(sim.base_url, "sim-key", required_markets=("options",))
        async with running_relay(config) as relay:
            await wait_until(lambda: relay.relay.feeds["options"].refused is not None, what="refused")
            status, body = await http_get(relay.port, "/readyz")
            assert status == 503 and body.startswith(b"not ready: upstream down: options")


async def test_no_market_live_is_never_ready_and_a_drop_is_503_at_once() -> None:
    """Every market refused: not ready. A required market that drops: 503 at the next probe."""
    async with Simulator(sim_config()) as sim:
        sim.auth_fail("options")
        sim.auth_fail("stocks")
        async with running_relay(fast_relay_config(sim.base_url, "sim-key")) as relay:
            await wait_until(
                lambda: all(f.refused is not None for f in relay.relay.feeds.values()), what="both refused"
            )
            status, body = await http_get(relay.port, "/readyz")
            assert status == 503 and b"no market live" in body
            sim.auth_ok("options")
            sim.auth_ok("stocks")
            await wait_until(lambda: relay.ready, timeout=TIMEOUT * 2, what="ready once accepted")
            sim.auth_fail("stocks")
            sim.drop("stocks")
            await wait_until(lambda: not relay.relay.feeds["stocks"].live, what="stocks dropped")
            status, body = await http_get(relay.port, "/readyz")
            assert status == 503 and b"upstream down: stocks" in body


async def test_each_market_from_its_own_host_with_its_own_key() -> None:
    """Delayed stocks from one host and crypto from another on another account: one relay, one
    /api/socket serving both; the metrics name each market's host; no key is shown."""
    stocks_config = sim_config(api_key="stocks-account-key", markets=("stocks",))
    crypto_config = sim_config(api_key="crypto-account-key", markets=("crypto",), symbols={})
    async with Simulator(stocks_config) as stocks_host, Simulator(crypto_config) as crypto_host:
        config = replace(
            fast_relay_config(stocks_host.base_url, "stocks-account-key", metrics_interval=0.05),
            markets=("stocks", "crypto"),
            upstream_for={"crypto": crypto_host.base_url},
            api_key_for={"crypto": "crypto-account-key"},
        )
        async with running_relay(config) as relay:
            await wait_until(lambda: relay.ready, what="both markets live")
            client = await Client.connect(f"ws://127.0.0.1:{relay.port}/api/socket")
            await client.subscribe("T.*,XT.*")
            await client.wait_for(
                lambda: {e["ev"] for e in client.events} >= {"T", "XT"}, what="stocks and crypto events"
            )
            await client.close()
            text = await scrape(relay)
            assert (
                value(text, "fastrelay_upstream_info", market="crypto", host=f"{crypto_host.base_url}/crypto")
                == 1
            )
            assert (
                value(text, "fastrelay_upstream_info", market="stocks", host=f"{stocks_host.base_url}/stocks")
                == 1
            )
            assert b"account-key" not in text
        assert stocks_host.stats()["markets"]["crypto"]["auth_attempts"] == 0  # never asked there
