"""The simulator's stand-in for Massive's REST aggregates: chart history that the live feed continues.

``GET /v2/aggs/ticker/{ticker}/range/{multiplier}/{timespan}/{from}/{to}``
``?adjusted=true&sort=asc&limit=5000&apiKey=KEY`` (or ``Authorization: Bearer
KEY``), answered on the simulator's port as Massive answers it: ``ticker``,
``queryCount``, ``resultsCount``, ``adjusted``, ``results`` (``v``, ``vw``,
``o``, ``c``, ``h``, ``l``, ``t``, ``n``; indices only ``o``, ``c``, ``h``,
``l``, ``t``), ``status``, ``request_id`` and, while there is more, ``next_url``
(absolute, on the same host, ``from`` moved on and an opaque ``cursor``, no
key). Tickers are REST's spellings: ``AAPL``, ``O:SPY251219C00650000``,
``I:SPX``, ``C:EURUSD``, ``X:BTCUSD``, futures contract codes.

The history is one price path with the live stream. Before the minute the
simulator started in, it is generated, deterministically from the config's
seed and the ticker, by walking *backwards* from the symbol's start price (where
the live walk begins): an hour of second bars, then minute bars back to the
local midnight seven days earlier, then a year of daily bars, each level ending
where the one after it opens. From then on, bars are the live feed's own: every
closed second window of every symbol is recorded (``feed.LiveBars``), folded
into real minutes, and the window still open is served as a partial bar. Hours,
days, weeks, months, quarters, years and multipliers are merged from those base
bars (seconds; minutes for minute and hour bars; days above), in Eastern Time
for stocks, options, indices and futures and in UTC for forex and crypto, as
Massive does. ``limit`` counts base bars (default 5000, at most 50000).

What is pure (history, request parsing, answers) is here; server.py hands it
each HTTP request of a REST path and writes the ``Answer`` back, after its
``delay``. REST faults are per market (``Feed.rest_*``, set by faults.py):
``rest_slow`` delays every answer, ``rest_429`` and ``rest_5xx`` replace it,
``rest_malformed`` cuts its body short of valid JSON; ``rest_ok`` ends them.
Counters are in ``/sim/stats`` under ``rest``.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime
import hmac
import itertools
import math
import random
import re
import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final, cast
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

import orjson

from fastrelay.sim.bars import (
    DAY_MS,
    MINUTE_MS,
    SECOND_MS,
    TIMESPANS,
    Bar,
    Bars,
    Buckets,
    chain,
    group,
    local_date,
    zone_of,
)
from fastrelay.sim.config import SimulatorConfig
from fastrelay.sim.feed import Feed, Symbol, Window
from fastrelay.sim.symbols import Spec

# --- what the history looks like ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Style:
    """How a market's history moves: daily volatility, volume and print sizes."""

    daily_vol: float
    # Mean volume of a minute; crypto: in dollars (divided by the price).
    minute_volume: float
    # Mean size of one print; crypto: in dollars.
    print_size: float
    # Volumes in whole units (shares, contracts, quotes); crypto: 8 decimals.
    whole: bool = True
    # Indices have no volume: their bars are o, c, h, l, t only.
    volume: bool = True


STYLES: Final = {
    "stocks": Style(0.018, 12_000, 120),
    "options": Style(0.05, 40, 4),
    "indices": Style(0.011, 0, 1, volume=False),
    # Forex volume is the number of quotes, as in CA.
    "forex": Style(0.005, 90, 1),
    "crypto": Style(0.03, 150_000, 1_500, whole=False),
    "futures": Style(0.012, 600, 3),
}
HISTORY_SECONDS: Final = 3600  # second bars before the start
HISTORY_DAYS_OF_MINUTES: Final = 7  # minute bars from the local midnight this many days before
HISTORY_DAYS: Final = 366  # daily bars before the minutes
# Pull of the daily walk back towards the start price: a year wanders some ten percent.
_DAILY_PULL: Final = 0.01
_HISTORIES_KEPT: Final = 32  # about 1 MB each


