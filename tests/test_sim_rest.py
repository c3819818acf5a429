"""The simulator's REST aggregates (fastrelay/sim/rest.py): Massive's official client and raw HTTP against it.

Nothing sleeps to synchronise: every wait is for what is expected, under a
timeout. The official client is synchronous (urllib3), so it runs in a thread
while the simulator's loop goes on serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import itertools
import json
import math
import ssl
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar
from urllib.parse import urlencode, urlsplit
from zoneinfo import ZoneInfo

import pytest
import trustme
import urllib3
from massive import RESTClient
from massive.exceptions import BadResponse
from massive.rest.models import Agg

from fastrelay.sim import FAULTS, Simulator, SimulatorConfig
from fastrelay.sim.bars import Buckets
from fastrelay.sim.feed import LiveBars, Window, now_ms
from fastrelay.sim.rest import RestApi
from tests.test_simulator import collect, connect, send_action
from tests.utils import wait_until

KEY = "sim-key"
TIMEOUT = 10.0
NY = ZoneInfo("America/New_York")
UTC = datetime.UTC
MINUTE = 60_000
DAY = 86_400_000
Bar = dict[str, Any]
T = TypeVar("T")


def make_config(**overrides: Any) -> SimulatorConfig:
    # agg_minute_seconds=1: AM windows are the seconds REST serves, so they can be compared.
    settings: dict[str, Any] = {
        "rate": 400.0,
        "markets": ("stocks",),
        "symbols": {"stocks": ("AAPL", "MSFT")},
        "agg_minute_seconds": 1.0,
        "seed": 7,
    }
    settings.update(overrides)
    return SimulatorConfig(**settings)


@contextlib.asynccontextmanager
async def running(config: SimulatorConfig | None = None) -> AsyncIterator[Simulator]:
    async with Simulator(config or make_config()) as sim:
        yield sim


def client(sim: Simulator, retries: int = 0, key: str = KEY) -> RESTClient:
    return RESTClient(api_key=key, base=sim.rest_url, retries=retries)


async def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """The official client's (blocking) call, in a thread."""
    return await asyncio.wait_for(asyncio.to_thread(fn, *args, **kwargs), TIMEOUT)


def as_bar(agg: Agg) -> Bar:
    return {
        "o": agg.open, "h": agg.high, "l": agg.low, "c": agg.close, "v": agg.volume, "vw": agg.vwap,
        "t": agg.timestamp, "n": agg.transactions,
    }  # fmt: skip


@dataclasses.dataclass
class Reply:
    status: int
    content_type: str
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def rest_get(sim: Simulator, path: str, headers: dict[str, str] | None = None) -> Reply:
    """One raw HTTP GET on the simulator's port, asking it to close the connection after."""
    reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
    try:
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{sim.port}\r\nConnection: close\r\n{extra}\r\n"
        writer.write(head.encode())
        data = await asyncio.wait_for(reader.read(), TIMEOUT)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert int(fields["content-length"]) == len(body)
    return Reply(int(lines[0].split()[1]), fields.get("content-type", ""), body)


def aggs_path(ticker: str, multiplier: int, timespan: str, start: object, end: object, **params: Any) -> str:
    query = {"apiKey": KEY, **params}
    return f"/v2/aggs/ticker/{ticker}/range/{multiplier}/{timespan}/{start}/{end}?{urlencode(query)}"


async def follow(sim: Simulator, path: str) -> list[dict[str, Any]]:
    """Every page of an answer, following next_url as the official client does (the key in a header)."""
    pages = []
    while True:
        reply = await rest_get(sim, path, {"Authorization": f"Bearer {KEY}"})
        assert reply.status == 200, reply.body
        page = reply.json()
        pages.append(page)
        if "next_url" not in page:
            return pages
        url = urlsplit(page["next_url"])
        assert (url.scheme, url.netloc) == ("http", f"127.0.0.1:{sim.port}")
        assert KEY not in page["next_url"]
        path = f"{url.path}?{url.query}"


def history_end(sim: Simulator) -> int:
    end = sim.stats()["rest"]["history_end_ms"]
    assert isinstance(end, int) and end % MINUTE == 0
    return end


def midnight(day: datetime.date, zone: datetime.tzinfo = NY) -> int:
    return int(datetime.datetime(day.year, day.month, day.day, tzinfo=zone).timestamp() * 1000)


