"""Bars queries, REST spellings, REST bars as live events, and the seam between them; pure."""

from __future__ import annotations

import orjson
import pytest

from fastrelay.aggs import (
    MAX_LIMIT,
    QueryError,
    bar_event,
    history_query,
    join,
    make_query,
    rest_ticker,
    span_of,
)

NOW = 1_764_770_000_000  # 2025-12-03 13:53:20 UTC


def test_a_bare_history_of_a_minute_channel_asks_a_day_of_minute_bars() -> None:
    query = history_query("stocks", "AM", "AAPL", {}, NOW)
    assert (query.ticker, query.multiplier, query.timespan) == ("AAPL", 1, "minute")
    minute_end = (NOW // 60_000 + 1) * 60_000 - 1  # the end of the current minute
    assert (int(query.start), int(query.end), query.limit) == (
        minute_end + 1 - 86_400_000,
        minute_end,
        MAX_LIMIT,
    )
    assert query.path() == f"/v2/aggs/ticker/AAPL/range/1/minute/{minute_end + 1 - 86_400_000}/{minute_end}"
    assert query.reaches_now(NOW)
    # Everyone asking within the same minute asks the same query: one cache key.
    assert history_query("stocks", "AM", "AAPL", {}, NOW + 1) == query


def test_options_choose_the_timespan_range_and_limit() -> None:
    query = history_query(
        "stocks",
        "AM",
        "AAPL",
        {"timespan": "hour", "from": "2025-11-01", "to": "2025-11-30", "limit": 900},
        NOW,
    )
    assert (query.multiplier, query.timespan, query.start, query.end, query.limit) == (
        1, "hour", "2025-11-01", "2025-11-30", 900,
    )  # fmt: skip
    assert not query.reaches_now(NOW)
    assert query.end_ms() == 1_764_547_199_999  # a `to` date covers the whole day


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"timespan": "fortnight"}, "timespan must be one of"),
        ({"multiplier": 0}, "multiplier must be"),
        ({"multiplier": True}, "multiplier must be"),
        ({"limit": MAX_LIMIT + 1}, "limit must be"),
        ({"from": "yesterday"}, "from must be"),
        ({"from": "2025-02-30"}, "is not a date"),
        ({"from": "2025-12-02", "to": "2025-12-01"}, "from is after to"),
        ({"timespan": "second", "from": "2025-01-01", "to": "2025-12-01"}, "range holds about"),
        ({"from": "2025-11-01", "to": "2025-11-30", "limit": 1000}, "more than the limit of 1000"),
    ],
)
def test_bad_options_get_a_clear_error(options: dict[str, object], fragment: str) -> None:
    with pytest.raises(QueryError, match=fragment):
        history_query("stocks", "AM", "AAPL", options, NOW)


def test_only_aggregate_channels_have_history() -> None:
    with pytest.raises(QueryError, match="T is not an aggregate channel"):
        history_query("stocks", "T", "AAPL", {}, NOW)
    assert make_query("AAPL", "5", "minute", "1", "2").multiplier == 5


@pytest.mark.parametrize(
    ("market", "ev", "ticker", "rest"),
    [
        ("stocks", "AM", "AAPL", "AAPL"),
        ("options", "AM", "SPY251219C00650000", "O:SPY251219C00650000"),
        ("indices", "AM", "SPX", "I:SPX"),
        ("forex", "CA", "EUR/USD", "C:EURUSD"),
        ("forex", "CA", "EUR-USD", "C:EURUSD"),
        ("crypto", "XA", "BTC-USD", "X:BTCUSD"),
        ("crypto", "AM", "X:BTC-USD", "X:BTCUSD"),
    ],
)
def test_rest_spellings(market: str, ev: str, ticker: str, rest: str) -> None:
    assert rest_ticker(market, ev, ticker) == rest


def test_a_rest_bar_reads_like_a_live_aggregate() -> None:
    bar = {"v": 100, "vw": 10.5, "o": 10, "c": 11, "h": 12, "l": 9, "t": 60_000, "n": 7}
    event = orjson.loads(bar_event("AM", "sym", "AAPL", bar, 60_000))
    assert event == {
        "ev": "AM", "sym": "AAPL", "v": 100, "vw": 10.5, "o": 10, "c": 11, "h": 12, "l": 9, "z": 7,
        "s": 60_000, "e": 120_000,
    }  # fmt: skip
    query = make_query("AAPL", 1, "month", "2025-01-01", "2025-03-31")
    assert span_of(query, 0, 2_678_400_000) == 2_678_400_000 and span_of(query, 0, None) == 86_400_000


def test_the_seam_has_no_duplicate_and_no_gap() -> None:
    """REST has minutes 1-5, the relay saw 4-6 live: 1-3 from REST, 4-6 live (the live bar wins)."""
    rest = [(m, b"rest%d" % m) for m in range(1, 6)]
    live = [(m, b"live%d" % m) for m in range(4, 7)]
    assert join(rest, live) == [b"rest1", b"rest2", b"rest3", b"live4", b"live5", b"live6"]
    assert join([], live) == [b"live4", b"live5", b"live6"] and join(rest, []) == [b for _, b in rest]
