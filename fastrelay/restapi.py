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
bars. The HTTP side is ``front.py``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import orjson

from fastrelay.aggs import BarQuery, QueryError, make_query

REST_PREFIXES: Final = (b"/v1/", b"/v2/", b"/v3/", b"/vX/")
_AGGS: Final = re.compile(
    r"^/v2/aggs/ticker/(?P<ticker>[^/]+)/range/(?P<multiplier>[^/]+)/(?P<timespan>[^/]+)"
    r"/(?P<start>[^/]+)/(?P<end>[^/]+)/?$"
)
JSON_HEADERS: Final = (("Content-Type", "application/json"), ("Cache-Control", "no-store"))


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes


@dataclass(frozen=True)
class BarsRequest:
    market: str
    query: BarQuery
    base: str  # scheme://host the client reached, for next_url


def is_rest(target: bytes) -> bool:
    return target.startswith(REST_PREFIXES)


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
    method: str, target: str, headers: dict[str, str], accepts: Any, served: tuple[str, ...]
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
    proto = headers.get("x-forwarded-proto", "http")
    host = headers.get("host", "127.0.0.1")
    return BarsRequest(market, query, f"{'https' if proto == 'https' else 'http'}://{host}")


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
        body["results"] = bars
    body["status"] = "OK"
    body["request_id"] = request_id()
    if bars and len(bars) >= query.limit:
        last = int(bars[-1].get("t", 0))
        if query.sort == "asc":
            start, end = str(last + 1), query.end
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
