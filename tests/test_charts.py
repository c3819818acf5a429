"""The dashboard's chart in a real browser (headless Chromium) through the shipped nginx.

lightweight-charts (installed by `make` from the npm registry into fastrelay/web/vendor/),
history first and then live bars, timeframes, the crosshair legend, the symbol search box and
the options panel's exchange names. The relay is a child process whose REST source is the
simulator's stand-in for Massive's aggregates (as `fastrelay run` does), nginx runs the shipped
configuration (its Content-Security-Policy included: the page loads nothing from elsewhere).
Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page

from fastrelay.sim import Simulator, SimulatorConfig
from tests.test_browser import browser, new_page  # noqa: F401 - the Chromium fixture, shared
from tests.utils import TIMEOUT
from tests.webtools import (
    ARTIFACTS,
    WEB_ROOT,
    RelayProcess,
    free_port,
    running_nginx,
    stopping,
    vendor_installed,
)

pytestmark = pytest.mark.slow

TOKEN = "chart-token-0123456789"
MS = 1000.0
# The requirement: a fresh page shows at least this many candles within this time.
FULL_CANDLES, FULL_WITHIN_MS = 300, 2000.0
LEGEND = re.compile(r"O [\d.]+ +H [\d.]+ +L [\d.]+ +C [\d.]+ +V [\d,]+")


def relay_for(sim: Simulator, tmp_path: Path, *flags: str) -> RelayProcess:
    """A relay on the simulator, its REST history from the simulator's stand-in (as `fastrelay run`)."""
    rest = ["--rest-url", sim.http_url("")]
    return RelayProcess(
        free_port(), sim.base_url, tmp_path / "relay.log", "--client-tokens", TOKEN, *rest, *flags
    )


async def chart_state(page: Page) -> dict[str, Any]:
    state: dict[str, Any] = await page.evaluate(
        """() => { const d = window.dashboard, legend = document.getElementById('chart-legend');
        return {count: d.chart.barCount(), last: d.chart.lastBar(), tf: d.timeframe, symbol: d.symbol,
                requests: d.history.requests, loads: d.history.loads, inflight: !!d.loading.inflight,
                starts: d.chart.bars().map(b => b.s), legend: legend.textContent,
                hovered: legend.dataset.hovered}; }"""
    )
    return state


async def loaded(page: Page, tf: str, requests_before: int, timeout: float = TIMEOUT * 4) -> dict[str, Any]:
    """Wait until the chart's history for ``tf`` asked after ``requests_before`` is in."""
    await page.wait_for_function(
        """([tf, before]) => { const d = window.dashboard;
            return d.timeframe === tf && d.history.requests > before && !d.loading.inflight
                && d.history.loads.length > 0 && d.history.loads[d.history.loads.length - 1].tf === tf; }""",
        arg=[tf, requests_before],
        timeout=timeout * MS,
    )
    return await chart_state(page)


def assert_series(state: dict[str, Any], span: int | None) -> None:
    """Candles in order, one per window, each window on the timeframe's grid (days: DST moves
    their start by an hour, so only the order is checked)."""
    starts = state["starts"]
    assert starts == sorted(set(starts)), "candles out of order or a window twice"
    if span is not None:
        assert all((b - a) % span == 0 for a, b in itertools.pairwise(starts)), "off the grid"


