"""Aggregate bars from Massive's REST API, as the relay asks for and hands them out; pure.

A chart opens with history: the relay's ``history`` extension answers from the
bars it has seen live and, for what it has not seen, from Massive's REST
aggregates endpoint (docs/protocol.md, "history")::

    GET /v2/aggs/ticker/{ticker}/range/{multiplier}/{timespan}/{from}/{to}
        ?adjusted=true&sort=asc&limit=50000

This module holds what needs no socket: the query (``BarQuery``, parsed from a
``history`` message or a REST path and validated), the REST ticker spelling of
a channel, the conversion of a REST bar to the event shape of a live aggregate,
the join of REST bars with live ones (no duplicate, no gap at the seam), and how
long an answer may be cached.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from typing import Any, Final

import orjson

from fastrelay import markets

# Base length of each timespan in ms; calendar spans (month and longer) vary.
SPAN_MS: Final[dict[str, int | None]] = {
    "second": 1_000,
    "minute": 60_000,
    "hour": 3_600_000,
    "day": 86_400_000,
    "week": 7 * 86_400_000,
    "month": None,
    "quarter": None,
    "year": None,
}
MAX_LIMIT: Final = 50_000  # Massive's maximum: base aggregates per request
DEFAULT_LIMIT: Final = 5_000
MAX_MULTIPLIER: Final = 10_000
# What a bare ``history`` of an aggregate channel asks of REST: the bars of its ev,
# reaching back this far (a chart's first screen and some).
NATIVE_SPAN: Final[dict[str, tuple[int, str, int]]] = {
    # ev -> (multiplier, timespan, ms back)
    "A": (1, "second", 3_600_000),
    "AM": (1, "minute", 86_400_000),
    "XAS": (1, "second", 3_600_000),
    "XA": (1, "minute", 86_400_000),
    "CAS": (1, "second", 3_600_000),
    "CA": (1, "minute", 86_400_000),
}
_DATE: Final = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class QueryError(ValueError):
    """A bars query that cannot be served: the message is for the client."""


class BarsError(Exception):
    """A bars request that failed (bars.py); ``reason`` is a metric label, the text is for
    the client."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class BarQuery:
    """One REST aggregates request, normalised (also the cache key)."""

    ticker: str  # REST spelling: AAPL, O:..., I:SPX, C:EURUSD, X:BTCUSD
    multiplier: int
    timespan: str
    start: str  # as Massive takes it: YYYY-MM-DD or Unix ms
    end: str
    limit: int = DEFAULT_LIMIT
    sort: str = "asc"
    adjusted: bool = True

    def path(self) -> str:
        return (
            f"/v2/aggs/ticker/{self.ticker}/range/{self.multiplier}/{self.timespan}/{self.start}/{self.end}"
        )

    def params(self) -> dict[str, str]:
        return {"adjusted": "true" if self.adjusted else "false", "sort": self.sort, "limit": str(self.limit)}

    def end_ms(self) -> int:
        """The last instant the range covers (a date covers its whole day, UTC)."""
        return _instant(self.end, end_of_day=True)

    def reaches_now(self, now_ms: int) -> bool:
        """Whether the range reaches into the current bar, whose answer changes as it forms."""
        span = SPAN_MS.get(self.timespan) or SPAN_MS["day"]
        assert span is not None
        return self.end_ms() >= now_ms - span * self.multiplier


def _instant(text: str, end_of_day: bool = False) -> int:
    if _DATE.match(text):
        day = datetime.datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=datetime.UTC)
        start = int(day.timestamp() * 1000)
        return start + 86_400_000 - 1 if end_of_day else start
    return int(text)


def _bound(value: Any, name: str) -> str:
    """A range bound: Unix ms (an int or digits) or YYYY-MM-DD."""
    if isinstance(value, bool):
        raise QueryError(f"history: {name} must be Unix ms or YYYY-MM-DD")
    if isinstance(value, int) and value >= 0:
        return str(value)
    if isinstance(value, str) and (value.isdigit() or _DATE.match(value)):
        if _DATE.match(value):
            try:
                datetime.date.fromisoformat(value)
            except ValueError:
                raise QueryError(f"history: {name} {value!r} is not a date") from None
        return value
    raise QueryError(f"history: {name} must be Unix ms or YYYY-MM-DD")


