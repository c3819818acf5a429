"""The relay behind a real nginx running the shipped configuration (issue #5).

nginx (Debian's package) runs nginx/nginx.conf and nginx/fastrelay.conf unchanged, in front
of a relay and a simulator in this process, all on 127.0.0.1 high ports.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import websockets

from fastrelay import markets
from fastrelay.app import RunningRelay, running_relay
from fastrelay.config import RelayConfig
from fastrelay.sim import Simulator
from tests.utils import TIMEOUT, Client, fast_relay_config, wait_until
from tests.webtools import (
    SITE_CONF,
    VENDOR_SCRIPT,
    WEB_ROOT,
    Nginx,
    http_request,
    running_nginx,
    site_setting,
    upgrade_headers,
    vendor_installed,
)

SOCKET_LIMIT = int(site_setting(r"^\s*limit_conn fastrelay_sockets (\d+);"))
HANDSHAKE_RATE = int(site_setting(r"zone=fastrelay_handshakes:\S+ rate=(\d+)r/s;"))
HANDSHAKE_BURST = int(site_setting(r"limit_req zone=fastrelay_handshakes burst=(\d+) nodelay;"))


@dataclass
class Proxied:
    relay: RunningRelay
    nginx: Nginx


@pytest.fixture
async def proxied(sim: Simulator, tmp_path: Path) -> AsyncIterator[Proxied]:
    async with running_relay(fast_relay_config(sim.base_url, "sim-key")) as relay:
        await wait_until(lambda: relay.ready, what="relay ready")
        async with running_nginx(tmp_path / "nginx", [relay.port]) as nginx:
            yield Proxied(relay, nginx)


async def test_websocket_through_nginx_receives_data(proxied: Proxied) -> None:
    """/api/socket and a market path, through nginx: connected, auth, subscribe, then live events."""
    api = await Client.connect(f"{proxied.nginx.ws_url}/api/socket")
    stocks = await Client.connect(f"{proxied.nginx.ws_url}/stocks")
    await api.subscribe("T.AAPL,Q.O:SPY251219C00600000")
    await stocks.subscribe("Q.MSFT")
    await api.wait_for(lambda: {e["ev"] for e in api.events} >= {"T", "Q"}, what="a trade and a quote")
    await stocks.wait_events(5)
    assert {(e["ev"], e["sym"]) for e in api.events} <= {("T", "AAPL"), ("Q", "O:SPY251219C00600000")}
    assert {(e["ev"], e["sym"]) for e in stocks.events} == {("Q", "MSFT")}
    await api.close()
    await stocks.close()
    # The access log has each socket's line once it closed: upgraded (101) and proxied.
    await wait_until(
        lambda: sum('"GET /api/socket HTTP/1.1" 101' in line for line in proxied.nginx.log_lines()) == 1,
        what="the access log line of the closed socket",
    )


async def test_every_market_path_is_proxied(proxied: Proxied) -> None:
    """Each market path reaches the relay and upgrades: the served ones to data, the others to a
    status naming the market and a close (the relay's answer, not a 404 from nginx)."""
    for market in markets.MARKETS:
        response = await http_request(proxied.nginx.port, f"/{market}", upgrade_headers())
        assert response.status == 101, market
    await wait_until(
        lambda: proxied.relay.server.stats.closed["unserved"] == len(markets.MARKETS) - 2,
        what="every unserved market refused by the relay",
    )


async def test_upstream_gets_upgrade_and_forwarded_headers(tmp_path: Path) -> None:
    """What nginx sends the relay: HTTP/1.1, Upgrade, Connection: upgrade, client address headers.

    A stand-in relay records the request; Firefox's `Connection: keep-alive, Upgrade` arrives as
    `Connection: upgrade`, which every WebSocket server accepts.
    """
    seen: asyncio.Queue[bytes] = asyncio.Queue()

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.put_nowait(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(record, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with running_nginx(tmp_path / "nginx", [port]) as nginx:
            headers = upgrade_headers(Connection="keep-alive, Upgrade", Origin=nginx.base_url)
            response = await http_request(nginx.port, "/api/socket?x=1", headers)
            assert response.status == 503
            request = (await asyncio.wait_for(seen.get(), TIMEOUT)).decode("latin-1")
    finally:
        server.close()
        await server.wait_closed()
    request_line, *lines = request.strip().split("\r\n")
    fields = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    assert request_line == "GET /api/socket?x=1 HTTP/1.1"
    assert fields["upgrade"] == "websocket"
    assert fields["connection"] == "upgrade"
    assert fields["sec-websocket-key"] == "dGhlIHNhbXBsZSBub25jZQ=="
    assert fields["x-forwarded-for"] == "127.0.0.1"
    assert fields["x-real-ip"] == "127.0.0.1"
    assert fields["x-forwarded-proto"] == "http"
    assert fields["origin"] == nginx.base_url


async def test_connection_limit_per_address(proxied: Proxied) -> None:
    """Past `limit_conn` open sockets from one address the next handshake gets 429; a freed slot is reused."""
    url = f"{proxied.nginx.ws_url}/api/socket"
    sockets = []
    try:
        for _ in range(SOCKET_LIMIT):
            ws = await websockets.connect(url, open_timeout=TIMEOUT)
            sockets.append(ws)
            assert "connected" in str(await asyncio.wait_for(ws.recv(), TIMEOUT))
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(url, open_timeout=TIMEOUT)
        assert refused.value.response.status_code == 429
        await sockets.pop().close()
        # The slot is given back once nginx has seen the close.
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                sockets.append(await websockets.connect(url, open_timeout=TIMEOUT))
                break
            except websockets.InvalidStatus as exc:
                assert exc.response.status_code == 429 and time.monotonic() < deadline
                await asyncio.sleep(0.05)
    finally:
        for ws in sockets:
            await ws.close()
    refusals = [line for line in proxied.nginx.log_lines() if '" 429 ' in line]
    assert refusals and all("limit_conn=REJECTED" in line for line in refusals), refusals


async def test_handshake_rate_limit_per_address(proxied: Proxied) -> None:
    """Handshakes in quick succession: the burst passes, then 429 from limit_req (not limit_conn)."""
    url = f"{proxied.nginx.ws_url}/api/socket"
    accepted = 0
    started = time.monotonic()
    status = None
    for _ in range(HANDSHAKE_BURST * 4):
        try:
            ws = await websockets.connect(url, open_timeout=TIMEOUT)
        except websockets.InvalidStatus as exc:
            status = exc.response.status_code
            break
        accepted += 1
        await ws.close()
    elapsed = time.monotonic() - started
    assert status == 429, f"no refusal after {accepted} handshakes in {elapsed:.2f} s"
    # The bucket: burst + 1 at once, then the rate.
    assert HANDSHAKE_BURST + 1 <= accepted <= HANDSHAKE_BURST + 2 + HANDSHAKE_RATE * elapsed
    refusals = [line for line in proxied.nginx.log_lines() if '" 429 ' in line]
    assert len(refusals) == 1 and "limit_req=REJECTED" in refusals[0], refusals


async def test_metrics_and_readiness_stay_internal(proxied: Proxied) -> None:
    """/metrics and /readyz: 404 at nginx, served by the relay itself; /healthz goes through."""
    nginx, relay = proxied.nginx.port, proxied.relay.port
    assert (await http_request(nginx, "/metrics")).status == 404
    assert (await http_request(nginx, "/readyz")).status == 404
    direct = await http_request(relay, "/metrics")
    assert direct.status == 200 and b"fastrelay_" in direct.body
    assert (await http_request(relay, "/readyz")).status == 200
    health = await http_request(nginx, "/healthz")
    assert (health.status, health.body) == (200, b"ok\n")


async def test_dashboard_files_are_served_by_nginx(proxied: Proxied) -> None:
    """Every file of fastrelay/web/ from disk, with its type and headers, the same bytes the relay serves."""
    vendor_installed()
    files = sorted(p for p in WEB_ROOT.rglob("*") if p.is_file() and not p.name.startswith("."))
    names = {p.relative_to(WEB_ROOT).as_posix() for p in files}
    assert {"index.html", "fastrelay-client.js", "dashboard.js", "chart.js", "candles.js"} <= names
    # lightweight-charts, installed by `make` (web-vendor/): served like the page's own files.
    assert {f"vendor/{VENDOR_SCRIPT}", "vendor/lightweight-charts.LICENSE.txt"} <= names
    types = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
    types[".txt"] = "text/plain"
    for path in files:
        name = "/" + path.relative_to(WEB_ROOT).as_posix()
        response = await http_request(proxied.nginx.port, name)
        assert response.status == 200, name
        assert response.body == path.read_bytes(), name
        assert response.headers["content-type"].startswith(types[path.suffix]), name
        relay = await http_request(proxied.relay.port, name)
        assert (relay.status, relay.body) == (200, response.body), name
    page = await http_request(proxied.nginx.port, "/")
    assert page.status == 200 and page.body == (WEB_ROOT / "index.html").read_bytes()
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-cache"
    assert page.headers["server"] == "nginx"  # no version
    for missing in ("/nope.js", "/.hidden", "/../pyproject.toml"):
        assert (await http_request(proxied.nginx.port, missing)).status in (400, 404), missing


async def test_relay_down_is_a_quick_502(tmp_path: Path) -> None:
    """No relay listening: the handshake fails at once with 502 (the browser then backs off)."""
    from tests.webtools import free_port

    async with running_nginx(tmp_path / "nginx", [free_port()]) as nginx:
        started = time.monotonic()
        response = await http_request(nginx.port, "/api/socket", upgrade_headers())
        assert response.status == 502
        assert time.monotonic() - started < TIMEOUT / 2


def test_timeouts_outlast_the_relay_ping_interval() -> None:
    """An idle socket carries a relay ping at least every 2 x --client-ping-interval: nginx waits longer."""
    ping_every = 2 * RelayConfig().client_ping_interval
    for directive in ("proxy_read_timeout", "proxy_send_timeout"):
        seconds = int(site_setting(rf"^\s*{directive} (\d+)s;"))
        assert ping_every + 15 <= seconds <= 120, (directive, seconds)


async def test_every_location_sends_the_security_headers_and_no_hsts_over_http(proxied: Proxied) -> None:
    """The page, a 404, an internal path and the probe all carry the same headers; HSTS only over TLS."""
    for path in ("/", "/dashboard.js", "/nope", "/.git/config", "/metrics", "/healthz"):
        response = await http_request(proxied.nginx.port, path)
        headers = response.headers
        assert headers["x-content-type-options"] == "nosniff", path
        assert headers["x-frame-options"] == "DENY", path
        assert headers["referrer-policy"] == "no-referrer", path
        assert "frame-ancestors 'none'" in headers["content-security-policy"], path
        assert "strict-transport-security" not in headers, path  # plain http here
    assert 'https   "max-age=63072000' in SITE_CONF.read_text()


def test_slow_clients_are_timed_out_and_every_location_is_limited() -> None:
    """Header, keep-alive and send timeouts are set on purpose; no location is free of a limit."""
    assert site_setting(r"^\s*client_header_timeout (\d+)s;") == "10"
    assert site_setting(r"^\s*keepalive_timeout\s+(\d+)s;") == "15"
    assert site_setting(r"^\s*send_timeout\s+(\d+)s;") == "30"
    text = SITE_CONF.read_text()
    locations = []
    for found in re.finditer(r"^\s*location [^{]*\{", text, re.M):
        depth, end = 1, found.end()
        while depth:  # the block up to its matching brace (types { } nests inside one)
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            end += 1
        locations.append(text[found.start() : end])
    assert len(locations) >= 6
    for block in locations:
        assert "limit_req zone=" in block, block
