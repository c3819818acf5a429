"""Client conversation rules: auth, subscribe, unsubscribe, bad input (no sockets)."""

from __future__ import annotations

import orjson
import pytest

from fastrelay.session import ClientSession, TokenCheck
from tests.sinks import Core, make_core


def statuses(payload: bytes) -> list[tuple[str, str]]:
    return [(s["status"], s["message"]) for s in orjson.loads(payload)]


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


def test_huge_subscribe_is_one_error() -> None:
    """100,000 channels in one message: one error status, nothing subscribed, no per-channel spam."""
    s = authed()
    params = ",".join(f"T.S{i}" for i in range(100_000))
    reply = s.receive(orjson.dumps({"action": "subscribe", "params": params}))
    result = statuses(reply.frames[0])
    assert len(result) == 1 and result[0][0] == "error" and "too many channels" in result[0][1]
    assert s.member.channels == set()


def test_many_bad_channels_are_summarised() -> None:
    """Errors are listed up to a limit, then counted."""
    s = authed()
    reply = s.receive(orjson.dumps({"action": "subscribe", "params": ",".join(["bad"] * 30)}))
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
    reply = s.receive(b'{"action":"history","params":"A.AAPL,AM.MSFT,bad"}')
    assert [orjson.loads(f) for f in reply.frames[:1]] == [
        [{"ev": "A", "sym": "AAPL", "s": 1}, {"ev": "A", "sym": "AAPL", "s": 2}]
    ]
    assert statuses(reply.frames[1]) == [("success", "history: A.AAPL (2 events)")]
    assert statuses(reply.frames[2]) == [("success", "history: AM.MSFT (0 events)")]
    assert statuses(reply.frames[3])[0][0] == "error"