def make_query(
    ticker: str,
    multiplier: Any,
    timespan: Any,
    start: Any,
    end: Any,
    limit: Any = DEFAULT_LIMIT,
    sort: Any = "asc",
    adjusted: Any = True,
) -> BarQuery:
    """A validated query; ``QueryError`` names what is wrong."""
    if timespan not in SPAN_MS:
        raise QueryError(f"history: timespan must be one of {', '.join(SPAN_MS)}")
    if isinstance(multiplier, str) and multiplier.isdigit():
        multiplier = int(multiplier)
    if (
        not isinstance(multiplier, int)
        or isinstance(multiplier, bool)
        or not 1 <= multiplier <= MAX_MULTIPLIER
    ):
        raise QueryError(f"history: multiplier must be an integer from 1 to {MAX_MULTIPLIER}")
    if isinstance(limit, str) and limit.isdigit():
        limit = int(limit)
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_LIMIT:
        raise QueryError(f"history: limit must be an integer from 1 to {MAX_LIMIT}")
    if sort not in ("asc", "desc"):
        raise QueryError("history: sort must be asc or desc")
    if isinstance(adjusted, str):
        adjusted = adjusted.lower() != "false"
    first, last = _bound(start, "from"), _bound(end, "to")
    if _instant(first) > _instant(last, end_of_day=True):
        raise QueryError("history: from is after to")
    return BarQuery(ticker, multiplier, timespan, first, last, limit, sort, bool(adjusted))


def rest_ticker(market: str, ev: str, ticker: str) -> str:
    """A channel's ticker in the spelling of Massive's REST API (``EUR/USD`` -> ``C:EURUSD``)."""
    if market == "forex":
        pair = ticker.removeprefix("C:").replace("/", "").replace("-", "")
        return f"C:{pair}"
    if market == "crypto":
        pair = ticker.removeprefix("X:").replace("/", "").replace("-", "")
        return f"X:{pair}"
    return markets.event_ticker(market, ev, ticker)


