"""The Massive API key never leaves the relay's memory except in the upstream auth message.

``fastrelay serve`` runs as a child process at ``--log-level debug --log-format
json`` with a recognisable key, through every path, errors included: client
auth failures and bad input, upstream reconnects, stalls, bad frames,
max_connections, the key refused by the upstream, /metrics, /readyz, /healthz,
static files, shutdown; and ``fastrelay check-config`` with bad values while the
key is set. Everything it emits is kept (stdout, stderr, every frame every
client received, every HTTP response with its headers), and neither the key
nor any 8-character piece of it may appear there. The client token is held to
the same rule.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import websockets

from fastrelay.sim import Simulator
from tests.conftest import sim_config
from tests.test_shutdown import relay_process
from tests.utils import TIMEOUT, http_get, wait_until

KEY = "SECRETKEY-3f9a1c7e5b2d48a6"
TOKEN = "CLIENTTOKEN-9b8e7d6c5a4f3e21"
PIECE = 8


def pieces(secret: str) -> set[bytes]:
    """Every ``PIECE``-character window of the secret, as bytes."""
    data = secret.encode()
    return {data[i : i + PIECE] for i in range(len(data) - PIECE + 1)}


def assert_secret_free(what: str, data: bytes, *secrets: str) -> None:
    # JSON may escape characters: compare with the escapes undone as well.
    variants = [data, data.replace(b"\\/", b"/"), data.replace(b"\\\\", b"\\")]
    for secret in secrets:
        for piece in pieces(secret):
            for variant in variants:
                assert piece not in variant, f"{what} contains {piece!r} of a secret"


class Collector:
    """A client that keeps every frame it receives, raw, in order."""

    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self.frames: list[bytes] = []
        self.closed: websockets.ConnectionClosed | None = None
        self._task = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def connect(cls, url: str, token: str | None = TOKEN) -> Collector:
        ws = await websockets.connect(url, max_size=None, max_queue=None, open_timeout=TIMEOUT)
        collector = cls(ws)
        await collector.wait_text(b'"connected"')
        if token is not None:
            await collector.send({"action": "auth", "params": token})
            await collector.wait_text(b'"auth_success"')
        return collector

    async def _read(self) -> None:
        try:
            while True:
                frame = await self.ws.recv(decode=False)
                self.frames.append(frame)
        except websockets.ConnectionClosed as exc:
            self.closed = exc

    async def send(self, message: dict[str, str]) -> None:
        await self.ws.send(orjson.dumps(message).decode())

    def count(self, fragment: bytes) -> int:
        return sum(frame.count(fragment) for frame in self.frames)

    async def wait_text(self, fragment: bytes, count: int = 1, timeout: float = TIMEOUT) -> None:
        await wait_until(lambda: self.count(fragment) >= count, timeout, f"{fragment!r} x{count}")

    async def wait_closed(self) -> int | None:
        await asyncio.wait_for(self._task, TIMEOUT)
        assert self.closed is not None
        return self.closed.rcvd.code if self.closed.rcvd is not None else None

    def received(self) -> bytes:
        closed = b""
        if self.closed is not None and self.closed.rcvd is not None:
            closed = self.closed.rcvd.reason.encode()
        return b"\n".join(self.frames) + b"\n" + closed


async def http_raw(port: int, path: str) -> bytes:
    """The whole HTTP response, headers included."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = await asyncio.wait_for(reader.read(), TIMEOUT)
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    return data


FAST = (
    "--markets", "stocks,options", "--log-level", "debug", "--log-format", "json",
    "--backoff-base", "0.05", "--backoff-cap", "0.2", "--healthy-after", "1",
    "--auth-retry", "0.3", "--max-connections-cooldown", "0.3",
    "--upstream-ping-interval", "0.3", "--upstream-ping-timeout", "0.3", "--handshake-timeout", "2",
    "--metrics-interval", "0.1", "--max-message-size", "4096", "--client-ping-interval", "0.2",
)  # fmt: skip


