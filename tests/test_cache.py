"""Last values and kept aggregates: what is kept, for whom, and when it is forgotten (no sockets)."""

from __future__ import annotations

import orjson

from fastrelay.protocol import Channel
from tests.sinks import make_core


def frame(*events: dict[str, object]) -> bytes:
    return orjson.dumps(list(events))


def ch(text: str, market: str = "stocks") -> Channel:
    ev, _, ticker = text.partition(".")
    return Channel(market, ev, ticker)


def test_last_value_of_state_channels_only() -> None:
    """Quotes and aggregates keep their last event for new subscribers; trades and wildcards do not."""
    core = make_core()
    feeder, _ = core.member()
    core.hub.subscribe(feeder, [ch("Q.*"), ch("T.*")])
    core.route("stocks", frame({"ev": "Q", "sym": "AAPL", "q": 1}, {"ev": "Q", "sym": "AAPL", "q": 2}))
    core.route("stocks", frame({"ev": "T", "sym": "AAPL", "q": 1}))
    found, missing = core.cache.last_values([ch("Q.AAPL"), ch("T.AAPL"), ch("Q.*"), ch("Q.MSFT")], False)
    assert [orjson.loads(v) for v in found] == [{"ev": "Q", "sym": "AAPL", "q": 2}]
    assert missing == [ch("Q.MSFT")]  # a state channel with nothing seen: a scale-out edge asks for it


def test_last_values_of_ambiguous_markets_are_tagged_for_api_socket_clients() -> None:
    """A futures last value reaches an /api/socket client with its market, others untouched."""
    core = make_core()
    core.route("futures", frame({"ev": "Q", "sym": "ESZ5", "q": 1}))
    tagged, _ = core.cache.last_values([ch("Q.ESZ5", "futures")], True)
    plain, _ = core.cache.last_values([ch("Q.ESZ5", "futures")], False)
    assert orjson.loads(tagged[0]) == {"market": "futures", "ev": "Q", "sym": "ESZ5", "q": 1}
    assert orjson.loads(plain[0]) == {"ev": "Q", "sym": "ESZ5", "q": 1}


def test_last_values_are_forgotten_when_unsubscribed_upstream() -> None:
    """No stale fill after the upstream stopped carrying the channel."""
    core = make_core()
    m, _ = core.member()
    core.hub.subscribe(m, [ch("Q.AAPL")])
    core.sync()
    core.route("stocks", frame({"ev": "Q", "sym": "AAPL"}))
    core.hub.unsubscribe(m, [ch("Q.AAPL")])
    assert core.sync() == {"stocks": ["-Q.AAPL"]}
    assert core.cache.last_values([ch("Q.AAPL")], False)[0] == []


def test_a_wildcard_unsubscribe_keeps_what_exact_channels_still_want() -> None:
    """Leaving Q.* forgets every ticker's last value except those still subscribed exactly."""
    core = make_core()
    wild, _ = core.member()
    exact, _ = core.member()
    core.hub.subscribe(wild, [ch("Q.*")])
    core.hub.subscribe(exact, [ch("Q.AAPL")])
    core.sync()
    core.route("stocks", frame({"ev": "Q", "sym": "AAPL"}, {"ev": "Q", "sym": "MSFT"}))
    core.hub.unsubscribe(wild, [ch("Q.*")])
    core.sync()
    found, _ = core.cache.last_values([ch("Q.AAPL"), ch("Q.MSFT")], False)
    assert [orjson.loads(v)["sym"] for v in found] == ["AAPL"]


def test_history_keeps_recent_aggregates_of_exact_subscriptions() -> None:
    """Aggregates of exactly subscribed tickers are kept, oldest first, bounded; nothing else."""
    core = make_core(history_size=3)
    m, _ = core.member()
    core.hub.subscribe(m, [ch("A.AAPL"), ch("A.*"), ch("T.AAPL")])
    for s in range(5):
        core.route("stocks", frame({"ev": "A", "sym": "AAPL", "s": s}, {"ev": "A", "sym": "MSFT", "s": s}))
        core.route("stocks", frame({"ev": "T", "sym": "AAPL", "q": s}))
    assert [orjson.loads(e)["s"] for e in core.cache.history(ch("A.AAPL"), False)] == [2, 3, 4]
    assert core.cache.history(ch("A.MSFT"), False) == []  # only on the wildcard: not kept
    assert core.cache.history(ch("T.AAPL"), False) == []  # trades are not candles


