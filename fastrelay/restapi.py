"""Massive's REST aggregates at the relay's own address, for services without a key; pure.

A service using Massive's official REST client with its base URL set to the
relay (``RESTClient(api_key=TOKEN, base="http://relay:3001")``) gets
aggregates at Massive's own path::

    GET /v2/aggs/ticker/{ticker}/range/{multiplier}/{timespan}/{from}/{to}?adjusted=&sort=&limit=

answered from the relay's ``bars.Bars`` (cached, coalesced, one account's
budget) in Massive's JSON, with ``next_url`` pointing back at the relay and
nothing that names the key. Every other path under ``/v2`` and ``/v3`` gets a
Massive-style 404 saying that only aggregates are served (docs/protocol.md,
"REST"). The key a REST client sends (``apiKey`` or ``Authorization: Bearer``)
is the relay's client token: ignored in open mode, one of ``--client-tokens``
otherwise.

``route`` turns a request into either an answer now (``Answer``) or a bars
query to fetch (``BarsRequest``); ``bars_answer`` builds the answer from the
bars; ``RestEndpoint`` puts them together with the fetch and the per-address
limit. The HTTP side is ``front.py``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import orjson

from fastrelay.aggs import SPAN_MS, BarQuery, BarsError, BarSet, QueryError, make_query

_AGGS: Final = re.compile(
    r"^/v2/aggs/ticker/(?P<ticker>[^/]+)/range/(?P<multiplier>[^/]+)/(?P<timespan>[^/]+)"
    r"/(?P<start>[^/]+)/(?P<end>[^/]+)/?$"
)
JSON_HEADERS: Final = (("Content-Type", "application/json"), ("Cache-Control", "no-store"))


@dataclass(frozen=True)
class Answer:
    """An HTTP answer (front.py writes it)."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()  # more response headers (Allow, ...)


@dataclass(frozen=True)
class BarsRequest:
    market: str
    query: BarQuery
    base: str  # scheme://host the client reached, for next_url


def request_id() -> str:
    return os.urandom(16).hex()


def error(status: int, message: str, kind: str = "ERROR") -> Answer:
    return Answer(status, orjson.dumps({"status": kind, "request_id": request_id(), "error": message}))


def market_of(ticker: str) -> str:
    """The market of a REST ticker: ``O:`` options, ``I:`` indices, ``C:`` forex, ``X:`` crypto."""
    return {"O:": "options", "I:": "indices", "C:": "forex", "X:": "crypto"}.get(ticker[:2], "stocks")


def client_key(params: dict[str, str], headers: dict[str, str]) -> str | None:
    """The key a REST client sent: ``apiKey`` in the query or ``Authorization: Bearer``."""
    if "apiKey" in params:
        return params["apiKey"]
    scheme, _, value = headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


def route(
    method: str, target: str, headers: dict[str, str], accepts: Any, served: tuple[str, ...], origin: str = ""
) -> Answer | BarsRequest:
    """What to do with one REST request; ``accepts(key)`` checks a client token."""
    if method != "GET":
        return error(405, "only GET is served here")
    parts = urlsplit(target)
    params = dict(parse_qsl(parts.query))
    key = client_key(params, headers)
    if not accepts(key or ""):
        # Massive's answer to a bad key, without the key.
        return error(401, "Unknown API Key" if key else "API Key was not provided")
    found = _AGGS.match(parts.path)
    if found is None:
        return error(404, "this relay serves Massive's aggregates only: /v2/aggs/ticker/...", "NOT_FOUND")
    ticker = unquote(found["ticker"])
    market = market_of(ticker)
    if market not in served:
        return error(404, f"market {market} is not served by this relay", "NOT_FOUND")
    try:
        query = make_query(
            ticker,
            found["multiplier"],
            found["timespan"],
            found["start"],
            found["end"],
            params.get("limit", "5000"),
            params.get("sort", "asc"),
            params.get("adjusted", "true"),
        )
    except QueryError as exc:
        return error(400, str(exc).removeprefix("history: "))
    if headers.get("x-forwarded-proto") == "https":  # behind nginx's TLS
        origin = "https://" + origin.partition("://")[2]
    return BarsRequest(market, query, origin or f"http://{headers.get('host', '127.0.0.1')}")