def walk_back(
    rng: random.Random,
    spec: Spec,
    style: Style,
    *,
    close: float,
    start: int,
    count: int,
    step: int,
    sigma: float,
    pull: float = 0.0,
    starts: list[int] | None = None,
) -> Bars:
    """``count`` bars of ``step`` ms from ``start`` whose last close is ``close``, walked backwards.

    Each bar opens where the one before it closed. Random numbers are drawn
    from the last bar back, so the bars nearest ``close`` do not depend on
    ``count``. ``starts``: the bars' start times, when they are not evenly spaced (days).
    """
    tick = spec.tick
    ref = spec.price
    # Prices are counted in ticks: a tick is ``unit / scale`` (0.25 is 25/100), so ``ticks * unit / scale``
    # (a division of integers, correctly rounded) is the price as its decimals write it, without round().
    scale = 10**spec.decimals
    unit = max(1, round(tick * scale))
    per_tick = scale / unit
    r = rng.random
    minutes = step / MINUTE_MS
    mean = style.minute_volume * minutes if style.volume else 0.0
    size = style.print_size
    coins = not style.whole  # crypto: dollars to coins at the bar's price
    prints = float(max(1, round(minutes * 60)))  # indices: a value a second
    # (u1 + u2 - 1) of two uniforms is triangular with a variance of 1/6: scaled to 1, fast.
    spread = sigma * math.sqrt(6.0)
    wick = 2.0 * sigma * per_tick
    ts = [float(start + k * step) for k in range(count)] if starts is None else [float(t) for t in starts]
    os_, hs, ls, cs, vs, pvs, ns = ([0.0] * count for _ in range(7))
    x = close
    kc = max(1, int(close * per_tick + 0.5))
    for k in range(count - 1, -1, -1):
        x = x * (1.0 - spread * (r() + r() - 1.0)) + (ref - x) * pull
        if x < tick:
            x = tick
        ko = int(x * per_tick + 0.5) or 1
        if ko >= kc:
            kh, kl = ko, kc
        else:
            kh, kl = kc, ko
        u = r()
        kh += int(wick * x * u * u)
        u = r()
        kl -= int(wick * x * u * u)
        if kl < 1:
            kl = 1
        o = ko * unit / scale
        h = kh * unit / scale
        low = kl * unit / scale
        c = kc * unit / scale
        if mean:
            u = r()
            if coins:
                v = round(mean / x * (0.2 + 2.4 * u * u), 8) + 1e-8
                n = float(int(v * x / size) + 1)
            else:
                v = float(int(mean * (0.2 + 2.4 * u * u)) + 1)
                n = float(int(v / size) + 1)
            vs[k] = v
            pvs[k] = (o + h + low + c) * 0.25 * v
        else:
            n = prints
        os_[k] = o
        hs[k] = h
        ls[k] = low
        cs[k] = c
        ns[k] = n
        kc = ko
    return Bars.of_columns((ts, os_, hs, ls, cs, vs, pvs, ns))


class History:
    """One ticker's bars before the simulator started (before ``end``, a minute), generated on first use.

    Seconds: the last hour, ending at the start price. Minutes: from the local
    midnight seven days before, the last hour's made of the seconds. Days: a
    year of daily bars before the minutes, then the minutes' days (the last one
    partial: it goes on live).
    """

    def __init__(self, spec: Spec, kind: str, seed: int | None, end: int) -> None:
        self.spec = spec
        self.kind = kind
        self.style = STYLES[kind]
        self.seed = f"{seed}|{spec.name}"
        self.end = end
        self.zone = zone_of(kind)
        self._seconds: Bars | None = None
        self._minutes: Bars | None = None
        self._days: Bars | None = None

    def _rng(self, level: str) -> random.Random:
        return random.Random(f"{self.seed}|{level}")

    @property
    def _minute_sigma(self) -> float:
        return self.style.daily_vol / math.sqrt(1440)

    def seconds(self) -> Bars:
        if self._seconds is None:
            self._seconds = walk_back(
                self._rng("second"), self.spec, self.style,
                close=self.spec.price, start=self.end - HISTORY_SECONDS * SECOND_MS, count=HISTORY_SECONDS,
                step=SECOND_MS, sigma=self._minute_sigma / math.sqrt(60),
            )  # fmt: skip
        return self._seconds

    def minutes(self) -> Bars:
        if self._minutes is None:
            seconds = self.seconds()
            first = int(seconds.row(0)[0])
            begin = Buckets("day", 1, self.zone).day_start(
                local_date(self.end, self.zone) - datetime.timedelta(days=HISTORY_DAYS_OF_MINUTES)
            )
            minutes = walk_back(
                self._rng("minute"), self.spec, self.style,
                close=seconds.row(0)[1], start=begin, count=(first - begin) // MINUTE_MS, step=MINUTE_MS,
                sigma=self._minute_sigma,
            )  # fmt: skip
            minutes.extend(
                bar for bar, _end, _count in group(seconds.rows(), Buckets("minute", 1, self.zone))
            )
            self._minutes = minutes
        return self._minutes

    def days(self) -> Bars:
        if self._days is None:
            minutes = self.minutes()
            buckets = Buckets("day", 1, self.zone)
            first = local_date(int(minutes.row(0)[0]), self.zone)
            dates = [first - datetime.timedelta(days=HISTORY_DAYS - k) for k in range(HISTORY_DAYS)]
            days = walk_back(
                self._rng("day"), self.spec, self.style,
                close=minutes.row(0)[1], start=0, count=HISTORY_DAYS, step=DAY_MS,
                sigma=self.style.daily_vol, pull=_DAILY_PULL, starts=[buckets.day_start(d) for d in dates],
            )  # fmt: skip
            days.extend(bar for bar, _end, _count in group(minutes.rows(), buckets))
            self._days = days
        return self._days


