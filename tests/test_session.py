"""Client conversation rules: auth, subscribe, unsubscribe, bad input (no sockets)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import orjson
import pytest

from fastrelay.aggs import BarsError
from fastrelay.ratelimit import TokenBucket
from fastrelay.session import ClientSession, HistoryLimits, Reply, TokenCheck
from tests.sinks import Core, make_core


def statuses(payload: bytes) -> list[tuple[str, str]]:
    return [(s["status"], s["message"]) for s in orjson.loads(payload) if s["ev"] == "status"]


def core() -> Core:
    return make_core(markets=("stocks", "options", "futures", "forex"))


def session(tokens: list[str] | None = None, market: str | None = "stocks") -> ClientSession:
    return core().session(market, tokens)


def authed(market: str | None = "stocks", on: Core | None = None) -> ClientSession:
    s = (on or core()).session(market)
    s.receive(b'{"action":"auth","params":"x"}')
    return s


def test_connected_then_auth_success_in_open_mode() -> None:
    """Open mode: connected on open, any auth succeeds with Massive's wording."""
    s = session()
    assert statuses(s.opened()) == [("connected", "Connected Successfully")]
    reply = s.receive(b'{"action":"auth","params":"anything"}')
    assert [statuses(f) for f in reply.frames] == [[("auth_success", "authenticated")]]
    assert reply.close is None


def test_wrong_token_fails_and_closes_1008() -> None:
    """With tokens set, a wrong one gets auth_failed and a policy-violation close."""
    s = session(tokens=["good"])
    reply = s.receive(b'{"action":"auth","params":"bad"}')
    assert statuses(reply.frames[0]) == [("auth_failed", "authentication failed")]
    assert reply.close is not None and reply.close[0].code == 1008
    assert s.receive(b'{"action":"auth","params":"good"}').close is None


def test_subscribe_before_auth_is_auth_required() -> None:
    """Subscribing before auth gets auth_required and changes nothing."""
    s = session(tokens=["good"])
    reply = s.receive(b'{"action":"subscribe","params":"T.AAPL"}')
    assert statuses(reply.frames[0])[0][0] == "auth_required"
    assert s.member.channels == set()


def test_subscribe_acknowledges_each_channel_in_massive_wording() -> None:
    """One success per channel, 'subscribed to: X'; unsubscribe says 'unsubscribed to: X'."""
    s = authed()
    reply = s.receive(b'{"action":"subscribe","params":"T.AAPL,Q.MSFT,AM.*"}')
    assert statuses(reply.frames[0]) == [
        ("success", "subscribed to: T.AAPL"),
        ("success", "subscribed to: Q.MSFT"),
        ("success", "subscribed to: AM.*"),
    ]
    reply = s.receive(b'{"action":"unsubscribe","params":"Q.MSFT"}')
    assert statuses(reply.frames[0]) == [("success", "unsubscribed to: Q.MSFT")]
    assert {c.name for c in s.member.channels} == {"T.AAPL", "AM.*"}


def test_bad_channels_get_errors_and_good_ones_still_subscribe() -> None:
    """A channel without a dot is an error; the valid channels of the same message subscribe."""
    s = authed()
    reply = s.receive(b'{"action":"subscribe","params":"AAPL,T.AAPL"}')
    result = statuses(reply.frames[0])
    assert result[0] == ("success", "subscribed to: T.AAPL")
    assert result[1][0] == "error" and "AAPL" in result[1][1]


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (b"{not json", "invalid message"),
        (b'{"action":"dance"}', "unknown action"),
        (b'{"action":"subscribe","params":""}', "no channel"),
    ],
)
def test_bad_messages_get_error_statuses(payload: bytes, fragment: str) -> None:
    """Invalid JSON, unknown actions and empty params are answered with an error status, no close."""
    reply = authed().receive(payload)
    kind, message = statuses(reply.frames[0])[0]
    assert kind == "error" and fragment in message and reply.close is None


def test_auth_twice_is_an_error() -> None:
    """A second auth is refused with an error status; the session stays authenticated."""
    s = authed()
    reply = s.receive(b'{"action":"auth","params":"x"}')
    assert statuses(reply.frames[0]) == [("error", "already authenticated")]
    assert s.authenticated