def assert_plausible(bars: list[Bar], volume: bool = True) -> None:
    assert bars
    for bar in bars:
        assert bar["h"] >= max(bar["o"], bar["c"]) and 0 < bar["l"] <= min(bar["o"], bar["c"]), bar
        if volume:
            assert bar["v"] > 0 and bar["n"] >= 1 and bar["l"] <= bar["vw"] <= bar["h"], bar
        else:
            assert "v" not in bar and "vw" not in bar and "n" not in bar, bar
    times = [bar["t"] for bar in bars]
    assert times == sorted(set(times))


def merged(bars: list[Bar]) -> Bar:
    """What Massive's longer bar of these bars is."""
    volume = sum(bar["v"] for bar in bars)
    return {
        "o": bars[0]["o"], "h": max(bar["h"] for bar in bars), "l": min(bar["l"] for bar in bars),
        "c": bars[-1]["c"], "v": volume, "n": sum(bar["n"] for bar in bars),
        "vw": sum(bar["vw"] * bar["v"] for bar in bars) / volume,
    }  # fmt: skip


def assert_same_bar(bar: Bar, expected: Bar) -> None:
    for field in ("o", "h", "l", "c", "v", "n"):
        assert bar[field] == pytest.approx(expected[field], abs=1e-9), (field, bar, expected)
    assert bar["vw"] == pytest.approx(expected["vw"], abs=2e-4)


# --- the official client ----------------------------------------------------------------------


async def test_official_client_minute_bars_of_a_day() -> None:
    async with running() as sim:
        end = history_end(sim)
        day = datetime.datetime.fromtimestamp(end / 1000, NY).date() - datetime.timedelta(days=1)
        aggs = await call(client(sim).get_aggs, "AAPL", 1, "minute", day, day)
        bars = [as_bar(agg) for agg in aggs]
        # Every minute of that Eastern Time day (23 or 25 hours on a DST change), one path.
        start, stop = midnight(day), midnight(day + datetime.timedelta(days=1))
        assert [bar["t"] for bar in bars] == list(range(start, stop, MINUTE))
        assert_plausible(bars)
        assert all(after["o"] == before["c"] for before, after in itertools.pairwise(bars))
        assert all(isinstance(bar["v"], int) and isinstance(bar["n"], int) for bar in bars)
        rest = sim.stats()["rest"]
        assert (rest["requests"], rest["by_kind"], rest["by_ticker"]) == (1, {"aggs": 1}, {"AAPL": 1})


async def test_official_client_daily_bars_of_a_year_match_the_minutes() -> None:
    async with running() as sim:
        rest = client(sim)
        today = datetime.datetime.fromtimestamp(history_end(sim) / 1000, NY).date()
        first = today - datetime.timedelta(days=365)
        days = [as_bar(agg) for agg in await call(rest.get_aggs, "AAPL", 1, "day", first, today)]
        # One bar per Eastern Time day, dated at its midnight, through today's (still going).
        assert [bar["t"] for bar in days] == [
            midnight(first + datetime.timedelta(days=k)) for k in range(366)
        ]
        assert_plausible(days)
        assert all(after["o"] == before["c"] for before, after in itertools.pairwise(days))
        # A year wanders, but plausibly: within a factor of two of the start price.
        assert all(114.0 < bar["l"] <= bar["h"] < 456.0 for bar in days)

        # Yesterday's day bar is its minutes merged.
        yesterday = today - datetime.timedelta(days=1)
        minutes = [
            as_bar(agg) for agg in await call(rest.get_aggs, "AAPL", 1, "minute", yesterday, yesterday)
        ]
        assert_same_bar(days[-2], merged(minutes))
        # Weeks start on Sundays and merge their days.
        weeks = [as_bar(agg) for agg in await call(rest.get_aggs, "AAPL", 1, "week", first, today)]
        for week in weeks:
            assert datetime.datetime.fromtimestamp(week["t"] / 1000, NY).weekday() == 6  # Sunday
        inside = [day for day in days if weeks[1]["t"] <= day["t"] < weeks[2]["t"]]
        assert len(inside) == 7
        assert_same_bar(weeks[1], merged(inside))


