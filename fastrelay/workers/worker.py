"""One process of a ``--workers`` tree: ``python -m fastrelay.workers.worker NAME STATUS_FD``.

The supervisor writes the worker's whole ``RelayConfig`` (msgspec JSON) to its stdin, so
no setting, key included, travels in argv or the environment, and the worker runs that
role exactly as ``fastrelay ingest`` or ``fastrelay edge`` would (``app.running_relay``).

An edge joins the shared client port only once it can serve (NATS connected, the leader
ingest heard): with ``SO_REUSEPORT`` the kernel hands new connections to every listening
edge, and one still starting would refuse them (503). Until then, and after, every line it
logs names it (``[edge-1]``), since the whole tree writes to the supervisor's stderr.

When serving it writes one JSON line to ``STATUS_FD``, the supervisor's pipe:
``{"probe": Q}``, the port where its /metrics and /readyz answer.
SIGTERM drains its clients as ``serve`` does (close code 1012), then it exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable

import msgspec
import orjson

from fastrelay import logs, loops
from fastrelay.app import running_relay, shutdown
from fastrelay.config import RelayConfig
from fastrelay.roles import Role

log = logging.getLogger("fastrelay.workers")

# How often a starting edge looks whether it can serve yet (start-up only).
SERVING_CHECK = 0.05


def _until_serving(stop: asyncio.Event) -> Callable[[Role], Awaitable[None]]:
    async def wait(role: Role) -> None:
        while role.refusal() is not None and not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), SERVING_CHECK)

    return wait


async def serve(config: RelayConfig, name: str, status: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    listen_when = _until_serving(stop) if config.role == "edge" else None
    async with running_relay(config, listen_when) as running:
        if not stop.is_set():
            probe = running.server.metrics_port or running.port
            os.write(status, orjson.dumps({"probe": probe}) + b"\n")
            log.info("%s serving on port %d: %s", name, running.port, running.role.describe())
            await stop.wait()
        await shutdown(running, config.shutdown_timeout)


def main(argv: list[str]) -> int:
    name, status = argv[0], int(argv[1])
    config = msgspec.json.decode(sys.stdin.buffer.read(), type=RelayConfig)
    logs.configure(config.log_level, config.log_format, worker=name)
    loops.run(serve(config, name, status))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