# --- tickers ---------------------------------------------------------------------------------


def rest_ticker(kind: str, name: str) -> str:
    """A simulator symbol as REST spells it: ``EUR/USD`` is ``C:EURUSD``, ``BTC-USD`` ``X:BTCUSD``."""
    if kind == "forex":
        return "C:" + name.replace("/", "").replace("-", "")
    if kind == "crypto":
        return "X:" + name.replace("-", "").replace("/", "")
    return name


def _normal_ticker(ticker: str) -> str:
    """Tickers as clients write them: ``C:EUR/USD`` is read as ``C:EURUSD``, ``X:BTC-USD`` as ``X:BTCUSD``."""
    if ticker.startswith(("C:", "X:")):
        return ticker[:2] + ticker[2:].replace("/", "").replace("-", "")
    return ticker


def _market_of_form(ticker: str) -> str:
    prefix = ticker[:2]
    return {"O:": "options", "I:": "indices", "C:": "forex", "X:": "crypto"}.get(prefix, "stocks")


# --- requests and answers --------------------------------------------------------------------

MAX_LIMIT: Final = 50_000
DEFAULT_LIMIT: Final = 5_000
BASE: Final = {
    "second": "second",
    "minute": "minute",
    "hour": "minute",
    "day": "day",
    "week": "day",
    "month": "day",
    "quarter": "day",
    "year": "day",
}
RATE_LIMITED: Final = (
    "You've exceeded the maximum requests per minute, please wait or upgrade your subscription to continue. "
    "https://massive.com/pricing"
)
_AGGS: Final = re.compile(r"/v2/aggs/ticker/([^/]+)/range/([^/]+)/([^/]+)/([^/]+)/([^/]+)/?")
_DATE: Final = re.compile(r"\d{4}-\d{2}-\d{2}")
# What a load balancer in front of the API answers, as HTML.
_GATEWAY_PAGES: Final = {
    status: (
        f"<html>\r\n<head><title>{status} {text}</title></head>\r\n<body>\r\n"
        f"<center><h1>{status} {text}</h1></center>\r\n</body>\r\n</html>\r\n"
    ).encode()
    for status, text in ((502, "Bad Gateway"), (503, "Service Temporarily Unavailable"))
}
_RECENT_KEPT: Final = 20


@dataclasses.dataclass
class Answer:
    """What to write back: status, body and its type, after ``delay`` seconds."""

    status: int
    body: bytes
    content_type: str = "application/json"
    delay: float = 0.0


class BadRequest(Exception):
    """A request Massive would refuse with 400; the message is its ``error``."""


@dataclasses.dataclass(frozen=True)
class Query:
    """One aggregates request, parsed: ``lo``/``hi`` are the snapped window in Unix ms."""

    ticker: str
    multiplier: int
    timespan: str
    from_text: str
    to_text: str
    adjusted: bool
    sort: str
    limit: int


def _unparsable(name: str) -> str:
    return f"Could not parse the time parameter: '{name}'. Use YYYY-MM-DD or Unix MS Timestamps"


def _request_id() -> str:
    return uuid.uuid4().hex


def _error(status: int, message: str, state: str = "ERROR") -> Answer:
    key = "message" if state == "NOT_FOUND" else "error"
    return Answer(status, orjson.dumps({"status": state, "request_id": _request_id(), key: message}))