async def test_list_aggs_pages_a_week_of_minutes_without_gaps_or_duplicates() -> None:
    async with running() as sim:
        rest = client(sim)
        end = history_end(sim)
        start, stop = end - 7 * DAY, now_ms()
        paged = [
            as_bar(agg)
            for agg in await call(lambda: list(rest.list_aggs("AAPL", 1, "minute", start, stop, limit=2000)))
        ]
        whole = [
            as_bar(agg) for agg in await call(rest.get_aggs, "AAPL", 1, "minute", start, stop, limit=50_000)
        ]
        times = [bar["t"] for bar in paged]
        assert len(set(times)) == len(times) and times == sorted(times)
        before = [bar for bar in paged if bar["t"] < end]
        # Every minute of the week before the start, in pages of 2,000: the first page opens the week.
        assert [bar["t"] for bar in before] == list(range(start, end, MINUTE))
        assert before == [bar for bar in whole if bar["t"] < end]
        stats = sim.stats()["rest"]
        assert stats["by_kind"] == {"aggs": 2, "aggs_page": math.ceil(len(paged) / 2000) - 1}
        assert stats["by_kind"]["aggs_page"] >= 5
        # Pages followed next_url: cursor, no key (the client sends it in a header).
        followed = [entry["path"] for entry in stats["recent"] if "cursor=" in entry["path"]]
        assert len(followed) == stats["by_kind"]["aggs_page"]
        assert not any(KEY in entry["path"] for entry in stats["recent"])


# --- paging, by hand ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("multiplier", "timespan", "limit", "size"), [(5, "minute", 2000, 5), (1, "hour", 600, 60)]
)
async def test_limit_counts_base_bars_and_pages_follow_in_both_orders(
    multiplier: int, timespan: str, limit: int, size: int
) -> None:
    async with running() as sim:
        step = size * MINUTE
        # Whole bars of the week before the start (an hour bar is 60 minutes, all before it).
        end = history_end(sim)
        stop = end - end % step
        start = stop - 7 * DAY
        up = await follow(sim, aggs_path("AAPL", multiplier, timespan, start, stop - 1, limit=limit))
        down = await follow(
            sim, aggs_path("AAPL", multiplier, timespan, start, stop - 1, limit=limit, sort="desc")
        )
        for pages in (up, down):
            assert len(pages) >= 2
            for page in pages:
                # limit counts the minutes merged: a page of 2,000 minutes holds 400 five-minute bars.
                assert page["queryCount"] == page["resultsCount"] * size <= limit
                assert page["resultsCount"] == len(page["results"])
                assert_plausible(sorted(page["results"], key=lambda bar: bar["t"]))
            assert [page["resultsCount"] for page in pages[:-1]] == [limit // size] * (len(pages) - 1)
        ascending = [bar for page in up for bar in page["results"]]
        descending = [bar for page in down for bar in page["results"]]
        # Every bar, each once, in order either way.
        assert [bar["t"] for bar in ascending] == list(range(start, stop, step))
        assert descending == ascending[::-1]
        minutes = (await rest_get(sim, aggs_path("AAPL", 1, "minute", start, start + step - 1))).json()
        assert_same_bar(ascending[0], merged(minutes["results"]))


async def test_next_url_is_on_the_same_host_carries_a_cursor_and_no_key() -> None:
    async with running() as sim:
        end = history_end(sim)
        reply = await rest_get(sim, aggs_path("AAPL", 1, "minute", end - DAY, end - 1, limit=100))
        page = reply.json()
        assert (reply.status, page["status"], page["resultsCount"], page["queryCount"]) == (
            200,
            "OK",
            100,
            100,
        )
        assert set(page) == {
            "ticker", "queryCount", "resultsCount", "adjusted", "results", "status", "request_id", "next_url",
        }  # fmt: skip
        assert len(page["request_id"]) == 32 and int(page["request_id"], 16) >= 0
        url = urlsplit(page["next_url"])
        assert url.netloc == f"127.0.0.1:{sim.port}" and KEY not in page["next_url"]
        assert url.path == f"/v2/aggs/ticker/AAPL/range/1/minute/{end - DAY + 100 * MINUTE}/{end - 1}"
        assert url.query.startswith("cursor=")
        # Without a key the next page is refused; with one it goes on where the first stopped.
        assert (await rest_get(sim, f"{url.path}?{url.query}")).status == 401
        more = (await rest_get(sim, f"{url.path}?{url.query}&apiKey={KEY}")).json()
        assert more["results"][0]["t"] == page["results"][-1]["t"] + MINUTE
        assert more["resultsCount"] == 100
        # An empty window: no results key at all.
        empty = (await rest_get(sim, aggs_path("AAPL", 1, "minute", "2001-01-01", "2001-01-02"))).json()
        assert empty["resultsCount"] == 0 and "results" not in empty and "next_url" not in empty


async def test_rest_over_tls_pages_on_https() -> None:
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    trusted = ssl.create_default_context()
    ca.configure_trust(trusted)
    async with Simulator(make_config(), ssl_context=server) as sim:
        end = history_end(sim)
        assert sim.rest_url == f"https://127.0.0.1:{sim.port}"
        reader, writer = await asyncio.open_connection("127.0.0.1", sim.port, ssl=trusted)
        path = aggs_path("AAPL", 1, "minute", end - 10 * MINUTE, end - 1, limit=5)
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{sim.port}\r\nConnection: close\r\n\r\n".encode()
        )
        data = await asyncio.wait_for(reader.read(), TIMEOUT)
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK")
        page = json.loads(body)
        assert page["resultsCount"] == 5
        assert page["next_url"].startswith(
            f"https://127.0.0.1:{sim.port}/v2/aggs/ticker/AAPL/range/1/minute/"
        )


