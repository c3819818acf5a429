"""The no-routing ceiling: picows straight through, what picows and the kernel allow.

Each upstream frame is written, as it came, to every subscribed client: the
frame header is built once and the same bytes object goes to every client's
transport (as fastrelay does), with no decoding and no routing at all. So it
is only correct when every client wants everything upstream sends (all on
``T.*``); the bench runs it only there. Slow consumers are checked after each
write and dropped like fastrelay does (4 MiB, ``slow_consumer``, 1013), since
that check is part of the per-write cost.

``--flush-interval MS`` takes fastrelay's write timing without decoding:
the frames of one read are merged (0), and a busy feed is written at most
once per window of MS (leading edge: a quiet one at once); the JSON arrays
held back are merged by their brackets (``[a]`` + ``[b,c]`` -> ``[a,b,c]``).
With it, the ceiling shows what fastrelay's writes could cost at best.

The same server settings as fastrelay: uvloop's transport
(``use_aiofastnet=False``), a 1 KiB initial read buffer, no per-client ping task.

``python -m bench.peers.ceiling --port P --upstream ws://127.0.0.1:S --api-key K [--flush-interval MS]``
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

import orjson
import uvloop
from picows import (
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
    ws_connect,
    ws_create_server,
)

from bench.peers import common

log = logging.getLogger("peer.ceiling")
# Status frames as Massive and the simulator write them (orjson, "ev" first).
_STATUS_PREFIX = b'[{"ev":"status"'


def text_frame(payload: bytes) -> bytes:
    """A complete unmasked text frame (RFC 6455 5.2), built once for every client."""
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 65536:
        return bytes((0x81, 126)) + size.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + size.to_bytes(8, "big") + payload


class Client(WSListener):
    __slots__ = ("authenticated", "ceiling", "channels", "transport", "write")

    def __init__(self, ceiling: Ceiling) -> None:
        self.ceiling = ceiling
        self.transport: WSTransport | None = None
        self.write: Any = None
        self.channels: set[str] = set()
        self.authenticated = False

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.write = transport.underlying_transport.write
        transport.send(WSMsgType.TEXT, common.CONNECTED)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()
            return
        if frame.msg_type is not WSMsgType.TEXT:
            return
        try:
            message = orjson.loads(frame.get_payload_as_bytes())
            action, params = message["action"], str(message.get("params", ""))
        except (orjson.JSONDecodeError, KeyError, TypeError):
            transport.send(WSMsgType.TEXT, common.status_frame("error", "invalid message"))
            return
        if action == "auth":
            self.authenticated = True
            transport.send(WSMsgType.TEXT, common.AUTH_SUCCESS)
        elif action in ("subscribe", "unsubscribe"):
            names = common.channel_names(params)
            if action == "subscribe":
                added = [n for n in names if n not in self.channels]
                self.channels.update(added)
                self.ceiling.subscribe(self, added)
            else:
                removed = [n for n in names if n in self.channels]
                self.channels.difference_update(removed)
                self.ceiling.unsubscribe(self, removed)
            transport.send(WSMsgType.TEXT, common.acks(names, f"{action}d"))

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.ceiling.leave(self)


class Upstream(WSListener):
    def __init__(self, ceiling: Ceiling) -> None:
        self.ceiling = ceiling

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.ceiling.upstream = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is not WSMsgType.TEXT:
            return
        ceiling = self.ceiling
        if ceiling.live:
            # Copy once at the edge: the frame is a view into the read buffer.
            payload = frame.get_payload_as_bytes()
            # The simulator's acks to our subscribes are not for the clients
            # (a prefix test: the one look at the bytes the ceiling takes).
            if not payload.startswith(_STATUS_PREFIX):
                ceiling.forward(payload, frame.last_in_buffer)
            return
        for event in orjson.loads(frame.get_payload_as_bytes()):
            state = event.get("status")
            if state == "connected":
                transport.send(WSMsgType.TEXT, orjson.dumps({"action": "auth", "params": ceiling.api_key}))
            elif state == "auth_success":
                ceiling.went_live()
            elif state in ("auth_failed", "max_connections"):
                transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.ceiling.live = False
        self.ceiling.upstream = None


class Ceiling:
    def __init__(self, market: str, upstream_url: str, api_key: str, flush_interval: float | None) -> None:
        self.market = market
        self.upstream_url = upstream_url
        self.api_key = api_key
        self.flush_interval = flush_interval
        self.clients: dict[Client, None] = {}  # subscribed clients, an ordered set
        self.interest = common.Interest()
        self.upstream: WSTransport | None = None
        self.live = False
        self.slow_drops = 0
        self.loop = asyncio.get_running_loop()
        self._pending: list[bytes] = []
        self._flushed_at = -math.inf
        self._timer: asyncio.TimerHandle | None = None

    # --- clients ---
    def subscribe(self, client: Client, names: list[str]) -> None:
        if client.channels:
            self.clients[client] = None
        self._send_upstream("subscribe", self.interest.add(names))

    def unsubscribe(self, client: Client, names: list[str]) -> None:
        if not client.channels:
            self.clients.pop(client, None)
        self._send_upstream("unsubscribe", self.interest.remove(names))

    def leave(self, client: Client) -> None:
        self.clients.pop(client, None)
        self._send_upstream("unsubscribe", self.interest.remove(client.channels))
        client.channels = set()

    def _send_upstream(self, action: str, names: list[str]) -> None:
        if names and self.live and self.upstream is not None:
            self.upstream.send(WSMsgType.TEXT, common.subscribe_message(action, names))

    def went_live(self) -> None:
        self.live = True
        if self.interest.counts and self.upstream is not None:
            message = common.subscribe_message("subscribe", list(self.interest.counts))
            self.upstream.send(WSMsgType.TEXT, message)

    # --- the hot path ---
    def forward(self, payload: bytes, last_in_buffer: bool) -> None:
        if self.flush_interval is None:
            self._write(text_frame(payload))  # as it came, at once
            return
        # fastrelay's timing: hold the frames of one read, then write at once
        # unless the last write is less than a window ago (a leading edge).
        self._pending.append(payload)
        if not last_in_buffer or self._timer is not None:
            return
        now = time.perf_counter()
        due = self._flushed_at + self.flush_interval
        if due <= now:
            self._flush()
        else:
            self._timer = self.loop.call_later(due - now, self._flush)

    def _flush(self) -> None:
        self._timer = None
        pending = self._pending
        if not pending:
            return
        self._pending = []
        self._flushed_at = time.perf_counter()
        if len(pending) == 1:
            self._write(text_frame(pending[0]))
        else:
            # "[a]" and "[b,c]" -> "[a,b,c]": arrays merged without decoding them.
            self._write(text_frame(b"[" + b",".join([p[1:-1] for p in pending]) + b"]"))

    def _write(self, frame: bytes) -> None:
        slow = []
        for client in self.clients:
            client.write(frame)
            transport = client.transport
            if transport is not None and transport.underlying_transport.get_write_buffer_size() > (
                common.MAX_CLIENT_BUFFER
            ):
                slow.append(client)
        for client in slow:
            self.drop_slow_consumer(client)

    def drop_slow_consumer(self, client: Client) -> None:
        self.slow_drops += 1
        self.clients.pop(client, None)
        transport = client.transport
        if transport is None:
            return
        transport.send(WSMsgType.TEXT, common.SLOW_CONSUMER)
        transport.send_close(WSCloseCode.TRY_AGAIN_LATER, b"slow consumer")
        transport.disconnect(graceful=True)
        # A graceful close waits for the write buffer to drain, which a
        # client that stopped reading never lets happen.
        self.loop.call_later(common.CLOSE_GRACE, transport.disconnect, False)

    # --- upstream ---
    async def run_upstream(self) -> None:
        while True:
            try:
                transport, _ = await ws_connect(
                    lambda: Upstream(self),
                    self.upstream_url,
                    use_aiofastnet=False,
                    max_frame_size=64 * 1024 * 1024,
                    websocket_handshake_timeout=10,
                )
                await transport.wait_disconnected()
            except (OSError, TimeoutError) as exc:
                log.info("upstream: %s", exc)
            await asyncio.sleep(common.reconnect_delay())

    # --- HTTP ---
    def route(self, request: WSUpgradeRequest) -> Any:
        path = request.path.decode("latin-1").split("?", 1)[0].rstrip("/")
        if path == f"/{self.market}":
            return Client(self)
        if path == "/readyz":
            if self.live:
                return self._plain(200, b"ready\n")
            return self._plain(503, b"upstream down\n")
        if path == "/healthz":
            return self._plain(200, b"ok\n")
        if path == "/stats":
            stats = {"clients": len(self.clients), "slow_consumer_drops": self.slow_drops}
            return self._plain(200, orjson.dumps(stats))
        return None

    @staticmethod
    def _plain(status: int, body: bytes) -> Any:
        if status == 200:
            response = WSUpgradeResponse.create_ok_response(body, {"Content-Type": "text/plain"})
        else:
            response = WSUpgradeResponse.create_error_response(status, body, {"Content-Type": "text/plain"})
        return WSUpgradeResponseWithListener(response, None)


async def main() -> None:
    parser = common.parser(__doc__.split("\n\n")[0])
    parser.add_argument(
        "--flush-interval",
        type=float,
        default=None,
        help="fastrelay's coalescing: 0 merges the frames of one read, N ms adds a window (default: as is)",
    )
    args = parser.parse_args()
    # The libraries log every connection at INFO: too much at 10,000 clients.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    ceiling = Ceiling(
        args.market,
        f"{args.upstream.rstrip('/')}/{args.market}",
        args.api_key,
        None if args.flush_interval is None else args.flush_interval / 1000,
    )
    server = await ws_create_server(
        ceiling.route,
        args.host,
        args.port,
        enable_auto_ping=False,
        max_frame_size=256 * 1024,
        read_buffer_init_size=1024,
        use_aiofastnet=False,
    )
    async with server:
        await ceiling.run_upstream()


if __name__ == "__main__":
    uvloop.run(main())
