"""One hostile client at a time, for the abuse tests (tests/test_abuse.py) and `make bench`.

Each attack is what one client (or one address) can do to a relay on its own,
measured as issue reports had it: floods of tiny frames before auth, a
sustained byte stream, pings from a client that never reads, history
amplification, junk subscriptions, capture of the options contract cap,
deeply nested JSON, token guessing. Each is bounded (by frames, bytes or
seconds) and returns an ``AttackReport``: what was sent, and how the relay
answered (its close code, when, how much it wrote back).

Run alone: ``python -m bench.attacks MODE --port P [--duration S] [--token T]
[--symbol SYM]`` prints the report as JSON (the bench's ``abuse`` scenario runs
each so, against a relay under load). Raw sockets throughout: a WebSocket
library would slow the attacker down or refuse to send what an attacker sends.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import socket
import struct
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

# Opcodes (RFC 6455 5.2).
CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def client_frame(opcode: int, payload: bytes = b"", fin: bool = True, rsv: int = 0) -> bytes:
    """A client-to-server frame, masked with a zero key (RFC 6455 5.3: the mask is required)."""
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    size = len(payload)
    if size < 126:
        header = bytes((first, 0x80 | size))
    elif size < 65536:
        header = struct.pack("!BBH", first, 0x80 | 126, size)
    else:
        header = struct.pack("!BBQ", first, 0x80 | 127, size)
    return header + b"\0\0\0\0" + payload


def text(message: dict[str, Any] | bytes) -> bytes:
    return client_frame(TEXT, message if isinstance(message, bytes) else orjson.dumps(message))


def handshake(path: str = "/stocks", headers: dict[str, str] | None = None, version: str = "13") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        f"Sec-WebSocket-Version: {version}",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@dataclass
class AttackReport:
    attack: str
    connections: int = 0
    frames_sent: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    close_code: int | None = None  # the relay's close frame, if one came
    closed_after: float | None = None  # seconds from the first byte sent to the close (or reset)
    duration: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)  # status -> count, where read
    notes: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> bytes:
        return orjson.dumps(asdict(self))


class RawClient:
    """One raw WebSocket connection: bytes out as fast as the socket takes them, frames in."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, status_line: bytes
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.status_line = status_line.split(b"\r\n", 1)[0]
        self.head = status_line  # the whole response head: status line and headers
        self.buffer = b""
        self.received = 0
        # The relay (or nginx in front) reset the connection: a proxy closing a socket
        # with unread input sends a reset, which can overtake the close frame.
        self.reset = False
        self.close_code: int | None = None  # the relay's close frame, once read
        self.rsv1 = False  # the last frame's RSV1 bit: compressed, once permessage-deflate is on

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        path: str = "/stocks",
        headers: dict[str, str] | None = None,
        receive_buffer: int | None = None,
        version: str = "13",
    ) -> RawClient:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        if receive_buffer is not None:
            # Set before connecting: the window the kernel advertises follows it.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
        writer.write(handshake(path, headers, version))
        head = await reader.readuntil(b"\r\n\r\n")
        return cls(reader, writer, head)

    @property
    def upgraded(self) -> bool:
        return b" 101 " in self.status_line

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def next_frame(self, timeout: float) -> tuple[int, bytes] | None:
        """(opcode, payload) of the next server frame; None at EOF or timeout."""
        deadline = time.monotonic() + timeout
        while True:
            found = _parse(self.buffer)
            if found is not None:
                opcode, payload, used = found
                self.rsv1 = bool(self.buffer[0] & 0x40)
                self.buffer = self.buffer[used:]
                return opcode, payload
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                chunk = await asyncio.wait_for(self.reader.read(1 << 16), remaining)
            except TimeoutError:
                return None
            except ConnectionError:
                self.reset = True
                return None
            if not chunk:
                return None
            self.received += len(chunk)
            self.buffer += chunk

    async def messages(self, timeout: float) -> list[dict[str, Any]]:
        """Every JSON object of the text frames that arrive within ``timeout`` (until a close)."""
        found: list[dict[str, Any]] = []
        while (frame := await self.next_frame(timeout)) is not None:
            opcode, payload = frame
            if opcode == CLOSE:
                self.close_code = _close_code(payload)
                break
            if opcode == TEXT:
                found.extend(orjson.loads(payload))
        return found

    async def wait_closed(self, timeout: float) -> int | None:
        """The code of the relay's close frame (0 for an empty one; None: none came, or a reset),
        whether it comes now or came while ``messages`` read."""
        if self.close_code is not None:
            return self.close_code
        while (frame := await self.next_frame(timeout)) is not None:
            opcode, payload = frame
            if opcode == CLOSE:
                self.close_code = _close_code(payload)
                return self.close_code
        return None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.transport.abort()