def test_history_stops_when_the_last_exact_subscriber_leaves() -> None:
    """Recording follows references: the last subscriber leaving stops it, the first one restarts it."""
    core = make_core()
    a, _ = core.member()
    b, _ = core.member()
    core.hub.subscribe(a, [ch("AM.AAPL")])
    core.hub.subscribe(b, [ch("AM.AAPL")])
    core.route("stocks", frame({"ev": "AM", "sym": "AAPL", "s": 1}))
    core.hub.detach(a)
    core.route("stocks", frame({"ev": "AM", "sym": "AAPL", "s": 2}))
    core.hub.detach(b)
    core.route("stocks", frame({"ev": "AM", "sym": "AAPL", "s": 3}))
    assert [orjson.loads(e)["s"] for e in core.cache.history(ch("AM.AAPL"), False)] == [1, 2]


def test_history_is_dropped_with_the_upstream_subscription() -> None:
    """Once the channel leaves the upstream, its history goes too."""
    core = make_core()
    m, _ = core.member()
    core.hub.subscribe(m, [ch("AM.AAPL")])
    core.sync()
    core.route("stocks", frame({"ev": "AM", "sym": "AAPL", "s": 1}))
    assert len(core.cache.history(ch("AM.AAPL"), False)) == 1
    core.hub.unsubscribe(m, [ch("AM.AAPL")])
    core.sync()
    assert core.cache.history(ch("AM.AAPL"), False) == []


def test_an_outage_forgets_every_last_value_of_its_market_only() -> None:
    """After an upstream loss nothing from before it fills a new subscriber (Massive does not replay)."""
    core = make_core()
    core.route("stocks", frame({"ev": "Q", "sym": "AAPL"}))
    core.route("options", frame({"ev": "Q", "sym": "O:X"}))
    core.cache["stocks"].forget_market()
    assert core.cache.last_values([ch("Q.AAPL")], False)[0] == []
    assert len(core.cache.last_values([ch("Q.O:X", "options")], False)[0]) == 1


def test_seeded_values_never_replace_live_ones_and_history_merges_without_duplicates() -> None:
    """A scale-out fill: a live event that came first wins; fetched history goes before local history."""
    core = make_core()
    m, _ = core.member()
    core.hub.subscribe(m, [ch("AM.AAPL")])
    live = frame({"ev": "AM", "sym": "AAPL", "s": 2})[1:-1]
    core.route("stocks", b"[" + live + b"]")
    stocks = core.cache["stocks"]
    assert not stocks.seed_last_value("AM", "AAPL", b'{"ev":"AM","sym":"AAPL","s":0}')
    assert stocks.seed_last_value("AM", "MSFT", b'{"ev":"AM","sym":"MSFT","s":0}')
    older = frame({"ev": "AM", "sym": "AAPL", "s": 1})[1:-1]
    stocks.seed_history("AM", "AAPL", [older, live])
    assert [orjson.loads(e)["s"] for e in core.cache.history(ch("AM.AAPL"), False)] == [1, 2]


def test_snapshot_answers_by_channel_name() -> None:
    """What an ingest sends an edge: last values and history of the names asked, nothing else."""
    core = make_core()
    m, _ = core.member()
    core.hub.subscribe(m, [ch("AM.AAPL")])
    core.route("stocks", frame({"ev": "AM", "sym": "AAPL", "s": 1}, {"ev": "Q", "sym": "MSFT"}))
    last, history = core.cache["stocks"].snapshot(
        [ch("AM.AAPL"), ch("Q.MSFT"), ch("Q.TSLA")], [ch("AM.AAPL"), ch("AM.TSLA")]
    )
    assert sorted(last) == ["AM.AAPL", "Q.MSFT"]
    assert list(history) == ["AM.AAPL"] and len(history["AM.AAPL"]) == 1


def test_events_of_drifting_types_are_not_kept() -> None:
    """An ev or ticker that is not a string is routed by nobody and kept by nobody, without an error."""
    core = make_core()
    core.route("stocks", b'[{"ev":["Q"],"sym":"AAPL"},{"ev":"Q","sym":7},{"ev":"Q"}]')
    assert core.cache["stocks"].last == {}
