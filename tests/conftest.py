"""Fixtures: a simulator and a relay in this process, on 127.0.0.1 port 0."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvloop

from fastrelay.app import RunningRelay, running_relay
from fastrelay.sim import Simulator, SimulatorConfig
from tests.utils import fast_relay_config


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    """Run every async test on uvloop, the loop fastrelay runs on in production."""
    return {"uvloop": uvloop.new_event_loop}


def sim_config(**overrides: Any) -> SimulatorConfig:
    """A lively feed on few symbols so each channel sees events quickly."""
    settings: dict[str, Any] = {
        "api_key": "sim-key",
        "markets": ("stocks", "options"),
        "symbols": {
            "stocks": ["AAPL", "MSFT", "TSLA", "BRK.B"],
            "options": ["O:SPY251219C00600000", "O:SPY251219P00550000"],
        },
        "rate": 400.0,
        "events_per_frame": 2,
        "agg_minute_seconds": 2.0,
        "seed": 7,
    }
    settings.update(overrides)
    return SimulatorConfig(**settings)


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(sim_config()) as simulator:
        yield simulator


@pytest.fixture
async def relay(sim: Simulator) -> AsyncIterator[RunningRelay]:
    async with running_relay(fast_relay_config(sim.base_url, "sim-key")) as running:
        yield running