def _flag(text: str, name: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise BadRequest(f"Invalid value for '{name}': {text!r}. Use true or false")


def _encode_cursor(limit: int, sort: str, adjusted: bool) -> str:
    text = urlencode({"adjusted": str(adjusted).lower(), "limit": limit, "sort": sort})
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> dict[str, str]:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadRequest("Invalid cursor") from None
    values = {key: items[-1] for key, items in parse_qs(text).items()}
    if not values.keys() >= {"limit", "sort"}:
        raise BadRequest("Invalid cursor")
    return values


def parse_query(ticker: str, parts: tuple[str, str, str, str], params: Mapping[str, str]) -> Query:
    """The aggregates request of a path's segments and query; ``BadRequest`` as Massive refuses one."""
    multiplier_text, timespan, from_text, to_text = parts
    if timespan not in TIMESPANS:
        raise BadRequest(f"Unknown timespan: {timespan!r}. Use one of {', '.join(TIMESPANS)}")
    if not multiplier_text.isdigit() or int(multiplier_text) < 1:
        raise BadRequest(f"Invalid multiplier: {multiplier_text!r}. Use a positive integer")
    for name, text in (("from", from_text), ("to", to_text)):
        if not (text.isdigit() or _DATE.fullmatch(text)):
            raise BadRequest(
                f"Could not parse the time parameter: '{name}'. Use YYYY-MM-DD or Unix MS Timestamps"
            )
    values = dict(params)
    if "cursor" in values:
        values.update(_decode_cursor(values["cursor"]))
    sort = values.get("sort", "asc")
    if sort not in ("asc", "desc"):
        raise BadRequest(f"Invalid value for 'sort': {sort!r}. Use asc or desc")
    limit_text = values.get("limit", str(DEFAULT_LIMIT))
    if not limit_text.isdigit() or int(limit_text) < 1:
        raise BadRequest(f"Invalid value for 'limit': {limit_text!r}. Use a positive integer")
    return Query(
        ticker=ticker,
        multiplier=int(multiplier_text),
        timespan=timespan,
        from_text=from_text,
        to_text=to_text,
        adjusted=_flag(values.get("adjusted", "true"), "adjusted"),
        sort=sort,
        limit=min(int(limit_text), MAX_LIMIT),
    )


def _instant(text: str, name: str, zone: datetime.tzinfo, last: bool) -> int:
    """A ``from``/``to`` in Unix ms; a date is its first (``last``: its last) ms in ``zone``."""
    if text.isdigit():
        return int(text)
    try:
        day = datetime.date.fromisoformat(text)
    except ValueError:
        raise BadRequest(_unparsable(name)) from None
    buckets = Buckets("day", 1, zone)
    if last:
        return buckets.day_start(day + datetime.timedelta(days=1)) - 1
    return buckets.day_start(day)


def _window_bar(w: Window, start: int | None = None) -> Bar:
    return (float(w.start if start is None else start), w.o, w.h, w.l, w.c, w.v, w.pv, float(w.n))


# --- the endpoint ----------------------------------------------------------------------------


class RestApi:
    """Massive's aggregates endpoint over the simulator's feeds: tickers, histories, answers, counters."""

    def __init__(self, config: SimulatorConfig, feeds: Mapping[str, Feed]) -> None:
        self.config = config
        self.feeds = feeds
        # REST ticker -> the feed whose live walk continues its history: a futures
        # contract on several futures paths goes with the first that generates.
        ordered = sorted(feeds.values(), key=lambda feed: not feed.generate)
        self.tickers: dict[str, tuple[Feed, Symbol]] = {}
        for feed in ordered:
            for sym in feed.symbols:
                self.tickers.setdefault(rest_ticker(feed.kind, sym.name), (feed, sym))
        self.end: int | None = None
        self._histories: OrderedDict[tuple[str, str], History] = OrderedDict()
        self.requests = 0
        self.by_status: Counter[str] = Counter()
        self.by_kind: Counter[str] = Counter()
        self.by_ticker: Counter[str] = Counter()
        self.results = 0
        self.recent: deque[dict[str, Any]] = deque(maxlen=_RECENT_KEPT)

    def started(self, now_ms: int) -> None:
        """The simulator starts: the generated history ends at the start of this minute (the first time)."""
        if self.end is None:
            self.end = now_ms - now_ms % MINUTE_MS

    def history(self, feed: Feed, sym: Symbol) -> History:
        if self.end is None:
            raise RuntimeError("the simulator has not started")
        key = (feed.kind, sym.name)
        found = self._histories.get(key)
        if found is None:
            found = History(sym.spec, feed.kind, self.config.seed, self.end)
            self._histories[key] = found
            if len(self._histories) > _HISTORIES_KEPT:
                self._histories.popitem(last=False)
        else:
            self._histories.move_to_end(key)
        return found

    # --- HTTP ---

    def answer(self, method: str, target: str, headers: Mapping[str, str], origin: str) -> Answer:
        """The answer to one HTTP request (``headers`` with lower-case names; ``origin``: scheme://host)."""
        split = urlsplit(target)
        params = {key: values[-1] for key, values in parse_qs(split.query, keep_blank_values=True).items()}
        match = _AGGS.fullmatch(split.path)
        asked = unquote(match.group(1)) if match else ""
        ticker = _normal_ticker(asked)
        found = self.tickers.get(ticker)
        feed = found[0] if found else self.feeds[_market_of_form(ticker)]
        kind = "other" if match is None else "aggs_page" if "cursor" in params else "aggs"
        answer = self._answer(method, match, asked, found, feed, params, headers, origin)
        if feed.rest_malformed:
            answer.body = answer.body[: max(1, len(answer.body) // 2)]
        answer.delay = feed.rest_delay
        self.requests += 1
        self.by_status[str(answer.status)] += 1
        self.by_kind[kind] += 1
        if found is not None:
            self.by_ticker[ticker] += 1
        shown = urlencode({k: v for k, v in params.items() if k.lower() != "apikey"})
        self.recent.append({"path": split.path + (f"?{shown}" if shown else ""), "status": answer.status})
        return answer

    def _answer(
        self,
        method: str,
        match: re.Match[str] | None,
        ticker: str,
        found: tuple[Feed, Symbol] | None,
        feed: Feed,
        params: Mapping[str, str],
        headers: Mapping[str, str],
        origin: str,
    ) -> Answer:
        if feed.rest_status == 429:
            return _error(429, RATE_LIMITED)
        if feed.rest_status is not None:
            page = _GATEWAY_PAGES.get(feed.rest_status, _GATEWAY_PAGES[502])
            return Answer(feed.rest_status, page, "text/html")
        if method != "GET":
            return _error(405, f"Method {method} not allowed")
        key = params.get("apiKey")
        if key is None:
            scheme, _, token = headers.get("authorization", "").partition(" ")
            key = token.strip() if scheme.lower() == "bearer" else None
        if not key:
            return _error(401, "API Key was not provided")
        if not hmac.compare_digest(key.encode(), self.config.api_key.encode()):
            return _error(401, "Unknown API Key")
        if match is None:
            return _error(404, "Not found: this simulator serves /v2/aggs/ticker/... only", "NOT_FOUND")
        try:
            parts = cast(tuple[str, str, str, str], tuple(unquote(part) for part in match.groups()[1:]))
            query = parse_query(ticker, parts, params)
        except BadRequest as exc:
            return _error(400, str(exc))
        if found is None:
            return _error(404, f"Ticker not found: {ticker}", "NOT_FOUND")
        try:
            return self.aggregates(query, *found, origin)
        except BadRequest as exc:
            return _error(400, str(exc))

    # --- bars ---

    def base_rows(self, feed: Feed, sym: Symbol, level: str, lo: int, hi: int) -> Iterator[Bar]:
        """A ticker's base bars (``second``, ``minute`` or ``day``) that start in ``[lo, hi)``, in order."""
        history = self.history(feed, sym)
        live = sym.live
        window = sym.sec
        # Seconds and minutes: the history ends before the first live bar, and the live ones are
        # distinct, so itertools' chain will do (the bars' own chain merges bars of the same start).
        if level == "second":
            partial = [_window_bar(window)] if window is not None and lo <= window.start < hi else []
            return itertools.chain(history.seconds().between(lo, hi), live.seconds.between(lo, hi), partial)
        current: list[Bar] = []
        if live.current is not None:
            current.append(cast(Bar, tuple(live.current)))
        if window is not None:
            current.append(_window_bar(window, window.start - window.start % MINUTE_MS))
        if level == "minute":
            now = [bar for bar in chain(current) if lo <= bar[0] < hi]
            return itertools.chain(history.minutes().between(lo, hi), live.minutes.between(lo, hi), now)
        days = Buckets("day", 1, history.zone)
        recent = (
            bar
            for bar, _end, _count in group(chain(live.minutes.between(lo, hi), current), days)
            if lo <= bar[0] < hi
        )
        return chain(history.days().between(lo, hi), live.days.between(lo, hi), recent)

    def aggregates(self, query: Query, feed: Feed, sym: Symbol, origin: str) -> Answer:
        """One page of bars, with ``next_url`` when the window holds more than ``limit`` base bars."""
        zone = zone_of(feed.kind)
        buckets = Buckets(query.timespan, query.multiplier, zone)
        try:
            lo = buckets(_instant(query.from_text, "from", zone, last=False))[0]
            hi = buckets(_instant(query.to_text, "to", zone, last=True))[1]
        except (OverflowError, OSError, ValueError):
            raise BadRequest("The time window is out of range") from None
        base = BASE[query.timespan]
        rows = self.base_rows(feed, sym, base, lo, hi) if lo < hi else iter(())
        bars: list[Bar]
        counts: list[int] | None = None  # base bars in each, when not one
        if query.multiplier == 1 and query.timespan == base:
            bars = list(rows)
        else:
            grouped = list(group(rows, buckets))
            bars = [bar for bar, _end, _count in grouped]
            counts = [count for _bar, _end, count in grouped]
        page, used, more = _page(bars, counts, query.limit, query.sort)
        body: dict[str, Any] = {
            "ticker": query.ticker,
            "queryCount": used,
            "resultsCount": len(page),
            "adjusted": query.adjusted,
        }
        if page:
            body["results"] = results(page, STYLES[feed.kind], sym.decimals)
        body["status"] = "OK"
        body["request_id"] = _request_id()
        if more:
            last = int(page[-1][0])
            if query.sort == "asc":
                window = (str(buckets(last)[1]), query.to_text)
            else:
                window = (query.from_text, str(last - 1))
            cursor = _encode_cursor(query.limit, query.sort, query.adjusted)
            body["next_url"] = (
                f"{origin}/v2/aggs/ticker/{quote(query.ticker, safe=':.')}/range/{query.multiplier}/"
                f"{query.timespan}/{window[0]}/{window[1]}?cursor={cursor}"
            )
        self.results += len(page)
        return Answer(200, orjson.dumps(body))

    # --- stats ---

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "by_status": dict(self.by_status),
            "by_kind": dict(self.by_kind),
            "by_ticker": dict(self.by_ticker),
            "results": self.results,
            "histories": len(self._histories),
            "history_end_ms": self.end,
            "recent": list(self.recent),
        }


def _page(bars: list[Bar], counts: list[int] | None, limit: int, sort: str) -> tuple[list[Bar], int, bool]:
    """The first (``desc``: the last, newest first) bars whose base bars fit in ``limit``, at least one:
    ``(bars, base bars in them, whether more are left)``."""
    if counts is None:
        page = bars[:limit] if sort == "asc" else bars[: -limit - 1 if limit < len(bars) else None : -1]
        return page, len(page), len(bars) > limit
    order = range(len(bars)) if sort == "asc" else range(len(bars) - 1, -1, -1)
    page = []
    total = 0
    for i in order:
        if page and total + counts[i] > limit:
            return page, total, True
        page.append(bars[i])
        total += counts[i]
    return page, total, False


def results(page: Sequence[Bar], style: Style, decimals: int) -> list[dict[str, Any]]:
    """Bars as Massive's ``results``: ``v``, ``vw`` (between ``l`` and ``h``), ``o``, ``c``, ``h``, ``l``,
    ``t``, ``n``; indices ``o``, ``c``, ``h``, ``l``, ``t``."""
    if not style.volume:
        return [{"o": o, "c": c, "h": h, "l": low, "t": int(t)} for t, o, h, low, c, _v, _pv, _n in page]
    # The VWAP to two decimals more than the prices (four at least), as ``units / scale`` (a division
    # of integers is correctly rounded, so it prints short; faster than round()), kept within the range.
    scale = 10 ** max(4, decimals + 2)
    vwaps = [int(pv / v * scale + 0.5) / scale if v else c for _t, _o, _h, _l, c, v, pv, _n in page]
    whole = style.whole
    return [
        {"v": int(v) if whole else round(v, 8), "vw": vw if low <= vw <= h else h if vw > h else low,
         "o": o, "c": c, "h": h, "l": low, "t": int(t), "n": int(n)}
        for (t, o, h, low, c, v, _pv, n), vw in zip(page, vwaps, strict=True)
    ]  # fmt: skip
