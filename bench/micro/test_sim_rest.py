"""Micro-benchmarks of the simulator's REST history (`make bench-micro`).

A chart's first request is a week of minute bars (10,080 of them); the
simulator generates a ticker's history on first use and keeps it, so the
first answer pays the generation and the next ones only the encoding. On an
idle 2-core sandbox: about 50 ms cold, 20 ms warm.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastrelay.sim import Simulator, SimulatorConfig
from fastrelay.sim.feed import now_ms
from fastrelay.sim.rest import RestApi

DAY_MS = 86_400_000
KEY = "bench-key"


def _api() -> tuple[RestApi, str]:
    config = SimulatorConfig(markets=("stocks",), symbols={"stocks": ("AAPL",)}, seed=7, api_key=KEY)
    sim = Simulator(config)
    api = RestApi(sim.config, sim._feeds)
    api.started(now_ms())
    assert api.end is not None
    query = urlencode({"apiKey": KEY, "limit": 50_000})
    path = f"/v2/aggs/ticker/AAPL/range/1/minute/{api.end - 7 * DAY_MS}/{api.end - 1}?{query}"
    return api, path


def test_week_of_minutes_cold(benchmark: Any) -> None:
    """A fresh simulator's first week-of-minutes answer: history generated, then encoded."""

    def setup() -> tuple[tuple[RestApi, str], dict[str, Any]]:
        return _api(), {}

    def answer(api: RestApi, path: str) -> None:
        assert api.answer("GET", path, {}, "http://127.0.0.1").status == 200

    benchmark.pedantic(answer, setup=setup, rounds=10)


def test_week_of_minutes_warm(benchmark: Any) -> None:
    """The same answer again: the history is cached, only the encoding is paid."""
    api, path = _api()
    api.answer("GET", path, {}, "http://127.0.0.1")
    reply = benchmark(api.answer, "GET", path, {}, "http://127.0.0.1")
    assert reply.status == 200
