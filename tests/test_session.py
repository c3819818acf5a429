"""Client conversation rules: auth, subscribe, unsubscribe, bad input (no sockets)."""

from __future__ import annotations

from dataclasses import replace

import orjson
import pytest

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