def test_a_subscribe_past_the_channel_limit_takes_what_fits() -> None:
    """100,000 channels in one message (the limit is 100 here): the first 100 are subscribed and
    acknowledged, the rest refused in one error, never parsed one by one."""
    s = authed()
    params = ",".join(f"T.S{i}" for i in range(100_000))
    reply = s.receive(orjson.dumps({"action": "subscribe", "params": params}))
    result = statuses(reply.frames[0])
    assert [st for st, _ in result].count("success") == 100
    errors = [m for st, m in result if st == "error"]
    assert len(errors) == 1 and "99900 after the first 100 were not taken" in errors[0]
    assert len(s.member.channels) == 100


def test_channels_past_the_limit_are_refused_one_by_one() -> None:
    """Room for two more: two acknowledged, each of the others refused with its own error."""
    s = authed()
    s.receive(orjson.dumps({"action": "subscribe", "params": ",".join(f"T.S{i}" for i in range(98))}))
    reply = s.receive(b'{"action":"subscribe","params":"T.A,T.B,T.C,Q.D"}')
    assert statuses(reply.frames[0]) == [
        ("success", "subscribed to: T.A"),
        ("success", "subscribed to: T.B"),
        ("error", "T.C: too many channels: at most 100 per connection"),
        ("error", "Q.D: too many channels: at most 100 per connection"),
    ]


def test_many_bad_channels_are_summarised() -> None:
    """Errors are listed up to a limit, then counted."""
    s = authed()
    reply = s.receive(orjson.dumps({"action": "subscribe", "params": ",".join(f"bad{i}" for i in range(30))}))
    result = statuses(reply.frames[0])
    assert len(result) == 11 and result[-1] == ("error", "20 more invalid channels")


def test_binary_frames_get_an_error() -> None:
    """Binary frames are not Massive messages: error status, connection kept."""
    reply = authed().binary_received()
    assert statuses(reply.frames[0])[0][0] == "error" and reply.close is None


def test_api_socket_acks_keep_the_market_prefix() -> None:
    """On /api/socket, an explicitly prefixed channel is acknowledged with its prefix."""
    s = authed(market=None)
    reply = s.receive(b'{"action":"subscribe","params":"futures:T.ESZ5,T.AAPL,C.EUR/USD"}')
    assert [m for _, m in statuses(reply.frames[0])] == [
        "subscribed to: futures:T.ESZ5",
        "subscribed to: T.AAPL",
        "subscribed to: C.EUR/USD",
    ]


def test_token_check_is_exact() -> None:
    """Tokens match exactly: no prefix, no case folding."""
    check = TokenCheck(["s3cret", "other"])
    assert check.accepts("s3cret") and check.accepts("other")
    assert not check.accepts("s3cre") and not check.accepts("S3CRET") and not check.accepts("")


def test_history_action_sends_events_then_a_status_per_channel() -> None:
    """The history extension: kept events (oldest first), then 'history: CH (N events)'."""
    rig = core()
    s = authed(on=rig)
    s.receive(b'{"action":"subscribe","params":"A.AAPL"}')
    rig.route("stocks", b'[{"ev":"A","sym":"AAPL","s":1},{"ev":"A","sym":"AAPL","s":2}]')
    frames = sent(s.receive(b'{"action":"history","params":"A.AAPL,AM.MSFT,bad"}'))
    assert [orjson.loads(f) for f in frames[:1]] == [
        [{"ev": "A", "sym": "AAPL", "s": 1}, {"ev": "A", "sym": "AAPL", "s": 2}]
    ]
    assert statuses(frames[1]) == [("success", "history: A.AAPL (2 events)")]
    assert statuses(frames[2]) == [("success", "history: AM.MSFT (0 events)")]
    assert statuses(frames[3])[0][0] == "error"


def sent(reply: Reply) -> list[bytes]:
    """Every payload a reply sends, the lazily built ones included."""
    return [*reply.frames, *(reply.more or [])]