@pytest.mark.slow
async def test_the_key_never_leaks_through_any_path(tmp_path: Path) -> None:
    """Every path of a running relay, errors included, with the right key (given as a flag)."""
    captured: list[tuple[str, bytes]] = []
    async with (
        Simulator(sim_config(api_key=KEY)) as sim,
        relay_process(
            tmp_path, "--upstream", sim.base_url, "--api-key", KEY, "--client-tokens", TOKEN, *FAST
        ) as relay,
    ):
        await relay.wait_ready()
        base = f"ws://127.0.0.1:{relay.port}"
        for path in ("/readyz", "/healthz", "/metrics", "/nope", "/", "/stocks"):
            captured.append((f"GET {path}", await http_raw(relay.port, path)))
            captured.append((f"GET {path} (metrics port)", await http_raw(relay.metrics_port, path)))

        # Client errors: no auth, a wrong token, bad input, a frame over the size limit.
        intruder = await Collector.connect(f"{base}/stocks", token=None)
        await intruder.send({"action": "subscribe", "params": "T.*"})
        await intruder.wait_text(b'"auth_required"')
        await intruder.send({"action": "auth", "params": "guess-" + KEY[:4]})
        assert await intruder.wait_closed() == 1008
        client = await Collector.connect(f"{base}/stocks")
        for bad in ("{nope", '{"action":"fly"}', '{"action":"subscribe","params":"AAPL"}'):
            await client.ws.send(bad)
        await client.ws.send(b"\x00binary")
        await client.send({"action": "auth", "params": TOKEN})
        await client.send({"action": "subscribe", "params": "T.*,Q.AAPL,A.AAPL"})
        await client.send({"action": "history", "params": "A.AAPL"})
        await client.wait_text(b'"ev":"T"', count=5)
        everywhere = await Collector.connect(f"{base}/api/socket")
        await everywhere.send({"action": "subscribe", "params": "T.O:SPY251219C00600000,T.AAPL,futures:T.X"})
        await everywhere.wait_text(b'"ev":"T"', count=3)
        oversized = await Collector.connect(f"{base}/options")
        await oversized.send({"action": "subscribe", "params": ",".join(["T.O:X"] * 1000)})
        assert await oversized.wait_closed() == 1009

        # Upstream faults: each ends with the key sent again on a new connection.
        restored = 0

        async def outage(fault: str, heal: str | None = None) -> None:
            nonlocal restored
            sim.fault(fault, "stocks")
            if heal is not None:
                await client.wait_text(b"feed interrupted", count=restored + 1)
                captured.append((f"GET /readyz ({fault})", await http_raw(relay.port, "/readyz")))
                sim.fault(heal, "stocks")
            restored += 1
            await client.wait_text(b"feed restored", count=restored, timeout=TIMEOUT * 2)

        for fault in ("malformed", "not_array", "unknown_ev", "huge"):
            sim.fault(fault, "stocks")
        await outage("drop")
        await outage("stall")
        sim.fault("unstall", "stocks")
        await outage("max_connections", heal="auth_ok")
        failures = sim.stats()["markets"]["stocks"]["auth_failures"]
        sim.fault("auth_fail", "stocks")
        sim.fault("drop", "stocks")
        await wait_until(
            lambda: sim.stats()["markets"]["stocks"]["auth_failures"] > failures, what="the key refused"
        )
        captured.append(("GET /readyz (auth failed)", await http_raw(relay.port, "/readyz")))
        sim.fault("auth_ok", "stocks")
        restored += 1
        await client.wait_text(b"feed restored", count=restored, timeout=TIMEOUT * 2)
        await client.wait_text(b'"ev":"T"', count=client.count(b'"ev":"T"') + 5)
        for path in ("/metrics", "/readyz"):
            captured.append((f"GET {path} (after faults)", await http_raw(relay.port, path)))

        relay.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(relay.proc.wait(), TIMEOUT * 2) == 0
        for name, collector in (("client", client), ("api", everywhere)):
            assert await collector.wait_closed() == 1012
            captured.append((f"{name} frames", collector.received()))
        captured.append(("intruder frames", intruder.received()))
        captured.append(("oversized frames", oversized.received()))
        captured.append(("relay stdout+stderr", relay.output()))

    log = relay.log_lines()
    # The test exercised what it claims: debug logging on, the refusal and the faults logged.
    assert any(line["level"] == "debug" for line in log)
    assert any("authentication failed" in line["message"] for line in log if line["level"] == "error")
    assert any("max_connections" in line["message"] for line in log)
    assert any("skipped a bad frame" in line["message"] for line in log)
    assert sim.stats()["markets"]["stocks"]["connects"] >= 5
    for what, data in captured:
        assert_secret_free(what, data, KEY, TOKEN)


