"""Client limits, each with a small value, over real sockets on 127.0.0.1.

Every limit refuses the client it should, with the documented code, keeps the
others, and is counted. The defaults must let 10,000 connections come from one
address (load tests, nginx in front): that is checked on the configuration and
the ``AddressBook`` logic (tests/test_addresses.py) rather than with 10,000 sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import time
from base64 import b64encode
from collections.abc import AsyncIterator
from typing import Any

import pytest
import websockets

from fastrelay.app import RunningRelay, running_relay
from fastrelay.sim import Simulator
from tests.utils import TIMEOUT, Client, close_raw, fast_relay_config, wait_until


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


# --- messages -----------------------------------------------------------------------------------


async def test_message_rate_over_the_bucket_gets_an_error_and_recovers(sim: Simulator) -> None:
    """2 messages/s, burst 3: auth + 2 go through, the next 3 get one rate-limit error between them
    (not one each), the connection stays, another client is unaffected, and once a token
    refills messages are served again."""
    async with relay_with(sim, max_messages_per_second=2.0, message_burst=3) as relay:
        client = await Client.connect(url(relay))  # the auth took one token
        bystander = await Client.connect(url(relay))
        for ticker in ("AAPL", "MSFT", "TSLA", "BRK.B", "NVDA"):
            await client.send({"action": "subscribe", "params": f"T.{ticker}"})
        await client.settle()
        replies = client.statuses[2:]
        assert [r["status"] for r in replies].count("success") == 2
        limited = [r for r in replies if r["status"] == "error"]
        assert len(limited) == 1 and limited[0]["message"] == "rate limit: at most 2 messages/s"
        assert relay.relay.hub.subscriptions == 2
        await bystander.subscribe("T.AAPL")  # another client has its own bucket
        await asyncio.sleep(1 / 2.0)  # the documented refill: one token per 1 / rate seconds
        await client.subscribe("T.NVDA")
        assert client.ws.state is websockets.protocol.State.OPEN
        await client.close()
        await bystander.close()


async def test_binary_frames_count_against_the_message_rate(sim: Simulator) -> None:
    """2 messages/s, burst 3: ten binary frames in a row get two answers and one rate-limit error."""
    async with relay_with(sim, max_messages_per_second=2.0, message_burst=3) as relay:
        client = await Client.connect(url(relay))
        for _ in range(10):
            await client.ws.send(b"\x00")
        await client.settle()
        answers = [s["message"] for s in client.statuses[2:]]
        await client.close()
    assert answers == ["binary frames are not supported: send JSON text"] * 2 + [
        "rate limit: at most 2 messages/s"
    ]


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


async def test_idle_client_is_pinged_and_closed_1013_when_silent(sim: Simulator) -> None:
    """Ping interval 0.1 s, timeout 0.2 s: a client that never answers gets a ping, then a close
    with 1013 (counted as idle: a code every client retries on); a client that answers pings stays."""
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
        assert struct.unpack("!H", payload[:2])[0] == 1013
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
