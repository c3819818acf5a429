"""WebSocket frames built once for fan-out: lengths, splitting, market tags (no sockets)."""

from __future__ import annotations

import orjson
import pytest

from fastrelay import framing


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 200_000])
def test_text_frame_header_lengths(size: int) -> None:
    """Unmasked text frames use the 7-bit, 16-bit or 64-bit length forms (RFC 6455 5.2)."""
    frame = framing.text_frame(b"x" * size)
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
    frames = framing.event_array_frames(events, max_payload=1000)
    assert len(frames) > 1
    decoded = [e for payload in _payloads(frames) for e in payload]
    assert [e["q"] for e in decoded] == list(range(100))  # type: ignore[index]
    assert all(len(f) - 4 <= 1000 for f in frames)


def test_event_array_frames_one_frame_when_it_fits() -> None:
    """A batch that fits leaves as one JSON array."""
    frames = framing.event_array_frames([b'{"ev":"T"}', b'{"ev":"Q"}'], max_payload=1000)
    assert _payloads(frames) == [[{"ev": "T"}, {"ev": "Q"}]]


def test_tag_market_keeps_the_event_bytes() -> None:
    """The market tag is spliced in front; the rest of the event is byte-identical."""
    event = b'{"ev":"T","sym":"ESZ5","p":5000.25}'
    tagged = framing.tag_market(event, "futures/cme")
    assert tagged == b'{"market":"futures/cme","ev":"T","sym":"ESZ5","p":5000.25}'
    assert framing.tag_market(b"{}", "futures") == b"{}"
