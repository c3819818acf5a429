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
    """A Massive action decodes; params default to empty."""
    message = protocol.decode_client_message(b'{"action":"subscribe","params":"T.AAPL"}')
    assert (message.action, message.params) == ("subscribe", "T.AAPL")
    assert protocol.decode_client_message(b'{"action":"auth"}').params == ""


@pytest.mark.parametrize(
    "payload", [b"not json", b"[1,2]", b'{"params":"x"}', b'{"action":1}', b'{"action":"auth","params":5}']
)
def test_decode_client_message_rejects_bad_input(payload: bytes) -> None:
    """Anything but {"action": str, "params": str} is a ClientMessageError."""
    with pytest.raises(protocol.ClientMessageError, match="invalid message"):
        protocol.decode_client_message(payload)


def test_status_frame_is_a_massive_array() -> None:
    """Statuses are arrays of objects with ev=status, as Massive sends them."""
    frame = orjson.loads(protocol.status_frame("success", "subscribed to: T.AAPL"))
    assert frame == [{"ev": "status", "status": "success", "message": "subscribed to: T.AAPL"}]


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 200_000])
def test_text_frame_header_lengths(size: int) -> None:
    """Unmasked text frames use the 7-bit, 16-bit or 64-bit length forms (RFC 6455 5.2)."""
    frame = protocol.text_frame(b"x" * size)
    assert frame[0] == 0x81
    length = frame[1] & 0x7F
    assert frame[1] & 0x80 == 0  # server frames are not masked
    if size < 126:
        assert (length, len(frame)) == (size, size + 2)
    elif size < 65536:
        assert (length, int.from_bytes(frame[2:4], "big"), len(frame)) == (126, size, size + 4)
    else:
        assert (length, int.from_bytes(frame[2:10], "big"), len(frame)) == (127, size, size + 10)


def _payloads(frames: list[bytes]) -> list[list[object]]:
    out = []
    for frame in frames:
        length = frame[1] & 0x7F
        offset = {126: 4, 127: 10}.get(length, 2)
        out.append(orjson.loads(frame[offset:]))
    return out


def test_event_array_frames_split_in_order_under_the_limit() -> None:
    """A large batch is split over several frames, each under the limit, order kept."""
    events = [orjson.dumps({"ev": "T", "sym": "AAPL", "q": i, "pad": "x" * 50}) for i in range(100)]
    frames = protocol.event_array_frames(events, max_payload=1000)
    assert len(frames) > 1
    decoded = [e for payload in _payloads(frames) for e in payload]
    assert [e["q"] for e in decoded] == list(range(100))  # type: ignore[index]
    assert all(len(f) - 4 <= 1000 for f in frames)


def test_event_array_frames_one_frame_when_it_fits() -> None:
    """A batch that fits leaves as one JSON array."""
    frames = protocol.event_array_frames([b'{"ev":"T"}', b'{"ev":"Q"}'], max_payload=1000)
    assert _payloads(frames) == [[{"ev": "T"}, {"ev": "Q"}]]


def test_tag_market_keeps_the_event_bytes() -> None:
    """The market tag is spliced in front; the rest of the event is byte-identical."""
    event = b'{"ev":"T","sym":"ESZ5","p":5000.25}'
    tagged = protocol.tag_market(event, "futures/cme")
    assert tagged == b'{"market":"futures/cme","ev":"T","sym":"ESZ5","p":5000.25}'
    assert protocol.tag_market(b"{}", "futures") == b"{}"