def _close_code(payload: bytes) -> int:
    return int(struct.unpack("!H", payload[:2])[0]) if len(payload) >= 2 else 0


def _parse(buffer: bytes) -> tuple[int, bytes, int] | None:
    """One unmasked server frame from the front of ``buffer``: (opcode, payload, bytes used)."""
    if len(buffer) < 2:
        return None
    opcode = buffer[0] & 0x0F
    size = buffer[1] & 0x7F
    offset = 2
    if size == 126:
        if len(buffer) < 4:
            return None
        size, offset = struct.unpack("!H", buffer[2:4])[0], 4
    elif size == 127:
        if len(buffer) < 10:
            return None
        size, offset = struct.unpack("!Q", buffer[2:10])[0], 10
    if len(buffer) < offset + size:
        return None
    return opcode, buffer[offset : offset + size], offset + size


class ThrottledReader:
    """A raw WebSocket client whose link carries ``rate`` bytes/s: it reads no faster.

    A small receive buffer (set before connecting, so the advertised window follows it)
    keeps the backlog in the relay, where conflation sees it, not in the kernel.
    """

    def __init__(self, sock: socket.socket, rate: float) -> None:
        self.sock = sock
        self.rate = rate
        self.buffer = b""
        self.events: list[dict[str, Any]] = []
        self.statuses: list[dict[str, Any]] = []
        self.close_code: int | None = None
        self.eof = False
        self.received = 0  # bytes read
        self.sent = 0  # bytes sent: the handshake, auth and subscribe
        self.reset = False  # the relay reset the connection (a dropped slow consumer's usual end)
        self.ended_at: float | None = None  # time.monotonic() at the close, reset or EOF
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls, port: int, path: str, params: str, rate: float, token: str = "x", host: str = "127.0.0.1"
    ) -> ThrottledReader:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, (host, port))
        opening = (
            handshake(path)
            + text({"action": "auth", "params": token})
            + text({"action": "subscribe", "params": params})
        )
        await loop.sock_sendall(sock, opening)
        reader = cls(sock, rate)
        reader.sent = len(opening)
        head = b""
        while b"\r\n\r\n" not in head:
            head += await asyncio.wait_for(loop.sock_recv(sock, 1), 10.0)
        assert b" 101 " in head.split(b"\r\n", 1)[0], head
        reader._task = loop.create_task(reader._read())
        return reader

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        allowance, last = 0.0, time.monotonic()
        while not self.eof:
            now = time.monotonic()
            allowance = min(allowance + (now - last) * self.rate, 8 * 1024)
            last = now
            if allowance < 512:
                await asyncio.sleep(0.01)
                continue
            try:
                chunk = await loop.sock_recv(self.sock, int(allowance))
            except ConnectionError:
                self.reset = True
                chunk = b""
            if not chunk:
                self.eof = True
                self.ended_at = time.monotonic()
                return
            allowance -= len(chunk)
            self.received += len(chunk)
            self.buffer += chunk
            self._frames()

    def _frames(self) -> None:
        while (found := _parse(self.buffer)) is not None:
            opcode, payload, used = found
            self.buffer = self.buffer[used:]
            if opcode == CLOSE:
                self.close_code = _close_code(payload) if payload else 1005
            elif opcode == TEXT:
                for message in orjson.loads(payload):
                    (self.statuses if message.get("ev") == "status" else self.events).append(message)

    def status_names(self) -> list[str]:
        return [s["status"] for s in self.statuses]

    async def close(self) -> None:
        self.eof = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.sock.close()


async def authed(host: str, port: int, token: str = "token", **kwargs: Any) -> RawClient:
    client = await RawClient.connect(host, port, **kwargs)
    await client.send(text({"action": "auth", "params": token}))
    return client