# --- the history is the live stream's ----------------------------------------------------------


async def test_history_ends_at_the_start_price_and_rest_serves_the_live_bars() -> None:
    async with running() as sim, await connect(sim) as ws:
        end = history_end(sim)
        await send_action(ws, "subscribe", "AM.AAPL")
        start = now_ms()
        live = await collect(ws, lambda events: sum(1 for e in events if e["s"] >= start) >= 3)
        live = [event for event in live if event["s"] >= start]

        # The live per-second windows (AM with agg_minute_seconds=1) are REST's second bars, exactly.
        seconds = (await rest_get(sim, aggs_path("AAPL", 1, "second", live[0]["s"], now_ms()))).json()[
            "results"
        ]
        by_time = {bar["t"]: bar for bar in seconds}
        for event in live:
            bar = by_time[event["s"]]
            assert (bar["o"], bar["h"], bar["l"], bar["c"], bar["v"]) == (
                event["o"], event["h"], event["l"], event["c"], event["v"],
            )  # fmt: skip
            assert bar["vw"] == pytest.approx(event["vw"], abs=1e-4)

        # The generated history ends at the symbol's start price (228.00), where the live walk begins.
        minutes = (await rest_get(sim, aggs_path("AAPL", 1, "minute", end - 10 * MINUTE, now_ms()))).json()[
            "results"
        ]
        assert_plausible(minutes)
        before = [bar for bar in minutes if bar["t"] < end]
        after = [bar for bar in minutes if bar["t"] >= end]
        assert [bar["t"] for bar in before] == list(range(end - 10 * MINUTE, end, MINUTE))
        assert before[-1]["c"] == 228.0
        # No jump: the first live bar opens a walk step or two (0.04% each) from there.
        assert after and abs(after[0]["o"] - 228.0) <= 228.0 * 0.003
        # A live minute is its live seconds merged (the last one partial, as it stands).
        minute = after[-1]
        stop = minute["t"] + MINUTE
        own = (await rest_get(sim, aggs_path("AAPL", 1, "second", minute["t"], stop - 1))).json()["results"]
        assert own[0]["t"] >= minute["t"]
        assert merged(own)["o"] == minute["o"] and merged(own)["h"] >= minute["h"]
        assert merged(own)["l"] <= minute["l"] and merged(own)["v"] >= minute["v"]


