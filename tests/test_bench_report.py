"""The bench's HTML reports (bench/report_html.py), built from a stored result.

tests/fixtures/bench-result.json is a real ``make bench BENCH_ARGS=--quick`` result cut down to
a few configurations of each kind of scenario: a rate ladder (firehose, fastrelay and two peers),
one rate (sparse), idle, abuse, and a failover and a charts window from their own runs. The
pages must plot every scenario and server, flag exactly the regressions bench/compare.py
counts, fetch nothing, and render in Chromium (screenshots in test-artifacts/).
"""

from __future__ import annotations

import copy
import html
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from playwright.async_api import Browser, async_playwright

from bench import compare, report, report_html
from tests.webtools import ARTIFACTS, CHROMIUM_ARGS, chromium_binary

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "fixtures" / "bench-result.json"
KINDS = {
    "firehose": "ladder",
    "sparse": "servers",
    "idle": "idle",
    "abuse": "abuse",
    "scaleout-failover": "failover",
    "charts": "charts",
}
MS = 1000.0


def load() -> dict[str, Any]:
    result = report.load(FIXTURE)
    result["targets"] = report.targets(result["summary"])
    return result


def figures(page: str) -> dict[str, tuple[dict[str, str], str]]:
    """scenario -> (the figure's data- attributes, its SVG)."""
    found = {}
    for match in re.finditer(r'<figure class="plot" ([^>]*)>(.*?)</figure>', page, re.S):
        attributes = {k: html.unescape(v) for k, v in re.findall(r'data-([\w-]+)="([^"]*)"', match[1])}
        found[attributes["scenario"]] = (attributes, match[2])
    return found


def svg_texts(svg: str) -> set[str]:
    return {html.unescape(text) for text in re.findall(r"<text[^>]*>([^<]*)</text>", svg)}


def servers(result: dict[str, Any], scenario: str) -> list[str]:
    return list(
        dict.fromkeys(s["server"] for s in report.ordered(result["summary"]) if s["scenario"] == scenario)
    )


def assert_self_contained(page: str) -> None:
    """No script, stylesheet or image to fetch: every reference is to the page itself."""
    assert not re.search(r"<(script|link|img|iframe|object)\b", page, re.I)
    references = re.findall(r'(?:href|src)="([^"]*)"', page)
    assert references and all(ref.startswith("#") for ref in references), {
        ref for ref in references if not ref.startswith("#")
    }
    urls = re.findall(r"url\(([^)]*)\)", page)
    assert all(url.startswith("#") for url in urls), {url for url in urls if not url.startswith("#")}


def test_run_page_plots_every_scenario_and_server(tmp_path: Path) -> None:
    source = tmp_path / FIXTURE.name
    shutil.copy(FIXTURE, source)
    result = load()
    written = report_html.write_run(result, source)
    assert written == tmp_path / "bench-result.html"  # beside the JSON
    page = written.read_text()
    found = figures(page)
    assert {scenario: attributes["kind"] for scenario, (attributes, _) in found.items()} == KINDS
    for scenario, (attributes, svg) in found.items():
        expected = servers(result, scenario)
        assert attributes["servers"].split() == expected, scenario
        assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>")
        texts = svg_texts(svg)
        if KINDS[scenario] in ("ladder", "servers", "idle"):
            # fastrelay beside each peer: every server named in the plot (legend or axis).
            assert set(expected) <= texts, (scenario, texts)
    ladder = svg_texts(found["firehose"][1])
    assert {"1k", "2k", "latency p50 (ms)", "latency p99 (ms)", "CPU per delivered event (µs)"} <= ladder
    assert {"latency (ms)", "p50", "p99", "p99.9", "CPU per delivered event (µs)"} <= svg_texts(
        found["sparse"][1]
    )
    assert {"baseline", "byte-flood"} <= svg_texts(found["abuse"][1])
    # The numbers under each plot, and the targets.
    assert "saturated: p99 1761 ms" in page and "MISSED" in page and "MET" in page
    assert_self_contained(page)


def test_run_page_marks_saturated_servers_and_only_them() -> None:
    result = load()
    ladder = [s for s in result["summary"] if s["scenario"] == "firehose"]
    assert any(s.get("saturated") for s in ladder)
    marked = report_html.plot_ladder(ladder)
    assert report_html.REGRESSION_COLOR in marked
    for s in ladder:
        s["saturated"] = None
    assert report_html.REGRESSION_COLOR not in report_html.plot_ladder(ladder)