async def test_chart_opens_full_with_history_then_goes_live(browser: Browser, tmp_path: Path) -> None:  # noqa: F811
    """A fresh relay: >= 300 candles within 2 s of page load (REST history), the crosshair
    legend follows the mouse, live bars keep arriving after the history, and every timeframe
    reloads its history; the options panel names exchanges."""
    vendor_installed()
    ARTIFACTS.mkdir(exist_ok=True)
    config = SimulatorConfig(api_key="sim-key", markets=("stocks", "options"), rate=60.0, events_per_frame=2)
    async with Simulator(config) as sim:
        relay = relay_for(sim, tmp_path)
        await relay.start()
        async with running_nginx(tmp_path / "nginx", [relay.port]) as nginx:
            with stopping(relay):
                problems: list[str] = []
                page = await new_page(browser, problems)
                await page.goto(f"{nginx.base_url}/?token={TOKEN}")

                # History first: the chart is full right after the page loads.
                await page.wait_for_function(
                    f"() => window.dashboard.chart.barCount() >= {FULL_CANDLES}", timeout=TIMEOUT * 4 * MS
                )
                full_at = await page.evaluate("window.dashboard.history.firstFullAt")
                print(f"\ntime to {FULL_CANDLES} candles after navigation: {full_at:.0f} ms")
                assert full_at is not None and full_at < FULL_WITHIN_MS, full_at
                state = await chart_state(page)
                assert state["tf"] == "1m" and state["loads"][0]["tf"] == "1m"
                assert_series(state, 60_000)
                assert LEGEND.search(state["legend"]), state["legend"]
                assert await page.locator("#attribution a[href='https://www.tradingview.com/']").count() == 1

                # The crosshair legend follows the mouse: two points, two candles, two legends.
                box = await page.locator("#chart").bounding_box()
                assert box is not None
                legends = []
                for fraction in (0.35, 0.6):
                    await page.mouse.move(box["x"] + box["width"] * fraction, box["y"] + box["height"] * 0.4)
                    await page.wait_for_function(
                        "(before) => { const e = document.getElementById('chart-legend');"
                        " return e.dataset.hovered === 'true' && e.textContent !== before; }",
                        arg=legends[-1] if legends else "",
                    )
                    legends.append(await page.inner_text("#chart-legend"))
                assert all(LEGEND.search(text) for text in legends), legends
                assert legends[0] != legends[1]
                await page.screenshot(path=ARTIFACTS / "chart-crosshair.png")
                await page.mouse.move(box["x"] + box["width"] / 2, box["y"] - 40)  # off the chart
                await page.wait_for_function(
                    "document.getElementById('chart-legend').dataset.hovered === 'false'"
                )

                # Per-second candles: history again, then live bars keep coming after it.
                before = state["requests"]
                await page.click(".toggle button[data-tf='1s']")
                state = await loaded(page, "1s", before)
                assert state["count"] > 0
                assert_series(state, 1_000)
                last = state["last"]
                await page.wait_for_function(
                    "(last) => { const b = window.dashboard.chart.lastBar();"
                    " return b && (b.s > last.s || b.c !== last.c || b.v !== last.v); }",
                    arg=last,
                    timeout=TIMEOUT * 2 * MS,
                )
                state = await chart_state(page)
                assert state["last"]["s"] >= last["s"]
                assert_series(state, 1_000)

                # Longer candles: REST history of that length, live candles built from AM.
                for tf, span in (("5m", 300_000), ("1h", 3_600_000), ("1D", None)):
                    before = state["requests"]
                    await page.click(f".toggle button[data-tf='{tf}']")
                    state = await loaded(page, tf, before)
                    assert state["count"] >= 2, (tf, state["count"])
                    assert_series(state, span)
                    assert "history:" in await page.inner_text("#chart-history")
                await page.click(".toggle button[data-tf='1m']")
                state = await loaded(page, "1m", state["requests"])
                assert state["count"] >= FULL_CANDLES
                assert "interval=1m" in page.url

                # The options panel: the exchange of each trade by name, not by Massive's id.
                await page.wait_for_function("() => document.querySelectorAll('#opt-trades tr').length > 0")
                venues = await page.locator("#opt-trades tr td:last-child").all_inner_texts()
                named = await page.evaluate(
                    "(ids) => ids.map(id => optionExchange(id).short)", [300, 302, 312, 313, 323]
                )
                assert named == ["NYSE American", "Cboe", "MIAX", "NYSE Arca", "PHLX"]
                assert venues and all(not v.isdigit() for v in venues), venues
                await page.screenshot(path=ARTIFACTS / "chart.png")
                assert problems == [], problems
                await page.close()


