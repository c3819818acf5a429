"""Massive's REST aggregates at the relay's client port, beside WebSockets on the same port.

A stand-in for Massive's REST API on 127.0.0.1 (it counts calls and records what it was sent)
feeds the relay; clients are raw HTTP, Massive's official REST client, and WebSockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import http.client
import logging
import re
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
import pytest
from prometheus_client import generate_latest

from fastrelay.app import RunningRelay, running_relay
from fastrelay.sim import Simulator, SimulatorConfig
from tests.utils import TIMEOUT, Client, fast_relay_config

KEY = "relay-secret-key-7f3a"
TOKEN = "client-token-0123"
MINUTE = 60_000
START = 1_764_720_000_000  # 2025-12-03 00:00 UTC


class MassiveRest:
    """Massive's aggregates endpoint: minute bars from START, pages of ``page``, a call counter."""

    def __init__(self, bars: int = 500, page: int = 50_000, delay: float = 0.0) -> None:
        self.bars = [
            {
                "v": 100 + i,
                "vw": 10.0,
                "o": 10.0,
                "c": 10.5,
                "h": 11.0,
                "l": 9.5,
                "t": START + i * MINUTE,
                "n": 3,
            }
            for i in range(bars)
        ]
        self.page = page
        self.delay = delay
        self.calls: list[tuple[str, dict[str, str], dict[str, str]]] = []
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> MassiveRest:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                target = lines[0].split(" ")[1]
                headers = {
                    k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)
                }
                parts = urlsplit(target)
                params = dict(parse_qsl(parts.query))
                self.calls.append((parts.path, params, headers))
                if self.delay:
                    await asyncio.sleep(self.delay)
                *_, start, end = parts.path.split("/")
                inside = [b for b in self.bars if bound(start) <= b["t"] <= bound(end, last=True)]
                offset = int(params.get("cursor", "0"))
                chunk = inside[offset : offset + min(self.page, int(params.get("limit", "5000")))]
                body: dict[str, Any] = {
                    "ticker": "AAPL",
                    "status": "OK",
                    "results": chunk,
                    "resultsCount": len(chunk),
                }
                if offset + len(chunk) < len(inside):
                    body["next_url"] = f"https://api.massive.com{parts.path}?cursor={offset + len(chunk)}"
                data = orjson.dumps(body)
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                    % len(data)
                    + data
                )
                await writer.drain()


def bound(text: str, last: bool = False) -> int:
    """A range bound as Massive reads it: Unix ms, or a date covering its whole day (UTC)."""
    if "-" not in text:
        return int(text)
    day = datetime.datetime.fromisoformat(text).replace(tzinfo=datetime.UTC)
    return int(day.timestamp() * 1000) + (86_400_000 - 1 if last else 0)


@contextlib.asynccontextmanager
async def relay_with_rest(
    rest: MassiveRest, **overrides: Any
) -> AsyncIterator[tuple[RunningRelay, Simulator]]:
    async with Simulator(SimulatorConfig(api_key=KEY, markets=("stocks",), rate=50.0)) as sim:
        overrides.setdefault("history_per_minute", 6000.0)  # the tests' requests come from one address
        config = fast_relay_config(sim.base_url, KEY, markets=("stocks",), rest_url=rest.url, **overrides)
        async with running_relay(config) as relay:
            yield relay, sim


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        body = response.read()
        return response.status, dict(response.getheaders()), body
    finally:
        connection.close()


AAPL_DAY = "/v2/aggs/ticker/AAPL/range/1/minute/2025-12-03/2025-12-03"


async def test_aggregates_come_in_massives_json_and_never_name_the_key() -> None:
    async with MassiveRest() as rest, relay_with_rest(rest) as (relay, _):
        status, headers, body = await asyncio.to_thread(get, relay.port, AAPL_DAY + "?limit=1000")
        answer = orjson.loads(body)
        assert status == 200 and headers["Content-Type"] == "application/json"
        assert answer["status"] == "OK" and answer["resultsCount"] == 500 and answer["results"] == rest.bars
        assert answer["ticker"] == "AAPL" and "next_url" not in answer
        assert KEY not in body.decode()
        [(path, params, sent)] = rest.calls
        assert path == AAPL_DAY and params["limit"] == "1000" and sent["authorization"] == f"Bearer {KEY}"
        assert "apiKey" not in params  # the key travels in a header only


