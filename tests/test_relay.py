"""The whole path: simulator -> relay -> clients, over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
import socket
from base64 import b64encode
from pathlib import Path

import pytest
import websockets

from bench.attacks import RawClient, text
from fastrelay.app import RunningRelay, running_relay
from fastrelay.interest import MarketInterest
from fastrelay.protocol import Channel
from fastrelay.server import CLOSE_GRACE
from fastrelay.sim import Simulator
from tests.conftest import sim_config
from tests.utils import TIMEOUT, Client, fast_relay_config, sequence_gaps, wait_until


def url(relay: RunningRelay, path: str = "stocks") -> str:
    return f"ws://127.0.0.1:{relay.port}/{path}"


async def wait_ready(relay: RunningRelay) -> None:
    await wait_until(lambda: relay.ready, what="relay ready")


def upstream_subscriptions(sim: Simulator, market: str = "stocks") -> set[str]:
    return set(sim.stats()["markets"][market]["subscriptions"])


async def test_each_client_gets_exactly_its_channels_in_order(relay: RunningRelay) -> None:
    """Exact, wildcard and per-ev clients each see only their channels, in order, no gaps, no duplicates."""
    await wait_ready(relay)
    aapl = await Client.connect(url(relay))
    trades = await Client.connect(url(relay))
    quotes = await Client.connect(url(relay))
    await aapl.subscribe("T.AAPL")
    await trades.subscribe("T.*")
    await quotes.subscribe("Q.MSFT,Q.BRK.B")
    for client in (aapl, trades, quotes):
        await client.wait_events(60, timeout=TIMEOUT * 2)
    assert {(e["ev"], e["sym"]) for e in aapl.events} == {("T", "AAPL")}
    assert {e["ev"] for e in trades.events} == {"T"} and len({e["sym"] for e in trades.events}) > 1
    assert {(e["ev"], e["sym"]) for e in quotes.events} <= {("Q", "MSFT"), ("Q", "BRK.B")}
    for client in (aapl, trades, quotes):
        assert sequence_gaps(client.events) == []
        keys = [(e["ev"], e["sym"], e["q"]) for e in client.events]
        assert len(keys) == len(set(keys))  # no duplicates
        await client.close()


async def test_upstream_subscriptions_follow_clients_with_linger(relay: RunningRelay, sim: Simulator) -> None:
    """First subscriber subscribes upstream; the last leaving unsubscribes once the linger expires."""
    await wait_ready(relay)
    first = await Client.connect(url(relay))
    second = await Client.connect(url(relay))
    await first.subscribe("Q.AAPL")
    await second.subscribe("Q.AAPL")
    await wait_until(lambda: "Q.AAPL" in upstream_subscriptions(sim), what="upstream Q.AAPL")
    await first.close()
    await second.send({"action": "unsubscribe", "params": "Q.AAPL"})
    await second.wait_status("success")
    assert "Q.AAPL" in upstream_subscriptions(sim)  # still lingering (0.2 s)
    await wait_until(lambda: "Q.AAPL" not in upstream_subscriptions(sim), what="upstream unsubscribe")
    await second.close()


async def test_last_value_on_subscribe(relay: RunningRelay) -> None:
    """A new subscriber of a quote channel gets the latest quote at once, after the ack."""
    await wait_ready(relay)
    feeder = await Client.connect(url(relay))
    await feeder.subscribe("Q.TSLA")
    await feeder.wait_events(3)
    late = await Client.connect(url(relay))
    await late.send({"action": "subscribe", "params": "Q.TSLA"})
    await late.wait_events(1)
    # The first event is the fill: a quote the feeder already had.
    assert late.events[0]["q"] <= feeder.events[-1]["q"] + 1
    assert late.events[0]["ev"] == "Q" and late.events[0]["sym"] == "TSLA"
    await feeder.close()
    await late.close()


@pytest.mark.parametrize("fault", ["drop", "stall"])
async def test_upstream_fault_recovers_and_clients_resume(
    relay: RunningRelay, sim: Simulator, fault: str
) -> None:
    """After a drop or a stall the relay reconnects and resubscribes; clients stay connected and resume."""
    await wait_ready(relay)
    client = await Client.connect(url(relay))
    await client.subscribe("T.*,Q.AAPL")
    await client.wait_events(20)
    session = relay.relay.feeds["stocks"]
    connects = session.stats.connects
    sim.fault(fault, "stocks")
    await wait_until(lambda: session.stats.connects > connects and session.live, what="reconnect")
    assert session.stats.reconnects["stall" if fault == "stall" else "drop"] >= 1
    await wait_until(lambda: {"T.*", "Q.AAPL"} <= upstream_subscriptions(sim), what="resubscribe")
    before = len(client.events)
    await client.wait_events(before + 20)
    assert client.ws.state is websockets.protocol.State.OPEN
    if fault == "stall":
        sim.unstall("stocks")
    await client.close()


async def test_malformed_upstream_frame_is_counted_and_skipped(relay: RunningRelay, sim: Simulator) -> None:
    """A bad upstream frame is counted and skipped; the connection and the data flow go on."""
    await wait_ready(relay)
    client = await Client.connect(url(relay))
    await client.subscribe("T.*")
    await client.wait_events(5)
    session = relay.relay.feeds["stocks"]
    connects = session.stats.connects
    sim.malformed("stocks")
    sim.not_array("stocks")
    await wait_until(lambda: session.stats.decode_errors >= 2, what="decode errors counted")
    before = len(client.events)
    await client.wait_events(before + 10)
    assert session.stats.connects == connects  # no reconnect needed
    await client.close()


async def test_slow_consumer_is_dropped_and_others_keep_receiving() -> None:
    """A client that stops reading is closed once over its buffer; a normal client is unaffected."""
    busy = sim_config(rate=2000.0, events_per_frame=5)
    async with (
        Simulator(busy) as sim,
        running_relay(fast_relay_config(sim.base_url, "sim-key", max_client_buffer=64 * 1024)) as relay,
    ):
        await wait_ready(relay)
        # A raw socket that never reads, with a small receive window (set
        # before connecting, so it is the advertised one): the kernel buffers
        # fill, then the relay's.
        stuck = socket.socket()
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.setblocking(False)
        await asyncio.get_running_loop().sock_connect(stuck, ("127.0.0.1", relay.port))
        key = b64encode(b"0123456789abcdef").decode()
        stuck.send(
            f"GET /stocks HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
            + text(b'{"action":"auth","params":"x"}')
            + text(b'{"action":"subscribe","params":"T.*,Q.*"}')
        )
        normal = await Client.connect(url(relay))
        await normal.subscribe("T.*")
        outbox = relay.relay.outbox
        await wait_until(
            lambda: outbox.stats.slow_consumers >= 1, timeout=TIMEOUT * 3, what="slow consumer drop"
        )
        before = len(normal.events)
        await normal.wait_events(before + 20)
        assert relay.relay.hub.members == 1
        assert sequence_gaps(normal.events) == []
        # Once the close grace is over the relay resets the connection: its side of the
        # socket is gone at once, not left behind with the unsent backlog.
        stuck_port = stuck.getsockname()[1]
        await wait_until(
            lambda: not tcp_sockets(relay.port, stuck_port),
            timeout=CLOSE_GRACE + TIMEOUT,
            what="the relay's socket of the slow consumer to be freed",
        )
        await normal.close()
        stuck.close()


def tcp_sockets(local_port: int, remote_port: int) -> list[str]:
    """Kernel TCP sockets (IPv4, any state) from ``local_port`` to ``remote_port``: /proc/net/tcp."""
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state = fields[1], fields[2], fields[3]
        if int(local.split(":")[1], 16) == local_port and int(remote.split(":")[1], 16) == remote_port:
            found.append(state)
    return found


@pytest.mark.parametrize(
    ("message", "fragment"),
    [
        ("{not json", "invalid message"),
        ('{"action":"fly"}', "unknown action"),
        ('{"action":"subscribe","params":"AAPL"}', "expected EV.TICKER"),
        ('{"action":"auth","params":"again"}', "already authenticated"),
    ],
)
async def test_bad_client_input_gets_an_error_and_harms_nobody(
    relay: RunningRelay, message: str, fragment: str
) -> None:
    """Bad messages get a Massive-style error status; the sender stays connected, others keep receiving."""
    await wait_ready(relay)
    bystander = await Client.connect(url(relay))
    await bystander.subscribe("T.*")
    offender = await Client.connect(url(relay))
    await offender.ws.send(message)
    status = await offender.wait_status("error")
    assert fragment in status["message"]
    await offender.subscribe("T.AAPL")  # still usable
    before = len(bystander.events)
    await bystander.wait_events(before + 5)
    await offender.close()
    await bystander.close()


async def test_binary_and_oversized_frames(relay: RunningRelay) -> None:
    """A binary frame gets an error status; a frame over the size limit closes with 1009."""
    await wait_ready(relay)
    client = await Client.connect(url(relay))
    await client.ws.send(b"\x00\x01")
    assert "binary" in (await client.wait_status("error"))["message"]
    params = ",".join(f"T.S{i:05d}" for i in range(100_000))  # 100,000 channels, ~800 KB
    await client.send({"action": "subscribe", "params": params})
    with pytest.raises(websockets.ConnectionClosed) as info:
        await client.wait_for(lambda: False, timeout=TIMEOUT)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1009
    assert relay.relay.hub.members == 0


async def test_firefox_connection_header_is_accepted(relay: RunningRelay) -> None:
    """Firefox sends 'Connection: keep-alive, Upgrade'; the relay completes the upgrade."""
    await wait_ready(relay)
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    key = b64encode(b"fedcba9876543210").decode()
    writer.write(
        f"GET /stocks HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        f"Sec-WebSocket-Version: 13\r\nOrigin: http://127.0.0.1\r\n\r\n".encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    assert head.startswith(b"HTTP/1.1 101")
    first = await asyncio.wait_for(reader.readexactly(2), TIMEOUT)
    body = await asyncio.wait_for(reader.readexactly(first[1] & 0x7F), TIMEOUT)
    assert b'"connected"' in body
    writer.close()
    await writer.wait_closed()


async def test_health_and_readiness(relay: RunningRelay, sim: Simulator) -> None:
    """/healthz answers 200; /readyz is 503 while an upstream is down and 200 once it is back.
    (Down, not refused: Massive evicting the connection for another one on the key.)"""
    await wait_ready(relay)

    async def get(path: str) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), TIMEOUT)
        writer.close()
        await writer.wait_closed()
        return data

    assert (await get("/healthz")).startswith(b"HTTP/1.1 200")
    assert (await get("/readyz")).startswith(b"HTTP/1.1 200")
    sim.max_connections("stocks")
    await wait_until(lambda: not relay.ready, what="not ready")
    response = await get("/readyz")
    assert response.startswith(b"HTTP/1.1 503") and b"stocks" in response
    sim.auth_ok("stocks")
    await wait_ready(relay)
    assert (await get("/readyz")).startswith(b"HTTP/1.1 200")
    assert (await get("/nope")).startswith(b"HTTP/1.1 404")


async def test_api_socket_mixes_markets(relay: RunningRelay) -> None:
    """One /api/socket connection subscribes stocks and options channels and receives both."""
    await wait_ready(relay)
    client = await Client.connect(url(relay, "api/socket"))
    await client.subscribe("T.AAPL,T.O:SPY251219C00600000")
    await client.wait_for(
        lambda: {e["sym"] for e in client.events} >= {"AAPL", "O:SPY251219C00600000"},
        timeout=TIMEOUT * 2,
        what="both markets",
    )
    await client.close()


async def test_options_quote_cap_over_all_clients(sim: Simulator) -> None:
    """The options quote cap counts every client's contracts; passing it gets an error naming the cap."""
    async with running_relay(fast_relay_config(sim.base_url, "sim-key")) as relay:
        interest = relay.relay.demand["options"]
        relay.relay.demand.markets["options"] = MarketInterest(
            "options", interest.linger, relay.relay.loop.time, contract_cap=2
        )
        await wait_ready(relay)
        a = await Client.connect(url(relay, "options"))
        b = await Client.connect(url(relay, "options"))
        await a.subscribe("Q.O:SPY251219C00600000,Q.O:SPY251219C00610000")
        await b.send({"action": "subscribe", "params": "Q.O:SPY251219C00620000"})
        status = await b.wait_status("error")
        assert "cap of 2 contracts" in status["message"]
        await b.subscribe("Q.O:SPY251219C00600000")  # shared contracts cost nothing
        await a.close()
        await b.close()