async def test_symbol_search_switches_the_chart_and_shows_refusals(browser: Browser, tmp_path: Path) -> None:  # noqa: F811
    """The search box: a malformed ticker is refused on the page (nothing sent); a valid one
    charts that symbol (history, then live, and at 5m the live minute bars build the last
    candle); one the relay refuses shows the relay's error."""
    vendor_installed()
    # Two-second "minutes": live AM bars come every 2 s, so the 5m candle built from them moves.
    config = SimulatorConfig(
        api_key="sim-key", markets=("stocks", "options"), rate=40.0, agg_minute_seconds=2.0
    )
    async with Simulator(config) as sim:
        # No indices here: I:SPX passes the page's pattern, and the relay refuses it.
        relay = relay_for(sim, tmp_path, "--markets", "stocks,options")
        await relay.start()
        async with running_nginx(tmp_path / "nginx", [relay.port]) as nginx:
            with stopping(relay):
                problems: list[str] = []
                page = await new_page(browser, problems)
                await page.goto(f"{nginx.base_url}/?token={TOKEN}&symbols=AAPL,MSFT")
                await page.wait_for_function("() => window.dashboard.history.loads.length > 0")
                before = await chart_state(page)

                await page.fill("#symbol-input", "bad$1")
                await page.press("#symbol-input", "Enter")
                assert "is not a ticker" in await page.inner_text("#symbol-error")
                assert await page.get_attribute("#symbol-input", "aria-invalid") == "true"
                assert (await chart_state(page))["requests"] == before["requests"]  # nothing asked

                await page.fill("#symbol-input", "googl")
                await page.click("#symbol-form button[type='submit']")
                state = await loaded(page, "1m", before["requests"])
                assert state["symbol"] == "GOOGL" and await page.inner_text("#chart-title") == "GOOGL"
                assert state["count"] > 0 and await page.inner_text("#symbol-error") == ""
                assert "symbol=GOOGL" in page.url
                channels = await page.evaluate("Array.from(window.dashboard.client.channels)")
                assert {"A.GOOGL", "AM.GOOGL"} <= set(channels) and "AM.AAPL" in channels  # cards stay

                # 5m: REST candles, then the live minute bars build the last one in the page.
                await page.click(".toggle button[data-tf='5m']")
                state = await loaded(page, "5m", state["requests"])
                assert state["count"] > 0 and state["symbol"] == "GOOGL"
                await page.wait_for_function(
                    "(last) => { const b = window.dashboard.chart.lastBar();"
                    " return b && (b.s > last.s || b.v > last.v) && window.dashboard.chart.updates > 0; }",
                    arg=state["last"],
                    timeout=TIMEOUT * 2 * MS,
                )
                assert_series(await chart_state(page), 300_000)

                await page.fill("#symbol-input", "I:SPX")
                await page.press("#symbol-input", "Enter")
                await page.wait_for_function(
                    "() => document.getElementById('symbol-error').dataset.source === 'relay'"
                )
                refusal = await page.inner_text("#symbol-error")
                assert "I:SPX" in refusal and "not served" in refusal, refusal
                await page.screenshot(path=ARTIFACTS / "chart-search-refused.png")
                assert problems == [], problems
                await page.close()