def slower(result: dict[str, Any]) -> dict[str, Any]:
    """B: the fastrelay firehose 1k p99 three times A's (a regression), its CPU per event half
    (better); everything else equal."""
    b = copy.deepcopy(result)
    (summary,) = [
        s
        for s in b["summary"]
        if s["scenario"] == "firehose" and s["step"] == "1k" and s["server"] == "fastrelay"
    ]
    summary["latency_ms"]["p99"] *= 3
    summary["server_us_per_event"] /= 2
    b["date"] = "2026-12-04T00:00:00"
    return b


def test_compare_page_highlights_the_regressions() -> None:
    a = load()
    b = slower(a)
    assert compare.compare(a, b)[1] == 1
    page = report_html.render_compare(a, b, "A.json", "B.json")
    assert "1 regression(s) past tolerance" in page
    regression_rows = re.findall(r'<tr class="regression">(.*?)</tr>', page, re.S)
    assert regression_rows and all(
        "firehose 1k fastrelay" in row and "p99 ms" in row and "REGRESSION" in row for row in regression_rows
    )
    better_rows = re.findall(r'<tr class="better">(.*?)</tr>', page, re.S)
    assert any("firehose 1k fastrelay" in row and "us/event" in row for row in better_rows)
    found = figures(page)
    assert set(found) == set(KINDS)
    for scenario, (attributes, svg) in found.items():
        flagged = scenario == "firehose"
        assert attributes["regressions"] == ("1" if flagged else "0"), scenario
        assert (report_html.REGRESSION_COLOR in svg) == flagged, scenario
    assert_self_contained(page)

    same = report_html.render_compare(a, copy.deepcopy(a), "A.json", "A.json")
    assert "no regression past tolerance" in same and 'class="regression"' not in same


def test_bench_compare_writes_the_page_beside_b(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``make bench-compare A B``: the text as before, and the page next to B."""
    path_a, path_b = tmp_path / "bench-a.json", tmp_path / "bench-b.json"
    shutil.copy(FIXTURE, path_a)
    a = report.load(FIXTURE)
    b = slower(a)
    path_b.write_bytes(orjson.dumps(b))
    assert compare.main([str(path_a), str(path_b), "--strict"]) == 1
    out = capsys.readouterr().out
    assert "1 regression(s) past tolerance" in out
    page = tmp_path / "compare-bench-a-bench-b.html"
    assert f"HTML: {page}" in out and "1 regression(s) past tolerance" in page.read_text()


def test_committed_report_is_linked_and_self_contained() -> None:
    """The README's link to the latest report leads to a page of plots that fetches nothing."""
    committed = REPO / "docs" / "bench-report.html"
    assert "(docs/bench-report.html)" in (REPO / "README.md").read_text()
    page = committed.read_text()
    found = figures(page)
    assert found and all(svg.startswith("<svg") for _, svg in found.values())
    assert "firehose" in found and {"fastrelay", "websockets", "node-ws"} <= svg_texts(found["firehose"][1])
    assert_self_contained(page)
    assert len(page) < 512 * 1024, "keep the committed report small (a default run, all its scenarios)"


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    executable = chromium_binary()
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


@pytest.mark.slow
async def test_pages_render_in_chromium_without_fetching(browser: Browser, tmp_path: Path) -> None:
    """Each page draws its plots in a real Chromium from the file alone; screenshots of both."""
    a = load()
    pages = {
        "bench-report": report_html.render_run(a, FIXTURE.name),
        "bench-compare": report_html.render_compare(a, slower(a), "A.json", "B.json"),
    }
    ARTIFACTS.mkdir(exist_ok=True)
    for name, text in pages.items():
        path = tmp_path / f"{name}.html"
        path.write_text(text)
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        requests: list[str] = []
        page.on("request", lambda request, seen=requests: seen.append(request.url))
        await page.goto(path.as_uri(), wait_until="load", timeout=30 * MS)
        boxes = await page.eval_on_selector_all(
            "figure.plot svg",
            "svgs => svgs.map(s => [s.getBoundingClientRect().width, s.getBoundingClientRect().height])",
        )
        assert len(boxes) == len(KINDS), boxes
        assert all(width > 300 and height > 100 for width, height in boxes), boxes
        await page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)
        await page.close()
        assert requests == [path.as_uri()], requests