async def test_a_key_the_upstream_refuses_is_not_echoed(tmp_path: Path) -> None:
    """The simulator wants another key: auth_failed again and again, logged without the key.
    The key comes from MASSIVE_API_KEY and is malformed (a quote, a newline, non-ASCII)."""
    malformed = KEY + '"\n\u00e9{'
    async with (
        Simulator(sim_config(api_key="another-key")) as sim,
        relay_process(
            tmp_path, "--upstream", sim.base_url, *FAST, env={"MASSIVE_API_KEY": malformed}
        ) as relay,
    ):
        await wait_until(
            lambda: sim.stats()["markets"]["stocks"]["auth_failures"] >= 3, what="three refused attempts"
        )
        status, body = await http_get(relay.metrics_port, "/readyz")
        assert status == 503 and b"stocks" in body
        metrics = await http_raw(relay.metrics_port, "/metrics")
        relay.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(relay.proc.wait(), TIMEOUT * 2) == 0
        output = relay.output()
    errors = [line for line in relay.log_lines() if line["level"] == "error"]
    assert len(errors) >= 3 and all("authentication failed" in line["message"] for line in errors)
    assert_secret_free("relay output", output, KEY)
    assert_secret_free("/metrics", metrics + body, KEY)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FASTRELAY_", "MASSIVE_"))}
    return subprocess.run(
        [sys.executable, "-m", "fastrelay", *args],
        env={**clean, **(env or {})},
        capture_output=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("args", "env", "fragment"),
    [
        (("check-config", "--api-key", KEY, "--port", "-1"), {}, b"--port='-1'"),
        (("check-config",), {"MASSIVE_API_KEY": KEY, "FASTRELAY_MARKETS": "stocks,bonds"}, b"bonds"),
        (("check-config", "--upstream", "http://x"), {"FASTRELAY_API_KEY": KEY}, b"--upstream"),
        (("check-config", "--api-key", KEY, "--client-tokens", TOKEN, "--flush-interval", "x"), {}, b"flush"),
        (("check-config", "--api-key", "", "--port", "1"), {"MASSIVE_API_KEY": KEY}, b"no API key"),
        (("serve", "--api-key", KEY, "--log-level", "loud"), {}, b"loud"),
        (("serve", "--backoff-base", "0"), {"MASSIVE_API_KEY": KEY}, b"--backoff-base"),
    ],
)
def test_configuration_errors_do_not_echo_the_key(
    args: tuple[str, ...], env: dict[str, str], fragment: bytes
) -> None:
    """Exit 2 with a clear message naming the bad setting, and no part of the key or token."""
    result = run_cli(*args, env=env)
    assert result.returncode == 2, result.stderr
    assert fragment in result.stderr and b"configuration error" in result.stderr
    assert_secret_free("stdout+stderr", result.stdout + result.stderr, KEY, TOKEN)


def test_check_config_summary_says_the_key_is_set_without_showing_it() -> None:
    malformed = KEY + ' "\t'
    result = run_cli(
        "check-config", "--client-tokens", f"{TOKEN},{TOKEN}-2", env={"MASSIVE_API_KEY": malformed}
    )
    assert result.returncode == 0, result.stderr
    assert b"API key set" in result.stdout and b"2 client token(s)" in result.stdout
    assert_secret_free("stdout+stderr", result.stdout + result.stderr, KEY, TOKEN)


@pytest.mark.parametrize("args", [("serve", "--api-keyy", KEY), ("sim", "--api-key", KEY)])
def test_a_misspelt_flag_does_not_echo_the_key(args: tuple[str, ...]) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    assert_secret_free("stdout+stderr", result.stdout + result.stderr, KEY)
