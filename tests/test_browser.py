"""The dashboard in a real browser (headless Chromium) through nginx, across a relay crash.

Chromium is Debian's package, driven by playwright with executable_path (never
`playwright install`). nginx runs the shipped configuration; the relay is a child process
killed with SIGKILL and restarted on the same port while the simulator (in this process)
stays up. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from playwright.async_api import Browser, Page, async_playwright

from fastrelay.sim import Simulator, SimulatorConfig
from tests.utils import TIMEOUT
from tests.webtools import (
    ARTIFACTS,
    CHROMIUM_ARGS,
    WEB_ROOT,
    RelayProcess,
    chromium_binary,
    free_port,
    running_nginx,
    stopping,
    vendor_installed,
)

pytestmark = pytest.mark.slow

TOKEN = "browser-token-0123456789"
# The client's backoff (fastrelay-client.js): retry n waits U(0, min(30 s, 0.5 s * 2^n)).
BACKOFF_BASE, BACKOFF_CAP = 0.5, 30.0
OUTAGE = 10.0  # seconds the relay stays down while the attempts are counted
MS = 1000.0


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    executable = chromium_binary()
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


async def new_page(browser: Browser, problems: list[str]) -> Page:
    page = await browser.new_page(viewport={"width": 1280, "height": 800})
    page.set_default_timeout(TIMEOUT * MS)
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))

    def console(message: Any) -> None:
        # Failed handshakes while the relay is down are expected console errors; anything else is not.
        if message.type == "error" and "WebSocket connection to" not in message.text:
            problems.append(f"console: {message.text}")

    page.on("console", console)
    return page


async def client_state(page: Page) -> dict[str, Any]:
    result: dict[str, Any] = await page.evaluate(
        """() => { const c = window.dashboard.client;
        return {state: c.state, reason: c.reason, attempts: c.attempts, lives: c.lives, events: c.events,
                running: c.running, nextRetryAt: c.nextRetryAt}; }"""
    )
    return result


async def prices(page: Page) -> list[str]:
    return list(await page.locator(".card .price").all_inner_texts())


async def wait_prices_change(page: Page, timeout: float) -> None:
    """Every card shows a price, and at least two of them change from what is shown now."""
    await page.wait_for_function(
        "() => [...document.querySelectorAll('.card .price')].every(e => e.textContent !== '—')",
        timeout=timeout * MS,
    )
    before = await prices(page)
    await page.wait_for_function(
        """(before) => [...document.querySelectorAll('.card .price')]
               .filter((e, i) => e.textContent !== before[i]).length >= 2""",
        arg=before,
        timeout=timeout * MS,
    )


def attempt_bounds(seconds: float) -> tuple[int, int]:
    """How many reconnects the client's backoff makes in ``seconds`` after a drop.

    At least those whose delay ceilings add up to less than the window (a delay never exceeds
    its ceiling; 5 % slack for the failed handshakes themselves). At most those whose ceiling
    is below the window, plus 4: each further one must draw less than the whole window from a
    ceiling at least as large (more than that: probability under 1e-5). A tight loop makes
    hundreds.
    """
    ceilings = [min(BACKOFF_CAP, BACKOFF_BASE * 2**n) for n in range(64)]
    low = total = 0
    while total + ceilings[low] <= seconds * 0.95:
        total += ceilings[low]
        low += 1
    return low, sum(c < seconds for c in ceilings) + 4


async def test_dashboard_live_through_nginx_survives_a_relay_crash(browser: Browser, tmp_path: Path) -> None:
    """LIVE, prices move, chart and option fill; relay killed: bounded reconnects; back: LIVE, no reload."""
    ARTIFACTS.mkdir(exist_ok=True)
    vendor_installed()
    # The simulator's default symbols: the page's default option contract must be one it trades.
    config = SimulatorConfig(api_key="sim-key", markets=("stocks", "options"), rate=120.0, events_per_frame=2)
    async with Simulator(config) as sim:
        rest = ["--rest-url", sim.http_url("")]  # history's REST source: the simulator, as `fastrelay run`
        relay = RelayProcess(
            free_port(), sim.base_url, tmp_path / "relay.log", "--client-tokens", TOKEN, *rest
        )
        await relay.start()
        async with running_nginx(tmp_path / "nginx", [relay.port]) as nginx:
            with stopping(relay):
                problems: list[str] = []
                page = await new_page(browser, problems)
                # Per-second candles: the relay's kept ones fill the chart without REST history.
                await page.goto(f"{nginx.base_url}/?token={TOKEN}&interval=1s")
                await page.evaluate("window.__sameDocument = true")

                # Live: the indicator, prices that move, candles, the option's quote and trades.
                await page.wait_for_selector('#conn[data-state="live"]')
                assert await page.inner_text("#conn-label") == "LIVE"
                await wait_prices_change(page, TIMEOUT * 2)
                await page.wait_for_function("() => window.dashboard.chart.barCount() >= 2")
                await page.wait_for_function("() => window.dashboard.chart.updates > 0")  # live after history
                await page.wait_for_function(
                    "() => !['—', ''].includes(document.getElementById('opt-bid').textContent)"
                )
                await page.wait_for_function("() => document.querySelectorAll('#opt-trades tr').length > 0")
                contract = await page.evaluate("window.dashboard.contract")
                assert contract in sim.symbols("options")
                # Chromium offered permessage-deflate and nginx passed it through both ways.
                extensions = await page.evaluate("window.dashboard.client.socket.extensions")
                assert extensions.startswith("permessage-deflate"), extensions
                await page.screenshot(path=ARTIFACTS / "dashboard-live.png")

                # A second page gets the relay's kept candles at once (history), de-duplicated.
                second = await new_page(browser, problems)
                await second.goto(f"{nginx.base_url}/?token={TOKEN}&interval=1s")
                await second.wait_for_function(
                    "() => /history: [1-9]/.test(document.getElementById('chart-history').textContent)"
                )
                starts = await second.evaluate("window.dashboard.chart.bars().map(b => b.s)")
                assert len(starts) >= 2 and starts == sorted(set(starts))
                await second.close()

                # The relay crashes: reconnecting, and a bounded number of attempts over OUTAGE seconds.
                before = await client_state(page)
                assert before["attempts"] == 1
                lines_before = len(nginx.log_lines())
                relay.kill()
                killed = time.monotonic()
                await page.wait_for_selector('#conn[data-state="reconnecting"]')
                # The window observed: a measurement, not a wait for something to happen.
                await page.wait_for_timeout((OUTAGE - (time.monotonic() - killed)) * MS)
                during = await client_state(page)
                attempts = during["attempts"] - before["attempts"]
                assert during["state"] == "reconnecting" and during["running"]
                low, high = attempt_bounds(OUTAGE)
                assert low <= attempts <= high, (low, high, during)
                # nginx saw exactly those handshakes, each refused at once with 502.
                refused = [line for line in nginx.log_lines()[lines_before:] if '"GET /api/socket' in line]
                refused = [line for line in refused if '" 101 ' not in line]  # the socket the crash closed
                assert len(refused) == attempts and all('" 502 ' in line for line in refused), refused
                await page.screenshot(path=ARTIFACTS / "dashboard-reconnecting.png")

                # The relay is back on the same port: LIVE again within one backoff ceiling (of the
                # retry after the last one counted, or the one after), and data resumes.
                await relay.start()
                ceiling = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (attempts + 1))
                await page.wait_for_selector('#conn[data-state="live"]', timeout=(ceiling + TIMEOUT) * MS)
                after = await client_state(page)
                assert after["lives"] == 2
                events = after["events"]
                await wait_prices_change(page, TIMEOUT * 2)
                await page.wait_for_function(f"() => window.dashboard.client.events > {events} + 20")
                assert await page.evaluate("window.__sameDocument") is True  # no reload
                await page.screenshot(path=ARTIFACTS / "dashboard.png")
                assert problems == []
                await page.close()


async def test_client_stops_on_auth_failed_and_pauses_after_slow_consumer(
    browser: Browser, tmp_path: Path
) -> None:
    """A wrong token: `stopped`, one attempt, no retry. A slow_consumer close (1013): a pause before retrying.

    Also: the page served by the relay itself works against the relay's /api/socket directly,
    and shows the relay's own upstream outage while its connection stays live.
    """
    async with Simulator(SimulatorConfig(api_key="sim-key", markets=("stocks", "options"))) as sim:
        flags = ["--client-tokens", TOKEN, "--auth-retry", "0.3", "--backoff-base", "0.05"]
        flags += ["--rest-url", sim.http_url("")]
        flags += ["--backoff-cap", "0.2"]
        relay = RelayProcess(free_port(), sim.base_url, tmp_path / "relay.log", *flags)
        await relay.start()
        async with running_nginx(tmp_path / "nginx", [relay.port]) as nginx:
            with stopping(relay):
                problems: list[str] = []
                page = await new_page(browser, problems)
                await page.goto(f"{nginx.base_url}/?token=wrong")
                await page.wait_for_selector('#conn[data-state="stopped"]')
                assert "authentication failed" in await page.inner_text("#conn-detail")
                stopped = await client_state(page)
                assert (stopped["attempts"], stopped["running"], stopped["nextRetryAt"]) == (1, False, 0)
                assert await page.evaluate("window.dashboard.client.lastClose.code") == 1008
                await page.close()

                # Straight from the relay (no nginx, no CSP): live with the right token.
                page = await new_page(browser, problems)
                await page.goto(f"http://127.0.0.1:{relay.port}/?token={TOKEN}")
                await page.wait_for_selector('#conn[data-state="live"]')
                await page.wait_for_function("() => window.dashboard.client.events > 0")

                # Massive drops the relay and refuses it for a while: the page stays connected
                # and says the stocks feed is interrupted, until the relay has it back.
                sim.fault("auth_fail", "stocks")
                sim.fault("drop", "stocks")
                await page.wait_for_selector('#conn[data-feed="interrupted"]')
                assert "stocks feed interrupted" in await page.inner_text("#conn-detail")
                assert await page.get_attribute("#conn", "data-state") == "live"
                sim.fault("auth_ok", "stocks")
                await page.wait_for_selector('#conn:not([data-feed="interrupted"])')
                assert (await client_state(page))["attempts"] == 1

                # The same client code against a stand-in relay that drops it as a slow consumer.
                async def slow_consumer(ws: websockets.ServerConnection) -> None:
                    await ws.send('[{"ev":"status","status":"connected","message":"Connected Successfully"}]')
                    await ws.recv()
                    await ws.send('[{"ev":"status","status":"auth_success","message":"authenticated"}]')
                    await ws.send('[{"ev":"status","status":"slow_consumer","message":"client too slow"}]')
                    await ws.close(1013, "slow consumer")

                async with websockets.serve(slow_consumer, "127.0.0.1", 0) as server:
                    port = server.sockets[0].getsockname()[1]
                    info = await page.evaluate(
                        """(url) => new Promise((resolve) => {
                            const c = new FastRelayClient({url: url, slowConsumerPause: 5000});
                            c.on('state', (state, info) => {
                                if (state !== 'reconnecting' || info.delay === undefined) return;
                                c.stop();
                                resolve(info);
                            });
                            c.start();
                        })""",
                        f"ws://127.0.0.1:{port}/api/socket",
                    )
                assert info["code"] == 1013 and 5000 <= info["delay"] <= 5000 + BACKOFF_BASE * MS, info

                # A slow link the relay conflates (docs/protocol.md, "Conflation"): the client
                # reports reduced updates from `conflating` to `caught_up`, and again at the next
                # episode until the connection closes.
                async def conflating(ws: websockets.ServerConnection) -> None:
                    await ws.send('[{"ev":"status","status":"connected","message":"Connected Successfully"}]')
                    await ws.recv()
                    await ws.send('[{"ev":"status","status":"auth_success","message":"authenticated"}]')
                    for status in ("conflating", "caught_up", "conflating"):
                        await ws.send(f'[{{"ev":"status","status":"{status}","message":"m"}}]')
                    await ws.close(1000, "bye")

                async with websockets.serve(conflating, "127.0.0.1", 0) as server:
                    port = server.sockets[0].getsockname()[1]
                    seen = await page.evaluate(
                        """(url) => new Promise((resolve) => {
                            const c = new FastRelayClient({url: url});
                            const seen = [];
                            c.on('reduced', (reduced) => {
                                seen.push(reduced);
                                if (seen.length === 4) { c.stop(); resolve(seen); }
                            });
                            c.start();
                        })""",
                        f"ws://127.0.0.1:{port}/api/socket",
                    )
                assert seen == [True, False, True, False]  # the close ends the last episode

                # The dashboard shows it while its own connection is live.
                status = '[{"ev":"status","status":"%s","message":"m"}]'
                await page.evaluate(
                    "(f) => window.dashboard.client._onMessage({data: f})", status % "conflating"
                )
                await page.wait_for_selector('#conn[data-reduced="true"]')
                assert "reduced updates" in await page.inner_text("#conn-detail")
                await page.evaluate(
                    "(f) => window.dashboard.client._onMessage({data: f})", status % "caught_up"
                )
                await page.wait_for_selector("#conn:not([data-reduced])")
                assert problems == []
                await page.close()


async def test_client_backoff_doubles_caps_and_resets_after_a_healthy_connection(browser: Browser) -> None:
    """The client's reconnect delays with jitter at its top (random() = 0.999), on a stand-in
    WebSocket that accepts, authenticates and drops: base, doubling, capped; once a connection
    has stayed live past `healthyAfter`, the next delay is back at the base."""
    page = await browser.new_page()
    await page.add_script_tag(path=str(WEB_ROOT / "fastrelay-client.js"))
    delays = await page.evaluate(
        """async () => {
            class Dropping {  // connected, authenticated, then dropped after Dropping.stay ms
                constructor() {
                    this.readyState = 1;
                    setTimeout(() => this.onmessage({data: '[{"ev":"status","status":"connected"}]'}), 0);
                }
                send(text) {
                    if (JSON.parse(text).action !== 'auth') return;
                    this.onmessage({data: '[{"ev":"status","status":"auth_success","message":"ok"}]'});
                    setTimeout(() => this.onclose && this.onclose({code: 1006, reason: ''}), Dropping.stay);
                }
                close() {}
            }
            Dropping.stay = 0;
            const delays = [];
            const client = new FastRelayClient({url: 'ws://stand-in/api/socket', WebSocket: Dropping,
                random: () => 0.999, backoffBase: 10, backoffCap: 80, healthyAfter: 150});
            await new Promise((resolve) => {
                client.on('state', (state, info) => {
                    if (state !== 'reconnecting' || info.delay === undefined) return;
                    delays.push(info.delay);
                    if (delays.length === 5) Dropping.stay = 300;  // the next one stays up 300 ms
                    if ((Dropping.stay && info.delay < 20) || delays.length === 10) resolve();
                });
                client.start();
            });
            client.stop();
            return delays;
        }"""
    )
    assert delays[:5] == [10, 20, 40, 80, 80], delays
    assert len(delays) in (6, 7) and delays[-1] == 10, delays
    await page.close()
