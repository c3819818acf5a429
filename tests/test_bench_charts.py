"""The bench's charts scenarios: the chart clients' reading of history and live frames
(bench/loadclient.py), the figures bench/run.py and bench/report.py make of them, and the whole
machinery (simulator, relay with REST from the simulator, load processes) on a tiny crowd."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench import report
from bench.loadclient import LoadClient, Process
from bench.run import Options, Run, chart_figures, medians, pool_charts
from bench.run import _scenarios as scenarios_of
from bench.scenarios import CHART_PHASES, SCENARIOS, Config, Server, plan

CHARTS = SCENARIOS["charts"]
SPREAD = SCENARIOS["charts-spread"]


def test_charts_plan_clients_and_companion() -> None:
    assert [s.key for s in scenarios_of("charts")] == ["charts", "charts-spread"]
    assert CHARTS.clients == SPREAD.clients == 1000
    assert {p for p, _mode, _edge in CHARTS.clients_spec()} == {"A.S0001,AM.S0001"}
    spread = [p for p, _mode, _edge in SPREAD.clients_spec()]
    assert len(set(spread)) == 20 and spread.count("A.S0020,AM.S0020") == 50
    assert {mode for _p, mode, _edge in SPREAD.clients_spec()} == {"chart"}
    # Chart history is fastrelay's: the peers and the scale-out are not planned for it.
    servers = [Server("fastrelay"), Server("websockets"), Server("scaleout")]
    assert [c.server.kind for _, c in plan([CHARTS], servers, 1)] == ["fastrelay"]


def bar(start: int) -> dict[str, Any]:
    return {"ev": "AM", "sym": "S0001", "o": 1.0, "c": 1.0, "h": 1.0, "l": 1.0, "v": 5, "s": start}


def live(ev: str, q: int, sent: int) -> dict[str, Any]:
    return {"sim_ns": sent, "ev": ev, "sym": "S0001", "q": q, "s": sent // 1000}


def test_chart_client_tells_history_from_live() -> None:
    """REST bars (no sim_ns) and a kept live bar sent before the request are history; the
    status closes it; live events after it count, their A q is checked."""
    process = Process()
    client = LoadClient(process, "A.S0001,AM.S0001", "chart", lambda: None)
    client.subscribed = True
    sent: list[bytes] = []

    class Transport:
        def send(self, _kind: Any, data: bytes) -> None:
            sent.append(data)

    client.transport = Transport()  # type: ignore[assignment]

    def read(at: int, *events: dict[str, Any]) -> None:
        client._chart(orjson.dumps(list(events)), at)

    read(50, live("A", 1, 40))  # live before any request: no phase
    process.chart.phase, process.chart.opened_ns = "cold", 90
    client.ask_history("cold")
    assert orjson.loads(sent[-1]) == {"action": "history", "params": "AM.S0001"}
    state = client.chart_phases["cold"]
    state.sent_ns = 100
    read(150, live("A", 2, 120))  # live while the answer is out: its latency is the phase's
    read(200, bar(1), bar(2))  # REST bars
    read(210, live("AM", 9, 60))  # a bar the relay kept (sent before the request): history
    read(220, {"ev": "status", "status": "success", "message": "history: AM.S0001 (3 events)"})
    read(300, live("A", 4, 290))  # q 3 missing
    read(400, live("A", 4, 390))  # a repeat
    assert (state.first_ns, state.status_ns, state.n_status, state.n_counted) == (200, 220, 3, 3)
    assert state.live_after == 2 and not state.errors
    assert client.chart_waiting is None and process.chart.waiting == 0
    chart = process.chart
    assert chart.live_events == 4 and chart.live_gaps == 1 and chart.live_repeats == 1
    # Live events the simulator sent after the crowd's requests went out (at 90): 3, under 1 us.
    assert chart.hists == {"cold": {0: 3}}


def figures_of(n: int, status_at: int, live_after: int, errors: list[str] | None = None) -> list[Any]:
    return [1_000_000, 1_000_000 + status_at // 2, 1_000_000 + status_at, n, n, live_after, errors or []]


def test_chart_figures_pool_report_and_targets() -> None:
    ms = 1_000_000
    reports = [
        {
            "clients": [
                {"cold": figures_of(1440, 3000 * ms, 5), "warm": figures_of(1440, 100 * ms, 2)},
                {"cold": figures_of(1440, 1000 * ms, 0), "warm": figures_of(1440, 200 * ms, 1)},
            ],
            "hists": {"cold": {"2000": 3}},
        },
        {
            "clients": [{"cold": figures_of(1439, 2000 * ms, 4, ["error: history: no"])}],
            "hists": {"cold": {"1000000": 1}},
        },
    ]
    rest = {"calls": 1, "distinct": 1, "by_ticker": {"S0001": 1}, "by_status": {"200": 1}}
    relay = {"miss": 1.0, "coalesced": 2.0, "hit": 0.0, "error": 0.0, "cache_bytes": 100.0}
    cold = chart_figures("cold", 1_000_000, reports, rest, relay)
    assert cold["clients"] == cold["answered"] == 3
    assert cold["time_to_history_ms"] == [1000.0, 2000.0, 3000.0]
    assert cold["time_to_first_candle_ms"] == [500.0, 1000.0, 1500.0]
    assert cold["n_values"] == {"1440": 2, "1439": 1} and cold["with_errors"] == 1
    assert cold["no_live_after"] == 1 and cold["live_after_min"] == 0
    assert cold["live_latency_ms"]["max"] == 1000.0 and cold["minute_windows"] == 1
    cold["tickers"] = 1
    pooled = pool_charts([cold, cold])
    assert pooled["runs"] == 2 and pooled["rest_calls"] == [1, 1] and pooled["answered"] == 6
    assert pooled["time_to_history_ms"]["p50"] == 2000.0 and pooled["time_to_history_ms"]["max"] == 3000.0
    assert pooled["n_per_run"] == [["1439", "1440"], ["1439", "1440"]]

    warm_rest = {"calls": 0, "distinct": 0, "by_ticker": {}, "by_status": {}}
    warm = chart_figures("warm", 1_000_000, reports, warm_rest, {"hit": 2.0})
    assert warm["clients"] == 2 and warm["time_to_history_ms"] == [100.0, 200.0] and warm["rest_calls"] == 0
    warm["tickers"] = 1

    base = {"scenario": "charts", "server": "fastrelay", "server_kind": "fastrelay", "t_rate": 200.0}
    base |= {"clients": 3, "server_cpu": 0.9, "server_cpu_s": 2.5, "server_rss_mib": 60.0}
    base |= {"server_peak_rss_mib": 70.0}
    summaries = [
        {**base, "step": "cold", "charts": pooled},
        {**base, "step": "warm", "charts": pool_charts([warm])},
    ]
    block = report.charts(summaries)
    assert "2000 / 3000 / 3000" in block and "1440 x4, 1439 x2" in block
    assert report.table(summaries) == ""  # not in the main table
    found = {t["target"]: t for t in report.targets(summaries)}
    single = found["charts cold: one REST call per distinct query (single flight)"]
    assert single["status"] == "met"
    whole = found["charts cold: whole chart p99 < 2 s, all alike, live after"]
    assert whole["status"] == "missed" and whole["value"] == 3000.0
    assert found["charts warm: one REST call per distinct query (single flight)"]["status"] == "met"
    assert found["charts warm: whole chart p99 < 2 s, all alike, live after"]["status"] == "met"


@pytest.mark.slow
async def test_charts_scenario_on_a_tiny_crowd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """20 clients on 2 tickers, the real processes: every chart answered alike in both phases,
    one REST call per ticker cold, none warm after the scouts, live data after the history."""
    # A tiny crowd is served at once: the scouts need not wait for the cold answers to expire.
    monkeypatch.setattr("bench.run.CHART_CACHE_TTL", 0.0)
    scenario = dataclasses.replace(SPREAD, clients=20, chart_tickers=2, window=1.5)
    options = Options(
        warmup=0.5, settle=0.5, duration=1.5, grace=1.0, client_procs=None, pin=False, verbose=False,
        steps=None,
    )  # fmt: skip
    steps = await Run(Config(scenario, Server("fastrelay")), options, tmp_path, "t", profile=False).execute()
    assert [s["step"] for s in steps] == list(CHART_PHASES)
    for step in steps:
        c = step["charts"]
        assert c["clients"] == c["answered"] == 20, c
        assert len(c["n_values"]) == 1 and int(next(iter(c["n_values"]))) > 1000, c["n_values"]
        assert c["with_errors"] == c["n_mismatch"] == c["no_live_after"] == 0, c
        assert len(c["time_to_history_ms"]) == 20 and step["server_alive"]
        # CPU comes in clock ticks (10 ms): a tiny warm crowd may cost less than one.
        assert step["server_cpu_s"] >= 0 and step["server_peak_rss_mib"] > 0
        # Single flight: each query asked once (two tickers; a crowd across a minute's end: four).
        assert c["rest_calls"] == c["rest_distinct_queries"] <= 2 * c["minute_windows"], c
    cold, warm = (s["charts"] for s in steps)
    assert cold["rest_calls"] >= 2 and cold["relay"]["miss"] == cold["rest_calls"]
    assert warm["scouts"]["answered"] >= 2
    # The scouts filled the cache: the crowd's answers come from it (unless a minute ended between).
    assert warm["relay"].get("hit", 0) == 20 or warm["rest_calls"] > 0, warm["relay"]
    summaries = [medians([step]) for step in steps]
    assert "charts-spread  warm" in report.charts(summaries)
    assert {t["status"] for t in report.targets(summaries) if "single flight" in t["target"]} == {"met"}
