"""Massive's official clients, unchanged, pointed at the relay."""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import signal
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trustme
from massive import WebSocketClient
from massive.websocket.models import EquityAgg, EquityQuote, EquityTrade

from fastrelay.app import RunningRelay, running_relay
from fastrelay.sim import Simulator
from tests.conftest import sim_config
from tests.utils import TIMEOUT, Client, fast_relay_config, wait_until
from tests.webtools import RelayProcess, free_port, stopping

JS_DIR = Path(__file__).parent / "js"


@pytest.mark.parametrize(
    ("market", "channels"),
    [
        ("stocks", ["T.AAPL", "Q.AAPL", "A.AAPL"]),
        ("options", ["T.O:SPY251219C00600000", "Q.O:SPY251219C00600000", "A.O:SPY251219C00600000"]),
    ],
)
async def test_official_python_client_gets_parsed_models(
    relay: RunningRelay, market: str, channels: list[str]
) -> None:
    """massive.WebSocketClient against /stocks and /options yields EquityTrade, EquityQuote and EquityAgg."""
    await wait_until(lambda: relay.ready, what="relay ready")
    client = WebSocketClient(
        api_key="any", feed=f"127.0.0.1:{relay.port}", market=market, secure=False, subscriptions=channels
    )
    seen: dict[type, Any] = {}
    done = asyncio.Event()

    async def handle(messages: list[Any]) -> None:
        for message in messages:
            seen.setdefault(type(message), message)
        if {EquityTrade, EquityQuote, EquityAgg} <= seen.keys():
            done.set()

    task = asyncio.create_task(client.connect(handle))
    try:
        await asyncio.wait_for(done.wait(), TIMEOUT * 2)
    finally:
        await client.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    trade = seen[EquityTrade]
    assert trade.symbol == channels[0].split(".", 1)[1] and trade.price > 0
    assert seen[EquityAgg].close is not None


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")
async def test_official_javascript_client_receives_events(relay: RunningRelay) -> None:
    """@massive.com/client-js (auth sent as soon as the socket opens) receives trades."""
    if not (JS_DIR / "node_modules" / "@massive.com" / "client-js").is_dir():
        pytest.fail("run `make test` (it installs tests/js/node_modules from the npm registry)")
    await wait_until(lambda: relay.ready, what="relay ready")
    process = await asyncio.create_subprocess_exec(
        "node",
        str(JS_DIR / "massive_client.mjs"),
        f"ws://127.0.0.1:{relay.port}",
        "key",
        "T.*",
        "10",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), TIMEOUT * 4)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, stderr.decode()
    result = json.loads(stdout.decode().strip().splitlines()[-1])
    assert result["statuses"][:2] == ["connected", "auth_success"]
    assert len(result["events"]) >= 10 and {e["ev"] for e in result["events"]} == {"T"}


async def test_relay_over_tls_to_the_upstream(tmp_path: Path) -> None:
    """The relay connects over wss:// to a TLS simulator, trusting a private CA given by --upstream-ca."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    async with Simulator(sim_config(), ssl_context=server_context) as sim:
        assert sim.base_url.startswith("wss://")
        config = fast_relay_config(sim.base_url, "sim-key", upstream_ca=str(ca_file))
        async with running_relay(config) as relay:
            await wait_until(lambda: relay.ready, what="relay ready over TLS")
            client = await Client.connect(f"ws://127.0.0.1:{relay.port}/stocks")
            await client.subscribe("T.*")
            await client.wait_events(5)
            await client.close()


async def test_untrusted_upstream_certificate_is_refused(tmp_path: Path) -> None:
    """Without the private CA the relay does not trust the simulator's certificate and stays unready."""
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    async with (
        Simulator(sim_config(), ssl_context=server_context) as sim,
        running_relay(fast_relay_config(sim.base_url, "sim-key")) as relay,
    ):
        session = relay.relay.feeds["stocks"]
        await wait_until(lambda: session.stats.reconnects["drop"] >= 1, what="refused TLS attempt")
        assert not relay.ready


def test_python_m_fastrelay_help() -> None:
    """`python -m fastrelay --help` lists the commands."""
    out = subprocess.run(
        [sys.executable, "-m", "fastrelay", "--help"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    assert all(command in out for command in ("serve", "run", "sim"))


async def test_official_python_client_survives_a_relay_restart(sim: Simulator, tmp_path: Path) -> None:
    """A rolling restart must not end clients: the official Python client, unchanged, gets a close
    it retries on (1012), reconnects to the relay restarted on the same port, and receives again."""
    port = free_port()
    relay = RelayProcess(port, sim.base_url, tmp_path / "relay.log", "--shutdown-timeout", "2")
    client = WebSocketClient(
        api_key="any", feed=f"127.0.0.1:{port}", market="stocks", secure=False, subscriptions=["T.*"]
    )
    trades: list[Any] = []

    async def handle(messages: list[Any]) -> None:
        trades.extend(m for m in messages if isinstance(m, EquityTrade))

    with stopping(relay):
        await relay.start()
        # Its documented pass-through to websockets.connect: retry the refused port every 0.2 s.
        task = asyncio.create_task(client.connect(handle, reconnect_delays=lambda: itertools.repeat(0.2)))
        try:
            await wait_until(lambda: len(trades) >= 5, what="trades before the restart")
            assert relay.proc is not None
            relay.proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(relay.proc.wait, TIMEOUT) == 0
            seen = len(trades)
            await relay.start()
            await wait_until(lambda: len(trades) >= seen + 5, timeout=TIMEOUT * 2, what="trades after it")
            assert not task.done(), task.exception() if task.done() else None
        finally:
            await client.close()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
