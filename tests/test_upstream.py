"""Upstream policy against the simulator: auth failures, max_connections, no hammering, secrecy."""

from __future__ import annotations

import logging

import pytest

from fastrelay.app import running_relay
from fastrelay.sim import Simulator
from tests.utils import fast_relay_config, wait_until


def auth_attempts(sim: Simulator, market: str = "stocks") -> int:
    return int(sim.stats()["markets"][market]["auth_attempts"])


async def test_auth_failed_logs_the_market_and_retries_only_after_the_long_delay(
    sim: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    """A wrong key: a clear error naming the market, not ready, and no retry before auth_retry."""
    config = fast_relay_config(sim.base_url, "wrong-key-0123456789", markets=("stocks",))
    config.upstream_timers.auth_retry = 0.6
    with caplog.at_level(logging.INFO, logger="fastrelay"):
        async with running_relay(config) as relay:
            session = relay.relay.feeds["stocks"]
            await wait_until(lambda: session.stats.reconnects["auth_failed"] >= 1, what="auth failure")
            failed_at = relay.relay.loop.time()
            assert not relay.ready
            await wait_until(lambda: session.stats.reconnects["auth_failed"] >= 2, what="second attempt")
            assert relay.relay.loop.time() - failed_at >= 0.6 * 0.95
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("stocks" in m and "authentication failed" in m for m in errors)
    assert not any("wrong-key-0123456789" in r.getMessage() for r in caplog.records)


async def test_max_connections_cools_down(sim: Simulator, caplog: pytest.LogCaptureFixture) -> None:
    """max_connections then close 1008: logged as another process on the key; no retry before the cooldown."""
    config = fast_relay_config(sim.base_url, "sim-key", markets=("stocks",))
    config.upstream_timers.max_connections_cooldown = 0.8
    with caplog.at_level(logging.INFO, logger="fastrelay"):
        async with running_relay(config) as relay:
            session = relay.relay.feeds["stocks"]
            await wait_until(lambda: session.live, what="live")
            sim.max_connections("stocks")
            await wait_until(lambda: session.stats.reconnects["max_connections"] >= 1, what="evicted")
            evicted_at = relay.relay.loop.time()
            attempts = auth_attempts(sim)
            sim.auth_ok("stocks")
            await wait_until(lambda: session.live, what="back after cooldown")
            assert relay.relay.loop.time() - evicted_at >= 0.8 * 0.95
            assert auth_attempts(sim) == attempts + 1  # one attempt, after the cooldown
    assert any("another process uses the same API key" in r.getMessage() for r in caplog.records)


async def test_refused_connections_back_off_without_a_tight_loop() -> None:
    """Nothing listening: attempts follow the capped backoff, not a tight loop."""
    config = fast_relay_config("ws://127.0.0.1:9", "k", markets=("stocks",))
    config.upstream_timers.backoff_base = 0.1
    config.upstream_timers.backoff_cap = 0.2
    async with running_relay(config) as relay:
        session = relay.relay.feeds["stocks"]
        start = relay.relay.loop.time()
        await wait_until(lambda: session.stats.reconnects["drop"] >= 5, what="5 failed attempts")
        elapsed = relay.relay.loop.time() - start
    # Full jitter draws in [0, ceiling]; 5 attempts at a tight loop would take ~0 s.
    assert session.core.backoff.attempt >= 5
    assert elapsed > 0.02