async def test_the_official_rest_client_pages_through_the_relay() -> None:
    """Massive's RESTClient with its base at the relay: list_aggs follows next_url, which points
    back at the relay, until every bar is in."""
    from massive import RESTClient

    async with MassiveRest(bars=2500, page=1000) as rest, relay_with_rest(rest) as (relay, _):

        def fetch() -> list[Any]:
            client = RESTClient(api_key="anything", base=f"http://127.0.0.1:{relay.port}", retries=0)
            return list(client.list_aggs("AAPL", 1, "minute", "2025-12-03", "2025-12-04", limit=1000))

        bars = await asyncio.to_thread(fetch)
        assert [b.timestamp for b in bars] == [b["t"] for b in rest.bars]


async def test_many_identical_requests_cost_one_upstream_call() -> None:
    async with MassiveRest(delay=0.2) as rest, relay_with_rest(rest) as (relay, _):
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(max_workers=40) as pool:  # 40 clients at once, not a pool's 6
            answers = await asyncio.gather(
                *(loop.run_in_executor(pool, get, relay.port, AAPL_DAY) for _ in range(40))
            )
        assert {status for status, _, _ in answers} == {200}
        assert len(rest.calls) == 1
        assert relay.relay.bars is not None
        [account] = relay.relay.bars.accounts()
        assert account.stats.results["miss"] == 1 and account.stats.upstream_requests == 1
        page = generate_latest(relay.metrics.registry).decode()
        assert 'fastrelay_rest_requests_total{result="miss"} 1.0' in page
        coalesced = re.search(
            r'^fastrelay_rest_requests_total\{result="coalesced"\} (\S+)$', page, re.MULTILINE
        )
        hits = re.search(r'^fastrelay_rest_requests_total\{result="hit"\} (\S+)$', page, re.MULTILINE)
        assert coalesced and hits and float(coalesced.group(1)) + float(hits.group(1)) == 39
        assert float(coalesced.group(1)) >= 10  # most of them waited for the one call
        assert 'fastrelay_rest_responses_total{status="200"} 40.0' in page
        assert "fastrelay_rest_upstream_requests_total 1.0" in page
        assert "fastrelay_rest_latency_seconds_count 1.0" in page
        cache = re.search(r"^fastrelay_rest_cache_bytes (\S+)$", page, re.MULTILINE)
        assert cache is not None and float(cache.group(1)) > 0
        assert KEY not in page


async def test_tokens_are_the_rest_keys_and_other_paths_say_what_is_served() -> None:
    async with MassiveRest() as rest, relay_with_rest(rest, client_tokens=[TOKEN]) as (relay, _):
        port = relay.port
        for headers, path, expected in [
            ({}, AAPL_DAY, 401),
            ({}, AAPL_DAY + "?apiKey=wrong", 401),
            ({}, AAPL_DAY + f"?apiKey={TOKEN}", 200),
            ({"Authorization": f"Bearer {TOKEN}"}, AAPL_DAY, 200),
            ({"Authorization": f"Bearer {TOKEN}"}, "/v3/reference/tickers", 404),
            ({"Authorization": f"Bearer {TOKEN}"}, "/v2/aggs/ticker/AAPL/range/1/fortnight/1/2", 400),
        ]:
            status, _, body = await asyncio.to_thread(get, port, path, headers)
            assert status == expected, (path, status, body)
            assert TOKEN not in body.decode() and KEY not in body.decode()
        status, _, body = await asyncio.to_thread(
            get, port, "/v3/reference/tickers", {"Authorization": f"Bearer {TOKEN}"}
        )
        assert orjson.loads(body)["status"] == "NOT_FOUND" and b"aggregates only" in body


