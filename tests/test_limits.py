"""Client limits, each with a small value, over real sockets on 127.0.0.1; and the deploy files.

Every limit refuses the client it should, with the documented code, keeps the
others, and is counted. The defaults must let 10,000 connections come from one
address (load tests, nginx in front): that is checked on the configuration and
the ``AddressBook`` logic rather than with 10,000 sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from base64 import b64encode
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from fastrelay.app import RunningRelay, running_relay
from fastrelay.config import RELAY_OPTIONS, RelayConfig, env_name
from fastrelay.server import AddressBook
from fastrelay.sim import Simulator
from tests.utils import TIMEOUT, Client, fast_relay_config, wait_until

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"


def url(relay: RunningRelay, path: str = "stocks") -> str:
    return f"ws://127.0.0.1:{relay.port}/{path}"


@contextlib.asynccontextmanager
async def relay_with(sim: Simulator, **overrides: Any) -> AsyncIterator[RunningRelay]:
    async with running_relay(fast_relay_config(sim.base_url, "sim-key", **overrides)) as relay:
        await wait_until(lambda: relay.ready, what="relay ready")
        yield relay


async def refused_status(target: str, **kwargs: Any) -> int:
    """The HTTP status of a WebSocket upgrade the relay refuses."""
    with pytest.raises(websockets.InvalidStatus) as info:
        await websockets.connect(target, open_timeout=TIMEOUT, **kwargs)
    return int(info.value.response.status_code)


async def close_code(ws: websockets.ClientConnection) -> int:
    """Read until the relay closes; the code it sent."""
    with pytest.raises(websockets.ConnectionClosed) as info:
        while True:
            await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert info.value.rcvd is not None, "closed without a close frame"
    return info.value.rcvd.code


async def upgraded_raw(port: int, path: str = "/stocks") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A hand-made WebSocket client: upgraded, then nothing unless the test says so."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """(opcode, payload) of the next server frame (unmasked)."""
    first, second = await asyncio.wait_for(reader.readexactly(2), TIMEOUT)
    length = second & 0x7F
    if length == 126:
        length = struct.unpack("!H", await reader.readexactly(2))[0]
    elif length == 127:
        length = struct.unpack("!Q", await reader.readexactly(8))[0]
    return first & 0x0F, await asyncio.wait_for(reader.readexactly(length), TIMEOUT)


async def close_raw(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


# --- connections --------------------------------------------------------------------------------


async def test_total_connections_over_the_limit_get_503_before_the_upgrade(sim: Simulator) -> None:
    """--max-connections 3: the 4th is refused with 503 (no upgrade); a slot freed is usable again."""
    async with relay_with(sim, max_connections=3) as relay:
        clients = [await Client.connect(url(relay)) for _ in range(3)]
        assert await refused_status(url(relay)) == 503
        assert await refused_status(url(relay, "api/socket")) == 503
        assert relay.server.stats.closed["limit"] == 2
        assert relay.relay.hub.members == 3
        await clients[0].close()
        await wait_until(lambda: len(relay.server.connections) == 2, what="slot freed")
        clients[0] = await Client.connect(url(relay))
        await clients[1].subscribe("T.AAPL")  # the others were never disturbed
        for client in clients:
            await client.close()


async def test_connections_per_address_over_the_limit_close_with_1013(sim: Simulator) -> None:
    """--max-connections-per-address 2: the 3rd from 127.0.0.1 is upgraded, then closed with 1013."""
    async with relay_with(sim, max_connections_per_address=2) as relay:
        first = await Client.connect(url(relay))
        second = await Client.connect(url(relay))
        extra = await websockets.connect(url(relay), open_timeout=TIMEOUT)
        assert await close_code(extra) == 1013
        assert relay.server.stats.closed["limit"] == 1
        assert relay.relay.hub.members == 2
        await first.close()
        await wait_until(lambda: relay.relay.hub.members == 1, what="first gone")
        again = await Client.connect(url(relay))  # the address's count was released
        await again.subscribe("T.AAPL")
        await second.subscribe("T.MSFT")
        for client in (second, again):
            await client.close()


@pytest.mark.parametrize("trusted", [False, True])
async def test_x_forwarded_for_counts_only_from_a_trusted_proxy(sim: Simulator, trusted: bool) -> None:
    """One connection per address. With --trusted-proxies 127.0.0.1 each X-Forwarded-For address
    counts apart (a proxy's clients); without it the header is ignored and 127.0.0.1 counts."""
    proxies = ["127.0.0.1"] if trusted else []
    async with relay_with(sim, max_connections_per_address=1, trusted_proxies=proxies) as relay:
        first = await Client.connect(url(relay), additional_headers={"X-Forwarded-For": "203.0.113.7"})
        other = await websockets.connect(
            url(relay), open_timeout=TIMEOUT, additional_headers={"X-Forwarded-For": "203.0.113.8"}
        )
        same = await websockets.connect(
            url(relay),
            open_timeout=TIMEOUT,
            # A client-supplied hop before the proxy's own entry: the right-most untrusted hop counts.
            additional_headers={"X-Forwarded-For": "198.51.100.1, 203.0.113.7"},
        )
        assert await close_code(same) == 1013  # 203.0.113.7 (trusted) or 127.0.0.1 (not) is full
        if trusted:
            message = await asyncio.wait_for(other.recv(), TIMEOUT)
            assert '"connected"' in str(message)
            assert relay.relay.hub.members == 2
            await other.close()
        else:
            assert await close_code(other) == 1013
            assert relay.relay.hub.members == 1
        await first.close()


def test_address_book_believes_forwarded_only_from_trusted_peers() -> None:
    """The address rules alone: right-most untrusted hop from a trusted peer, else the peer."""
    book = AddressBook(limit=1, trusted_proxies=["127.0.0.1", "10.0.0.2"])
    peer = ("127.0.0.1", 50000)
    assert book.client_address(peer, "203.0.113.7") == "203.0.113.7"
    assert book.client_address(peer, "1.1.1.1, 203.0.113.7, 10.0.0.2") == "203.0.113.7"
    assert book.client_address(peer, "10.0.0.2") == "127.0.0.1"  # only proxies: the peer
    assert book.client_address(peer, None) == "127.0.0.1"
    assert book.client_address(("192.0.2.5", 1), "203.0.113.7") == "192.0.2.5"  # untrusted peer
    assert book.client_address(None, "203.0.113.7") == "unknown"
    assert book.admit("a") and not book.admit("a") and book.admit("b")
    book.release("a")
    assert book.admit("a")


def test_defaults_let_10000_connections_come_from_one_address() -> None:
    """Load tests and a local nginx connect from one address: the defaults must allow 10,000."""
    defaults = RelayConfig()
    assert defaults.max_connections >= 10_000
    assert defaults.max_connections_per_address >= 10_000
    assert defaults.trusted_proxies == [] and defaults.allowed_origins == []
    book = AddressBook(defaults.max_connections_per_address, defaults.trusted_proxies)
    assert all(book.admit("127.0.0.1") for _ in range(10_000))
    # ... and the limit is still a limit.
    admitted = 10_000
    while book.admit("127.0.0.1"):
        admitted += 1
    assert admitted == defaults.max_connections_per_address
    for _ in range(admitted):
        book.release("127.0.0.1")
    assert book._counts == {}  # nothing left behind by 20,000 releases


# --- messages -----------------------------------------------------------------------------------


async def test_message_rate_over_the_bucket_gets_an_error_and_recovers(sim: Simulator) -> None:
    """2 messages/s, burst 3: auth + 2 go through, the next 3 get a rate-limit error, the connection
    stays, another client is unaffected, and once tokens refill messages are served again."""
    async with relay_with(sim, max_messages_per_second=2.0, message_burst=3) as relay:
        client = await Client.connect(url(relay))  # the auth took one token
        bystander = await Client.connect(url(relay))
        for ticker in ("AAPL", "MSFT", "TSLA", "BRK.B", "NVDA"):
            await client.send({"action": "subscribe", "params": f"T.{ticker}"})
        await client.wait_for(lambda: len(client.statuses) >= 2 + 5, what="5 replies")
        replies = client.statuses[2:]
        assert [r["status"] for r in replies].count("success") == 2
        limited = [r for r in replies if r["status"] == "error"]
        assert len(limited) == 3 and all(r["message"].startswith("rate limit") for r in limited)
        assert relay.relay.hub.subscriptions == 2
        await bystander.subscribe("T.AAPL")  # another client has its own bucket
        # A token comes back within 1 / rate seconds: ask again until served.
        deadline = time.monotonic() + TIMEOUT
        while True:
            await client.send({"action": "subscribe", "params": "T.NVDA"})
            seen = len(client.statuses)
            await client.wait_for(lambda s=seen: len(client.statuses) > s, what="a reply")
            reply = client.statuses[-1]
            if reply["status"] == "success":
                break
            assert "rate limit" in reply["message"] and time.monotonic() < deadline
            await asyncio.sleep(0.1)
        assert client.ws.state is websockets.protocol.State.OPEN
        await client.close()
        await bystander.close()


async def test_binary_frames_count_against_the_message_rate(sim: Simulator) -> None:
    """2 messages/s, burst 3: ten binary frames in a row must not get ten answers."""
    async with relay_with(sim, max_messages_per_second=2.0, message_burst=3) as relay:
        client = await Client.connect(url(relay))
        for _ in range(10):
            await client.ws.send(b"\x00")
        await client.wait_for(lambda: len(client.statuses) >= 2 + 10, what="10 replies")
        limited = [s for s in client.statuses[2:] if s["message"].startswith("rate limit")]
        await client.close()
    assert len(limited) >= 7


async def test_frame_over_max_message_size_closes_with_1009(sim: Simulator) -> None:
    """--max-message-size 1024: a 1,000-byte message is answered, a 2,000-byte one closes with 1009."""
    async with relay_with(sim, max_message_size=1024) as relay:
        bystander = await Client.connect(url(relay))
        await bystander.subscribe("T.*")
        client = await Client.connect(url(relay))
        fits = ",".join(f"T.S{i:04d}" for i in range(120))  # ~ 970 bytes with the envelope
        await client.send({"action": "subscribe", "params": fits})
        await client.wait_for(lambda: len(client.statuses) >= 2 + 120, what="120 acks")
        too_big = ",".join(f"T.S{i:04d}" for i in range(250))
        await client.send({"action": "subscribe", "params": too_big})
        with pytest.raises(websockets.ConnectionClosed) as info:
            await client.wait_for(lambda: False, timeout=TIMEOUT)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009
        await wait_until(lambda: relay.relay.hub.members == 1, what="offender gone")
        before = len(bystander.events)
        await bystander.wait_events(before + 10)
        await bystander.close()


# --- time limits --------------------------------------------------------------------------------


@pytest.mark.parametrize("sends", [b"", b"GET /stocks HTTP/1.1\r\nHost: x\r\n"])
async def test_handshake_timeout_closes_a_connection_that_never_upgrades(
    sim: Simulator, sends: bytes
) -> None:
    """--client-handshake-timeout 0.3: a TCP connection that sends nothing, or half a request
    (slowloris), is closed by the relay after the timeout; a real client is still served."""
    async with relay_with(sim, client_handshake_timeout=0.3) as relay:
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        opened = time.monotonic()
        writer.write(sends)
        rest = await asyncio.wait_for(reader.read(), TIMEOUT)  # b"" at EOF: the relay closed it
        elapsed = time.monotonic() - opened
        assert not rest.startswith(b"HTTP/1.1 101")
        assert 0.3 * 0.9 <= elapsed < 0.3 + TIMEOUT / 2
        await close_raw(writer)
        client = await Client.connect(url(relay))
        await client.close()


async def test_client_that_never_authenticates_is_closed_after_the_auth_timeout(sim: Simulator) -> None:
    """auth_timeout status, then 1008; a client that authenticated in time is untouched."""
    async with relay_with(sim, client_tokens=["token"], client_auth_timeout=0.3) as relay:
        punctual = await Client.connect(url(relay), auth="token")
        silent = await Client.connect(url(relay), auth=None)
        status = await silent.wait_status("auth_timeout")
        assert status["message"] == "no auth within 0.3 s of connecting"
        assert await close_code(silent.ws) == 1008
        await punctual.subscribe("T.AAPL")  # long past its own deadline: still served
        await punctual.wait_events(1)
        assert relay.server.auth_deadline.expired == 1
        await wait_until(lambda: relay.server.stats.closed["auth_timeout"] == 1, what="the close counted")
        await punctual.close()


async def test_idle_client_is_pinged_and_closed_1001_when_silent(sim: Simulator) -> None:
    """Ping interval 0.1 s, timeout 0.2 s: a client that never answers gets a ping, then a close
    with 1001 (counted as idle); a client that answers pings stays."""
    async with relay_with(sim, client_ping_interval=0.1, client_ping_timeout=0.2) as relay:
        alive = await Client.connect(url(relay))  # websockets answers pings itself
        reader, writer = await upgraded_raw(relay.port)
        opcodes = []
        while True:
            opcode, payload = await read_frame(reader)
            opcodes.append(opcode)
            if opcode == 0x8:
                break
        assert 0x9 in opcodes  # pinged first
        assert struct.unpack("!H", payload[:2])[0] == 1001
        assert relay.server.pings.reaped == 1
        await wait_until(lambda: relay.server.stats.closed["idle"] == 1, what="idle close counted")
        pings = relay.server.pings.pings_sent
        await wait_until(lambda: relay.server.pings.pings_sent >= pings + 2, what="more pings")
        await alive.subscribe("T.AAPL")
        assert relay.relay.hub.members == 1
        await alive.close()
        await close_raw(writer)


# --- origins ------------------------------------------------------------------------------------


async def test_origin_allow_list(sim: Simulator) -> None:
    """A browser Origin not listed: 403 before the upgrade. A listed one (trailing slash or not):
    accepted. No Origin (a service, e.g. Massive's clients): accepted."""
    allowed = ["https://dashboard.example.com", "http://127.0.0.1:8080/"]
    async with relay_with(sim, allowed_origins=allowed) as relay:
        assert await refused_status(url(relay), origin="https://evil.example.com") == 403
        assert await refused_status(url(relay, "api/socket"), origin="null") == 403
        assert relay.server.stats.closed["policy"] == 2
        clients = [
            await Client.connect(url(relay), origin="https://dashboard.example.com"),
            await Client.connect(url(relay), origin="http://127.0.0.1:8080"),
            await Client.connect(url(relay, "api/socket"), origin="https://dashboard.example.com/"),
            await Client.connect(url(relay)),  # no Origin header at all
        ]
        for client in clients:
            await client.subscribe("T.AAPL")
            await client.close()


# --- deploy/ ------------------------------------------------------------------------------------


def unit_settings(text: str) -> dict[str, list[str]]:
    """``Key=value`` lines of a unit file (comments and sections skipped), every value kept."""
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", key), f"not VAR=value: {line!r}"
            values[key] = value
    return values


def test_systemd_unit_has_the_required_settings() -> None:
    """The unit restarts on failure, drains on SIGTERM within TimeoutStopSec, runs hardened."""
    unit = unit_settings((DEPLOY / "fastrelay.service").read_text())
    single = {key: values[-1] for key, values in unit.items()}
    expected = {
        "Restart": "on-failure",
        "KillSignal": "SIGTERM",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "CapabilityBoundingSet": "",
        "MemoryDenyWriteExecute": "yes",
        "DynamicUser": "yes",
        "EnvironmentFile": "/etc/fastrelay/fastrelay.env",
    }
    for key, value in expected.items():
        assert single.get(key) == value, key
    assert "@system-service" in unit["SystemCallFilter"]
    assert set(single["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert int(single["LimitNOFILE"]) >= 65536
    assert single["ExecStartPre"].endswith("fastrelay check-config")
    assert single["ExecStart"].endswith("fastrelay serve")
    # systemd must not SIGKILL a relay that is still draining within its own deadline.
    example = env_file(DEPLOY / "fastrelay.env.example")
    shutdown = float(example.get("FASTRELAY_SHUTDOWN_TIMEOUT", RelayConfig().shutdown_timeout))
    assert float(single["TimeoutStopSec"]) >= shutdown + 5


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    """`systemd-analyze verify` accepts the unit without a warning (paths pointed at this venv)."""
    fastrelay = Path(sys.executable).with_name("fastrelay")
    text = (DEPLOY / "fastrelay.service").read_text()
    assert "/opt/fastrelay/.venv/bin/fastrelay" in text
    unit = tmp_path / "fastrelay.service"
    unit.write_text(text.replace("/opt/fastrelay/.venv/bin/fastrelay", str(fastrelay)))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=30, cwd=tmp_path
    )
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr
    # The check can fail: a misspelt key is reported.
    unit.write_text(unit.read_text().replace("ProtectHome=yes", "ProtectHomes=yes"))
    broken = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=30, cwd=tmp_path
    )
    assert "ProtectHomes" in broken.stderr


def check_config(values: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`fastrelay check-config` with these variables and no other FASTRELAY_/MASSIVE_ ones."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FASTRELAY_", "MASSIVE_"))}
    return subprocess.run(
        [sys.executable, "-m", "fastrelay", "check-config"],
        env={**env, **values},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_env_example_names_only_real_flags_and_passes_check_config() -> None:
    """Every FASTRELAY_* variable of the example is a flag's twin; the file passes check-config."""
    values = env_file(DEPLOY / "fastrelay.env.example")
    twins = {env_name(option.flag) for option in RELAY_OPTIONS}
    names = {key for key in values if key.startswith("FASTRELAY_")}
    assert names <= twins, sorted(names - twins)
    assert set(values) - names == {"MASSIVE_API_KEY"}
    assert {"FASTRELAY_CLIENT_TOKENS", "FASTRELAY_LOG_FORMAT"} <= names
    assert values["FASTRELAY_TRUSTED_PROXIES"] == "127.0.0.1"
    assert values["FASTRELAY_LOG_FORMAT"] == "json"
    assert "replace" in values["MASSIVE_API_KEY"]  # a placeholder, never a real key
    result = check_config(values)
    assert result.returncode == 0, result.stderr
    assert "configuration OK" in result.stdout and "2 client token(s)" in result.stdout


@pytest.mark.parametrize("example", ["ingest.env.example", "edge.env.example"])
def test_scaleout_env_examples_name_real_flags_and_pass_check_config(example: str) -> None:
    """The ingest's and an edge's examples: real flags, their role, check-config passes; the
    key is on the ingest only."""
    values = env_file(DEPLOY / example)
    twins = {env_name(option.flag) for option in RELAY_OPTIONS}
    names = {key for key in values if key.startswith("FASTRELAY_")}
    assert names <= twins, sorted(names - twins)
    role = example.split(".")[0]
    assert values["FASTRELAY_ROLE"] == role
    assert (set(values) - names == {"MASSIVE_API_KEY"}) == (role == "ingest")
    result = check_config(values)
    assert result.returncode == 0, result.stderr
    assert f"configuration OK: {role} {values['FASTRELAY_INSTANCE_NAME']}" in result.stdout


_PR_GET_MDWE = 66


def _mdwe_supported() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(_PR_GET_MDWE, 0, 0, 0, 0) >= 0)


