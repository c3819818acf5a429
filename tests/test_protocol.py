"""Channel parsing, client messages, status frames and framing (no sockets)."""

from __future__ import annotations

import orjson
import pytest

from fastrelay import protocol
from fastrelay.protocol import Channel, ChannelError


@pytest.mark.parametrize(
    ("text", "market", "expected"),
    [
        ("T.AAPL", "stocks", Channel("stocks", "T", "AAPL")),
        ("T.BRK.B", "stocks", Channel("stocks", "T", "BRK.B")),
        ("T.*", "stocks", Channel("stocks", "T", "*")),
        ("Q.O:SPY241220P00720000", "options", Channel("options", "Q", "O:SPY241220P00720000")),
        ("C.USD/CNH", "forex", Channel("forex", "C", "USD/CNH")),
        ("XT.BTC-USD", "crypto", Channel("crypto", "XT", "BTC-USD")),
        ("V.I:SPX", "indices", Channel("indices", "V", "I:SPX")),
    ],
)
def test_parse_channel_splits_at_first_dot(text: str, market: str, expected: Channel) -> None:
    """A channel is EV.TICKER split at the first dot only; tickers keep their dots."""
    assert protocol.parse_channel(text, market) == expected
    assert expected.name == text


@pytest.mark.parametrize(
    "text", ["AAPL", "T.", ".AAPL", "t.AAPL", "T.AA PL", "T.A,B", "TOOLONGEV1.X", "T." + "A" * 65]
)
def test_parse_channel_rejects_malformed(text: str) -> None:
    """Malformed channels raise ChannelError with the channel in the message."""
    with pytest.raises(ChannelError) as info:
        protocol.parse_channel(text, "stocks")
    assert "invalid channel" in str(info.value)


@pytest.mark.parametrize("ev", ["Q", "FMV"])
def test_options_quotes_and_fmv_accept_no_wildcard(ev: str) -> None:
    """Massive accepts no wildcard for options quotes and FMV."""
    with pytest.raises(ChannelError, match="no wildcard"):
        protocol.parse_channel(f"{ev}.*", "options")
    assert protocol.parse_channel("T.*", "options").is_wildcard


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("T.AAPL", Channel("stocks", "T", "AAPL")),
        ("T.O:SPY241220P00720000", Channel("options", "T", "O:SPY241220P00720000")),
        ("V.I:SPX", Channel("indices", "V", "I:SPX")),
        ("A.I:SPX", Channel("indices", "A", "I:SPX")),
        ("C.USD/CNH", Channel("forex", "C", "USD/CNH")),
        ("XT.*", Channel("crypto", "XT", "*")),
        ("FMV.C:EURUSD", Channel("forex", "FMV", "C:EURUSD")),  # Business feeds
        ("AM.X:BTCUSD", Channel("crypto", "AM", "X:BTCUSD")),  # Launchpad
        ("LV.C:EURUSD", Channel("forex", "LV", "C:EURUSD")),
        ("futures:T.ESZ5", Channel("futures", "T", "ESZ5")),
        ("futures/cme:AM.*", Channel("futures/cme", "AM", "*")),
        ("options:T.*", Channel("options", "T", "*")),
    ],
)
def test_api_socket_channel_names_its_market(text: str, expected: Channel) -> None:
    """On /api/socket the market follows from the ev, the ticker prefix, or an explicit prefix."""
    assert protocol.parse_api_channel(text) == expected


def test_api_socket_rejects_unknown_market_prefix() -> None:
    """An unknown explicit market prefix is an error naming it."""
    with pytest.raises(ChannelError, match="unknown market 'bonds'"):
        protocol.parse_api_channel("bonds:T.X")


def test_split_params_ignores_blanks() -> None:
    """Params are comma-separated; spaces and empty items are dropped."""
    assert protocol.split_params(" T.AAPL, Q.MSFT,,AM.*") == ["T.AAPL", "Q.MSFT", "AM.*"]


def test_decode_client_message() -> None:
    """Each action decodes to its own type; params default to empty; unknown keys are ignored."""
    message = protocol.decode_client_message(b'{"action":"subscribe","params":"T.AAPL"}')
    assert message == protocol.Subscribe("T.AAPL")
    assert protocol.decode_client_message(b'{"action":"auth"}') == protocol.Auth("")
    assert protocol.decode_client_message(b'{"params":"A.X","x":[1],"action":"history"}') == protocol.History(
        "A.X"
    )
    assert protocol.decode_client_message(b'{"action":"unsubscribe","params":"T.*"}') == protocol.Unsubscribe(
        "T.*"
    )


@pytest.mark.parametrize(
    "payload", [b"not json", b"[1,2]", b'{"params":"x"}', b'{"action":1}', b'{"action":"auth","params":5}']
)
def test_decode_client_message_rejects_bad_input(payload: bytes) -> None:
    """Anything but {"action": str, "params": str} is a ClientMessageError."""
    with pytest.raises(protocol.ClientMessageError, match="invalid message"):
        protocol.decode_client_message(payload)


def test_unknown_actions_are_named_and_truncated() -> None:
    """An unknown action is named in the error, cut to a few dozen characters."""
    with pytest.raises(protocol.ClientMessageError, match=r"unknown action 'dance'"):
        protocol.decode_client_message(b'{"action":"dance"}')
    with pytest.raises(protocol.ClientMessageError) as caught:
        protocol.decode_client_message(orjson.dumps({"action": "x" * 10_000}))
    assert len(str(caught.value)) < 100


def test_deeply_nested_input_is_a_bad_message_not_a_crash() -> None:
    """A 2,000-deep array anywhere in a message is refused like any bad message (no RecursionError)."""
    for payload in (b"[" * 2000 + b"]" * 2000, b'{"action":"auth","x":' + b"[" * 2000 + b"]" * 2000 + b"}"):
        with pytest.raises(protocol.ClientMessageError, match="invalid message"):
            protocol.decode_client_message(payload)


def test_status_frame_is_a_massive_array() -> None:
    """Statuses are arrays of objects with ev=status, as Massive sends them."""
    frame = orjson.loads(protocol.status_frame("success", "subscribed to: T.AAPL"))
    assert frame == [{"ev": "status", "status": "success", "message": "subscribed to: T.AAPL"}]
