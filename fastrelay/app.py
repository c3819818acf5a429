"""Running the pieces together: ``serve`` (the relay, in its role) and ``run`` (relay + simulator)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any

from fastrelay import roles
from fastrelay.announce import Summary, announce
from fastrelay.config import RelayConfig
from fastrelay.metrics import Metrics
from fastrelay.relay import Relay
from fastrelay.roles import Role
from fastrelay.server import RelayServer, ServerStatistics

log = logging.getLogger("fastrelay")


@dataclass
class RunningRelay:
    role: Role
    server: RelayServer
    metrics: Metrics

    @property
    def relay(self) -> Relay:
        return self.role.relay

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def ready(self) -> bool:
        return self.role.not_ready_reason() is None


@contextlib.asynccontextmanager
async def running_relay(
    config: RelayConfig, listen_when: Callable[[Role], Awaitable[None]] | None = None
) -> AsyncIterator[RunningRelay]:
    """The relay of ``config.role`` listening and its feeds connecting, stopped on exit.

    ``listen_when``: the role starts first and the port opens once this returns (an edge of a
    ``--workers`` tree joins the shared port only when it can serve: fastrelay/workers/worker.py).
    """
    role = roles.create(config)
    stats = ServerStatistics.for_markets(config.markets)
    metrics = Metrics(role, stats, config.metrics_interval)
    server = RelayServer(role, stats, metrics.page)
    if listen_when is None:
        try:
            await server.start()  # every port bound before the banner and before any upstream
        except BaseException:
            await role.stop()
            raise
    metrics.start()
    role.start()
    try:
        if listen_when is not None:
            await listen_when(role)
            await server.start()
        yield RunningRelay(role, server, metrics)
    finally:
        await server.stop()
        metrics.stop()
        # An edge says goodbye on NATS before its feeds stop (Role.stop).
        await role.stop()


async def wait_for_signal() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def serve_until_signal(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` until SIGTERM or SIGINT, then cancel it (its finally blocks clean up)."""
    task = asyncio.ensure_future(main)
    signalled = asyncio.ensure_future(wait_for_signal())
    await asyncio.wait((task, signalled), return_when=asyncio.FIRST_COMPLETED)
    for pending in (task, signalled):
        pending.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def serve(config: RelayConfig) -> None:
    async with running_relay(config) as running:
        announce(config, running.role, running.server)
        summary = Summary(running.role, running.server, config.summary_interval)
        summary.start()
        try:
            await wait_for_signal()
        finally:
            summary.stop()
        await shutdown(running, config.shutdown_timeout)


async def shutdown(running: RunningRelay, timeout: float) -> None:
    """Drain clients (spread over up to a third of the timeout), then close the upstreams."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    log.info("shutting down: draining %d clients", len(running.server.connections))
    # Leave the last part of the deadline for closing the upstreams.
    await running.server.drain(spread=min(5.0, timeout / 3), deadline=deadline - min(1.0, timeout / 5))
    log.info("clients drained; closing upstreams")


def on_simulator(config: RelayConfig, port: int, api_key: str) -> RelayConfig:
    """``config`` with the simulator on 127.0.0.1:``port`` standing in for every host and
    account (per-market overrides go)."""
    return replace(
        config,
        upstream=f"ws://127.0.0.1:{port}",
        rest_url=f"http://127.0.0.1:{port}",
        api_key=api_key,
        upstream_for={},
        api_key_for={},
        simulated=True,  # said at start-up, with no word of an API key
    )


@contextlib.asynccontextmanager
async def simulated(config: RelayConfig) -> AsyncIterator[RelayConfig]:
    """The built-in simulator running in this process, and ``config`` pointed at it."""
    from fastrelay.sim import Simulator, SimulatorConfig

    sim_config = SimulatorConfig()
    async with Simulator(sim_config, host="127.0.0.1", port=0) as sim:
        yield on_simulator(config, sim.port, sim_config.api_key)


async def run_with_simulator(config: RelayConfig) -> None:
    """The main job without a Massive key: the simulator embedded in-process."""
    async with simulated(config) as relay_config:
        await serve(relay_config)