async def test_the_last_rest_bar_is_the_live_bar_as_it_stands() -> None:
    """The bar REST gives for the window still open is what AM later sends for it, so far:
    same open, its range inside, its volume part of the total; closed windows are equal."""
    async with running() as sim, await connect(sim) as ws:
        await send_action(ws, "subscribe", "AM.AAPL")
        seen = await collect(ws, lambda events: len(events) >= 2)  # trading is under way
        path = aggs_path("AAPL", 1, "second", now_ms() - 3000, now_ms())
        current, closed = (await rest_get(sim, path)).json()["results"][-2:][::-1]
        # The last bar's window may still be open (then its AM is still to come) or just closed.
        seen += await collect(ws, lambda events: any(e["s"] == current["t"] for e in seen + events))
        final = {event["s"]: event for event in seen}
        live = final[current["t"]]
        assert live["o"] == current["o"] and live["h"] >= current["h"] and live["l"] <= current["l"]
        assert live["v"] >= current["v"]
        assert_same_bar(closed, {**final[closed["t"]], "n": closed["n"]})
        # The last window's first print continues the bar before it: a walk step or a few from its close.
        assert abs(current["o"] - closed["c"]) <= closed["c"] * 0.003
        path = aggs_path("AAPL", 1, "minute", current["t"], current["t"])
        minute = (await rest_get(sim, path)).json()["results"][-1]
        assert minute["h"] >= live["h"] and minute["l"] <= live["l"] and minute["v"] >= live["v"]


async def test_same_seed_same_history_other_seed_other_history() -> None:
    async def history(sim: Simulator, ticker: str, timespan: str, count: int) -> tuple[int, list[Bar]]:
        end = history_end(sim)
        size = MINUTE if timespan == "minute" else 1000
        path = aggs_path(ticker, 1, timespan, end - count * size, end - 1, limit=50_000)
        return end, (await rest_get(sim, path)).json()["results"]

    def values(bars: list[Bar]) -> list[tuple[Any, ...]]:
        return [(b["o"], b["h"], b["l"], b["c"], b["v"], b["vw"], b["n"]) for b in bars]

    async with running() as one, running() as two, running(make_config(seed=8)) as other:
        for ticker, timespan, count in (("AAPL", "minute", 3000), ("MSFT", "second", 900)):
            end_one, bars_one = await history(one, ticker, timespan, count)
            end_two, bars_two = await history(two, ticker, timespan, count)
            assert len(bars_one) == len(bars_two) == count
            # Walked back from the same start price with the same draws: the same bars, counted from
            # the start (and at the same times when both started in the same minute).
            assert values(bars_one) == values(bars_two)
            if end_one == end_two:
                assert bars_one == bars_two
            _end, bars_other = await history(other, ticker, timespan, count)
            assert values(bars_other)[-1] != values(bars_one)[-1]
            assert bars_other[-1]["c"] == bars_one[-1]["c"]  # both end at the start price
        aapl = (await history(one, "AAPL", "minute", 100))[1]
        msft = (await history(one, "MSFT", "minute", 100))[1]
        assert [b["c"] / b["o"] for b in aapl] != [b["c"] / b["o"] for b in msft]


# --- every market, in REST's spelling ----------------------------------------------------------


async def test_every_market_answers_in_its_rest_spelling_and_time_zone() -> None:
    config = make_config(markets=("stocks", "crypto"), symbols={})
    async with running(config) as sim:
        end = history_end(sim)
        options = next(name for name in sim.symbols("options") if name.startswith("O:SPY"))
        futures = sim.symbols("futures/cme")[0]
        cases = [
            ("AAPL", "stocks", NY, True),
            (options, "options", NY, True),
            ("I:SPX", "indices", NY, False),
            ("C:EURUSD", "forex", UTC, True),
            ("C:EUR-USD", "forex", UTC, True),
            ("X:BTCUSD", "crypto", UTC, True),
            ("X:BTC-USD", "crypto", UTC, True),
            (futures, "futures", NY, True),
        ]
        for ticker, market, zone, volume in cases:
            reply = await rest_get(sim, aggs_path(ticker, 1, "day", end - 30 * DAY, end))
            assert reply.status == 200, (ticker, reply.body)
            page = reply.json()
            assert page["ticker"] == ticker
            assert_plausible(page["results"], volume=volume)
            for bar in page["results"]:
                local = datetime.datetime.fromtimestamp(bar["t"] / 1000, zone)
                assert (local.hour, local.minute) == (0, 0), (ticker, market, local)
        crypto = (await rest_get(sim, aggs_path("X:BTCUSD", 1, "minute", end - 5 * MINUTE, end - 1))).json()
        assert any(not float(bar["v"]).is_integer() for bar in crypto["results"])  # coins, 8 decimals
        assert crypto["results"][-1]["c"] == 68000.0
        forex = (await rest_get(sim, aggs_path("C:EURUSD", 1, "minute", end - 5 * MINUTE, end - 1))).json()
        assert forex["results"][-1]["c"] == 1.085
        # Counted per ticker, however it was spelled.
        counted = sim.stats()["rest"]["by_ticker"]
        assert counted["C:EURUSD"] == counted["X:BTCUSD"] == 3 and counted["AAPL"] == 1