def history_query(market: str, ev: str, ticker: str, options: dict[str, Any], now_ms: int) -> BarQuery:
    """The REST query of a ``history`` request for an aggregate channel; ``options`` are the
    message's optional fields (``timespan``, ``multiplier``, ``from``, ``to``, ``limit``)."""
    native = NATIVE_SPAN.get(ev)
    if native is None:
        raise QueryError(f"history: {ev} is not an aggregate channel")
    multiplier, timespan, back = native
    timespan = options.get("timespan", timespan)
    multiplier = options.get("multiplier", multiplier if timespan == native[1] else 1)
    if "from" not in options and timespan != native[1]:
        span = SPAN_MS.get(timespan) if isinstance(timespan, str) else None
        back = max(back, (span or SPAN_MS["day"] or 0) * 300)  # about a screen of bars
    # The default range ends at the end of the current window (the same for everyone within
    # it: one cache key, one REST call for a crowd opening the same chart).
    span = SPAN_MS.get(timespan) if isinstance(timespan, str) else None
    times = multiplier if isinstance(multiplier, int) and multiplier > 0 else 1
    step = (span or SPAN_MS["day"] or 1) * times
    window_end = (now_ms // step + 1) * step - 1
    start = options.get("from", window_end + 1 - back)
    end = options.get("to", window_end)
    limit = options.get("limit", MAX_LIMIT)
    query = make_query(rest_ticker(market, ev, ticker), multiplier, timespan, start, end, limit)
    # A WebSocket client cannot page: a range of more bars than it may get is refused
    # clearly rather than answered with its oldest part.
    span = SPAN_MS.get(query.timespan) or _CALENDAR_MS[query.timespan]
    bars = (query.end_ms() - _instant(query.start) + 1) // (span * query.multiplier)
    if bars > query.limit:
        raise QueryError(
            f"history: the range holds about {bars} bars, more than the limit of {query.limit}: "
            f"narrow it, take a longer timespan or raise limit (at most {MAX_LIMIT})"
        )
    return query


_CALENDAR_MS: Final = {"month": 28 * 86_400_000, "quarter": 89 * 86_400_000, "year": 365 * 86_400_000}


# --- bars as events ------------------------------------------------------------------------


def bar_event(ev: str, key: str, name: str, bar: dict[str, Any], span_ms: int) -> bytes:
    """A REST bar in the shape of a live aggregate event of ``ev`` (``s``/``e`` its window)."""
    start = int(bar["t"])
    event: dict[str, Any] = {"ev": ev, key: name}
    for field in ("v", "vw", "o", "c", "h", "l"):
        if field in bar:
            event[field] = bar[field]
    if "n" in bar:
        event["z"] = bar["n"]  # trades in the window; live aggregates call it z
    event["s"] = start
    event["e"] = start + span_ms
    return orjson.dumps(event)


def span_of(query: BarQuery, bar_start: int, next_start: int | None) -> int:
    """A bar's length: fixed spans by arithmetic, calendar ones up to the next bar (or a day)."""
    span = SPAN_MS.get(query.timespan)
    if span is not None:
        return span * query.multiplier
    return (next_start - bar_start) if next_start is not None else 86_400_000


_PAIR_KEYED: Final = frozenset({"CA", "CAS", "XA", "XAS"})


class BarSet(list[dict[str, Any]]):
    """Massive's bars of one query as the bars cache keeps them, with what is built from them
    memoised: a crowd opening one chart shares one answer, so its events are encoded once,
    not once per client (``bar_events``, ``restapi.bars_answer``)."""

    def __init__(self, bars: list[dict[str, Any]]) -> None:
        super().__init__(bars)
        self.built: dict[tuple[Any, ...], Any] = {}


def bar_events(
    ev: str, ticker: str, query: BarQuery, bars: list[dict[str, Any]], market_tag: str | None = None
) -> list[tuple[int, bytes]]:
    """(window start, event) of each REST bar, as a live ``ev`` event of ``ticker`` carries it
    (``market_tag``: the extra first key of futures events on /api/socket)."""
    memo_key = ("events", ev, ticker, market_tag)
    if isinstance(bars, BarSet):
        found = bars.built.get(memo_key)
        if found is None:
            found = bars.built[memo_key] = _bar_events(ev, ticker, query, bars, market_tag)
        return list(found)
    return _bar_events(ev, ticker, query, bars, market_tag)


def _bar_events(
    ev: str, ticker: str, query: BarQuery, bars: list[dict[str, Any]], market_tag: str | None
) -> list[tuple[int, bytes]]:
    key = "pair" if ev in _PAIR_KEYED else "sym"
    out = []
    starts = [int(bar["t"]) for bar in bars if isinstance(bar, dict) and "t" in bar]
    usable = [bar for bar in bars if isinstance(bar, dict) and "t" in bar]
    for index, bar in enumerate(usable):
        following = starts[index + 1] if index + 1 < len(starts) else None
        event = bar_event(ev, key, ticker, bar, span_of(query, starts[index], following))
        if market_tag is not None:
            event = b'{"market":"' + market_tag.encode() + b'",' + event[1:]
        out.append((starts[index], event))
    return out


def starts(events: list[bytes]) -> list[tuple[int, bytes]]:
    """(window start ``s``, event) of kept live aggregate events; those without one are left out."""
    out = []
    for event in events:
        try:
            start = orjson.loads(event).get("s")
        except orjson.JSONDecodeError:
            continue
        if isinstance(start, int):
            out.append((start, event))
    return out


def join(rest: list[tuple[int, bytes]], live: list[tuple[int, bytes]]) -> list[bytes]:
    """REST bars then the live ones, by window start: where both have a window, the live bar
    wins (it is the relay's own, newest word); nothing twice, nothing dropped between."""
    by_start = dict(rest)
    by_start.update(live)
    return [by_start[start] for start in sorted(by_start)]
