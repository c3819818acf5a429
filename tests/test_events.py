"""Decoding every sample frame of docs/protocol.md: routing fields out, bytes kept."""

from __future__ import annotations

import orjson
import pytest

from fastrelay.events import FrameError, decode_frame, ticker_of, timestamp_ms

# The sample frames of docs/protocol.md ("Sample frames"), with the ticker each routes on.
SAMPLES = [
    (
        b'[{"ev":"T","sym":"MSFT","x":4,"i":"12345","z":3,"p":114.125,"s":100,"c":[0,12],'
        b'"t":1536036818784,"q":3681328}]',
        ["MSFT"],
    ),
    (
        b'[{"ev":"Q","sym":"MSFT","bx":4,"bp":114.125,"bs":100,"ax":7,"ap":114.128,"as":160,"c":0,'
        b'"i":[604],"t":1536036818784,"q":50385480,"z":3}]',
        ["MSFT"],
    ),
    (
        b'[{"ev":"A","sym":"SPCE","v":200,"av":8642007,"op":25.66,"vw":25.3981,"o":25.39,"c":25.39,'
        b'"h":25.39,"l":25.39,"a":25.3714,"z":50,"s":1610144868000,"e":1610144869000},\n '
        b'{"ev":"AM","sym":"GTE","v":4110,"av":9470157,"op":0.4372,"vw":0.4488,"o":0.4488,"c":0.4486,'
        b'"h":0.4489,"l":0.4486,"a":0.4352,"z":685,"s":1610144640000,"e":1610144700000,"otc":true}]',
        ["SPCE", "GTE"],
    ),
    (
        b'[{"ev":"T","sym":"O:AMC210827C00037000","x":65,"p":1.54,"s":1,"c":[233],"t":1629820676333,'
        b'"q":651921857}]',
        ["O:AMC210827C00037000"],
    ),
    (
        b'[{"ev":"Q","sym":"O:SPY241220P00720000","bx":302,"ax":302,"bp":9.71,"ap":9.81,"bs":17,'
        b'"as":24,"t":1644506128351,"q":844090872}]',
        ["O:SPY241220P00720000"],
    ),
    (b'[{"ev":"V","val":3988.5,"T":"I:SPX","t":1678220098130}]', ["I:SPX"]),
    (b'[{"ev":"C","p":"USD/CNH","x":"44","a":6.83366,"b":6.83363,"t":1536036818784}]', ["USD/CNH"]),
    (
        b'[{"ev":"XT","pair":"BTC-USD","p":33021.9,"t":1610462007425,"s":0.01616617,"c":[2],'
        b'"i":14272084,"x":3,"r":1610462007576}]',
        ["BTC-USD"],
    ),
    (b'[{"ev":"LULD","T":"AAPL","h":190.1,"l":170.2,"i":[],"z":3,"t":1610462007425123,"q":1}]', ["AAPL"]),
    (b'[{"ev":"XA","pair":"ETH-USD","o":1,"c":2,"h":3,"l":1,"v":9,"s":1,"e":2}]', ["ETH-USD"]),
]


@pytest.mark.parametrize(("payload", "tickers"), SAMPLES)
def test_sample_frames_decode_with_tickers_and_raw_bytes(payload: bytes, tickers: list[str]) -> None:
    """Each sample yields its ev and ticker, and raw bytes equal to the original objects."""
    heads, raws = decode_frame(payload)
    assert [ticker_of(h) for h in heads] == tickers
    assert [orjson.loads(bytes(r)) for r in raws] == orjson.loads(payload)
    assert all(bytes(r) in payload for r in raws)  # slices, not re-encodings


def test_type_drift_is_tolerated() -> None:
    """Forex x as a string, crypto i as a string: routing still works."""
    heads, _ = decode_frame(
        b'[{"ev":"XT","pair":"BTC-USD","i":"abc","x":"3"},{"ev":"C","p":"EUR/USD","x":"44"}]'
    )
    assert [ticker_of(h) for h in heads] == ["BTC-USD", "EUR/USD"]


def test_unknown_ev_and_fields_pass() -> None:
    """An unknown ev with unknown fields decodes; its bytes are untouched."""
    payload = b'[{"ev":"NEW","sym":"X","zz":[1,{"a":2}],"ds":"y"}]'
    heads, raws = decode_frame(payload)
    assert heads[0].ev == "NEW" and bytes(raws[0]) == payload[1:-1]


@pytest.mark.parametrize("payload", [b'[{"ev":"T","sym":', b'{"ev":"T"}', b"[1,2]", b"", b"\xff"])
def test_bad_frames_raise_frame_error(payload: bytes) -> None:
    """Truncated, non-array and non-object frames are FrameErrors (counted and skipped upstream)."""
    with pytest.raises(FrameError):
        decode_frame(payload)


@pytest.mark.parametrize(
    ("t", "expected"),
    [(1536036818784, 1536036818784.0), (1610462007425123, None), (1678220098130000000, None), ("1", None)],
)
def test_timestamp_ms_only_for_millisecond_timestamps(t: object, expected: float | None) -> None:
    """Latency uses t only when it is in ms (LULD shows µs, FMV ns)."""
    heads, _ = decode_frame(orjson.dumps([{"ev": "T", "sym": "X", "t": t}]))
    assert timestamp_ms(heads[0]) == expected
