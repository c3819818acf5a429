"""Bars from Massive's REST API for every client, at the cost of one account.

REST calls count against the account's plan, and a thousand browsers opening
the same chart at once must not become a thousand calls. So every answer goes
through:

* a cache bounded in bytes: an answer whose range reaches into the current bar
  lives ``fresh_ttl`` (it changes as the bar forms), a closed range ``closed_ttl``;
* single flight: a query already on its way is waited for, not asked again;
* a rate limit for the whole account (``--rest-per-minute``): past it, clients
  get an error, Massive gets nothing;
* a pause after Massive's own 429 (its ``Retry-After``, or ``backoff``): until
  it passes, clients get an error naming the wait, not a retry storm.

``RestSource`` is the HTTP side (httpx; the key in an ``Authorization`` header,
never in a URL, a log line or an error). Bars are Massive's ``results`` dicts,
pages followed through ``next_url`` up to the query's limit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

import orjson

from fastrelay.aggs import BarQuery, BarsError, BarSet
from fastrelay.histogram import Histogram
from fastrelay.ratelimit import LogThrottle, TokenBucket

log = logging.getLogger("fastrelay.bars")

# Why a bars request ended as it did (the ``result`` label of the requests metric).
HIT: Final = "hit"
MISS: Final = "miss"
COALESCED: Final = "coalesced"
RESULTS: Final = (HIT, MISS, COALESCED)
ERROR_REASONS: Final = (
    "rate_limited",
    "upstream_429",
    "upstream_error",
    "not_found",
    "bad_answer",
    "unavailable",
)
LATENCY_BOUNDS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
MAX_PAGES: Final = 100  # 50,000 bars a page: far past any limit a query may ask


class Source(Protocol):
    """Where bars come from (``RestSource``; a fake in unit tests)."""

    async def get(self, path: str, params: dict[str, str]) -> tuple[int, dict[str, str], bytes]: ...
    async def close(self) -> None: ...


class RestSource:
    """Massive's REST API over httpx: one pooled client, TLS verified, the key in a header."""

    def __init__(
        self, base_url: str, api_key: str, ca_file: str | None = None, timeout: float = 10.0
    ) -> None:
        import httpx

        self.base_url = base_url.rstrip("/")
        verify: Any = True if ca_file is None else _ssl_context(ca_file)
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout,
            verify=verify,
            follow_redirects=False,
        )

    async def get(self, path: str, params: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        response = await self._client.get(path, params=params)
        return response.status_code, dict(response.headers), response.content

    async def close(self) -> None:
        await self._client.aclose()


def _ssl_context(ca_file: str) -> Any:
    import ssl

    return ssl.create_default_context(cafile=ca_file)


@dataclass
class _Entry:
    bars: list[dict[str, Any]]
    size: int
    expires: float


class BarCache:
    """Answers by query, least recently used first out, bounded in (approximate) bytes."""

    def __init__(self, max_bytes: int, clock: Callable[[], float]) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._clock = clock
        self._entries: OrderedDict[BarQuery, _Entry] = OrderedDict()

    def get(self, query: BarQuery) -> list[dict[str, Any]] | None:
        entry = self._entries.get(query)
        if entry is None:
            return None
        if entry.expires <= self._clock():
            self._drop(query)
            return None
        self._entries.move_to_end(query)
        return entry.bars

    def put(self, query: BarQuery, bars: list[dict[str, Any]], size: int, ttl: float) -> None:
        if size > self.max_bytes or ttl <= 0:
            return
        self._drop(query)
        self._entries[query] = _Entry(bars, size, self._clock() + ttl)
        self.bytes += size
        while self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, query: BarQuery) -> None:
        entry = self._entries.pop(query, None)
        if entry is not None:
            self.bytes -= entry.size

    def __len__(self) -> int:
        return len(self._entries)


@dataclass
class BarsStatistics:
    results: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RESULTS, 0))
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ERROR_REASONS, 0))
    upstream_requests: int = 0
    latency: Histogram = field(default_factory=lambda: Histogram(LATENCY_BOUNDS))