async def test_candle_book_builds_live_candles_and_keeps_the_seam(browser: Browser) -> None:  # noqa: F811
    """candles.js alone: native bars replace or append, older ones are ignored; derived
    candles (5m) start from the last history candle and take the live minute bars; with the
    minutes of the last window, that candle is rebuilt and a minute is never counted twice."""
    page = await browser.new_page()
    await page.add_script_tag(path=str(WEB_ROOT / "candles.js"))
    result = await page.evaluate(
        """() => {
            const bar = (ev, s, e, o, h, l, c, v) => ({ev, sym: 'X', s, e, o, h, l, c, v});
            const M = 60000;
            const native = new CandleBook(TIMEFRAMES['1m']);
            native.load([bar('AM', 2*M, 3*M, 1, 2, 1, 2, 10), bar('AM', M, 2*M, 1, 1, 1, 1, 5),
                         bar('AM', 2*M, 3*M, 1, 3, 1, 3, 12)]);
            const nativeLoaded = native.bars.map(b => [b.s, b.c, b.v]);
            const replaced = native.live(bar('AM', 2*M, 3*M, 1, 4, 1, 4, 20));
            const older = native.live(bar('AM', M, 2*M, 9, 9, 9, 9, 9));
            const appended = native.live(bar('AM', 3*M, 4*M, 4, 5, 4, 5, 1));

            const five = new CandleBook(TIMEFRAMES['5m']);
            const history = [bar('AM', 0, 5*M, 10, 12, 9, 11, 100), bar('AM', 5*M, 10*M, 11, 13, 10, 12, 50)];
            const minute = bar('AM', 7*M, 8*M, 12, 12, 12, 12, 1);
            const kinds = [five.isCandle(history[0]), five.isCandle(minute), five.isLiveBar(minute),
                           five.isLiveBar(history[0])];
            five.load(history);
            const a = Object.assign({}, five.live(bar('AM', 7*M, 8*M, 12, 15, 11, 14, 5)));
            const again = Object.assign({}, five.live(bar('AM', 7*M, 8*M, 12, 16, 11, 13, 6)));
            const b = Object.assign({}, five.live(bar('AM', 8*M, 9*M, 13, 13, 8, 9, 4)));
            const next = Object.assign({}, five.live(bar('AM', 10*M, 11*M, 9, 10, 8, 10, 3)));
            const stale = five.live(bar('AM', 9*M, 10*M, 1, 1, 1, 1, 1));

            // With the minutes of the last window: they rebuild it; a live minute that REST had
            // while it was forming replaces that partial minute instead of adding to it.
            const seam = new CandleBook(TIMEFRAMES['5m']);
            seam.load(history, [bar('AM', 4*M, 5*M, 9, 9, 9, 9, 7),   // before the window: left out
                                bar('AM', 5*M, 6*M, 11, 14, 10, 13, 20),
                                bar('AM', 6*M, 7*M, 13, 13, 12, 12, 3)]);  // partial, as REST had it
            const rebuilt = Object.assign({}, seam.bars[1]);
            const completed = Object.assign({}, seam.live(bar('AM', 6*M, 7*M, 13, 15, 12, 15, 8)));
            return {nativeLoaded, replaced, older, appended, count: native.bars.length,
                    kinds, a, again, b, next, stale, starts: five.bars.map(x => x.s),
                    rebuilt, completed, seamStarts: seam.bars.map(x => x.s)};
        }"""
    )
    minute = 60_000
    assert result["nativeLoaded"] == [[minute, 1, 5], [2 * minute, 3, 12]]  # a window twice: the later
    assert result["replaced"]["c"] == 4 and result["older"] is None and result["appended"]["s"] == 3 * minute
    assert result["count"] == 3
    assert result["kinds"] == [True, False, True, False]
    # The forming 5m candle: history's open, high/low over all, the last minute's close, volumes added.
    assert result["a"] == {"s": 5 * minute, "o": 11, "h": 15, "l": 10, "c": 14, "v": 55}
    assert result["again"] == {"s": 5 * minute, "o": 11, "h": 16, "l": 10, "c": 13, "v": 56}  # replaced
    assert result["b"] == {"s": 5 * minute, "o": 11, "h": 16, "l": 8, "c": 9, "v": 60}
    assert result["next"] == {"s": 10 * minute, "o": 9, "h": 10, "l": 8, "c": 10, "v": 3}
    assert result["stale"] is None and result["starts"] == [0, 5 * minute, 10 * minute]
    assert result["rebuilt"] == {"s": 5 * minute, "o": 11, "h": 14, "l": 10, "c": 12, "v": 23}
    assert result["completed"] == {"s": 5 * minute, "o": 11, "h": 15, "l": 10, "c": 15, "v": 28}
    assert result["seamStarts"] == [0, 5 * minute]
    await page.close()


def test_the_vendor_file_is_package_data() -> None:
    """The chart library is in the web root the relay serves (and the wheel ships: web/**/*)."""
    vendor_installed()
    script = (WEB_ROOT / "vendor" / "lightweight-charts.standalone.production.js").read_text()
    assert "TradingView Lightweight Charts" in script[:400] and "Apache License 2.0" in script[:400]
    index = (WEB_ROOT / "index.html").read_text()
    assert 'src="vendor/lightweight-charts.standalone.production.js"' in index
    assert "//cdn" not in index and "https://unpkg" not in index