def kept_history(rig: Core, ticker: str, events: int) -> None:
    """``events`` per-second candles of ``ticker`` kept by the relay (someone subscribes it)."""
    keeper = rig.session()
    keeper.receive(b'{"action":"auth","params":"x"}')
    keeper.receive(orjson.dumps({"action": "subscribe", "params": f"A.{ticker}"}))
    candles = [{"ev": "A", "sym": ticker, "s": i, "pad": "x" * 100} for i in range(events)]
    rig.route("stocks", orjson.dumps(candles))


def test_history_names_each_channel_once_however_often_it_is_asked() -> None:
    """2,000 repeats of one channel are one channel: one answer, not 2,000 copies."""
    rig = core()
    kept_history(rig, "AAPL", 100)
    s = authed(on=rig)
    frames = sent(s.receive(orjson.dumps({"action": "history", "params": ",".join(["A.AAPL"] * 2000)})))
    done = [m for f in frames for _, m in statuses(f) if m.startswith("history:")]
    assert done == ["history: A.AAPL (100 events)"]


def test_history_requests_are_capped_in_channels_bytes_and_rate() -> None:
    """Too many channels: one error; a reply over the byte cap: the rest refused by name; past the
    per-minute budget: an error, nothing built."""
    rig = core()
    rig_context = rig.context()
    for ticker in ("AAPL", "MSFT", "TSLA"):
        kept_history(rig, ticker, 100)  # about 12 KB of candles each
    member, _ = rig.member()
    limits = HistoryLimits(max_channels=2, max_bytes=20_000, per_minute=60, burst=2)
    s = ClientSession(replace(rig_context, history=limits), member, "stocks")
    s.receive(b'{"action":"auth","params":"x"}')
    too_many = s.receive(b'{"action":"history","params":"A.AAPL,A.MSFT,A.TSLA"}')
    assert statuses(too_many.frames[0]) == [("error", "history: at most 2 channels per request (3 asked)")]
    frames = sent(s.receive(b'{"action":"history","params":"A.AAPL,A.MSFT"}'))
    outcome = [st for f in frames for st in statuses(f) if st[1].startswith("history:")]
    assert outcome == [
        ("success", "history: A.AAPL (100 events)"),
        ("error", "history: A.MSFT not sent: the reply would pass 20000 bytes"),
    ]
    over = s.receive(b'{"action":"history","params":"A.AAPL"}')
    assert statuses(over.frames[0]) == [("error", "history: at most 60 requests a minute")]
    assert over.more is None


