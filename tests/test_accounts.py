"""Real Massive accounts: plans that leave a market out, a market per host and key, readiness."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest

from fastrelay import markets
from fastrelay.app import running_relay
from fastrelay.member import Member
from fastrelay.protocol import Channel
from fastrelay.relay import Relay
from fastrelay.sim import Simulator
from fastrelay.sim.connection import CAP_REFUSAL
from tests.conftest import sim_config
from tests.sinks import RecordingFeed
from tests.test_metrics import scrape, value
from tests.utils import TIMEOUT, Client, fast_relay_config, http_get, wait_until


def upstream(sim: Simulator, market: str = "stocks") -> set[str]:
    """What the relay holds subscribed at the simulator."""
    return set(sim.stats()["markets"][market]["subscriptions"])


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
    """A required market refused: not ready. Once accepted and dropped: 503 at the next probe,
    refused again or not."""
    async with Simulator(sim_config()) as sim:
        sim.auth_fail("options")
        sim.auth_fail("stocks")
        config = fast_relay_config(sim.base_url, "sim-key", required_markets=("stocks",))
        async with running_relay(config) as relay:
            await wait_until(
                lambda: all(f.refused is not None for f in relay.relay.feeds.values()), what="both refused"
            )
            status, body = await http_get(relay.port, "/readyz")
            assert status == 503 and b"upstream down: stocks" in body  # required, refused or not
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


def _stocks_without_quotes() -> dict[str, frozenset[str]]:
    """A plan with stock trades and aggregates but no quotes, and all of options."""
    return {"stocks": markets.evs("stocks") - {"Q"}, "options": markets.evs("options")}


async def test_a_channel_outside_the_plan_is_refused_in_massives_words_and_let_go() -> None:
    """Q.AAPL on a plan without quotes: the relay took it, Massive refuses it ("not
    authorized", naming nothing); the client is told which channel, the channel is let go,
    counted, and the next client asking is refused at once without asking Massive again."""
    async with (
        Simulator(sim_config(plan=_stocks_without_quotes())) as sim,
        running_relay(fast_relay_config(sim.base_url, "sim-key")) as relay,
    ):
        await wait_until(lambda: relay.ready, what="ready")
        client = await Client.connect(f"ws://127.0.0.1:{relay.port}/stocks")
        await client.subscribe("T.AAPL,Q.AAPL")
        error = await client.wait_status("error")
        assert error["message"] == "Q.AAPL: not authorized"
        await client.wait_for(lambda: any(e["ev"] == "T" for e in client.events), what="trades")
        assert relay.relay.demand["stocks"].refcount("Q.AAPL") == 0
        await wait_until(lambda: "Q.AAPL" not in upstream(sim), what="not held upstream")
        text = await scrape(relay)
        assert (
            value(text, "fastrelay_upstream_rejections_total", market="stocks", reason="not_authorized") == 1
        )
        asked = sim.stats()["markets"]["stocks"]["channels_asked"]

        other = await Client.connect(f"ws://127.0.0.1:{relay.port}/stocks")
        await other.send({"action": "subscribe", "params": "Q.AAPL"})
        refused = await other.wait_status("error")
        assert refused["message"] == "Q.AAPL: not authorized"
        await other.subscribe("T.MSFT")  # the next thing asked of Massive
        await wait_until(lambda: "T.MSFT" in upstream(sim), what="T.MSFT upstream")
        assert sim.stats()["markets"]["stocks"]["channels_asked"] == asked + 1
        await other.settle()
        assert not [s for s in other.statuses if s["message"] == "subscribed to: Q.AAPL"]
        await client.close()
        await other.close()


async def test_past_massives_contract_cap_the_channel_that_did_not_fit_is_found() -> None:
    """Massive caps options quotes per connection (here 2) and refuses a whole subscribe that
    would pass it, naming nothing. The relay narrows it down, one channel per message: the
    two that fit are served, the third is refused to its client in Massive's words."""
    contracts = ["O:SPY251219C00600000", "O:SPY251219P00550000", "O:SPY251219C00700000"]
    config = sim_config(contract_cap=2)
    async with Simulator(config) as sim, running_relay(fast_relay_config(sim.base_url, "sim-key")) as relay:
        await wait_until(lambda: relay.ready, what="ready")
        client = await Client.connect(f"ws://127.0.0.1:{relay.port}/options")
        await client.subscribe(",".join(f"Q.{c}" for c in contracts))
        error = await client.wait_status("error")
        refused = error["message"].partition(": ")
        assert refused[1] and refused[2] == CAP_REFUSAL
        assert refused[0] in {f"Q.{c}" for c in contracts}
        served = {f"Q.{c}" for c in contracts} - {refused[0]}
        await wait_until(lambda: upstream(sim, "options") == served, what="the two that fit")
        assert relay.relay.demand["options"].refcount(refused[0]) == 0
        text = await scrape(relay)
        assert value(text, "fastrelay_upstream_rejections_total", market="options", reason="limit") == 1
        await client.close()


async def test_the_older_auth_failure_form_is_a_refusal_too() -> None:
    """Older Massive servers refuse a key with an ``error`` "authentication failed"."""
    async with Simulator(sim_config()) as sim:
        sim.auth_fail_old("options")
        async with running_relay(fast_relay_config(sim.base_url, "sim-key")) as relay:
            await wait_until(lambda: relay.relay.feeds["options"].refused is not None, what="refused")
            assert relay.relay.feeds["options"].refused == "auth_failed: authentication failed"
            await wait_until(lambda: relay.ready, what="ready on stocks alone")


async def test_forex_and_crypto_in_every_spelling_massive_accepts() -> None:
    """C.EUR-USD and C.EUR/USD are one channel; XT.BTC-USD and XT.X:BTC-USD too. Each client
    is acknowledged as it wrote the channel and gets the events."""
    config = sim_config(markets=("forex", "crypto"), symbols={})
    async with Simulator(config) as sim:
        relay_config = replace(fast_relay_config(sim.base_url, "sim-key"), markets=("forex", "crypto"))
        async with running_relay(relay_config) as relay:
            await wait_until(lambda: relay.ready, what="ready")
            # market -> (spellings of one channel, the field naming its pair, the pair)
            spellings = {
                "forex": (("C.EUR-USD", "C.EUR/USD"), "p", "EUR/USD"),
                "crypto": (("XT.BTC-USD", "XT.X:BTC-USD"), "pair", "BTC-USD"),
            }
            for market, (names, field, pair) in spellings.items():
                clients = []
                for name in names:
                    client = await Client.connect(f"ws://127.0.0.1:{relay.port}/{market}")
                    await client.send({"action": "subscribe", "params": name})
                    ack = await client.wait_status("success")
                    assert ack["message"] == f"subscribed to: {name}"
                    clients.append(client)
                for client in clients:
                    await client.wait_events(2)
                    assert {e[field] for e in client.events} == {pair}
                    await client.close()
                assert len(upstream(sim, market)) == 1  # one channel upstream for both spellings


@pytest.mark.parametrize(
    ("url", "feed"),
    [
        ("wss://socket.massive.com", "socket"),
        ("wss://delayed.massive.com", "delayed"),
        ("wss://launchpad.massive.com/", "launchpad"),
        ("wss://business.polygon.io", "business"),
        ("wss://launchpad.example.com", "socket"),  # not Massive's: the real-time feed's rules
        ("ws://127.0.0.1:8765", "socket"),
    ],
)
def test_the_feed_is_told_by_massives_host_name(url: str, feed: str) -> None:
    assert markets.feed_of(url) == feed


def test_launchpad_caps_options_aggregates_too() -> None:
    """Launchpad's options AM and LV take no wildcard and count against the 1,000 contracts;
    on the real-time feed AM takes a wildcard and is not capped."""
    assert markets.capped_evs("options") == {"Q", "FMV", "LV"}
    assert markets.capped_evs("options", "launchpad") == {"Q", "FMV", "LV", "AM"}
    assert markets.capped_evs("stocks", "launchpad") == frozenset()


async def test_a_relay_on_launchpad_options_caps_am_for_its_clients() -> None:
    """--upstream-for options=wss://launchpad.massive.com: AM.* is refused, and each AM
    contract counts against the client's share of the cap."""
    config = replace(
        fast_relay_config("ws://127.0.0.1:9", "k", max_contracts_per_client=2),
        upstream_for={"options": "wss://launchpad.massive.com"},
    )
    relay = Relay(config, make_feed=lambda market, _: RecordingFeed(market))
    assert relay.demand.capped_evs("options") == {"Q", "FMV", "LV", "AM"}
    assert relay.demand.capped_evs("stocks") == frozenset()
    member = Member(lambda data: None, lambda: 0, None)
    relay.hub.attach(member)
    am = [Channel("options", "AM", f"O:SPY251219C0060{i}000") for i in range(3)]
    result = relay.hub.subscribe(member, [Channel("options", "AM", "*"), *am])
    assert result.accepted == am[:2]
    assert result.refused[0][1].startswith("options AM accepts no wildcard")
    assert "too many options contracts" in result.refused[1][1]


def test_the_simulator_plays_a_plan_from_its_command_line() -> None:
    """`fastrelay sim --plan 'stocks=T,A,AM;crypto=*'`: what a real account allows."""
    plan = markets.parse_plan("stocks=T,A,AM; crypto=*")
    assert plan == {"stocks": frozenset({"T", "A", "AM"}), "crypto": markets.evs("crypto")}
    for bad in ("stocks=T,ZZ", "moon=T", "stocks", ""):
        with pytest.raises(ValueError):
            markets.parse_plan(bad)


async def test_every_market_refused_is_never_ready() -> None:
    """Refused markets are not waited for, but a relay with no market live at all is not ready."""
    async with Simulator(sim_config()) as sim:
        sim.auth_fail("options")
        sim.auth_fail("stocks")
        async with running_relay(fast_relay_config(sim.base_url, "sim-key")) as relay:
            await wait_until(
                lambda: all(f.refused is not None for f in relay.relay.feeds.values()), what="both refused"
            )
            status, body = await http_get(relay.port, "/readyz")
            assert status == 503 and b"no market live" in body