def bars_answer(request: BarsRequest, bars: list[dict[str, Any]]) -> Answer:
    """Massive's JSON for ``bars``; ``next_url`` (back at the relay, no key) when the limit
    was reached: the next page starts after the last bar."""
    query = request.query
    body: dict[str, Any] = {
        "ticker": query.ticker,
        "queryCount": len(bars),
        "resultsCount": len(bars),
        "adjusted": query.adjusted,
    }
    if bars:
        # The results are the same bytes for every client of a cached answer: encoded once.
        results = bars.built.get(("results",)) if isinstance(bars, BarSet) else None
        if results is None:
            results = orjson.Fragment(orjson.dumps(list(bars)))
            if isinstance(bars, BarSet):
                bars.built[("results",)] = results
        body["results"] = results
    body["status"] = "OK"
    body["request_id"] = request_id()
    if bars and len(bars) >= query.limit:
        last = int(bars[-1].get("t", 0))
        if query.sort == "asc":
            # The next window's start: Massive floors `from` to its window, so last + 1 ms
            # would bring the last bar again.
            start, end = str(last + _step(query)), query.end
        else:
            start, end = query.start, str(last - 1)
        path = (
            f"/v2/aggs/ticker/{quote(query.ticker, safe=':')}/range/{query.multiplier}/{query.timespan}"
            f"/{start}/{end}"
        )
        body["next_url"] = (
            f"{request.base}{path}?adjusted={'true' if query.adjusted else 'false'}"
            f"&sort={query.sort}&limit={query.limit}"
        )
    return Answer(200, orjson.dumps(body))


Fetch = Callable[[str, BarQuery], Awaitable[list[dict[str, Any]]]]


class RestEndpoint:
    """The relay's REST answers: tokens, served markets, bars, a per-address limit, counts."""

    def __init__(
        self,
        accepts: Callable[[str], bool],
        served: tuple[str, ...],
        fetch: Fetch | None,
        allow: Callable[[str], bool],
        responses: dict[int, int],
    ) -> None:
        self.accepts = accepts
        self.served = served
        self.fetch = fetch
        self.allow = allow  # an address's REST requests within its budget
        self.responses = responses  # by HTTP status

    async def answer(
        self, method: str, target: str, headers: dict[str, str], origin: str, peer: str
    ) -> Answer:
        answer = await self._answer(method, target, headers, origin, peer)
        self.responses[answer.status] = self.responses.get(answer.status, 0) + 1
        return answer

    async def _answer(
        self, method: str, target: str, headers: dict[str, str], origin: str, peer: str
    ) -> Answer:
        if not self.allow(peer):
            return error(429, "too many requests from your address: slow down")
        routed = route(method, target, headers, self.accepts, self.served, origin)
        if isinstance(routed, Answer):
            return routed
        if self.fetch is None:
            return error(503, "this relay has no REST source (no Massive key)")
        try:
            bars = await self.fetch(routed.market, routed.query)
        except BarsError as exc:
            status = {"rate_limited": 429, "upstream_429": 429, "not_found": 404}.get(exc.reason, 502)
            return error(status, str(exc).removeprefix("history: "))
        return bars_answer(routed, bars)


# Calendar windows vary in length; a step this long lands in the next one, whose start
# Massive floors it to.
_CALENDAR_STEP: Final = {"month": 28, "quarter": 89, "year": 365}


def _step(query: BarQuery) -> int:
    span = SPAN_MS.get(query.timespan)
    if span is not None:
        return span * query.multiplier
    return _CALENDAR_STEP[query.timespan] * 86_400_000 * query.multiplier