# --- errors ------------------------------------------------------------------------------------


async def test_keys_errors_and_not_found_as_massive_answers_them() -> None:
    async with running() as sim:
        base = "/v2/aggs/ticker/AAPL/range/1/day/2024-01-02/2024-01-10"
        secret = "wrong-key-8c1f2a"
        for path, headers, status, text in [
            (base, {}, 401, "API Key was not provided"),
            (f"{base}?apiKey={secret}", {}, 401, "Unknown API Key"),
            (base, {"Authorization": f"Bearer {secret}"}, 401, "Unknown API Key"),
            (base, {"Authorization": f"Bearer {KEY}"}, 200, None),
            (f"{base}?apiKey={KEY}", {}, 200, None),
            (aggs_path("AAPL", 1, "fortnight", "2024-01-02", "2024-01-10"), {}, 400, "Unknown timespan"),
            (aggs_path("AAPL", 0, "day", "2024-01-02", "2024-01-10"), {}, 400, "Invalid multiplier"),
            (aggs_path("AAPL", 1, "day", "2024-13-02", "2024-01-10"), {}, 400, "time parameter: 'from'"),
            (aggs_path("AAPL", 1, "day", "2024-01-02", "yesterday"), {}, 400, "time parameter: 'to'"),
            (aggs_path("AAPL", 1, "day", "2024-01-02", "2024-01-10", sort="up"), {}, 400, "'sort'"),
            (aggs_path("AAPL", 1, "day", "2024-01-02", "2024-01-10", limit="x"), {}, 400, "'limit'"),
            (aggs_path("AAPL", 1, "day", "2024-01-02", "2024-01-10", cursor="!!"), {}, 400, "cursor"),
            (aggs_path("AAPL", 1, "day", "99999999999999999", "2024-01-10"), {}, 400, "out of range"),
            (aggs_path("ZZZZ", 1, "day", "2024-01-02", "2024-01-10"), {}, 404, "Ticker not found: ZZZZ"),
            (f"/v3/reference/tickers?apiKey={KEY}", {}, 404, "Not found"),
        ]:
            reply = await rest_get(sim, path, headers)
            assert (reply.status, reply.content_type) == (status, "application/json"), (path, reply.body)
            body = reply.json()
            assert secret.encode() not in reply.body and KEY.encode() not in reply.body
            assert len(body["request_id"]) == 32
            if status == 200:
                assert body["status"] == "OK"
            elif status == 404:
                assert body["status"] == "NOT_FOUND" and text in body["message"], body
            else:
                assert body["status"] == "ERROR" and text in body["error"], body
        stats = sim.stats()["rest"]
        assert stats["requests"] == 15
        assert stats["by_status"] == {"401": 3, "200": 2, "400": 8, "404": 2}
        assert stats["by_kind"] == {"aggs": 13, "aggs_page": 1, "other": 1}

        # The official client: an error it raises, without the key in it.
        with pytest.raises(BadResponse) as refused:
            await call(client(sim, key=secret).get_aggs, "AAPL", 1, "day", "2024-01-02", "2024-01-10")
        assert "Unknown API Key" in str(refused.value) and secret not in str(refused.value)


# --- faults ------------------------------------------------------------------------------------


