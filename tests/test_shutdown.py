"""Graceful shutdown of a loaded relay process (SIGTERM, as systemd and Kubernetes send it).

``fastrelay serve`` runs as a child process against the simulator of this
process, with 50 subscribed clients plus one that never reads. On SIGTERM it
must: answer /readyz with 503 while it drains, refuse new connections, close
every client with 1012 (service restart: every client retries) spread over a
window (not all at the same instant, so they do not reconnect to the next
instance at once), then close its upstream
connection, and exit 0 within ``--shutdown-timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import websockets

from bench.attacks import text
from bench.procs import free_port
from fastrelay.sim import Simulator
from tests.utils import TIMEOUT, Client, http_get, wait_until


@dataclass
class RelayProcess:
    """A ``fastrelay`` child process; its stdout and stderr go to files."""

    proc: asyncio.subprocess.Process
    port: int
    metrics_port: int
    stdout: Path
    stderr: Path

    def output(self) -> bytes:
        return self.stdout.read_bytes() + self.stderr.read_bytes()

    def log_lines(self) -> list[dict[str, Any]]:
        """The JSON log lines (``--log-format json``) written so far."""
        return [orjson.loads(line) for line in self.stderr.read_bytes().splitlines() if line.startswith(b"{")]

    async def wait_ready(self) -> None:
        deadline = time.monotonic() + TIMEOUT * 2
        while (await http_get(self.metrics_port, "/readyz"))[0] != 200:
            assert self.proc.returncode is None, self.output().decode(errors="replace")
            assert time.monotonic() < deadline, f"never ready:\n{self.output().decode(errors='replace')}"
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def relay_process(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None, command: str = "serve"
) -> AsyncIterator[RelayProcess]:
    """``python -m fastrelay COMMAND --port P --metrics-port M ARGS``; always stopped at the end."""
    port, metrics_port = free_port(), free_port()
    stdout, stderr = tmp_path / f"relay-{port}.out", tmp_path / f"relay-{port}.err"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FASTRELAY_", "MASSIVE_"))}
    with stdout.open("wb") as out, stderr.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fastrelay", command,
            "--host", "127.0.0.1", "--port", str(port), "--metrics-port", str(metrics_port), *args,
            env={**clean, **(env or {})}, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=err,
        )  # fmt: skip
    try:
        yield RelayProcess(proc, port, metrics_port, stdout, stderr)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), TIMEOUT * 2)
            except TimeoutError:
                proc.kill()
                await proc.wait()


@dataclass
class Closed:
    at: float  # time.monotonic() when the client saw the close
    code: int | None


async def read_until_closed(client: Client) -> Closed:
    try:
        while True:
            await client.ws.recv()
    except websockets.ConnectionClosed as exc:
        return Closed(time.monotonic(), exc.rcvd.code if exc.rcvd is not None else None)


async def stuck_client(port: int) -> socket.socket:
    """Upgraded and subscribed, then never reads again (nor answers the close)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))

    sock.send(
        b"GET /stocks HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: c3R1Y2tjbGllbnQwMDAwMA==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        + text(b'{"action":"auth","params":"x"}')
        + text(b'{"action":"subscribe","params":"T.AAPL"}')
    )
    return sock


SHUTDOWN_TIMEOUT = 3.0
CLIENTS = 50


@pytest.mark.slow
async def test_sigterm_drains_a_loaded_relay_and_exits_0(sim: Simulator, tmp_path: Path) -> None:
    args = (
        "--upstream", sim.base_url, "--api-key", "sim-key", "--markets", "stocks",
        "--shutdown-timeout", str(SHUTDOWN_TIMEOUT), "--metrics-interval", "0.1", "--log-format", "json",
    )  # fmt: skip
    async with relay_process(tmp_path, *args) as relay:
        await relay.wait_ready()
        url = f"ws://127.0.0.1:{relay.port}/stocks"
        clients = await asyncio.gather(*(Client.connect(url) for _ in range(CLIENTS)))
        for client in clients:
            await client.subscribe("T.*")
        for client in clients:
            await client.wait_events(5)
        stuck = await stuck_client(relay.port)
        await wait_until(lambda: sim.stats()["markets"]["stocks"]["connections"] == 1, what="one upstream")
        readers = [asyncio.create_task(read_until_closed(c)) for c in clients]

        upstream_closed: list[float] = []

        async def watch_upstream() -> None:
            await wait_until(
                lambda: sim.stats()["markets"]["stocks"]["connections"] == 0,
                timeout=TIMEOUT * 2,
                what="upstream closed",
            )
            upstream_closed.append(time.monotonic())

        watcher = asyncio.create_task(watch_upstream())
        signalled = time.monotonic()
        relay.proc.send_signal(signal.SIGTERM)

        # Unready at once, while the clients are still being closed.
        deadline = time.monotonic() + TIMEOUT
        status, body = await http_get(relay.metrics_port, "/readyz")
        while status != 503:
            assert time.monotonic() < deadline, f"/readyz still {status}"
            status, body = await http_get(relay.metrics_port, "/readyz")
        assert b"shutting down" in body
        # No new clients: the listening socket is closed (or, racing it, a 503 before the upgrade).
        with pytest.raises((OSError, websockets.InvalidStatus, websockets.InvalidHandshake)):
            await websockets.connect(url, open_timeout=TIMEOUT)
        closes = await asyncio.wait_for(asyncio.gather(*readers), SHUTDOWN_TIMEOUT + TIMEOUT)
        assert sum(1 for c in closes if c.at - signalled < 0.1) < CLIENTS // 2  # not all at once

        code = await asyncio.wait_for(relay.proc.wait(), SHUTDOWN_TIMEOUT + TIMEOUT)
        exited = time.monotonic()
        await asyncio.wait_for(watcher, TIMEOUT * 2)
        stuck.close()

    assert code == 0
    assert exited - signalled <= SHUTDOWN_TIMEOUT + 1.0  # + interpreter teardown
    assert {c.code for c in closes} == {1012}
    times = sorted(c.at - signalled for c in closes)
    spread = min(5.0, SHUTDOWN_TIMEOUT / 3)
    # Spread over the window: from the start to near its end, in many small batches.
    assert times[0] < spread / 2 and times[-1] - times[0] >= spread * 0.7, times
    densest = max(sum(1 for t in times if start <= t < start + 0.025) for start in times)
    assert densest <= CLIENTS // 5, times
    # The upstream goes last: after every client.
    assert upstream_closed and upstream_closed[0] >= max(c.at for c in closes) - 0.05
    messages = [line["message"] for line in relay.log_lines()]
    assert f"shutting down: draining {CLIENTS + 1} clients" in messages
    assert "clients drained; closing upstreams" in messages
    assert not [line for line in relay.log_lines() if line["level"] in ("error", "critical")]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_idle_relay_exits_0_at_once_on_sigint_and_sigterm(
    sim: Simulator, tmp_path: Path, sig: signal.Signals
) -> None:
    """No clients: nothing to spread, so the exit is prompt, with code 0."""
    async with relay_process(
        tmp_path, "--upstream", sim.base_url, "--api-key", "sim-key", "--markets", "stocks"
    ) as relay:
        await relay.wait_ready()
        signalled = time.monotonic()
        relay.proc.send_signal(sig)
        assert await asyncio.wait_for(relay.proc.wait(), TIMEOUT) == 0
        assert time.monotonic() - signalled < 2.0
        await wait_until(lambda: sim.stats()["markets"]["stocks"]["connections"] == 0, what="upstream closed")
