"""Routing, audiences, coalescing, shared frames and the slow-consumer policy (no sockets)."""

from __future__ import annotations

import orjson

from fastrelay.protocol import Channel
from tests.sinks import make_core


def frame(*events: dict[str, object]) -> bytes:
    return orjson.dumps(list(events))


def ch(text: str, market: str = "stocks") -> Channel:
    ev, _, ticker = text.partition(".")
    return Channel(market, ev, ticker)


def test_each_client_gets_exactly_its_channels_in_order() -> None:
    """Exact, wildcard and unrelated subscribers each see only what they asked for, in order."""
    core = make_core()
    hub = core.hub
    aapl, aapl_sink = core.member()
    wild, wild_sink = core.member()
    other, other_sink = core.member()
    hub.subscribe(aapl, [ch("T.AAPL")])
    hub.subscribe(wild, [ch("T.*")])
    hub.subscribe(other, [ch("Q.MSFT")])
    core.route("stocks", frame({"ev": "T", "sym": "AAPL", "q": 1}, {"ev": "T", "sym": "MSFT", "q": 1}))
    core.route("stocks", frame({"ev": "T", "sym": "AAPL", "q": 2}, {"ev": "Q", "sym": "AAPL", "q": 1}))
    hub.flush()
    assert [(e["sym"], e["q"]) for e in aapl_sink.events()] == [("AAPL", 1), ("AAPL", 2)]
    assert [(e["sym"], e["q"]) for e in wild_sink.events()] == [("AAPL", 1), ("MSFT", 1), ("AAPL", 2)]
    assert other_sink.events() == []


def test_wildcard_and_exact_on_one_client_deliver_once() -> None:
    """A client on T.* and T.AAPL gets each AAPL trade once."""
    core = make_core()
    hub = core.hub
    both, sink = core.member()
    hub.subscribe(both, [ch("T.AAPL"), ch("T.*")])
    core.route("stocks", frame({"ev": "T", "sym": "AAPL", "q": 1}))
    hub.flush()
    assert len(sink.events()) == 1


def test_one_write_per_client_per_flush_and_shared_frame_bytes() -> None:
    """Coalescing: many events, one write per client; same-subscription clients share the frame object."""
    core = make_core()
    hub = core.hub
    sinks = []
    for _ in range(3):
        m, sink = core.member()
        hub.subscribe(m, [ch("T.*")])
        sinks.append(sink)
    for q in range(10):
        core.route("stocks", frame({"ev": "T", "sym": "AAPL", "q": q}))
    hub.flush()
    assert [len(s.writes) for s in sinks] == [1, 1, 1]
    assert sinks[0].writes[0] is sinks[1].writes[0] is sinks[2].writes[0]
    assert [e["q"] for e in sinks[0].events()] == list(range(10))
    assert hub.audience_count() == 1
    assert core.outbox.stats.deliveries == 30


def test_event_bytes_are_forwarded_unchanged() -> None:
    """No market value is re-encoded: odd number forms and unknown fields arrive byte for byte."""
    core = make_core()
    hub = core.hub
    m, sink = core.member()
    hub.subscribe(m, [ch("T.*")])
    raw = b'{"ev":"T","sym":"AAPL","p":114.1250,"s":1e2,"new":[1,{"x":null}],"x":"4"}'
    core.route("stocks", b"[" + raw + b"]")
    hub.flush()
    assert sink.writes[0].endswith(b"[" + raw + b"]")


def test_unknown_ev_reaches_its_wildcard() -> None:
    """Unknown ev types pass through to EV.* subscribers."""
    core = make_core()
    hub = core.hub
    m, sink = core.member()
    hub.subscribe(m, [ch("ZZ.*")])
    core.route("stocks", frame({"ev": "ZZ", "sym": "X"}))
    hub.flush()
    assert sink.events() == [{"ev": "ZZ", "sym": "X"}]


def test_markets_are_separate() -> None:
    """A stocks T subscriber never sees options or futures T events."""
    core = make_core()
    hub = core.hub
    stocks, stocks_sink = core.member()
    options, options_sink = core.member()
    hub.subscribe(stocks, [ch("T.*")])
    hub.subscribe(options, [ch("T.*", "options")])
    core.route("options", frame({"ev": "T", "sym": "O:X"}))
    core.route("futures", frame({"ev": "T", "sym": "ESZ5"}))
    hub.flush()
    assert stocks_sink.events() == []
    assert options_sink.events() == [{"ev": "T", "sym": "O:X"}]


