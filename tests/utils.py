"""Shared helpers for integration tests: real sockets on 127.0.0.1, port 0.

One timeout unit, scaled by FASTRELAY_TEST_TIMEOUT_SCALE on slow machines.
Every wait is on the event expected, bounded by a timeout; never a bare sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import orjson
import websockets

from fastrelay.config import RelayConfig, UpstreamTimers

TIMEOUT = 5.0 * float(os.environ.get("FASTRELAY_TEST_TIMEOUT_SCALE", "1"))


def fast_relay_config(upstream: str, api_key: str, **overrides: Any) -> RelayConfig:
    """Relay settings with every timer shrunk so faults recover in well under a second."""
    timers = UpstreamTimers(
        backoff_base=0.05,
        backoff_cap=0.2,
        healthy_after=1.0,
        auth_retry=1.0,
        max_connections_cooldown=1.0,
        ping_interval=0.3,
        ping_timeout=0.3,
        handshake_timeout=2.0,
    )
    config = RelayConfig(
        host="127.0.0.1",
        port=0,
        upstream=upstream,
        api_key=api_key,
        markets=("stocks", "options"),
        linger=0.2,
        flush_interval=1.0,
        upstream_timers=timers,
        rest_url="",  # no REST history unless a test asks for it (no internet here)
    )
    return replace(config, **overrides)


async def wait_until(
    condition: Callable[[], bool],
    timeout: float = TIMEOUT,
    what: str = "condition",
    detail: Callable[[], str] | None = None,
) -> None:
    """Poll a cheap condition on the loop until it holds (for state with no event to await);
    ``detail`` describes the state on a timeout, for a failure that can be understood from CI's log."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            described = f": {detail()}" if detail is not None else ""
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}{described}")
        await asyncio.sleep(0.01)


class Client:
    """A Massive-protocol test client on the `websockets` library."""

    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self.statuses: list[dict[str, Any]] = []
        self._unseen: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []

    @classmethod
    async def connect(cls, url: str, auth: str | None = "token", **kwargs: Any) -> Client:
        # max_queue=None: keep reading while the test is not looking, so a
        # close handshake is never stuck behind unread data.
        ws = await websockets.connect(url, max_size=None, max_queue=None, open_timeout=TIMEOUT, **kwargs)
        client = cls(ws)
        await client.wait_status("connected")
        if auth is not None:
            await client.send({"action": "auth", "params": auth})
            await client.wait_status("auth_success")
        return client

    async def send(self, message: dict[str, str]) -> None:
        await self.ws.send(orjson.dumps(message).decode())

    async def subscribe(self, params: str) -> None:
        await self.send({"action": "subscribe", "params": params})
        for _ in params.split(","):
            await self.wait_status("success")

    async def _receive(self) -> None:
        self._take(await self.ws.recv())

    def _take(self, frame: str | bytes) -> None:
        for message in orjson.loads(frame):
            if message.get("ev") == "status":
                self.statuses.append(message)
                self._unseen.append(message)
            else:
                self.events.append(message)

    async def wait_for(self, condition: Callable[[], bool], timeout: float = TIMEOUT, what: str = "") -> None:
        async def loop() -> None:
            while not condition():
                await self._receive()

        try:
            await asyncio.wait_for(loop(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"timed out waiting for {what or 'condition'}; statuses={self.statuses[-5:]} "
                f"events={len(self.events)}"
            ) from None

    async def wait_status(self, status: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The oldest status of this kind not yet returned by this method."""

        def unseen() -> dict[str, Any] | None:
            return next((s for s in self._unseen if s["status"] == status), None)

        await self.wait_for(lambda: unseen() is not None, timeout, f"status {status}")
        found = unseen()
        assert found is not None
        self._unseen.remove(found)
        return found

    async def wait_events(self, count: int, timeout: float = TIMEOUT) -> list[dict[str, Any]]:
        await self.wait_for(lambda: len(self.events) >= count, timeout, f"{count} events")
        return self.events

    async def settle(self) -> None:
        """Take in everything the server sent before it answered a ping of ours.

        The server handles a connection's frames in order, so once the pong is
        in, every reply to what this client sent earlier is in too: what is not
        here by then was never sent.
        """
        pong = await self.ws.ping()
        await asyncio.wait_for(pong, TIMEOUT)
        while True:
            try:
                frame = await asyncio.wait_for(self.ws.recv(), 0.01)
            except TimeoutError:
                return
            self._take(frame)

    async def settle_until(
        self,
        condition: Callable[[], bool],
        timeout: float = TIMEOUT,
        what: str = "condition",
        detail: Callable[[], str] | None = None,
    ) -> None:
        """Settle (take in all the server sent before a ping's pong) until ``condition`` holds:
        for a condition on what this client has and on something else (another client's
        stream, the relay's state), when no frame of this client's may be coming to wake it."""
        deadline = time.monotonic() + timeout
        while True:
            await self.settle()
            if condition():
                return
            if time.monotonic() > deadline:
                described = f": {detail()}" if detail is not None else ""
                raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}{described}")

    async def close(self) -> None:
        await self.ws.close()


def sequence_gaps(events: list[dict[str, Any]]) -> list[tuple[str, int, int]]:
    """(channel, previous q, next q) wherever a channel's q does not step by one."""
    last: dict[str, int] = {}
    gaps = []
    for event in events:
        ticker = event.get("sym") or event.get("pair") or event.get("T") or event.get("p")
        key = f"{event['ev']}.{ticker}"
        q = event.get("q")
        if not isinstance(q, int):
            continue
        if key in last and q != last[key] + 1:
            gaps.append((key, last[key], q))
        last[key] = q
    return gaps


async def http_get(port: int, path: str) -> tuple[int, bytes]:
    """Status and body of a plain GET on 127.0.0.1; (0, b"") when nothing listens."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return 0, b""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    try:
        data = await asyncio.wait_for(reader.read(), TIMEOUT)
    except ConnectionError:
        data = b""
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    return (int(head.split()[1]) if head else 0), body


async def close_raw(writer: asyncio.StreamWriter) -> None:
    """Close a raw stream connection, whatever state the peer left it in."""
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
