"""The ``workers`` bench scenario: serve --workers 1 and 2 on one rate ladder, each one's
saturation rate and CPU per delivery over its whole process tree (bench/saturation.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from bench import saturation
from bench.run import Options, Run, medians
from bench.scenarios import SCENARIOS, WORKERS, Config, parse_server, plan

WORKERS_SCENARIO = SCENARIOS["workers"]


def test_the_scenario_runs_workers_1_and_2_on_the_sparse_load() -> None:
    scenario = WORKERS_SCENARIO
    assert scenario.clients >= 1000 and not scenario.wildcard and scenario.saturation
    # One write per delivery: each ticker's trades are rare enough not to share a 5 ms window.
    assert max(scenario.t_rates) / scenario.symbols * 0.005 <= 0.25
    assert [c.server.label for _, c in plan([scenario], None, 1)] == ["workers1", "workers2"]
    assert parse_server("workers2") == WORKERS[1] and parse_server("workers2@0").flush == 0.0
    with pytest.raises(ValueError, match="workersN"):
        parse_server("workers0")


def step(t_rate: float, delivered: float, p99: float, ratio: float = 1.0, **more: Any) -> dict[str, Any]:
    return {
        "scenario": "workers", "server": "workers2", "step": f"{t_rate:g}", "t_rate": t_rate,
        "delivered_per_s": delivered, "delivery_ratio": ratio, "latency_ms": {"p99": p99},
        "server_us_per_event": 12.5, "server_cpu": delivered * 12.5e-6, "server_alive": True, **more,
    }  # fmt: skip


def test_the_saturation_rate_is_the_top_of_the_unbroken_run_of_full_on_time_steps() -> None:
    scenario = dataclasses.replace(WORKERS_SCENARIO, servers=(WORKERS[1],), t_rates=(1000, 2000, 3000, 4000))
    steps = [
        step(1000, 20_000, 3.0),
        step(2000, 40_000, 9.0),
        step(3000, 60_000, 70.0),  # late
        step(4000, 80_000, 20.0),  # on time again: noise above a failed step does not count
    ]
    (point,) = saturation.points(steps, [scenario])
    assert (point["saturation_t_rate"], point["saturation_deliveries_per_s"]) == (2000, 40_000)
    assert point["failed_at"] == "3000: p99 70.0 ms" and not point["beyond_ladder"]
    assert point["us_per_delivery"] == 12.5 and point["cores"] == pytest.approx(0.5)
    short = [step(1000, 20_000, 3.0, ratio=0.998)]
    (none,) = saturation.points(short, [scenario])
    assert none["saturation_t_rate"] is None and none["failed_at"] == "1000: delivered 99.80 %"
    whole = [step(r, r * 20, 5.0) for r in scenario.t_rates]
    (beyond,) = saturation.points(whole, [scenario])
    assert beyond["beyond_ladder"] and "4,000+" in saturation.render([beyond])


@pytest.mark.slow
async def test_the_workers_scenario_on_a_tiny_crowd(tmp_path: Path) -> None:
    """40 clients, two low steps, the real processes: both servers deliver everything, and the
    tree's CPU counts its supervisor, nats-server, ingest and edges."""
    scenario = dataclasses.replace(
        WORKERS_SCENARIO, clients=40, symbols=20, t_rates=(100, 200), client_procs=1
    )
    options = Options(
        warmup=0.5, settle=0.5, duration=1.5, grace=1.0, client_procs=None, pin=False, verbose=False,
        steps=None,
    )  # fmt: skip
    found: dict[str, list[dict[str, Any]]] = {}
    for server in WORKERS:
        run = Run(Config(scenario, server), options, tmp_path, server.label, profile=False)
        found[server.label] = await run.execute()
    for label, steps in found.items():
        assert [s["t_rate"] for s in steps] == [100, 200], label
        for s in steps:
            assert s["server_alive"] and s["delivery_ratio"] == 1.0 and s["gaps"] == 0, (label, s)
    # The tree is five processes, the one process one: its resident memory shows it.
    assert found["workers2"][0]["server_rss_mib"] > 3 * found["workers1"][0]["server_rss_mib"]
    # Its CPU is every process's, and the JSON has each one's share.
    # Both are read from /proc a moment apart, in clock ticks (10 ms): equal within a few
    # ticks over the 1.5 s window (a busy CI machine once put one tick between them).
    for s in found["workers2"]:
        assert set(s["tree_cpu"]) == {"supervisor", "nats", "ingest", "edge-1", "edge-2"}
        assert sum(s["tree_cpu"].values()) == pytest.approx(s["server_cpu"], abs=0.05)
    single = found["workers1"][0]
    assert single["tree_cpu"] == {"relay": pytest.approx(single["server_cpu"], abs=0.05)}
    summaries = [medians([s]) for steps in found.values() for s in steps]
    points = saturation.points(summaries, [scenario])
    assert [p["server"] for p in points] == ["workers1", "workers2"]
    for point in points:
        assert point["saturation_t_rate"] == 200 and point["beyond_ladder"], point
        assert point["us_per_delivery"] > 0
    assert "workers2" in saturation.render(points)