async def test_idle_clients_are_pinged_and_silent_ones_reaped(sim: Simulator) -> None:
    """An idle client that answers pings stays; one that never answers is closed."""
    config = fast_relay_config(sim.base_url, "sim-key", client_ping_interval=0.1, client_ping_timeout=0.2)
    async with running_relay(config) as relay:
        alive = await Client.connect(url(relay))  # websockets answers pings by itself
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        key = b64encode(b"silentclient0000").decode()
        writer.write(
            f"GET /stocks HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        sweeper = relay.server.pings
        await wait_until(lambda: sweeper.reaped >= 1, what="silent client reaped")
        pings = sweeper.pings_sent
        await wait_until(lambda: sweeper.pings_sent >= pings + 3, what="more ping sweeps")
        assert sweeper.reaped == 1 and relay.relay.hub.members == 1
        await alive.send({"action": "subscribe", "params": "T.AAPL"})
        await alive.wait_status("success")
        await alive.close()
        writer.close()
        await writer.wait_closed()


async def test_history_over_the_wire_and_static_page(relay: RunningRelay) -> None:
    """A chart client gets kept per-second aggregates on request; / serves the dashboard page."""
    await wait_ready(relay)
    watcher = await Client.connect(url(relay))
    await watcher.subscribe("A.MSFT")
    await watcher.wait_events(2, timeout=TIMEOUT * 2)  # per-second aggregates
    chart = await Client.connect(url(relay))
    await chart.send({"action": "history", "params": "A.MSFT"})
    status = await chart.wait_status("success")
    assert status["message"].startswith("history: A.MSFT (") and len(chart.events) >= 2
    starts = [e["s"] for e in chart.events]
    assert starts == sorted(starts) and {e["ev"] for e in chart.events} == {"A"}
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    page = await asyncio.wait_for(reader.read(), TIMEOUT)
    writer.close()
    await writer.wait_closed()
    assert page.startswith(b"HTTP/1.1 200") and b"text/html" in page and b"<html" in page
    await watcher.close()
    await chart.close()


async def test_outage_statuses_reach_current_and_new_subscribers(relay: RunningRelay, sim: Simulator) -> None:
    """While a market's upstream is down its subscribers are told, also those who subscribe meanwhile."""
    await wait_ready(relay)
    before = await Client.connect(url(relay))
    await before.subscribe("T.AAPL")
    sim.auth_fail("stocks")
    sim.drop("stocks")
    status = await before.wait_status("error")
    assert status["message"].startswith("stocks feed interrupted")
    during = await Client.connect(url(relay))
    await during.subscribe("T.MSFT")
    assert (await during.wait_status("error"))["message"].startswith("stocks feed interrupted")
    sim.auth_ok("stocks")
    for client in (before, during):
        restored = await client.wait_status("success")
        while not restored["message"].startswith("stocks feed restored"):
            restored = await client.wait_status("success")
        await client.close()


async def test_no_stale_last_value_after_an_outage(relay: RunningRelay, sim: Simulator) -> None:
    """Last values from before an upstream outage are dropped: nothing pre-outage fills a new subscriber."""
    await wait_ready(relay)
    feeder = await Client.connect(url(relay))
    await feeder.subscribe("Q.AAPL")
    await feeder.wait_events(2)
    cache = relay.relay.cache
    quotes = [Channel("stocks", "Q", "AAPL")]
    assert cache.last_values(quotes, False)[0]
    sim.auth_fail("stocks")
    sim.drop("stocks")
    await wait_until(lambda: "stocks" in relay.relay.outages, what="outage noticed")
    assert cache.last_values(quotes, False)[0] == []
    sim.auth_ok("stocks")
    await feeder.close()


async def test_kept_channels_are_subscribed_and_recorded_before_any_client() -> None:
    """--keep-channels: upstream from the start, so the first page gets history at once."""
    async with (
        Simulator(sim_config()) as sim,
        running_relay(fast_relay_config(sim.base_url, "sim-key", keep_channels=["A.AAPL"])) as relay,
    ):
        await wait_ready(relay)
        hub = relay.relay.hub
        await wait_until(
            lambda: len(relay.relay.cache["stocks"].history_of("A", "AAPL")) >= 2,
            timeout=3 * TIMEOUT,
            what="two per-second aggregates recorded without a client",
        )
        assert "A.AAPL" in sim.stats()["markets"]["stocks"]["subscriptions"]
        client = await Client.connect(url(relay))
        await client.send({"action": "history", "params": "A.AAPL"})
        done = await client.wait_status("success")
        assert done["message"].startswith("history: A.AAPL (") and not done["message"].startswith(
            "history: A.AAPL (0 "
        )
        # The client leaving does not release what the relay keeps.
        await client.subscribe("A.AAPL")
        await client.close()
        await wait_until(lambda: hub.members == 0, what="client gone")
        assert relay.relay.demand["stocks"].refcount("A.AAPL") == 1


async def test_an_unserved_market_is_told_so_in_massive_terms(
    relay: RunningRelay, caplog: pytest.LogCaptureFixture
) -> None:
    """/crypto on a stocks and options relay: upgraded, connected, an error naming the market and
    the served ones, then 1008 (not a 404, which Massive's clients retry silently for ever)."""
    with caplog.at_level(logging.INFO, logger="fastrelay"):
        client = await RawClient.connect("127.0.0.1", relay.port, path="/crypto")
        assert client.upgraded
        messages = await client.messages(TIMEOUT)
        assert [m["status"] for m in messages] == ["connected", "error"]
        assert (
            messages[1]["message"] == "market crypto is not served by this relay (it serves stocks, options)"
        )
        client.close()
    assert relay.server.stats.closed["unserved"] == 1
    assert any("on /crypto: market not served" in r.getMessage() for r in caplog.records)