async def test_keep_alive_and_websockets_share_the_port() -> None:
    async with MassiveRest() as rest, relay_with_rest(rest) as (relay, _):

        def two_on_one_connection() -> list[int]:
            connection = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=TIMEOUT)
            statuses = []
            for _ in range(2):
                connection.request("GET", AAPL_DAY)
                response = connection.getresponse()
                response.read()
                statuses.append(response.status)
            connection.close()
            return statuses

        assert await asyncio.to_thread(two_on_one_connection) == [200, 200]
        client = await Client.connect(f"ws://127.0.0.1:{relay.port}/stocks")
        await client.subscribe("T.*")
        await client.wait_events(3)
        status, _, page = await asyncio.to_thread(get, relay.port, "/healthz")
        assert (status, page) == (200, b"ok\n")
        await client.close()


async def test_a_connection_that_never_sends_a_request_line_is_cut() -> None:
    async with MassiveRest() as rest, relay_with_rest(rest, client_handshake_timeout=0.3) as (relay, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        writer.write(b"GET /v2/aggs")  # and then nothing
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
        assert time.monotonic() - started < TIMEOUT
        writer.close()


async def test_websocket_history_joins_rest_and_live_bars() -> None:
    """A chart's request over the WebSocket: Massive's bars, then the relay's status."""
    async with MassiveRest(bars=300) as rest, relay_with_rest(rest) as (relay, _):
        client = await Client.connect(f"ws://127.0.0.1:{relay.port}/stocks")
        await client.send(
            {"action": "history", "params": "AM.AAPL", "from": "2025-12-03", "to": "2025-12-03"}
        )
        done = await client.wait_status("success")
        assert done["message"] == "history: AM.AAPL (300 events)"
        assert [e["s"] for e in client.events] == [b["t"] for b in rest.bars]
        assert all(
            e["ev"] == "AM" and e["sym"] == "AAPL" and e["e"] - e["s"] == MINUTE for e in client.events
        )
        [(path, params, _)] = rest.calls
        assert path.startswith("/v2/aggs/ticker/AAPL/range/1/minute/") and params["limit"] == "50000"
        await client.close()


async def test_without_a_rest_source_rest_is_unavailable() -> None:
    path = "/v2/aggs/ticker/AAPL/range/1/minute/2025-12-03/2025-12-03"
    async with (
        Simulator(SimulatorConfig(api_key=KEY, markets=("stocks",))) as sim,
        running_relay(fast_relay_config(sim.base_url, KEY, markets=("stocks",))) as relay,
    ):
        status, _, body = await asyncio.to_thread(get, relay.port, path)
        assert status == 503 and b"no REST source" in body


async def test_the_key_never_leaves_on_rest_paths(caplog: pytest.LogCaptureFixture) -> None:
    """Answers, WebSocket history, errors (Massive down, refusing), logs at debug and metrics:
    the relay's key appears in none of them (it goes to Massive in a header, and only there)."""
    caplog.set_level(logging.DEBUG)
    seen: list[bytes] = []
    async with MassiveRest() as rest, relay_with_rest(rest) as (relay, _):
        for path in (
            AAPL_DAY,
            "/v2/aggs/ticker/AAPL/range/1/minute/x/y",
            "/v3/trades/AAPL",
            AAPL_DAY + "?apiKey=z",
        ):
            seen.append((await asyncio.to_thread(get, relay.port, path))[2])
        client = await Client.connect(f"ws://127.0.0.1:{relay.port}/stocks")
        await client.send(
            {"action": "history", "params": "AM.AAPL", "from": "2025-12-03", "to": "2025-12-03"}
        )
        await client.wait_status("success")
        seen.append(orjson.dumps([*client.statuses, *client.events]))
        await client.close()
        await rest.__aexit__()  # Massive gone: the next miss fails
        seen.append(
            (await asyncio.to_thread(get, relay.port, AAPL_DAY.replace("03/2025-12-03", "04/2025-12-04")))[2]
        )
        seen.append(generate_latest(relay.metrics.registry))
    assert any(b"unreachable" in body for body in seen)
    for body in seen:
        assert KEY.encode() not in body
    for record in caplog.records:
        assert KEY not in record.getMessage()