class Bars:
    """Cached, coalesced, rate-limited bars for any number of clients."""

    def __init__(
        self,
        source: Source,
        *,
        per_minute: float = 60.0,
        max_bytes: int = 64 * 1024 * 1024,
        fresh_ttl: float = 5.0,
        closed_ttl: float = 3600.0,
        backoff: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self.source = source
        self.cache = BarCache(max_bytes, clock)
        self.stats = BarsStatistics()
        self._limiter = TokenBucket(per_minute / 60.0, max(1.0, per_minute / 6), clock=clock)
        self._fresh_ttl = fresh_ttl
        self._closed_ttl = closed_ttl
        self._backoff = backoff
        self._clock = clock
        self._wall_ms = wall_ms
        self._paused_until = 0.0
        self._inflight: dict[BarQuery, asyncio.Task[list[dict[str, Any]]]] = {}
        self._throttle = LogThrottle(log, interval=10.0)

    async def fetch(self, query: BarQuery) -> list[dict[str, Any]]:
        """The bars of ``query`` (Massive's result dicts, oldest first); ``BarsError`` if none."""
        cached = self.cache.get(query)
        if cached is not None:
            self.stats.results[HIT] += 1
            return cached
        pending = self._inflight.get(query)
        if pending is not None:
            self.stats.results[COALESCED] += 1
            return await asyncio.shield(pending)
        self._admit()
        self.stats.results[MISS] += 1
        # The call runs on its own: a client that leaves (its request cancelled) does not
        # cancel it for the others waiting, and the cache gets the answer anyway.
        task = asyncio.get_running_loop().create_task(self._fetch_counted(query))
        self._inflight[query] = task
        task.add_done_callback(lambda done: self._landed(query, done))
        return await asyncio.shield(task)

    def _landed(self, query: BarQuery, task: asyncio.Task[list[dict[str, Any]]]) -> None:
        self._inflight.pop(query, None)
        if not task.cancelled():
            task.exception()  # retrieved: an error nobody waited for is counted, not warned about

    async def _fetch_counted(self, query: BarQuery) -> list[dict[str, Any]]:
        try:
            return await self._fetch_pages(query)
        except BarsError as error:
            self.stats.errors[error.reason] += 1
            raise

    def _admit(self) -> None:
        now = self._clock()
        if now < self._paused_until:
            wait = self._paused_until - now
            self.stats.errors["upstream_429"] += 1
            raise BarsError(
                "upstream_429", f"history: Massive's rate limit reached; try again in {wait:.0f} s"
            )
        if not self._limiter.take():
            self.stats.errors["rate_limited"] += 1
            raise BarsError("rate_limited", "history: the relay's REST budget is spent; try again shortly")

    async def _fetch_pages(self, query: BarQuery) -> list[dict[str, Any]]:
        started = time.perf_counter()
        bars: list[dict[str, Any]] = []
        size = 0
        path, params = query.path(), query.params()
        for _ in range(MAX_PAGES):
            self.stats.upstream_requests += 1
            try:
                status, headers, body = await self.source.get(path, params)
            except Exception as exc:
                self._throttle.log(logging.WARNING, "Massive REST unreachable: %s", type(exc).__name__)
                raise BarsError("unavailable", "history: Massive's REST API is unreachable") from None
            if status == 429:
                self._pause(headers)
                raise BarsError("upstream_429", "history: Massive's rate limit reached; try again later")
            if status == 404:
                raise BarsError("not_found", f"history: no bars for {query.ticker}")
            if status != 200:
                self._throttle.log(
                    logging.WARNING,
                    "Massive REST answered %d for %s",
                    status,
                    query.timespan,
                    extra={"status": status, "reason": "rest_error"},
                )
                raise BarsError("upstream_error", f"history: Massive answered {status}")
            try:
                page = orjson.loads(body)
                results = page.get("results") or []
                if not isinstance(results, list):
                    raise TypeError("results is not a list")
            except (orjson.JSONDecodeError, TypeError, AttributeError):
                raise BarsError("bad_answer", "history: Massive's answer did not decode") from None
            bars.extend(results)
            size += len(body)
            next_url = page.get("next_url")
            if not next_url or len(bars) >= query.limit:
                break
            # Massive's next_url is absolute and carries no key: keep its path and query.
            parts = urlsplit(str(next_url))
            path, params = parts.path, dict(_query_pairs(parts.query))
        self.stats.latency.observe(time.perf_counter() - started)
        bars = BarSet(bars[: query.limit])
        ttl = self._fresh_ttl if query.reaches_now(self._wall_ms()) else self._closed_ttl
        # Kept as dicts (about three times their JSON) plus their encodings (BarSet): the
        # cache's byte bound counts four times the JSON, so --rest-cache-bytes holds.
        self.cache.put(query, bars, size * 4, ttl)
        return bars

    def _pause(self, headers: dict[str, str]) -> None:
        retry = headers.get("retry-after", "")
        delay = float(retry) if retry.replace(".", "", 1).isdigit() else self._backoff
        self._paused_until = max(self._paused_until, self._clock() + delay)
        self._throttle.log(
            logging.WARNING,
            "Massive REST rate limit (429): pausing %.0f s",
            delay,
            extra={"status": 429, "reason": "rate_limited", "seconds": delay},
        )

    async def close(self) -> None:
        await self.source.close()


def _query_pairs(query: str) -> list[tuple[str, str]]:
    from urllib.parse import parse_qsl

    return [(k, v) for k, v in parse_qsl(query) if k.lower() != "apikey"]


class AccountBars:
    """One ``Bars`` per account (key): markets on another account (--api-key-for) are asked
    with their own key and counted against their own budget."""

    def __init__(self, per_key: dict[str, Bars], key_of: Callable[[str], str]) -> None:
        self._per_key = per_key
        self._key_of = key_of

    @classmethod
    def from_config(cls, config: Any) -> AccountBars | None:
        """The REST source of a relay with a key (None: --rest-url '' or no key)."""
        from fastrelay.config import api_key_of

        if not config.rest_url:
            return None
        keys = {api_key_of(config, market) for market in config.markets}
        keys.discard("")
        for key in [k for k in keys if not (k.isascii() and k.isprintable())]:
            # It cannot travel in an HTTP header (and the error would quote it): no REST.
            markets = [m for m in config.markets if api_key_of(config, m) == key]
            log.warning("the API key of %s is not printable ASCII: no REST history", ",".join(markets))
            keys.discard(key)
        if not keys:
            return None
        per_key = {
            key: Bars(
                RestSource(config.rest_url, key, config.rest_ca),
                per_minute=config.rest_per_minute,
                max_bytes=config.rest_cache_bytes,
            )
            for key in keys
        }
        return cls(per_key, lambda market: api_key_of(config, market))

    async def fetch(self, market: str, query: BarQuery) -> list[dict[str, Any]]:
        bars = self._per_key.get(self._key_of(market))
        if bars is None:
            raise BarsError("unavailable", "history: no REST source for this market")
        return await bars.fetch(query)

    def accounts(self) -> list[Bars]:
        return list(self._per_key.values())

    async def close(self) -> None:
        for bars in self._per_key.values():
            await bars.close()
