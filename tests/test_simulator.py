"""The simulated Massive feed, driven over real sockets by the ``websockets`` client.

Every wait has a timeout; nothing sleeps and hopes. Rates are high and the
"minute" short so the whole file runs in seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import ssl
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import trustme
import uvloop
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from fastrelay import markets
from fastrelay.sim import FAULTS, Simulator, SimulatorConfig

KEY = "sim-key"
TIMEOUT = 5.0
Event = dict[str, Any]

CONNECTED = {"ev": "status", "status": "connected", "message": "Connected Successfully"}
AUTH_SUCCESS = {"ev": "status", "status": "auth_success", "message": "authenticated"}
AUTH_FAILED = {"ev": "status", "status": "auth_failed", "message": "authentication failed"}


def make_config(**overrides: Any) -> SimulatorConfig:
    settings: dict[str, Any] = {"rate": 500.0, "markets": ("stocks",), "agg_minute_seconds": 1.5, "seed": 7}
    settings.update(overrides)
    return SimulatorConfig(**settings)


@contextlib.asynccontextmanager
async def running(config: SimulatorConfig, **kwargs: Any) -> AsyncIterator[Simulator]:
    async with Simulator(config, **kwargs) as sim:
        yield sim


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def recv_frame(ws: ClientConnection, timeout: float = TIMEOUT) -> Any:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def connect(
    sim: Simulator,
    market: str = "stocks",
    *,
    key: str | None = KEY,
    ssl_context: ssl.SSLContext | None = None,
) -> ClientConnection:
    ws = await websockets.connect(
        sim.url(market),
        ssl=ssl_context,
        max_size=None,
        max_queue=None,
        ping_interval=None,
        open_timeout=TIMEOUT,
    )
    assert await recv_frame(ws) == [CONNECTED]
    if key is not None:
        await ws.send(json.dumps({"action": "auth", "params": key}))
        assert await recv_frame(ws) == [AUTH_SUCCESS]
    return ws


async def send_action(ws: ClientConnection, action: str, params: str) -> list[Event]:
    """Send a (un)subscribe; return its statuses, one per channel (data may interleave)."""
    await ws.send(json.dumps({"action": action, "params": params}))
    wanted = len([part for part in params.split(",") if part.strip()])
    statuses: list[Event] = []
    while len(statuses) < wanted:
        statuses.extend(event for event in await recv_frame(ws) if event["ev"] == "status")
    return statuses


async def collect(
    ws: ClientConnection, done: Callable[[list[Event]], bool], timeout: float = TIMEOUT
) -> list[Event]:
    """Data events (statuses left out) in arrival order, until ``done(events)``."""
    events: list[Event] = []

    async def run() -> None:
        while not done(events):
            frame = json.loads(await ws.recv())
            events.extend(event for event in frame if event["ev"] != "status")

    await asyncio.wait_for(run(), timeout)
    return events


def count(ev: str, symbol: str | None = None, n: int = 1) -> Callable[[list[Event]], bool]:
    def done(events: list[Event]) -> bool:
        return sum(1 for e in events if e["ev"] == ev and (symbol is None or e.get("sym") == symbol)) >= n

    return done


async def until_closed(ws: ClientConnection, timeout: float = TIMEOUT) -> ConnectionClosed:
    """Read (so the client keeps reading the socket) until the connection ends."""

    async def drain() -> ConnectionClosed:
        try:
            while True:
                await ws.recv()
        except ConnectionClosed as exc:
            return exc

    return await asyncio.wait_for(drain(), timeout)


async def http_get(sim: Simulator, path: str, ssl_context: ssl.SSLContext | None = None) -> tuple[int, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", sim.port, ssl=ssl_context)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), TIMEOUT)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    is_json = b"content-type: application/json" in head.lower()
    return int(head.split()[1]), json.loads(body) if is_json else body


def assert_no_gaps(events: list[Event]) -> dict[str, list[int]]:
    by_channel: dict[str, list[int]] = {}
    for event in events:
        symbol = event.get("sym") or event.get("pair") or event.get("T") or event.get("p")
        by_channel.setdefault(f"{event['ev']}.{symbol}", []).append(event["q"])
    for channel, seqs in by_channel.items():
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), channel
    return by_channel


# --- handshake and subscriptions --------------------------------------------------------------------


async def test_handshake_statuses_come_in_separate_frames() -> None:
    async with running(make_config()) as sim:
        ws = await connect(sim, key=None)
        async with ws:
            await ws.send(json.dumps({"action": "subscribe", "params": "T.AAPL"}))
            [required] = await recv_frame(ws)
            assert required["status"] == "auth_required"
            await ws.send(json.dumps({"action": "auth", "params": KEY}))
            assert await recv_frame(ws) == [AUTH_SUCCESS]
            await ws.send(json.dumps({"action": "subscribe", "params": "T.AAPL,Q.*,nonsense"}))
            # Sent before any data could be generated for them: exactly one status per frame.
            frames = [await recv_frame(ws) for _ in range(3)]
            assert frames[0] == [{"ev": "status", "status": "success", "message": "subscribed to: T.AAPL"}]
            assert frames[1] == [{"ev": "status", "status": "success", "message": "subscribed to: Q.*"}]
            assert len(frames[2]) == 1 and frames[2][0]["status"] == "error"
            statuses = await send_action(ws, "unsubscribe", "T.AAPL")
            assert statuses == [{"ev": "status", "status": "success", "message": "unsubscribed to: T.AAPL"}]


async def test_wrong_key_gets_auth_failed_and_close_1008() -> None:
    async with running(make_config()) as sim:
        ws = await connect(sim, key=None)
        await ws.send(json.dumps({"action": "auth", "params": "wrong"}))
        assert await recv_frame(ws) == [AUTH_FAILED]
        closed = await until_closed(ws)
        assert closed.rcvd is not None and closed.rcvd.code == 1008
        stats = sim.stats()["markets"]["stocks"]
        assert stats["auth_attempts"] == 1 and stats["auth_failures"] == 1


async def test_auth_timeout_closes_1008() -> None:
    async with running(make_config(auth_timeout=0.2)) as sim:
        ws = await connect(sim, key=None)
        [status] = await recv_frame(ws)
        assert status["status"] == "auth_timeout"
        closed = await until_closed(ws)
        assert closed.rcvd is not None and closed.rcvd.code == 1008


async def test_only_subscribed_channels_arrive_each_once() -> None:
    config = make_config(symbols={"stocks": ("AAPL", "MSFT", "TSLA")})
    async with running(config) as sim, await connect(sim) as ws:
        await send_action(ws, "subscribe", "T.AAPL,T.*,Q.MSFT")
        events = await collect(ws, lambda ev: count("T", "AAPL", 30)(ev) and count("Q", "MSFT", 10)(ev))
        assert {e["ev"] for e in events} == {"T", "Q"}
        assert {e["sym"] for e in events if e["ev"] == "Q"} == {"MSFT"}
        assert {e["sym"] for e in events if e["ev"] == "T"} == {"AAPL", "MSFT", "TSLA"}
        # T.* and T.AAPL together: every AAPL trade once, in order.
        assert_no_gaps(events)

        await send_action(ws, "unsubscribe", "T.*,T.AAPL")
        after = await collect(ws, count("Q", "MSFT", 10))
        assert {e["ev"] for e in after} == {"Q"}


async def test_sequence_numbers_per_channel_have_no_gaps() -> None:
    async with running(make_config(rate=1000.0, agg_minute_seconds=1.0)) as sim, await connect(sim) as ws:
        await send_action(ws, "subscribe", "T.*,Q.*,A.*")
        events = await collect(ws, lambda ev: len(ev) >= 600 and count("A")(ev))
        channels = assert_no_gaps(events)
        assert len(channels) > 12
        now = now_ms()
        assert all(now - 10_000 < e["t"] <= now + 1000 for e in events)


async def test_second_and_minute_aggregates_match_the_trades_of_their_window() -> None:
    config = make_config(rate=400.0, symbols={"stocks": ("AAPL",)}, agg_minute_seconds=1.5)
    async with running(config) as sim, await connect(sim) as ws:
        await send_action(ws, "subscribe", "T.AAPL,A.AAPL,AM.AAPL")
        # Windows that start after the subscription are fully observed.
        start = now_ms()

        def complete(ev: str, n: int) -> Callable[[list[Event]], bool]:
            return lambda events: sum(1 for e in events if e["ev"] == ev and e["s"] >= start) >= n

        events = await collect(ws, lambda ev: complete("A", 2)(ev) and complete("AM", 1)(ev), timeout=8)
        trades = [e for e in events if e["ev"] == "T"]
        aggregates = [e for e in events if e["ev"] in ("A", "AM") and e["s"] >= start]
        assert {e["ev"] for e in aggregates} == {"A", "AM"}
        for agg in aggregates:
            assert agg["e"] - agg["s"] == (1000 if agg["ev"] == "A" else 1500)
            window = [t for t in trades if agg["s"] <= t["t"] < agg["e"]]
            assert window, agg
            prices = [t["p"] for t in window]
            volume = sum(t["s"] for t in window)
            assert (agg["o"], agg["c"]) == (prices[0], prices[-1])
            assert (agg["h"], agg["l"]) == (max(prices), min(prices))
            assert agg["v"] == volume
            assert agg["vw"] == pytest.approx(sum(t["p"] * t["s"] for t in window) / volume, abs=1e-4)
            assert agg["z"] == volume // len(window)
            assert agg["sym"] == "AAPL" and agg["t"] >= agg["e"]


# Field lists from docs/protocol.md ("Events by market"), plus t and q on every event.
_AGG = ["sym", "v", "av", "op", "vw", "o", "c", "h", "l", "a", "z", "s", "e"]
_FUT = {
    "T": ("sym", ["sym", "p", "s", "t", "q"]),
    "Q": ("sym", ["sym", "bp", "bs", "bt", "ap", "as", "at", "t"]),
    "A": ("sym", ["sym", "v", "dv", "o", "c", "h", "l", "n", "s", "e"]),
    "AM": ("sym", ["sym", "v", "dv", "o", "c", "h", "l", "n", "s", "e"]),
}
EXPECTED: dict[str, dict[str, tuple[str, list[str]]]] = {
    "stocks": {
        "T": ("sym", ["sym", "x", "i", "z", "p", "s", "c", "t", "q"]),
        "Q": ("sym", ["sym", "bx", "bp", "bs", "ax", "ap", "as", "c", "i", "t", "q", "z"]),
        "A": ("sym", _AGG),
        "AM": ("sym", _AGG),
    },
    "options": {
        "T": ("sym", ["sym", "x", "p", "s", "c", "t", "q"]),
        "Q": ("sym", ["sym", "bx", "ax", "bp", "ap", "bs", "as", "t", "q"]),
        "A": ("sym", _AGG),
        "AM": ("sym", _AGG),
    },
    "indices": {
        "V": ("T", ["T", "val", "t"]),
        "A": ("sym", ["sym", "op", "o", "c", "h", "l", "s", "e"]),
        "AM": ("sym", ["sym", "op", "o", "c", "h", "l", "s", "e"]),
    },
    "forex": {
        "C": ("p", ["p", "x", "a", "b", "t"]),
        "CA": ("pair", ["pair", "o", "c", "h", "l", "v", "s", "e"]),
        "CAS": ("pair", ["pair", "o", "c", "h", "l", "v", "s", "e"]),
    },
    "crypto": {
        "XT": ("pair", ["pair", "p", "t", "s", "c", "i", "x", "r"]),
        "XQ": ("pair", ["pair", "bp", "bs", "ap", "as", "t", "x", "r"]),
        "XA": ("pair", ["pair", "o", "c", "h", "l", "v", "vw", "z", "s", "e"]),
    },
    **{market: _FUT for market in markets.MARKETS if market.startswith("futures")},
}
TICKER_FORMS = {
    "stocks": r"[A-Z]+(\.[A-Z])?",
    "options": r"O:[A-Z]+\d{6}[CP]\d{8}",
    "indices": r"I:[A-Z]+",
    "forex": r"[A-Z]{3}/[A-Z]{3}",
    "crypto": r"[A-Z]+-USD",
    "futures": r"[A-Z0-9]{1,3}[FGHJKMNQUVXZ]\d",
}


async def test_every_market_path_produces_its_events() -> None:
    config = make_config(rate=300.0, markets=markets.MARKETS, agg_minute_seconds=0.5)

    async def check(sim: Simulator, market: str) -> None:
        expected = EXPECTED[market]
        async with await connect(sim, market) as ws:
            if market == "options":
                # Options quotes take no wildcard (docs/protocol.md, "Channels"): one contract at a time.
                [error] = await send_action(ws, "subscribe", "Q.*")
                assert error["status"] == "error"
                channels = ["T.*", "A.*", "AM.*", *(f"Q.{sym}" for sym in sim.symbols("options"))]
            else:
                channels = [f"{ev}.*" for ev in expected]
            await send_action(ws, "subscribe", ",".join(channels))
            events = await collect(ws, lambda evs: {e["ev"] for e in evs} >= set(expected))
        form = TICKER_FORMS["futures" if market.startswith("futures") else market]
        for event in events:
            key, fields = expected[event["ev"]]
            assert set(fields) | {"t", "q"} <= set(event), (market, event)
            assert re.fullmatch(form, event[key]), (market, event)
            assert event[key] in sim.symbols(market)

    async with running(config) as sim:
        await asyncio.gather(*(check(sim, market) for market in markets.MARKETS))


# --- faults -------------------------------------------------------------------------------------


async def test_drop_cuts_one_market_without_a_close_frame() -> None:
    async with running(make_config(markets=("stocks", "crypto"))) as sim:
        stocks = await connect(sim, "stocks")
        async with await connect(sim, "crypto") as crypto:
            await send_action(crypto, "subscribe", "XT.*")
            status, body = await http_get(sim, "/sim/fault/drop?market=stocks")
            assert (status, body["affected"]) == (200, 1)
            closed = await until_closed(stocks)
            assert closed.rcvd is None
            assert await collect(crypto, count("XT", n=5))


async def test_stall_silences_data_and_pongs_until_unstall() -> None:
    config = make_config(symbols={"stocks": ("AAPL",)})
    async with running(config) as sim, await connect(sim) as ws:
        await send_action(ws, "subscribe", "T.AAPL")
        before = await collect(ws, count("T", n=3))
        assert sim.stall("stocks") == 1
        # Whatever was on the wire arrives at once; then nothing.
        drained: list[Event] = []
        with pytest.raises(TimeoutError):
            for _ in range(1000):
                drained.extend(await recv_frame(ws, timeout=0.4))
        pong = await ws.ping()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(pong), 0.3)
        assert sim.stats()["markets"]["stocks"]["stalled"] == 1

        assert sim.unstall("stocks") == 1
        await asyncio.wait_for(pong, TIMEOUT)
        after = await collect(ws, count("T", n=3))
        last = (drained or before)[-1]["q"]
        # Generation went on during the stall: the client sees a gap.
        assert after[0]["q"] > last + 1
        assert_no_gaps(after)


async def test_malformed_not_array_and_unknown_ev_frames() -> None:
    async with running(make_config()) as sim, await connect(sim) as ws:
        await send_action(ws, "subscribe", "T.*")

        async def frame_where(check: Callable[[str], bool]) -> str:
            async def run() -> str:
                while True:
                    text = await ws.recv()
                    assert isinstance(text, str)
                    if check(text):
                        return text

            return await asyncio.wait_for(run(), TIMEOUT)

        def is_json(text: str) -> bool:
            try:
                json.loads(text)
            except ValueError:
                return False
            return True

        assert (await http_get(sim, "/sim/fault/malformed"))[0] == 200
        assert await frame_where(lambda text: not is_json(text)) == '[{"ev":"T","sym":'

        assert (await http_get(sim, "/sim/fault/not_array?market=stocks"))[0] == 200
        text = await frame_where(lambda text: isinstance(json.loads(text), dict))
        assert json.loads(text)["ev"] == "T"

        assert (await http_get(sim, "/sim/fault/unknown_ev"))[0] == 200
        text = await frame_where(lambda text: any(e["ev"] == "ZZ" for e in json.loads(text)))
        # The connection carries on with valid data.
        assert await collect(ws, count("T", n=3))


async def test_huge_sends_one_valid_frame_over_1_mib() -> None:
    async with running(make_config()) as sim, await connect(sim) as ws:
        await send_action(ws, "subscribe", "T.AAPL,Q.*")
        assert sim.huge("stocks") == 1

        async def big() -> str | bytes:
            while True:
                frame = await ws.recv()
                if len(frame) > 1024 * 1024:
                    return frame

        frame = await asyncio.wait_for(big(), TIMEOUT)
        events = json.loads(frame)
        assert isinstance(events, list)
        assert all(e["ev"] == "Q" or (e["ev"] == "T" and e["sym"] == "AAPL") for e in events)
        assert_no_gaps(events)


async def test_auth_fail_until_auth_ok() -> None:
    async with running(make_config()) as sim:
        assert (await http_get(sim, "/sim/fault/auth_fail?market=stocks"))[0] == 200
        ws = await connect(sim, key=None)
        await ws.send(json.dumps({"action": "auth", "params": KEY}))
        assert await recv_frame(ws) == [AUTH_FAILED]
        closed = await until_closed(ws)
        assert closed.rcvd is not None and closed.rcvd.code == 1008

        assert (await http_get(sim, "/sim/fault/auth_ok"))[0] == 200
        async with await connect(sim) as ws:
            pass
        stats = sim.stats()["markets"]["stocks"]
        assert stats["auth_attempts"] == 2 and stats["auth_failures"] == 1
        assert len(stats["auth_attempt_times_ms"]) == 2


async def test_one_connection_per_key_evicts_the_older_as_massive_does() -> None:
    """Massive's rule played: a second connection of the key that authenticates evicts the first
    (max_connections, 1008); the new one is served; other markets are not affected."""
    async with running(make_config(markets=("stocks", "crypto"), one_connection_per_key=True)) as sim:
        first = await connect(sim)
        other_market = await connect(sim, "crypto")
        second = await connect(sim)
        [evicted] = await recv_frame(first)
        assert evicted["status"] == "max_connections"
        closed = await until_closed(first)
        assert closed.rcvd is not None and closed.rcvd.code == 1008
        await send_action(second, "subscribe", "T.*")
        assert await collect(second, count("T", n=2))
        await send_action(other_market, "subscribe", "XT.*")
        assert await collect(other_market, count("XT", n=1))
        await second.close()
        await other_market.close()


async def test_max_connections_evicts_current_and_following_auths() -> None:
    async with running(make_config()) as sim:
        current = await connect(sim)
        status, body = await http_get(sim, "/sim/fault/max_connections?market=stocks")
        assert (status, body["affected"]) == (200, 1)
        [evicted] = await recv_frame(current)
        assert evicted["status"] == "max_connections"
        assert evicted["message"].startswith("Maximum number of websocket connections exceeded")
        closed = await until_closed(current)
        assert closed.rcvd is not None and closed.rcvd.code == 1008

        # A new connection authenticates, then is evicted: two frames, then 1008.
        ws = await connect(sim, key=None)
        await ws.send(json.dumps({"action": "auth", "params": KEY}))
        assert await recv_frame(ws) == [AUTH_SUCCESS]
        [evicted] = await recv_frame(ws)
        assert evicted["status"] == "max_connections"
        closed = await until_closed(ws)
        assert closed.rcvd is not None and closed.rcvd.code == 1008

        sim.auth_ok()
        async with await connect(sim) as ws:
            await send_action(ws, "subscribe", "T.*")
            assert await collect(ws, count("T", n=2))


async def test_slow_delays_delivery_until_unslow() -> None:
    async with running(make_config()) as sim, await connect(sim) as ws:
        await send_action(ws, "subscribe", "T.*,Q.*")
        sim.slow("stocks", factor=1.0, delay=0.4)
        assert "slow" in sim.stats()["markets"]["stocks"]["faults"]
        await collect(ws, lambda events: bool(events) and now_ms() - events[-1]["t"] >= 350)
        assert (await http_get(sim, "/sim/fault/unslow"))[0] == 200
        await collect(ws, lambda events: bool(events) and now_ms() - events[-1]["t"] < 150)


async def test_http_control_endpoints() -> None:
    async with running(make_config()) as sim, await connect(sim) as ws:
        await send_action(ws, "subscribe", "T.AAPL,Q.*")
        await collect(ws, count("Q", n=3))
        status, stats = await http_get(sim, "/sim/stats")
        assert status == 200
        stocks = stats["markets"]["stocks"]
        assert stocks["connections"] == 1 and stocks["authenticated"] == 1
        assert stocks["subscriptions"] == ["Q.*", "T.AAPL"]
        assert stocks["events_sent"] >= 3 and stocks["auth_attempts"] == 1
        assert stats["markets"]["crypto"]["connections"] == 0
        assert (await http_get(sim, "/sim/health")) == (200, {"ok": True})
        status, body = await http_get(sim, "/sim/fault/nope")
        assert status == 404 and set(body["faults"]) == set(FAULTS)
        assert (await http_get(sim, "/sim/fault/drop?market=moon"))[0] == 400
        assert (await http_get(sim, "/elsewhere"))[0] == 404
        with pytest.raises(InvalidStatus) as rejected:
            await websockets.connect(sim.url("stocks").replace("/stocks", "/bonds"), open_timeout=TIMEOUT)
        assert rejected.value.response.status_code == 404


async def test_tls_with_a_private_ca() -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    async with running(make_config(), ssl_context=server_ctx) as sim:
        assert sim.url("crypto").startswith("wss://127.0.0.1:")
        async with await connect(sim, ssl_context=client_ctx) as ws:
            await send_action(ws, "subscribe", "T.*")
            assert await collect(ws, count("T", n=3))
        status, stats = await http_get(sim, "/sim/stats", ssl_context=client_ctx)
        assert status == 200 and stats["secure"] is True


async def test_stamp_ns_and_synthetic_symbols() -> None:
    async with running(make_config(stamp_ns=True, symbol_count=50)) as sim, await connect(sim) as ws:
        assert sim.symbols("stocks") == tuple(f"S{i:04d}" for i in range(1, 51))
        await send_action(ws, "subscribe", "T.*,Q.*")
        events = await collect(ws, lambda evs: len(evs) >= 20)
        received = time.time_ns()
        for event in events:
            assert event["sym"] in sim.symbols("stocks")
            assert event["t"] * 1_000_000 - 1_000_000 <= event["sim_ns"] <= received


async def test_high_rate_catches_up_with_several_events_per_frame() -> None:
    config = make_config(rate=5000.0, events_per_frame=3, aggregates=False)
    async with running(config) as sim, await connect(sim) as ws:
        await send_action(ws, "subscribe", "T.*,Q.*")
        frames = [await recv_frame(ws) for _ in range(1500)]
        assert all(len(frame) == 3 for frame in frames)
        # Timers fire every ~1 ms; catching up by elapsed time still makes 5000 frames/s.
        span_ms = frames[-1][0]["t"] - frames[0][0]["t"]
        assert span_ms < 1000, span_ms
        assert_no_gaps([event for frame in frames for event in frame])


async def test_stop_closes_every_connection_and_leaves_no_task() -> None:
    sim = Simulator(make_config())
    await sim.start()
    normal = await connect(sim)
    stalled = await connect(sim, "crypto")
    sim.stall("crypto")
    await sim.stop()
    closed = await until_closed(normal)
    assert closed.rcvd is not None and closed.rcvd.code == 1001
    assert (await until_closed(stalled)).rcvd is None
    leftovers = [task for task in asyncio.all_tasks() if "simulator" in repr(task.get_coro())]
    assert leftovers == []
    await sim.stop()  # idempotent


def test_runs_on_uvloop() -> None:
    async def scenario() -> None:
        assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
        async with running(make_config()) as sim, await connect(sim) as ws:
            await send_action(ws, "subscribe", "T.*")
            assert await collect(ws, count("T", n=3))

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())