async def _flood(
    client: RawClient, chunk: bytes, frames_per_chunk: int, report: AttackReport, until: float
) -> None:
    """Send ``chunk`` again and again until the relay closes, the socket fails or time is up."""
    started = time.monotonic()
    closed = asyncio.ensure_future(client.wait_closed(until - started + 1.0))
    try:
        while time.monotonic() < until and not closed.done():
            try:
                await client.send(chunk)
            except (ConnectionError, OSError):
                client.reset = True
                break
            report.frames_sent += frames_per_chunk
            report.bytes_sent += len(chunk)
            await asyncio.sleep(0)
        code = await asyncio.wait_for(closed, max(0.1, until - time.monotonic() + 1.0))
    except TimeoutError:
        code = None
    report.close_code = code
    report.notes["eof"] = client.reader.at_eof()
    cut_off = code is not None or client.reset or report.notes["eof"]
    report.closed_after = time.monotonic() - started if cut_off else None
    report.notes["reset"] = client.reset
    report.bytes_received = client.received


# --- the attacks ----------------------------------------------------------------------------------


async def frame_flood(host: str, port: int, kind: str = "text", duration: float = 3.0) -> AttackReport:
    """Tiny frames (1-byte text, binary or ping) as fast as the socket takes them, before auth."""
    report = AttackReport(f"frame-flood-{kind}", connections=1)
    opcode = {"text": TEXT, "binary": BINARY, "ping": PING}[kind]
    frame = client_frame(opcode, b"x")
    client = await RawClient.connect(host, port)
    started = time.monotonic()
    await _flood(client, frame * 2000, 2000, report, started + duration)
    report.duration = time.monotonic() - started
    client.close()
    return report


async def byte_flood(
    host: str, port: int, rate: float = 1_000_000.0, duration: float = 3.0, token: str = "token"
) -> AttackReport:
    """A sustained stream of valid messages (8 Mbit/s by default) from an authenticated client."""
    report = AttackReport("byte-flood", connections=1)
    client = await authed(host, port, token)
    message = text({"action": "unsubscribe", "params": ",".join(f"T.S{i:05d}" for i in range(1000))})
    started = time.monotonic()
    closed = asyncio.ensure_future(client.wait_closed(duration + 1.0))
    while time.monotonic() - started < duration and not closed.done():
        due = started + report.bytes_sent / rate
        if due > time.monotonic():
            await asyncio.sleep(due - time.monotonic())
        try:
            await client.send(message)
        except (ConnectionError, OSError):
            break
        report.frames_sent += 1
        report.bytes_sent += len(message)
    with contextlib.suppress(TimeoutError):
        report.close_code = await asyncio.wait_for(closed, 1.5)
    ended = report.close_code is not None or client.reset
    report.closed_after = time.monotonic() - started if ended else None
    report.notes["reset"] = client.reset
    report.duration = time.monotonic() - started
    report.bytes_received = client.received
    client.close()
    return report


async def silent_pings(host: str, port: int, duration: float = 3.0) -> AttackReport:
    """Pings from a client with a tiny receive buffer that never reads the pongs."""
    report = AttackReport("silent-pings", connections=1)
    client = await RawClient.connect(host, port, receive_buffer=4096)
    chunk = client_frame(PING, b"p" * 125) * 200
    started = time.monotonic()
    while time.monotonic() - started < duration:
        try:
            client.writer.write(chunk)
            await asyncio.wait_for(client.writer.drain(), 0.5)
        except TimeoutError:
            break  # the relay stopped reading us
        except (ConnectionError, OSError):
            client.reset = True  # the relay closed or reset the connection
            break
        report.frames_sent += 200
        report.bytes_sent += len(chunk)
    report.duration = time.monotonic() - started
    report.close_code = await client.wait_closed(1.0)
    if report.close_code is not None or client.reset:
        report.closed_after = report.duration  # cut off by the time the sending stopped
    report.notes["reset"] = client.reset
    client.close()
    return report