# Run in the child before exec: prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN), what
# MemoryDenyWriteExecute=yes asks of the kernel; it is inherited and survives exec.
_MDWE_LAUNCHER = """
import ctypes, mmap, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:
    sys.exit(f"PR_SET_MDWE failed: errno {ctypes.get_errno()}")
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    sys.exit("PR_SET_MDWE set but a W+X mapping was allowed")
except PermissionError:
    pass
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""


@pytest.mark.skipif(not _mdwe_supported(), reason="no prctl(PR_SET_MDWE) (Linux >= 6.3)")
async def test_relay_runs_with_memory_deny_write_execute() -> None:
    """MemoryDenyWriteExecute=yes does not break CPython, uvloop, picows, msgspec or orjson: the
    relay (with its embedded simulator) serves data and /metrics while W+X mappings are refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "MASSIVE_API_KEY": "", "FASTRELAY_PORT": str(port)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _MDWE_LAUNCHER, "-m", "fastrelay", "run",
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        client = None
        deadline = time.monotonic() + TIMEOUT * 2
        while client is None:
            assert proc.returncode is None, await proc.stderr.read() if proc.stderr else b""
            try:
                client = await Client.connect(f"ws://127.0.0.1:{port}/stocks")
            except OSError:
                assert time.monotonic() < deadline, "relay never listened"
                await asyncio.sleep(0.05)
        await client.subscribe("T.*")
        await client.wait_events(5, timeout=TIMEOUT * 2)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"fastrelay_upstream_connected" in await asyncio.wait_for(reader.read(), TIMEOUT)
        await close_raw(writer)
        await client.close()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