def test_over_the_message_rate_one_error_per_second_then_silence() -> None:
    """Past the rate limit a client hears one error per second, not one per message."""
    rig = core()
    now = [0.0]
    member, _ = rig.member()
    context = replace(
        rig.context(), limiter=lambda: TokenBucket(1.0, 2, clock=lambda: now[0]), clock=lambda: now[0]
    )
    s = ClientSession(context, member, "stocks")
    answers = [s.receive(b'{"action":"dance"}') for _ in range(10)]
    assert [len(a.frames) for a in answers] == [1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
    assert "rate limit" in statuses(answers[2].frames[0])[0][1]
    now[0] += 1.0
    assert "rate limit" not in statuses(s.receive(b'{"action":"dance"}').frames[0])[0][1]  # a token again


class FakeBars:
    """Massive's REST bars, as ``bars.AccountBars`` hands them out: a minute apart from ``start``."""

    def __init__(self, count: int = 3, start: int = 60_000, error: str | None = None) -> None:
        self.count, self.start, self.error = count, start, error
        self.asked: list[tuple[str, Any]] = []

    async def fetch(self, market: str, query: Any) -> list[dict[str, Any]]:
        self.asked.append((market, query))
        if self.error is not None:
            raise BarsError("upstream_429", self.error)
        return [
            {"t": self.start + i * 60_000, "o": 1, "h": 2, "l": 0.5, "c": 1.5, "v": 10, "n": 3}
            for i in range(self.count)
        ]


def deferred_history(s: ClientSession, message: dict[str, Any]) -> list[bytes]:
    """Send a history request, run the REST wait it defers, and build the answer."""
    reply = s.receive(orjson.dumps({"action": "history", **message}))
    assert reply.later is not None and reply.later.wait is not None
    asyncio.run(reply.later.wait())
    return sent(reply.later.build())


def with_bars(rig: Core, bars: FakeBars) -> ClientSession:
    member, _ = rig.member()
    context = replace(rig.context(), bars=bars, wall_ms=lambda: 1_000_000_000)
    s = ClientSession(context, member, "stocks")
    s.receive(b'{"action":"auth","params":"x"}')
    return s


def test_history_joins_massives_rest_bars_with_the_live_ones() -> None:
    """REST has minutes 1-3, the relay kept minutes 3-4 live: 1, 2 from REST, 3, 4 live."""
    rig = core()
    keeper = rig.session()
    keeper.receive(b'{"action":"auth","params":"x"}')
    keeper.receive(b'{"action":"subscribe","params":"AM.AAPL"}')
    rig.route(
        "stocks",
        b'[{"ev":"AM","sym":"AAPL","s":180000,"live":1},{"ev":"AM","sym":"AAPL","s":240000,"live":1}]',
    )
    bars = FakeBars(count=3)
    frames = deferred_history(with_bars(rig, bars), {"params": "AM.AAPL"})
    events = orjson.loads(frames[0])
    assert [(e["s"], e.get("live")) for e in events] == [
        (60000, None),
        (120000, None),
        (180000, 1),
        (240000, 1),
    ]
    assert events[0] == {
        "ev": "AM", "sym": "AAPL", "v": 10, "o": 1, "c": 1.5, "h": 2, "l": 0.5, "z": 3,
        "s": 60000, "e": 120000,
    }  # fmt: skip
    assert statuses(frames[1]) == [("success", "history: AM.AAPL (4 events)")]
    [(market, query)] = bars.asked
    assert (market, query.ticker, query.timespan, query.multiplier) == ("stocks", "AAPL", "minute", 1)


def test_history_options_choose_the_bars_and_bad_ones_are_refused() -> None:
    rig = core()
    bars = FakeBars(count=2, start=0)
    s = with_bars(rig, bars)
    frames = deferred_history(
        s, {"params": "AM.AAPL", "timespan": "hour", "from": "2025-01-01", "to": "2025-01-02"}
    )
    events = orjson.loads(frames[0])
    assert [e["e"] - e["s"] for e in events] == [3_600_000, 3_600_000]  # hour bars, not joined
    assert bars.asked[0][1].path() == "/v2/aggs/ticker/AAPL/range/1/hour/2025-01-01/2025-01-02"
    refused = s.receive(b'{"action":"history","params":"AM.AAPL","timespan":"fortnight"}')
    [(kind, text)] = statuses(refused.frames[0])
    assert kind == "error" and "timespan must be one of" in text
    trades = s.receive(b'{"action":"history","params":"T.AAPL","timespan":"minute"}')
    assert any("T.AAPL has no bars" in m for f in sent(trades) for _, m in statuses(f))


def test_a_rest_failure_is_said_and_the_kept_bars_still_come() -> None:
    rig = core()
    kept_history(rig, "AAPL", 2)
    rig_keeper = rig.session()
    rig_keeper.receive(b'{"action":"auth","params":"x"}')
    rig_keeper.receive(b'{"action":"subscribe","params":"AM.AAPL"}')
    rig.route("stocks", b'[{"ev":"AM","sym":"AAPL","s":60000}]')
    frames = deferred_history(
        with_bars(rig, FakeBars(error="history: Massive's rate limit reached")), {"params": "AM.AAPL"}
    )
    told = [st for f in frames for st in statuses(f)]
    assert told == [
        ("error", "history: Massive's rate limit reached (AM.AAPL)"),
        ("success", "history: AM.AAPL (1 events)"),
    ]


def test_without_a_rest_source_ranges_are_refused_and_bare_history_is_the_kept_one() -> None:
    s = authed()
    refused = s.receive(b'{"action":"history","params":"AM.AAPL","from":"2025-01-01"}')
    assert statuses(refused.frames[0]) == [
        ("error", "history: this relay has no REST source for ranges (no Massive key)")
    ]
    bare = s.receive(b'{"action":"history","params":"AM.AAPL"}')
    assert bare.later is None and statuses(sent(bare)[0]) == [("success", "history: AM.AAPL (0 events)")]