async def history_amplification(
    host: str,
    port: int,
    repeats: int = 2000,
    requests: int = 3,
    hold: float = 3.0,
    token: str = "token",
    symbol: str = "AAPL",
) -> AttackReport:
    """History requests naming one channel thousands of times, from a client that does not read.

    ``symbol``'s A and AM must exist in the feed (the relay keeps their history
    with ``--keep-channels A.<symbol>,AM.<symbol>``).
    """
    report = AttackReport("history-amplification", connections=1)
    client = await authed(host, port, token, receive_buffer=4096)
    channels = [f"A.{symbol}", f"AM.{symbol}"]
    await client.send(text({"action": "subscribe", "params": ",".join(channels)}))
    request = text({"action": "history", "params": ",".join(channels * (repeats // 2))})
    started = time.monotonic()
    for _ in range(requests):
        await client.send(request)
        report.frames_sent += 1
        report.bytes_sent += len(request)
    await asyncio.sleep(hold)  # holding the connection open without reading is the attack
    report.duration = time.monotonic() - started
    with contextlib.suppress(TimeoutError):
        # A second in all: the channels' events (one a second or more) would renew a per-frame timeout.
        report.close_code = await asyncio.wait_for(client.wait_closed(1.0), 1.0)
    report.bytes_received = client.received
    client.close()
    return report


async def junk_subscriptions(
    host: str,
    port: int,
    connections: int = 50,
    per_connection: int = 2000,
    market: str = "stocks",
    token: str = "token",
) -> AttackReport:
    """Many connections from one address, each subscribing thousands of made-up tickers."""
    report = AttackReport("junk-subscriptions", connections=connections)
    clients = []
    for index in range(connections):
        client = await authed(host, port, token, path=f"/{market}")
        names = ",".join(f"T.J{index:03d}X{i:05d}" for i in range(per_connection))
        message = text({"action": "subscribe", "params": names})
        await client.send(message)
        report.frames_sent += 2
        report.bytes_sent += len(message)
        clients.append(client)
    accepted = 0
    # Read every connection's answers at once: 0.5 s of quiet in all, not 0.5 s per connection.
    for answers in await asyncio.gather(*(client.messages(0.5) for client in clients)):
        for status in answers:
            report.statuses[status.get("status", "?")] = report.statuses.get(status.get("status", "?"), 0) + 1
            if status.get("status") == "success" and str(status.get("message", "")).startswith("subscribed"):
                accepted += 1
    report.notes["accepted_channels"] = accepted
    for client in clients:
        client.close()
    return report


async def heavy_messages(host: str, port: int, messages: int = 60, token: str = "token") -> AttackReport:
    """Subscribes and unsubscribes of 2,000 made-up channels each, all sent at once: each
    costs the relay milliseconds of work, within the frame and byte budgets, while the
    client never holds more than 2,000 channels."""
    report = AttackReport("heavy-messages", connections=1)
    client = await authed(host, port, token)
    chunk = b"".join(
        text(
            {
                "action": "unsubscribe" if m % 2 else "subscribe",
                "params": ",".join(f"T.H{m // 2:03d}X{i:05d}" for i in range(2000)),
            }
        )
        for m in range(messages)
    )
    started = time.monotonic()
    with contextlib.suppress(ConnectionError, OSError):
        await client.send(chunk)
        report.frames_sent += messages
        report.bytes_sent += len(chunk)
    for status in await client.messages(5.0):
        key = str(status.get("status"))
        report.statuses[key] = report.statuses.get(key, 0) + 1
    report.close_code = await client.wait_closed(0.2)
    report.notes["reset"] = client.reset
    report.duration = time.monotonic() - started
    report.bytes_received = client.received
    client.close()
    return report


async def slow_readers(
    host: str,
    port: int,
    connections: int = 20,
    rate: float = 2_000.0,
    duration: float = 3.0,
    params: str = "T.*,Q.*",
    token: str = "token",
) -> AttackReport:
    """Clients on /api/socket (conflation on) subscribed to everything, each reading ``rate``
    bytes/s: once behind, each makes the relay do per-event work for it (its conflated stream),
    which the relay charges to its loop-time budget. Held until the relay closes them or time is up."""
    report = AttackReport("slow-readers", connections=connections)
    path = "/api/socket?conflate=1"
    readers = [
        await ThrottledReader.open(port, path, params, rate, token=token, host=host)
        for _ in range(connections)
    ]
    report.frames_sent = 2 * connections
    report.bytes_sent = sum(r.sent for r in readers)
    started = time.monotonic()
    while time.monotonic() - started < duration and not all(r.eof for r in readers):
        await asyncio.sleep(0.1)
    report.duration = time.monotonic() - started
    ended = [r.ended_at - started for r in readers if r.ended_at is not None]
    report.notes["closed"] = len(ended)
    report.notes["reset"] = sum(1 for r in readers if r.reset)
    report.notes["events"] = sum(len(r.events) for r in readers)
    report.bytes_received = sum(r.received for r in readers)
    for reader in readers:
        for name in reader.status_names():
            report.statuses[name] = report.statuses.get(name, 0) + 1
    codes = [r.close_code for r in readers if r.close_code is not None]
    report.close_code = max(set(codes), key=codes.count) if codes else None
    report.closed_after = max(ended) if len(ended) == connections else None
    for reader in readers:
        await reader.close()
    return report


async def contract_capture(host: str, port: int, contracts: int = 1000) -> AttackReport:
    """One client subscribing the whole options quote cap with contracts nobody trades."""
    report = AttackReport("contract-capture", connections=1)
    client = await authed(host, port, path="/options")
    names = ",".join(f"Q.O:JUNK{261231 - i % 300:06d}C{i:08d}" for i in range(contracts))
    await client.send(text({"action": "subscribe", "params": names}))
    accepted = 0
    for status in await client.messages(1.0):
        if status.get("status") == "success":
            accepted += 1
        report.statuses[status.get("status", "?")] = report.statuses.get(status.get("status", "?"), 0) + 1
    report.notes["accepted_contracts"] = accepted
    report.notes["client"] = client  # kept open by the caller, to hold what it got
    return report


async def nested_json(host: str, port: int, depth: int = 2000, count: int = 50) -> AttackReport:
    """Messages nested thousands deep, before auth."""
    report = AttackReport("nested-json", connections=1)
    client = await RawClient.connect(host, port)
    message = text(b'{"action":"auth","x":' + b"[" * depth + b"]" * depth + b"}")
    for _ in range(count):
        await client.send(message)
        report.frames_sent += 1
        report.bytes_sent += len(message)
    for status in await client.messages(1.0):
        report.statuses[status.get("status", "?")] = report.statuses.get(status.get("status", "?"), 0) + 1
    report.close_code = await client.wait_closed(0.2)
    client.close()
    return report


async def token_guessing(host: str, port: int, attempts: int = 20) -> AttackReport:
    """One connection per guessed token, from one address."""
    report = AttackReport("token-guessing")
    for guess in range(attempts):
        client = await RawClient.connect(host, port)
        report.connections += 1
        await client.send(text({"action": "auth", "params": f"guess-{guess:06d}"}))
        for status in await client.messages(0.5):
            key = f"{status.get('status')}: {status.get('message')}"
            report.statuses[key] = report.statuses.get(key, 0) + 1
        client.close()
    return report


# The command line's attacks: (host, port, its arguments) -> the attack. The ones that
# authenticate use --token (any token will do for a relay without --client-tokens).
ATTACKS: dict[str, Callable[[str, int, argparse.Namespace], Coroutine[Any, Any, AttackReport]]] = {
    "frame-flood-text": lambda h, p, a: frame_flood(h, p, "text", a.duration),
    "frame-flood-binary": lambda h, p, a: frame_flood(h, p, "binary", a.duration),
    "frame-flood-ping": lambda h, p, a: frame_flood(h, p, "ping", a.duration),
    "byte-flood": lambda h, p, a: byte_flood(h, p, duration=a.duration, token=a.token),
    "silent-pings": lambda h, p, a: silent_pings(h, p, a.duration),
    "history-amplification": lambda h, p, a: history_amplification(
        h, p, hold=a.duration, token=a.token, symbol=a.symbol
    ),
    "heavy-messages": lambda h, p, a: heavy_messages(h, p, token=a.token),
    "junk-subscriptions": lambda h, p, a: junk_subscriptions(h, p, token=a.token),
    "slow-readers": lambda h, p, a: slow_readers(h, p, rate=a.rate, duration=a.duration, token=a.token),
    "nested-json": lambda h, p, a: nested_json(h, p),
    "token-guessing": lambda h, p, a: token_guessing(h, p),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.attacks", description=__doc__)
    parser.add_argument("attack", choices=sorted(ATTACKS))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--token", default="token", help="the token of the attacks that authenticate")
    parser.add_argument("--symbol", default="AAPL", help="history-amplification: its A and AM channels")
    parser.add_argument("--rate", type=float, default=2_000.0, help="slow-readers: bytes/s each one reads")
    args = parser.parse_args(argv)
    report = asyncio.run(ATTACKS[args.attack](args.host, args.port, args))
    report.notes.pop("client", None)
    sys.stdout.buffer.write(report.as_json() + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