async def test_rest_faults_429_5xx_malformed_until_rest_ok() -> None:
    async with running(make_config(markets=("stocks", "crypto"))) as sim:
        assert {"rest_slow", "rest_429", "rest_5xx", "rest_malformed", "rest_ok"} <= set(FAULTS)
        path = aggs_path("AAPL", 1, "day", "2024-01-02", "2024-01-10")

        assert (await rest_get(sim, "/sim/fault/rest_429")).status == 200
        reply = await rest_get(sim, path)
        assert (reply.status, reply.json()["status"]) == (429, "ERROR")
        assert reply.json()["error"].startswith("You've exceeded the maximum requests per minute")
        assert "rest_429" in sim.stats()["markets"]["stocks"]["faults"]
        # The official client retries 429 (and 5xx) as urllib3 is told: three retries, four requests.
        before = sim.stats()["rest"]["requests"]
        with pytest.raises(urllib3.exceptions.MaxRetryError):
            await call(client(sim, retries=3).get_aggs, "AAPL", 1, "day", "2024-01-02", "2024-01-10")
        assert sim.stats()["rest"]["requests"] - before == 4

        # 5xx for one market only: a gateway's HTML page.
        sim.rest_ok()
        assert (await rest_get(sim, "/sim/fault/rest_5xx?market=crypto&status=503")).status == 200
        crypto = await rest_get(sim, aggs_path("X:BTCUSD", 1, "day", "2024-01-02", "2024-01-10"))
        assert (crypto.status, crypto.content_type) == (503, "text/html")
        assert b"503 Service Temporarily Unavailable" in crypto.body
        assert (await rest_get(sim, path)).status == 200
        assert sim.rest_5xx("crypto") == 1
        assert (
            await rest_get(sim, aggs_path("X:BTCUSD", 1, "day", "2024-01-02", "2024-01-10"))
        ).status == 502
        assert (await rest_get(sim, "/sim/fault/rest_5xx?status=418")).status == 400

        # Malformed: a 200 whose body is not JSON; the official client then quietly returns nothing.
        sim.rest_ok()
        first = datetime.datetime.fromtimestamp(history_end(sim) / 1000, NY).date() - datetime.timedelta(
            days=5
        )
        assert (
            len(await call(client(sim).get_aggs, "AAPL", 1, "day", first, first + datetime.timedelta(4))) == 5
        )
        sim.fault("rest_malformed", "stocks")
        reply = await rest_get(sim, aggs_path("AAPL", 1, "day", first, first + datetime.timedelta(4)))
        assert reply.status == 200 and reply.body.startswith(b'{"ticker":"AAPL","queryCount":5')
        with pytest.raises(ValueError):
            json.loads(reply.body)
        assert await call(client(sim).get_aggs, "AAPL", 1, "day", first, first + datetime.timedelta(4)) == []
        assert "rest_malformed" in sim.stats()["markets"]["stocks"]["faults"]

        assert (await rest_get(sim, "/sim/fault/rest_ok")).status == 200
        assert sim.stats()["markets"]["stocks"]["faults"] == []
        assert (
            len(await call(client(sim).get_aggs, "AAPL", 1, "day", first, first + datetime.timedelta(4))) == 5
        )


async def test_rest_slow_delays_answers_without_holding_the_loop() -> None:
    async with running() as sim, await connect(sim) as ws:
        await send_action(ws, "subscribe", "T.AAPL")
        assert (await rest_get(sim, "/sim/fault/rest_slow?delay=1.5")).status == 200
        began = time.monotonic()
        slow = asyncio.create_task(rest_get(sim, aggs_path("AAPL", 1, "day", "2024-01-02", "2024-01-10")))
        await wait_until(lambda: sim.stats()["rest"]["requests"] == 1, what="the slow request")
        # Meanwhile the port answers control requests and the feed goes on.
        stats = await rest_get(sim, "/sim/stats")
        assert stats.status == 200 and stats.json()["rest"]["requests"] == 1
        assert not slow.done()
        assert await collect(ws, lambda events: len(events) >= 10)
        assert not slow.done()
        reply = await slow
        assert reply.status == 200 and time.monotonic() - began >= 1.5
        sim.fault("rest_ok")
        began = time.monotonic()
        assert (await rest_get(sim, aggs_path("AAPL", 1, "day", "2024-01-02", "2024-01-10"))).status == 200
        assert time.monotonic() - began < 1.5


async def test_a_pending_slow_answer_ends_with_the_simulator() -> None:
    sim = Simulator(make_config())
    await sim.start()
    sim.rest_slow(delay=30.0)
    reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
    path = aggs_path("AAPL", 1, "day", "2024-01-02", "2024-01-10")
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    await wait_until(lambda: sim.stats()["rest"]["requests"] == 1, what="the slow request")
    await asyncio.wait_for(sim.stop(), TIMEOUT)
    # Closed without an answer, and nothing of the simulator's left running.
    assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
    writer.close()
    leftovers = [task for task in asyncio.all_tasks() if task.get_name().startswith("simulator")]
    assert leftovers == []


# --- pure parts ----------------------------------------------------------------------------------


