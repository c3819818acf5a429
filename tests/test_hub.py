"""Routing, audiences, coalescing, shared frames and the slow-consumer policy (no sockets)."""

from __future__ import annotations

import orjson

from fastrelay.events import decode_frame
from fastrelay.protocol import Channel
from tests.sinks import make_hub, member


def frame(*events: dict[str, object]) -> bytes:
    return orjson.dumps(list(events))


def route(hub, market: str, payload: bytes) -> None:  # type: ignore[no-untyped-def]
    heads, raws = decode_frame(payload)
    hub.route(market, heads, raws)


def ch(text: str, market: str = "stocks") -> Channel:
    ev, _, ticker = text.partition(".")
    return Channel(market, ev, ticker)


def test_each_client_gets_exactly_its_channels_in_order() -> None:
    """Exact, wildcard and unrelated subscribers each see only what they asked for, in order."""
    hub, _ = make_hub()
    aapl, aapl_sink = member(hub)
    wild, wild_sink = member(hub)
    other, other_sink = member(hub)
    hub.subscribe(aapl, [ch("T.AAPL")])
    hub.subscribe(wild, [ch("T.*")])
    hub.subscribe(other, [ch("Q.MSFT")])
    route(hub, "stocks", frame({"ev": "T", "sym": "AAPL", "q": 1}, {"ev": "T", "sym": "MSFT", "q": 1}))
    route(hub, "stocks", frame({"ev": "T", "sym": "AAPL", "q": 2}, {"ev": "Q", "sym": "AAPL", "q": 1}))
    hub.flush()
    assert [(e["sym"], e["q"]) for e in aapl_sink.events()] == [("AAPL", 1), ("AAPL", 2)]
    assert [(e["sym"], e["q"]) for e in wild_sink.events()] == [("AAPL", 1), ("MSFT", 1), ("AAPL", 2)]
    assert other_sink.events() == []


def test_wildcard_and_exact_on_one_client_deliver_once() -> None:
    """A client on T.* and T.AAPL gets each AAPL trade once."""
    hub, _ = make_hub()
    both, sink = member(hub)
    hub.subscribe(both, [ch("T.AAPL"), ch("T.*")])
    route(hub, "stocks", frame({"ev": "T", "sym": "AAPL", "q": 1}))
    hub.flush()
    assert len(sink.events()) == 1


def test_one_write_per_client_per_flush_and_shared_frame_bytes() -> None:
    """Coalescing: many events, one write per client; same-subscription clients share the frame object."""
    hub, _ = make_hub()
    sinks = []
    for _ in range(3):
        m, sink = member(hub)
        hub.subscribe(m, [ch("T.*")])
        sinks.append(sink)
    for q in range(10):
        route(hub, "stocks", frame({"ev": "T", "sym": "AAPL", "q": q}))
    hub.flush()
    assert [len(s.writes) for s in sinks] == [1, 1, 1]
    assert sinks[0].writes[0] is sinks[1].writes[0] is sinks[2].writes[0]
    assert [e["q"] for e in sinks[0].events()] == list(range(10))
    assert hub.audience_count() == 1
    assert hub.stats.deliveries == 30


def test_event_bytes_are_forwarded_unchanged() -> None:
    """No market value is re-encoded: odd number forms and unknown fields arrive byte for byte."""
    hub, _ = make_hub()
    m, sink = member(hub)
    hub.subscribe(m, [ch("T.*")])
    raw = b'{"ev":"T","sym":"AAPL","p":114.1250,"s":1e2,"new":[1,{"x":null}],"x":"4"}'
    route(hub, "stocks", b"[" + raw + b"]")
    hub.flush()
    assert sink.writes[0].endswith(b"[" + raw + b"]")


def test_unknown_ev_reaches_its_wildcard() -> None:
    """Unknown ev types pass through to EV.* subscribers."""
    hub, _ = make_hub()
    m, sink = member(hub)
    hub.subscribe(m, [ch("ZZ.*")])
    route(hub, "stocks", frame({"ev": "ZZ", "sym": "X"}))
    hub.flush()
    assert sink.events() == [{"ev": "ZZ", "sym": "X"}]


def test_markets_are_separate() -> None:
    """A stocks T subscriber never sees options or futures T events."""
    hub, _ = make_hub()
    stocks, stocks_sink = member(hub)
    options, options_sink = member(hub)
    hub.subscribe(stocks, [ch("T.*")])
    hub.subscribe(options, [ch("T.*", "options")])
    route(hub, "options", frame({"ev": "T", "sym": "O:X"}))
    route(hub, "futures", frame({"ev": "T", "sym": "ESZ5"}))
    hub.flush()
    assert stocks_sink.events() == []
    assert options_sink.events() == [{"ev": "T", "sym": "O:X"}]


def test_api_socket_clients_see_futures_events_tagged() -> None:
    """On /api/socket futures events carry their market; stocks events stay untouched."""
    hub, _ = make_hub()
    api, api_sink = member(hub, tags_markets=True)
    plain, plain_sink = member(hub)
    hub.subscribe(api, [ch("T.*", "futures"), ch("T.*")])
    hub.subscribe(plain, [ch("T.*", "futures")])
    route(hub, "futures", frame({"ev": "T", "sym": "ESZ5"}))
    route(hub, "stocks", frame({"ev": "T", "sym": "AAPL"}))
    hub.flush()
    assert api_sink.events() == [{"market": "futures", "ev": "T", "sym": "ESZ5"}, {"ev": "T", "sym": "AAPL"}]
    assert plain_sink.events() == [{"ev": "T", "sym": "ESZ5"}]


