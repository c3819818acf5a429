"""Scale-out as browsers meet it (issue #7): the dashboard through nginx, two edge
processes, one ingest process, a real nats-server; one edge is killed.

nginx runs the shipped configuration with both edges in its upstream block (least_conn).
The page's edge is killed with SIGKILL: the page reconnects through nginx to the other
edge and is LIVE again without a reload; a service that was on the dead edge does not
come back, and the ingest lets go of its channel upstream once the edge times out.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest
from playwright.async_api import Browser

from fastrelay.sim import Simulator, SimulatorConfig
from tests.natsserver import running_nats
from tests.test_browser import MS, browser, client_state, new_page, wait_prices_change  # noqa: F401
from tests.utils import TIMEOUT, Client, wait_until
from tests.webtools import ARTIFACTS, RelayProcess, free_port, http_request, running_nginx, stopping

pytestmark = pytest.mark.slow

TOKEN = "browser-token-0123456789"
PEER_TIMEOUT = 1.0


async def metric(port: int, series: str) -> float | None:
    """One series' value from a process's /metrics (``series`` as written, labels included)."""
    text = (await http_request(port, "/metrics")).body.decode()
    found = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else None


async def wait_metric(port: int, series: str, value: float) -> None:
    """/metrics is rendered once a second: wait (bounded) for the rendering that shows ``value``."""
    deadline = time.monotonic() + TIMEOUT
    while (seen := await metric(port, series)) != value:
        assert time.monotonic() < deadline, f"{series} stayed {seen}, expected {value}"
        await asyncio.sleep(0.1)


async def clients_on(edge: RelayProcess) -> int:
    """/api/socket clients of an edge."""
    return int(await metric(edge.port, 'fastrelay_clients{path="/api/socket"}') or 0)


async def test_dashboard_fails_over_to_the_other_edge_and_upstream_interest_shrinks(
    browser: Browser,  # noqa: F811
    tmp_path: Path,
) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    config = SimulatorConfig(api_key="sim-key", markets=("stocks", "options"), rate=120.0, events_per_frame=2)
    async with running_nats(tmp_path / "nats.log") as nats, Simulator(config) as sim:
        timers = ["--nats", nats.url, "--heartbeat-interval", "0.2", "--peer-timeout", str(PEER_TIMEOUT)]
        ingest = RelayProcess(free_port(), sim.base_url, tmp_path / "ingest.log", *timers, command="ingest")
        edges = [
            RelayProcess(
                free_port(), "", tmp_path / f"edge-{i}.log", *timers, "--client-tokens", TOKEN, command="edge"
            )
            for i in (1, 2)
        ]
        with stopping(ingest, *edges):
            await ingest.start()
            for edge in edges:
                await edge.start()
            async with running_nginx(tmp_path / "nginx", [e.port for e in edges]) as nginx:
                problems: list[str] = []
                page = await new_page(browser, problems)
                await page.goto(f"{nginx.base_url}/?token={TOKEN}")
                await page.evaluate("window.__sameDocument = true")
                await page.wait_for_selector('#conn[data-state="live"]')
                await wait_prices_change(page, TIMEOUT * 2)
                deadline = time.monotonic() + TIMEOUT  # /metrics is rendered once a second
                while sorted(on := [await clients_on(edge) for edge in edges]) != [0, 1]:
                    assert time.monotonic() < deadline, f"the page is not on exactly one edge: {on}"
                    await asyncio.sleep(0.1)
                doomed, survivor = (edges[0], edges[1]) if on[0] else (edges[1], edges[0])

                def upstream() -> set[str]:
                    return set(sim.stats()["markets"]["stocks"]["subscriptions"])

                wanted_by_page = upstream()
                assert wanted_by_page, "the page's channels are subscribed upstream"
                # A service on the same edge wants one more channel.
                extra = next(f"T.{s}" for s in sim.symbols("stocks") if f"T.{s}" not in wanted_by_page)
                service = await Client.connect(f"ws://127.0.0.1:{doomed.port}/stocks", auth=TOKEN)
                await service.subscribe(extra)
                await wait_until(lambda: extra in upstream(), what=f"{extra} subscribed upstream")

                before = await client_state(page)
                doomed.kill()
                # The page reconnects through nginx to the surviving edge: LIVE again, no reload.
                await page.wait_for_function(
                    "(lives) => window.dashboard.client.lives > lives && "
                    "document.getElementById('conn').dataset.state === 'live'",
                    arg=before["lives"],
                    timeout=TIMEOUT * 2 * MS,
                )
                events = (await client_state(page))["events"]
                await wait_prices_change(page, TIMEOUT * 2)
                await page.wait_for_function(f"() => window.dashboard.client.events > {events} + 20")
                assert await page.evaluate("window.__sameDocument") is True
                await wait_metric(survivor.port, 'fastrelay_clients{path="/api/socket"}', 1)
                await page.screenshot(path=ARTIFACTS / "dashboard-after-edge-failover.png")

                # The dead edge stops counting after --peer-timeout (+ linger): its service's
                # channel leaves the upstream; the page's channels stay (the survivor wants them).
                await wait_until(
                    lambda: upstream() == wanted_by_page,
                    timeout=PEER_TIMEOUT + 2 * TIMEOUT,
                    what=f"{extra} unsubscribed upstream",
                )
                await wait_metric(ingest.port, "fastrelay_ingest_edges", 1)
                await wait_metric(ingest.port, "fastrelay_ingest_edges_expired_total", 1)
                assert problems == []
                await page.close()
