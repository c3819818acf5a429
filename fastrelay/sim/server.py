"""The simulator's server: ``Simulator`` on one port (every market path, ``/sim/stats``,
``/sim/fault/NAME``, the REST aggregates), its generation clock, and ``run_simulator`` for ``fastrelay sim``.

Connections come in through front.py's door: REST paths are answered by rest.py
(late if a fault says so), everything else goes to picows and ``_route``.

The event loop is the caller's: the simulator runs on uvloop (``fastrelay.loops``)
or the default loop and never installs a policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

import orjson
from picows import (
    WSCloseCode,
    WSListener,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
)

import fastrelay.sim.faults as faults
from fastrelay import markets
from fastrelay.front import Doorway, FrontDoor, RestConnection, listen, picows_protocol_factory
from fastrelay.restapi import Answer as HttpAnswer
from fastrelay.sim.config import SimulatorConfig
from fastrelay.sim.connection import CLOSE_TIMEOUT, Connection
from fastrelay.sim.feed import Feed, now_ms
from fastrelay.sim.rest import RestApi

log = logging.getLogger("fastrelay.sim")

# Timer bounds: finer than 1 ms is not honoured by the loops, coarser than
# 50 ms would delay aggregates (emitted at the first tick after the window).
_MIN_TICK: Final = 0.001
_MAX_TICK: Final = 0.05
# Massive's own limit on client messages is small; a subscribe of thousands of channels still fits.
_MAX_FRAME: Final = 4 * 1024 * 1024
# A connection's request line must come this soon (a slow head is dropped, as picows would).
HEAD_TIMEOUT: Final = 5.0


class Simulator:
    """A Massive-compatible feed on one port, every market path, with fault injection.

    ``async with Simulator(config) as sim`` starts it on ``host:port`` given here
    (default 127.0.0.1, a free port); ``start()`` may also be called explicitly.
    """

    def __init__(
        self,
        config: SimulatorConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.config = config or SimulatorConfig()
        self._default_bind = (host, port, ssl_context)
        rng = random.Random(self.config.seed)
        # One generator per market, seeded from the first, so a seed reproduces every market.
        self._feeds: dict[str, Feed] = {
            market: Feed(market, self.config, random.Random(rng.random()), market in self.config.markets)
            for market in markets.MARKETS
        }
        self.rest = RestApi(self.config, self._feeds)
        self._doors: set[RestConnection] = set()  # REST connections open, closed at stop
        self._doorway = Doorway(HEAD_TIMEOUT)
        self._server: asyncio.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._ssl: ssl.SSLContext | None = None
        self._host = host
        self._port = 0
        self._started_at = 0.0
        self._change = asyncio.Event()
        self._all_gone: asyncio.Future[None] | None = None

    # --- lifecycle ---

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, *, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        """Listen on ``host:port`` (0: a free port, see ``port``); TLS (wss) with ``ssl_context``."""
        if self._server is not None:
            # Already started (e.g. by ``async with``): fine if this asks for the same thing.
            if host == self._host and port in (0, self._port) and ssl_context is self._ssl:
                return
            raise RuntimeError(f"simulator already listening on {self._host}:{self._port}")
        try:
            websocket = picows_protocol_factory(
                self._route,
                logger_name="sim",
                enable_auto_pong=False,  # Connection answers pings itself (and not while stalled)
                max_frame_size=_MAX_FRAME,
            )
        except TypeError as exc:  # picows's constructor is not public API
            raise RuntimeError(f"this picows cannot be driven by the front door: {exc}") from exc
        scheme = "https" if ssl_context is not None else "http"
        doorway = self._doorway = Doorway(HEAD_TIMEOUT)
        self._server = await listen(
            lambda: FrontDoor(websocket, self._answer_rest, doorway, scheme, self._doors),
            host,
            port,
            ssl=ssl_context,
        )
        self.rest.started(now_ms())
        self._ssl = ssl_context
        self._host = host
        self._port = self._server.sockets[0].getsockname()[1]
        self._started_at = time.monotonic()
        self._task = asyncio.get_running_loop().create_task(self._clock(), name="simulator-clock")
        # Debug: embedded in `fastrelay run`, the relay's start-up lines say it; `fastrelay sim`
        # says more (run_simulator).
        log.debug(
            "simulator listening on %s/MARKET, every market (generating data: %s)",
            self.base_url,
            ",".join(self.config.markets),
        )

    async def stop(self) -> None:
        """Stop the clock, close every connection (1001) and the listening socket."""
        server, task = self._server, self._task
        self._server = None
        self._task = None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if server is None:
            return
        server.close()
        self._doorway.close()
        for rest in list(self._doors):
            rest.close()
        conns = [conn for feed in self._feeds.values() for conn in feed.conns]
        if conns:
            self._all_gone = asyncio.get_running_loop().create_future()
            for conn in conns:
                conn.close(WSCloseCode.GOING_AWAY, "server shutting down")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._all_gone), CLOSE_TIMEOUT + 0.5)
            for conn in [conn for feed in self._feeds.values() for conn in feed.conns]:
                conn.abort()
            self._all_gone = None
        for feed in self._feeds.values():
            feed.delayed.clear()
        await server.wait_closed()

    async def __aenter__(self) -> Simulator:
        if self._server is None:
            host, port, ssl_context = self._default_bind
            await self.start(host, port, ssl_context=ssl_context)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # --- addresses ---

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("simulator not started")
        return self._port

    @property
    def secure(self) -> bool:
        return self._ssl is not None

    def _netloc(self) -> str:
        host = self._host
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"{host}:{self.port}"

    def url(self, market: str = "stocks") -> str:
        """``ws://127.0.0.1:PORT/market`` (``wss`` under TLS)."""
        if not markets.is_market(market):
            raise ValueError(f"unknown market {market!r}")
        return f"{'wss' if self.secure else 'ws'}://{self._netloc()}/{market}"

    @property
    def base_url(self) -> str:
        """``ws://127.0.0.1:PORT``: what a relay takes as its upstream."""
        return f"{'wss' if self.secure else 'ws'}://{self._netloc()}"

    def http_url(self, path: str = "/sim/stats") -> str:
        return f"{'https' if self.secure else 'http'}://{self._netloc()}{path}"

    @property
    def rest_url(self) -> str:
        """``http(s)://127.0.0.1:PORT``: the REST base (Massive's is ``https://api.massive.com``)."""
        return self.http_url("")

    def symbols(self, market: str) -> tuple[str, ...]:
        return tuple(sym.name for sym in self._feed(market).symbols)

    # --- generation clock ---

    async def _clock(self) -> None:
        loop = asyncio.get_running_loop()
        feeds = [feed for feed in self._feeds.values() if feed.generate]
        interval = min(_MAX_TICK, max(_MIN_TICK, 1.0 / self.config.rate))
        last = loop.time()
        last_ms = 0
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            elapsed = now - last
            last = now
            # Wall clock for "t", never going backwards (windows assume it).
            t = max(now_ms(), last_ms)
            last_ms = t
            for feed in feeds:
                try:
                    feed.tick(elapsed, t, now)
                except Exception:
                    log.exception("simulator %s: generation failed", feed.market)

    # --- connections ---

    def _feed(self, market: str) -> Feed:
        try:
            return self._feeds[market]
        except KeyError:
            raise ValueError(f"unknown market {market!r}; known: {', '.join(markets.MARKETS)}") from None

    async def _answer_rest(
        self, method: str, target: str, headers: dict[str, str], origin: str, peer: str
    ) -> HttpAnswer:
        answer = self.rest.answer(method, target, headers, origin)
        if answer.delay > 0:
            await asyncio.sleep(answer.delay)
        return HttpAnswer(answer.status, answer.body, answer.content_type)

    def _route(self, request: WSUpgradeRequest) -> WSListener | WSUpgradeResponseWithListener | None:
        target = urlsplit(request.path.decode("latin-1"))
        path = target.path.rstrip("/")
        feed = self._feeds.get(path[1:])
        if feed is not None:
            return Connection(self, feed)
        if path == "/sim" or path.startswith("/sim/"):
            query = {key: values[-1] for key, values in parse_qs(target.query).items()}
            status, body = self._control(path, query)
            if status == 200:
                response = WSUpgradeResponse.create_ok_response(
                    body, extra_headers={"Content-Type": "application/json"}
                )
            else:
                response = WSUpgradeResponse.create_error_response(
                    status, body, extra_headers={"Content-Type": "application/json"}
                )
            return WSUpgradeResponseWithListener(response, None)
        return None

    def connections_changed(self) -> None:
        """A connection came, went, authenticated or changed its subscriptions: wake the waiters."""
        self._change.set()
        self._change = asyncio.Event()
        # stop() waits for the last connection to go.
        gone = self._all_gone
        if gone is not None and not gone.done() and not any(f.conns for f in self._feeds.values()):
            gone.set_result(None)

    async def wait_connections(self, market: str, count: int = 1, *, authenticated: bool = True) -> None:
        """Return once ``market`` has at least ``count`` (authenticated) connections.

        No timeout of its own: wrap it in ``asyncio.wait_for``.
        """
        feed = self._feed(market)
        while True:
            have = sum(1 for c in feed.conns if c.authenticated or not authenticated)
            if have >= count:
                return
            await self._change.wait()

    # --- faults: what each one does is said in faults.py ---

    def _targets(self, market: str | None) -> list[Feed]:
        return list(self._feeds.values()) if market is None else [self._feed(market)]

    def drop(self, market: str | None = None) -> int:
        return faults.drop(self._targets(market))

    def stall(self, market: str | None = None) -> int:
        return faults.stall(self._targets(market))

    def unstall(self, market: str | None = None) -> int:
        return faults.unstall(self._targets(market))

    def malformed(self, market: str | None = None) -> int:
        return faults.malformed(self._targets(market))

    def not_array(self, market: str | None = None) -> int:
        return faults.not_array(self._targets(market))

    def unknown_ev(self, market: str | None = None) -> int:
        return faults.unknown_ev(self._targets(market))

    def huge(self, market: str | None = None) -> int:
        return faults.huge(self._targets(market))

    def auth_fail(self, market: str | None = None) -> int:
        return faults.auth_fail(self._targets(market))

    def auth_fail_old(self, market: str | None = None) -> int:
        return faults.auth_fail_old(self._targets(market))

    def auth_ok(self, market: str | None = None) -> int:
        return faults.auth_ok(self._targets(market))

    def max_connections(self, market: str | None = None, *, current: bool = True) -> int:
        return faults.max_connections(self._targets(market), current=current)

    def slow(
        self, market: str | None = None, *, factor: float | None = None, delay: float | None = None
    ) -> int:
        """Without ``factor`` or ``delay``, the config's ``slow_factor`` and ``slow_delay``."""
        factor = self.config.slow_factor if factor is None else factor
        delay = self.config.slow_delay if delay is None else delay
        return faults.slow(self._targets(market), factor=factor, delay=delay)

    def unslow(self, market: str | None = None) -> int:
        return faults.unslow(self._targets(market))

    def rest_slow(self, market: str | None = None, *, delay: float = faults.REST_SLOW_DELAY) -> int:
        return faults.rest_slow(self._targets(market), delay=delay)

    def rest_429(self, market: str | None = None) -> int:
        return faults.rest_429(self._targets(market))

    def rest_5xx(self, market: str | None = None, *, status: int = faults.REST_5XX_STATUS) -> int:
        return faults.rest_5xx(self._targets(market), status=status)

    def rest_malformed(self, market: str | None = None) -> int:
        return faults.rest_malformed(self._targets(market))

    def rest_ok(self, market: str | None = None) -> int:
        return faults.rest_ok(self._targets(market))

    def fault(self, name: str, market: str | None = None, **params: Any) -> int:
        """Inject a fault by name (see ``FAULTS``); returns connections or markets affected."""
        if name not in faults.FAULTS:
            raise KeyError(name)
        method: Callable[..., int] = getattr(self, name)
        return method(market, **params)

    # --- stats and HTTP control ---

    def stats(self) -> dict[str, Any]:
        per_market = {market: feed.stats() for market, feed in self._feeds.items()}
        return {
            "uptime_seconds": round(time.monotonic() - self._started_at, 3) if self._server else 0.0,
            "port": self._port,
            "secure": self.secure,
            "connections": sum(m["connections"] for m in per_market.values()),
            "events_generated": sum(m["events_generated"] for m in per_market.values()),
            "events_sent": sum(m["events_sent"] for m in per_market.values()),
            "frames_sent": sum(m["frames_sent"] for m in per_market.values()),
            "auth_attempts": sum(m["auth_attempts"] for m in per_market.values()),
            "markets": per_market,
            "rest": self.rest.stats(),
            "clients": [conn.describe() for feed in self._feeds.values() for conn in feed.conns],
        }

    def _control(self, path: str, query: Mapping[str, str]) -> tuple[int, bytes]:
        """``/sim/stats``, ``/sim/health``, ``/sim/fault/<name>?market=&factor=&delay=&current=&status=``."""
        if path == "/sim/stats":
            return 200, orjson.dumps(self.stats())
        if path == "/sim/health":
            return 200, b'{"ok":true}'
        name = path.removeprefix("/sim/fault/")
        if name == path or name not in faults.FAULTS:
            return 404, orjson.dumps({"error": f"unknown path {path}", "faults": faults.FAULTS})
        market = query.get("market") or None
        try:
            if market is not None:
                self._feed(market)
            params = faults.query_params(name, query)
            affected = self.fault(name, market, **params)
        except ValueError as exc:
            return 400, orjson.dumps({"error": str(exc)})
        log.info("simulator: fault %s on %s (%d affected)", name, market or "all markets", affected)
        return 200, orjson.dumps({"fault": name, "market": market, "affected": affected})


async def run_simulator(
    config: SimulatorConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    ssl_context: ssl.SSLContext | None = None,
) -> None:
    """Serve the simulated feed until cancelled (``fastrelay sim``)."""
    sim = Simulator(config)
    await sim.start(host, port, ssl_context=ssl_context)
    generating = sim.config.markets
    sockets = [sim.url(market) for market in markets.MARKETS]
    log.info(
        "simulated Massive feed listening on %s: WebSocket %s (every market), REST aggregates %s, "
        "control %s; generating data for %s; api key %r",
        sim.rest_url,
        " ".join(sockets),
        sim.http_url("/v2/aggs/..."),
        sim.http_url("/sim/stats"),
        "every market" if set(generating) == set(markets.MARKETS) else ",".join(generating),
        sim.config.api_key,
        extra={"address": sim.rest_url.split("://", 1)[1], "urls": sockets, "markets": list(generating)},
    )
    try:
        await asyncio.Event().wait()
    finally:
        await sim.stop()