def test_audiences_follow_subscription_changes() -> None:
    """Unsubscribing moves a client to its new audience; empty audiences vanish from the index."""
    hub, _ = make_hub()
    a, a_sink = member(hub)
    b, _ = member(hub)
    hub.subscribe(a, [ch("T.AAPL"), ch("Q.AAPL")])
    hub.subscribe(b, [ch("T.AAPL")])
    assert hub.audience_count() == 2
    hub.unsubscribe(a, [ch("Q.AAPL")])
    assert hub.audience_count() == 1
    route(hub, "stocks", frame({"ev": "Q", "sym": "AAPL"}, {"ev": "T", "sym": "AAPL"}))
    hub.flush()
    assert a_sink.events() == [{"ev": "T", "sym": "AAPL"}]
    hub.detach(a)
    hub.detach(b)
    assert hub.audience_count() == 0
    assert hub.interests["stocks"].wanted() == set()


def test_slow_consumer_is_reported_and_others_still_served() -> None:
    """A member past the unsent-bytes limit goes to on_slow_consumer; the others get their frame."""
    hub, slow = make_hub(max_client_buffer=1000)
    fast, fast_sink = member(hub)
    lagging, lagging_sink = member(hub)
    for m in (fast, lagging):
        hub.subscribe(m, [ch("T.*")])
    lagging_sink.backlog = 5000
    route(hub, "stocks", frame({"ev": "T", "sym": "AAPL"}))
    hub.flush()
    assert slow == [lagging]
    assert len(fast_sink.events()) == 1
    assert hub.stats.slow_consumers == 1 and hub.stats.max_backlog == 5000


def test_last_value_of_state_channels_only() -> None:
    """Quotes and aggregates keep their last event for new subscribers; trades and wildcards do not."""
    hub, _ = make_hub()
    feeder, _ = member(hub)
    hub.subscribe(feeder, [ch("Q.*"), ch("T.*")])
    route(hub, "stocks", frame({"ev": "Q", "sym": "AAPL", "q": 1}, {"ev": "Q", "sym": "AAPL", "q": 2}))
    route(hub, "stocks", frame({"ev": "T", "sym": "AAPL", "q": 1}))
    late, _ = member(hub)
    values = hub.last_values(late, [ch("Q.AAPL"), ch("T.AAPL"), ch("Q.*"), ch("Q.MSFT")])
    assert [orjson.loads(v) for v in values] == [{"ev": "Q", "sym": "AAPL", "q": 2}]


def test_last_values_are_forgotten_when_unsubscribed_upstream() -> None:
    """No stale fill after the upstream stopped carrying the channel."""
    hub, _ = make_hub()
    m, _ = member(hub)
    hub.subscribe(m, [ch("Q.AAPL")])
    hub.interests["stocks"].plan()
    route(hub, "stocks", frame({"ev": "Q", "sym": "AAPL"}))
    hub.unsubscribe(m, [ch("Q.AAPL")])
    plan = hub.interests["stocks"].plan()
    hub.forget_last_values("stocks", plan.unsubscribe)
    assert hub.last_values(m, [ch("Q.AAPL")]) == []


def test_channel_limit_and_unknown_market_give_errors() -> None:
    """Past max channels, or on a market the relay does not serve, subscribe reports errors."""
    hub, _ = make_hub(markets=("stocks",), max_channels=2)
    m, _ = member(hub)
    result = hub.subscribe(m, [ch("T.A"), ch("T.B"), ch("T.C")])
    assert result.accepted == [] and "too many channels" in result.errors[0]
    result = hub.subscribe(m, [ch("T.A", "crypto")])
    assert "not served" in result.errors[0]


def test_large_batch_is_split_across_frames_in_order() -> None:
    """A flush larger than the frame limit leaves in several frames, in order."""
    hub, _ = make_hub(max_frame_payload=2048)
    m, sink = member(hub)
    hub.subscribe(m, [ch("T.*")])
    for q in range(200):
        route(hub, "stocks", frame({"ev": "T", "sym": "AAPL", "q": q}))
    hub.flush()
    assert len(sink.writes) > 1
    assert [e["q"] for e in sink.events()] == list(range(200))


def test_history_keeps_recent_aggregates_of_exact_subscriptions() -> None:
    """Aggregates of exactly subscribed tickers are kept, oldest first, bounded; nothing else."""
    hub, _ = make_hub()
    hub.history_size = 3
    m, _ = member(hub)
    hub.subscribe(m, [ch("A.AAPL"), ch("A.*"), ch("T.AAPL")])
    for s in range(5):
        route(hub, "stocks", frame({"ev": "A", "sym": "AAPL", "s": s}, {"ev": "A", "sym": "MSFT", "s": s}))
        route(hub, "stocks", frame({"ev": "T", "sym": "AAPL", "q": s}))
    assert [orjson.loads(e)["s"] for e in hub.history(m, ch("A.AAPL"))] == [2, 3, 4]
    assert hub.history(m, ch("A.MSFT")) == []  # only on the wildcard: not kept
    assert hub.history(m, ch("T.AAPL")) == []  # trades are not candles


def test_history_is_dropped_with_the_upstream_subscription() -> None:
    """Once the channel leaves the upstream, its history goes too."""
    hub, _ = make_hub()
    m, _ = member(hub)
    hub.subscribe(m, [ch("AM.AAPL")])
    hub.interests["stocks"].plan()
    route(hub, "stocks", frame({"ev": "AM", "sym": "AAPL", "s": 1}))
    assert len(hub.history(m, ch("AM.AAPL"))) == 1
    hub.unsubscribe(m, [ch("AM.AAPL")])
    hub.forget_last_values("stocks", hub.interests["stocks"].plan().unsubscribe)
    assert hub.history(m, ch("AM.AAPL")) == []
