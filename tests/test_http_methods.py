"""HEAD and OPTIONS on the plain pages (/healthz, /readyz, /metrics, the dashboard), on the client
port and on --metrics-port, answered as RFC 9110 says (picows 2.3 alone answers 400 to both:
docs/picows-methods.md)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from fastrelay.app import RunningRelay, running_relay
from fastrelay.sim import Simulator
from tests.utils import TIMEOUT, fast_relay_config, wait_until


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


async def request(port: int, method: str, path: str) -> Reply:
    """One request on a fresh connection, read until the server closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    try:
        data = await asyncio.wait_for(reader.read(), TIMEOUT)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Reply(int(status_line.split()[1]), headers, body)


@pytest.fixture
async def with_metrics_port(sim: Simulator) -> AsyncIterator[RunningRelay]:
    config = fast_relay_config(sim.base_url, "sim-key", metrics_port=0)
    async with running_relay(config) as running:
        yield running


async def ready(running: RunningRelay) -> None:
    await wait_until(lambda: running.ready, what="relay ready")


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
async def test_head_on_the_client_port_is_get_without_the_body(relay: RunningRelay, path: str) -> None:
    await ready(relay)
    get = await request(relay.port, "GET", path)
    head = await request(relay.port, "HEAD", path)
    assert get.status == head.status == 200, (get, head)
    assert head.body == b""
    assert head.headers["content-type"] == get.headers["content-type"]
    if path != "/metrics":  # a fresh rendering may differ in length from one GET to the next
        assert int(head.headers["content-length"]) == len(get.body)
    assert int(head.headers["content-length"]) > 0


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
async def test_head_and_options_on_the_metrics_port(with_metrics_port: RunningRelay, path: str) -> None:
    running = with_metrics_port
    await ready(running)
    port = running.server.metrics_port
    assert port is not None
    head = await request(port, "HEAD", path)
    assert head.status == 200 and head.body == b"" and int(head.headers["content-length"]) > 0, head
    options = await request(port, "OPTIONS", path)
    assert options.status == 204 and options.body == b"", options
    assert {m.strip() for m in options.headers["allow"].split(",")} == {"GET", "HEAD", "OPTIONS"}
    assert "content-length" not in options.headers  # RFC 9110 8.6: none on a 204


async def test_probes_behind_the_metrics_port_stay_internal(with_metrics_port: RunningRelay) -> None:
    """With --metrics-port, /metrics and /readyz are not on the client port, for HEAD as for GET."""
    running = with_metrics_port
    for path in ("/metrics", "/readyz"):
        assert (await request(running.port, "GET", path)).status == 404
        assert (await request(running.port, "HEAD", path)).status == 404
    assert (await request(running.port, "HEAD", "/healthz")).status == 200


async def test_options_and_other_methods_on_the_client_port(relay: RunningRelay) -> None:
    options = await request(relay.port, "OPTIONS", "/healthz")
    assert options.status == 204 and "HEAD" in options.headers["allow"], options
    post = await request(relay.port, "POST", "/healthz")
    assert post.status == 405 and "GET" in post.headers["allow"], post
    assert (await request(relay.port, "HEAD", "/no-such-page")).status == 404
    page = await request(relay.port, "HEAD", "/")  # the dashboard, with the page's headers
    assert page.status == 200 and page.headers["content-type"].startswith("text/html"), page
    assert page.headers["x-content-type-options"] == "nosniff" and page.body == b""


async def test_head_on_a_websocket_path_asks_for_the_upgrade(relay: RunningRelay) -> None:
    head = await request(relay.port, "HEAD", "/stocks")
    assert head.status == 426 and head.headers["upgrade"] == "websocket", head
    options = await request(relay.port, "OPTIONS", "/api/socket")
    assert options.status == 204 and options.headers["allow"] == "GET, OPTIONS", options
