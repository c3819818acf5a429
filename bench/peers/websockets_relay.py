"""Peer relay on the ``websockets`` library: the Python baseline fastrelay is compared with.

A relay as one would write it with websockets' asyncio API on uvloop, used
the way its documentation recommends for fan-out:

* one upstream connection (``websockets.asyncio.client.connect``), each frame
  read with ``recv(decode=False)`` and parsed with orjson;
* clients grouped by their channel set; per upstream frame, each group that
  wants any of its events gets one ``websockets.broadcast()`` call: the
  upstream frame's bytes as they came when the group wants all its events
  (always so under ``T.*`` or single-event frames), else the group's events
  re-serialised with orjson;
* ``broadcast()`` never waits for a client; after it, a client owing more
  than 4 MiB is sent ``slow_consumer`` and closed with 1013, as websockets'
  documentation advises (its write buffer is otherwise unbounded).

No coalescing over time: each upstream frame is forwarded when it arrives,
the natural design with this stack (fastrelay's flush window is what the
bench measures against it).

``python -m bench.peers.websockets_relay --port P --upstream ws://127.0.0.1:S --api-key K``
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

import orjson
import uvloop
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.http11 import Request, Response

from bench.peers import common

log = logging.getLogger("peer.websockets")


class Group:
    """Clients with one channel set: they get the same messages."""

    __slots__ = ("channels", "members")

    def __init__(self, channels: frozenset[str]) -> None:
        self.channels = channels
        self.members: set[ServerConnection] = set()


class Router:
    def __init__(self, market: str) -> None:
        self.market = market
        self.groups: dict[frozenset[str], Group] = {}
        self.wildcard: dict[str, list[Group]] = {}  # ev -> groups with EV.*
        self.exact: dict[str, list[Group]] = {}  # "EV.TICKER" -> groups (not covered by their EV.*)
        self.group_of: dict[ServerConnection, Group] = {}
        self.interest = common.Interest()
        self.upstream: ClientConnection | None = None
        self.live = False
        self.slow_drops = 0
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- membership ---
    def _index(self, group: Group, add: bool) -> None:
        wild = {n.partition(".")[0] for n in group.channels if n.endswith(".*")}
        for name in group.channels:
            ev, _, ticker = name.partition(".")
            if ticker == "*":
                groups = self.wildcard.setdefault(ev, [])
            elif ev not in wild:
                groups = self.exact.setdefault(name, [])
            else:
                continue  # its EV.* brings these events already
            if add:
                groups.append(group)
            else:
                groups.remove(group)

    def _move(self, conn: ServerConnection, channels: frozenset[str]) -> None:
        old = self.group_of.pop(conn, None)
        if old is not None:
            old.members.discard(conn)
            if not old.members:
                del self.groups[old.channels]
                self._index(old, add=False)
        if not channels:
            return
        group = self.groups.get(channels)
        if group is None:
            group = self.groups[channels] = Group(channels)
            self._index(group, add=True)
        group.members.add(conn)
        self.group_of[conn] = group

    async def subscribe(self, conn: ServerConnection, names: list[str]) -> None:
        group = self.group_of.get(conn)
        current = group.channels if group is not None else frozenset()
        added = [n for n in names if n not in current]
        self._move(conn, current | frozenset(added))
        await self._upstream("subscribe", self.interest.add(added))

    async def unsubscribe(self, conn: ServerConnection, names: list[str]) -> None:
        group = self.group_of.get(conn)
        current = group.channels if group is not None else frozenset()
        removed = [n for n in names if n in current]
        self._move(conn, current - frozenset(removed))
        await self._upstream("unsubscribe", self.interest.remove(removed))

    def leave(self, conn: ServerConnection) -> None:
        group = self.group_of.get(conn)
        if group is None:
            return
        self._move(conn, frozenset())
        gone = self.interest.remove(group.channels)
        if gone:
            self._spawn(self._upstream("unsubscribe", gone))

    async def _upstream(self, action: str, names: list[str]) -> None:
        if names and self.live and self.upstream is not None:
            with contextlib.suppress(ConnectionClosed):
                await self.upstream.send(common.subscribe_message(action, names), text=True)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- the hot path ---
    def route(self, payload: bytes) -> None:
        """Forward one upstream frame to every group that wants some of its events."""
        events = orjson.loads(payload)
        if not isinstance(events, list):
            return
        wildcard = self.wildcard
        exact = self.exact
        picked: dict[Group, list[Any]] = {}
        for event in events:
            ev = event.get("ev")
            groups = wildcard.get(ev)
            if groups:
                for group in groups:
                    chosen = picked.get(group)
                    if chosen is None:
                        picked[group] = [event]
                    else:
                        chosen.append(event)
            if exact:
                groups = exact.get(f"{ev}.{event.get('sym')}")
                if groups:
                    for group in groups:
                        chosen = picked.get(group)
                        if chosen is None:
                            picked[group] = [event]
                        else:
                            chosen.append(event)
        total = len(events)
        slow: list[ServerConnection] = []
        for group, chosen in picked.items():
            message = payload if len(chosen) == total else orjson.dumps(chosen)
            broadcast(group.members, message, text=True)
            for conn in group.members:
                if conn.transport.get_write_buffer_size() > common.MAX_CLIENT_BUFFER:
                    slow.append(conn)
        for conn in slow:
            self.drop_slow_consumer(conn)

    def drop_slow_consumer(self, conn: ServerConnection) -> None:
        self.leave(conn)  # no more data for it
        self.slow_drops += 1
        broadcast([conn], common.SLOW_CONSUMER, text=True)
        # close() waits close_timeout (1 s) for the peer's close frame, then aborts.
        self._spawn(conn.close(1013, "slow consumer"))

    def handshake(self, payload: bytes, upstream: ClientConnection, api_key: str) -> None:
        for event in orjson.loads(payload):
            state = event.get("status")
            if state == "connected":
                self._spawn(upstream.send(orjson.dumps({"action": "auth", "params": api_key}), text=True))
            elif state == "auth_success":
                self.live = True
                self.upstream = upstream
                if self.interest.counts:
                    message = common.subscribe_message("subscribe", list(self.interest.counts))
                    self._spawn(upstream.send(message, text=True))
            elif state in ("auth_failed", "max_connections"):
                raise ConnectionError(f"upstream refused: {state}")


async def run_upstream(router: Router, url: str, api_key: str) -> None:
    """One upstream connection, kept: reconnect after a random 0-0.5 s, resubscribe everything."""
    while True:
        try:
            async with connect(url, compression=None, max_size=None, open_timeout=10) as upstream:
                log.info("upstream connected")
                while True:
                    payload = await upstream.recv(decode=False)
                    if router.live:
                        router.route(payload)
                    else:
                        router.handshake(payload, upstream, api_key)
        except (OSError, ConnectionClosed, InvalidHandshake, TimeoutError, ConnectionError) as exc:
            log.info("upstream down: %s", exc)
        router.live = False
        router.upstream = None
        await asyncio.sleep(common.reconnect_delay())


def make_handler(router: Router) -> Any:
    path = f"/{router.market}"

    async def handler(conn: ServerConnection) -> None:
        if urlsplit(conn.request.path if conn.request else "").path.rstrip("/") != path:
            await conn.close(1008, "unknown path")
            return
        try:
            await conn.send(common.CONNECTED, text=True)
            while True:
                raw = await conn.recv(decode=False)
                try:
                    message = orjson.loads(raw)
                    action, params = message["action"], str(message.get("params", ""))
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    await conn.send(common.status_frame("error", "invalid message"), text=True)
                    continue
                if action == "auth":
                    await conn.send(common.AUTH_SUCCESS, text=True)
                elif action in ("subscribe", "unsubscribe"):
                    names = common.channel_names(params)
                    if action == "subscribe":
                        await router.subscribe(conn, names)
                    else:
                        await router.unsubscribe(conn, names)
                    await conn.send(common.acks(names, f"{action}d"), text=True)
        except ConnectionClosed:
            pass
        finally:
            router.leave(conn)

    return handler


def make_process_request(router: Router) -> Any:
    """Plain HTTP probes on the same port: /readyz, /healthz, /stats."""

    def process_request(conn: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path == "/readyz":
            if router.live:
                return conn.respond(HTTPStatus.OK, "ready\n")
            return conn.respond(HTTPStatus.SERVICE_UNAVAILABLE, "upstream down\n")
        if path == "/healthz":
            return conn.respond(HTTPStatus.OK, "ok\n")
        if path == "/stats":
            body = {"clients": len(router.group_of), "slow_consumer_drops": router.slow_drops}
            return conn.respond(HTTPStatus.OK, orjson.dumps(body).decode())
        return None

    return process_request


async def main() -> None:
    args = common.parser(__doc__.split("\n\n")[0]).parse_args()
    # The libraries log every connection at INFO: too much at 10,000 clients.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    router = Router(args.market)
    server: Server = await serve(
        make_handler(router),
        args.host,
        args.port,
        process_request=make_process_request(router),
        # permessage-deflate only when the bench compares compression (its default settings).
        compression="deflate" if args.deflate else None,
        max_size=256 * 1024,
        close_timeout=common.CLOSE_GRACE,
    )
    upstream_url = f"{args.upstream.rstrip('/')}/{args.market}"
    async with server:
        await run_upstream(router, upstream_url, args.api_key)


if __name__ == "__main__":
    uvloop.run(main())