def test_api_socket_clients_see_futures_events_tagged() -> None:
    """On /api/socket futures events carry their market; stocks events stay untouched."""
    core = make_core()
    hub = core.hub
    api, api_sink = core.member(tags_markets=True)
    plain, plain_sink = core.member()
    hub.subscribe(api, [ch("T.*", "futures"), ch("T.*")])
    hub.subscribe(plain, [ch("T.*", "futures")])
    core.route("futures", frame({"ev": "T", "sym": "ESZ5"}))
    core.route("stocks", frame({"ev": "T", "sym": "AAPL"}))
    hub.flush()
    assert api_sink.events() == [{"market": "futures", "ev": "T", "sym": "ESZ5"}, {"ev": "T", "sym": "AAPL"}]
    assert plain_sink.events() == [{"ev": "T", "sym": "ESZ5"}]


def test_audiences_follow_subscription_changes() -> None:
    """Unsubscribing moves a client to its new audience; empty audiences vanish from the index."""
    core = make_core()
    hub = core.hub
    a, a_sink = core.member()
    b, _ = core.member()
    hub.subscribe(a, [ch("T.AAPL"), ch("Q.AAPL")])
    hub.subscribe(b, [ch("T.AAPL")])
    assert hub.audience_count() == 2
    hub.unsubscribe(a, [ch("Q.AAPL")])
    assert hub.audience_count() == 1
    core.route("stocks", frame({"ev": "Q", "sym": "AAPL"}, {"ev": "T", "sym": "AAPL"}))
    hub.flush()
    assert a_sink.events() == [{"ev": "T", "sym": "AAPL"}]
    hub.detach(a)
    hub.detach(b)
    assert hub.audience_count() == 0
    assert core.demand["stocks"].wanted() == set()


def test_slow_consumer_is_dropped_and_others_still_served() -> None:
    """A member past the unsent-bytes limit is closed as a slow consumer; the others get their frame."""
    core = make_core(max_client_buffer=1000)
    hub, slow = core.hub, core.dropped
    fast, fast_sink = core.member()
    lagging, lagging_sink = core.member()
    for m in (fast, lagging):
        hub.subscribe(m, [ch("T.*")])
    lagging_sink.backlog = 5000
    core.route("stocks", frame({"ev": "T", "sym": "AAPL"}))
    hub.flush()
    assert slow == [lagging]
    assert len(fast_sink.events()) == 1
    assert core.outbox.stats.slow_consumers == 1 and core.outbox.take_max_backlog() == 5000


def test_channel_limit_and_unknown_market_give_errors() -> None:
    """Past max channels, or on a market the relay does not serve, subscribe reports errors."""
    core = make_core(markets=("stocks",), max_channels=2)
    hub = core.hub
    m, _ = core.member()
    result = hub.subscribe(m, [ch("T.A"), ch("T.B"), ch("T.C")])
    assert result.accepted == [ch("T.A"), ch("T.B")]
    assert [(c, "too many" in why) for c, why in result.refused] == [(ch("T.C"), True)]
    result = hub.subscribe(m, [ch("T.A", "crypto")])
    assert "not served" in result.refused[0][1]


def test_large_batch_is_split_across_frames_in_order() -> None:
    """A flush larger than the frame limit leaves in several frames, in order."""
    core = make_core(max_frame_payload=2048)
    hub = core.hub
    m, sink = core.member()
    hub.subscribe(m, [ch("T.*")])
    for q in range(200):
        core.route("stocks", frame({"ev": "T", "sym": "AAPL", "q": q}))
    hub.flush()
    assert len(sink.writes) > 1
    assert [e["q"] for e in sink.events()] == list(range(200))


def test_a_channel_massive_refused_is_refused_to_the_next_client_at_once() -> None:
    """Far below every cap (the hub's fast path), a remembered refusal still applies."""
    core = make_core(markets=("stocks",), max_channels=100)
    core.demand.refuse(ch("Q.AAPL"), "not authorized", for_seconds=60.0)
    m, _ = core.member()
    result = core.hub.subscribe(m, [ch("T.AAPL"), ch("Q.AAPL")])
    assert result.accepted == [ch("T.AAPL")]
    assert result.refused == [(ch("Q.AAPL"), "not authorized")]