def test_buckets_follow_the_calendar_and_daylight_saving() -> None:
    # 2024-03-10 (DST starts in New York) has 23 hours; 2024-11-03 has 25.
    for day, hours in ((datetime.date(2024, 3, 10), 23), (datetime.date(2024, 11, 3), 25)):
        start = midnight(day)
        assert Buckets("day", 1, NY)(start + 5 * 3_600_000) == (start, start + hours * 3_600_000)
        # Hour bars count from the local midnight: the day's last one ends at the next midnight.
        assert Buckets("hour", 1, NY)(start + hours * 3_600_000 - 1)[1] == midnight(
            day + datetime.timedelta(1)
        )
    wednesday = midnight(datetime.date(2024, 5, 15))
    assert Buckets("week", 1, NY)(wednesday) == (
        midnight(datetime.date(2024, 5, 12)),
        midnight(datetime.date(2024, 5, 19)),
    )
    assert Buckets("month", 1, UTC)(midnight(datetime.date(2024, 2, 29), UTC) + 1) == (
        midnight(datetime.date(2024, 2, 1), UTC), midnight(datetime.date(2024, 3, 1), UTC),
    )  # fmt: skip
    assert Buckets("quarter", 1, NY)(wednesday) == (
        midnight(datetime.date(2024, 4, 1)),
        midnight(datetime.date(2024, 7, 1)),
    )
    assert Buckets("month", 6, NY)(wednesday)[0] == midnight(datetime.date(2024, 1, 1))
    assert Buckets("year", 1, NY)(wednesday)[1] == midnight(datetime.date(2025, 1, 1))
    assert Buckets("minute", 15, UTC)(wednesday + 16 * MINUTE + 5) == (
        wednesday + 15 * MINUTE,
        wednesday + 30 * MINUTE,
    )


def test_a_week_of_minutes_is_generated_once_then_cached() -> None:
    """The 7-day minute request of a chart: generated on first use, then served from the cache.

    How fast each is lives in ``bench/micro/test_sim_rest.py`` (``make bench-micro``).
    """
    sim = Simulator(make_config())
    api = RestApi(sim.config, sim._feeds)
    api.started(now_ms())
    assert api.end is not None
    path = aggs_path("AAPL", 1, "minute", api.end - 7 * DAY, api.end - 1, limit=50_000)
    first = api.answer("GET", path, {}, "http://127.0.0.1")
    feed, sym = api.tickers["AAPL"]
    history = api.history(feed, sym)
    minutes = history.minutes()
    second = api.answer("GET", path, {}, "http://127.0.0.1")
    assert json.loads(first.body)["resultsCount"] == 7 * 1440
    assert json.loads(second.body)["results"] == json.loads(first.body)["results"]
    assert api.history(feed, sym) is history and history.minutes() is minutes


def test_live_minutes_that_age_out_are_kept_as_days() -> None:
    """Past its cap, a symbol's oldest live minutes fold into days: day bars still count every trade."""
    sim = Simulator(make_config())
    feed = sim._feeds["stocks"]
    sym = feed.by_name["AAPL"]
    sym.live = LiveBars(NY, seconds=60, minutes=60)
    start = midnight(datetime.date(2024, 5, 15)) + 12 * 3_600_000  # noon
    api = RestApi(sim.config, sim._feeds)
    api.started(start)
    price, volume = 228.0, 0.0
    highs: list[float] = []
    for k in range(3 * 3600):  # three hours of one print a second
        window = Window(start + k * 1000, price)
        window.add(price, 100)
        sym.live.close_second(window)
        volume += 100
        highs.append(price)
        price = round(price + (0.01 if k % 7 < 4 else -0.01), 2)
    assert len(sym.live.seconds) <= 60 * 9 // 8 and len(sym.live.minutes) <= 60 * 9 // 8
    assert len(sym.live.days) == 1
    day = midnight(datetime.date(2024, 5, 15))
    [bar] = api.base_rows(feed, sym, "day", day, day + DAY)
    morning = api.history(feed, sym).days().row(-1)
    assert morning[0] == day
    # The day is its generated morning and every live second, the minutes kept and those folded.
    assert bar[5] == morning[5] + volume
    assert bar[4] == highs[-1] and bar[2] >= max(highs)
    minutes = list(api.base_rows(feed, sym, "minute", start, start + DAY))
    assert len(minutes) <= 60 * 9 // 8 + 1 and minutes[-1][0] == start + 3 * 3_600_000 - MINUTE
