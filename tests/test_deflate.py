"""permessage-deflate (RFC 7692): negotiation, the shared compressor, bounded inflation."""

from __future__ import annotations

import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastrelay import deflate
from fastrelay.deflate import SharedDeflater

ACCEPTED = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
HELLO = b"Hello"
# RFC 7692 7.2.3.1: "Hello" compressed, the trailing 00 00 ff ff removed.
HELLO_COMPRESSED = bytes([0xF2, 0x48, 0xCD, 0xC9, 0xC9, 0x07, 0x00])


# --- negotiation ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("offer", "answer"),
    [
        # What browsers, websockets (Massive's Python client) and Node ws send.
        ("permessage-deflate; client_max_window_bits", ACCEPTED),
        ("permessage-deflate", ACCEPTED),
        ("permessage-deflate; server_no_context_takeover; client_no_context_takeover", ACCEPTED),
        ("permessage-deflate; client_max_window_bits=10", ACCEPTED),
        ("Permessage-Deflate ; Client_Max_Window_Bits", ACCEPTED),
        ('permessage-deflate; client_max_window_bits="12"', ACCEPTED),
        # The server window may be limited only to the one size the relay uses.
        ("permessage-deflate; server_max_window_bits=15", ACCEPTED + "; server_max_window_bits=15"),
        ("permessage-deflate; server_max_window_bits=10", None),
        # RFC 7692 5: offers in order of preference; the first acceptable one wins.
        ("permessage-deflate; server_max_window_bits=10, permessage-deflate", ACCEPTED),
        ("x-webkit-deflate-frame, permessage-deflate; client_max_window_bits", ACCEPTED),
        # Declined: invalid parameters or values (RFC 7692 7.1).
        ("permessage-deflate; server_max_window_bits", None),
        ("permessage-deflate; server_max_window_bits=16", None),
        ("permessage-deflate; server_max_window_bits=7", None),
        ("permessage-deflate; server_max_window_bits=015", None),
        ("permessage-deflate; client_max_window_bits=16", None),
        ("permessage-deflate; server_no_context_takeover=1", None),
        ("permessage-deflate; client_no_context_takeover; client_no_context_takeover", None),
        ("permessage-deflate; mystery", None),
        # Nothing offered, or not this extension, or a malformed header.
        ("", None),
        ("x-webkit-deflate-frame", None),
        ('permessage-deflate; client_max_window_bits="12', None),
        ("permessage-deflate; =3", None),
        ("perm essage-deflate", None),
    ],
)
def test_negotiate(offer: str, answer: str | None) -> None:
    assert deflate.negotiate(offer) == answer


def test_negotiate_none() -> None:
    assert deflate.negotiate(None) is None


def test_parse_extensions_keeps_order_and_unquotes() -> None:
    parsed = deflate.parse_extensions('a; x=1; y="2", b, ,c;z')
    assert parsed == [("a", [("x", "1"), ("y", "2")]), ("b", []), ("c", [("z", None)])]


@given(st.text(max_size=80))
def test_negotiate_never_raises(header: str) -> None:
    answer = deflate.negotiate(header)
    assert answer is None or answer.startswith(ACCEPTED)


# --- compression ---------------------------------------------------------------------------
def test_no_context_takeover_compresses_a_message_the_same_every_time() -> None:
    """The same message compresses to the same bytes (nothing carried over), which inflate
    alone; "Hello" itself compresses to 7 bytes (RFC 7692 7.2.3.1), more than it is: plain."""
    deflater = SharedDeflater(level=6, threshold=0, cpu_per_second=1.0)
    assert deflater.compress(HELLO) is None
    message = HELLO * 20
    first = deflater.compress(message)
    assert first is not None and deflater.compress(message) == first
    assert _inflate_alone(first) == message


def _inflate_alone(data: bytes) -> bytes:
    """An independent inflater with a fresh window, as a client without context takeover."""
    return zlib.decompressobj(-15).decompress(data + b"\x00\x00\xff\xff")


@given(st.lists(st.binary(min_size=0, max_size=3000), min_size=1, max_size=8))
def test_every_message_inflates_alone(messages: list[bytes]) -> None:
    """No context takeover: each compressed message inflates with a fresh window."""
    deflater = SharedDeflater(level=1, threshold=0, cpu_per_second=10.0)
    for message in messages:
        compressed = deflater.compress(message)
        if compressed is not None:
            assert len(compressed) < len(message)
            assert _inflate_alone(compressed) == message


def test_small_and_incompressible_frames_go_plain() -> None:
    deflater = SharedDeflater(level=6, threshold=100, cpu_per_second=1.0)
    assert deflater.compress(b"x" * 99) is None
    assert deflater.compress(bytes(range(256))) is None  # no gain
    assert deflater.compress(b'{"ev":"T"}' * 20) is not None
    stats = deflater.stats
    assert stats.plain == {deflate.PLAIN_SMALL: 1, deflate.PLAIN_NO_GAIN: 1, deflate.PLAIN_CPU: 0}
    assert stats.frames == 1 and stats.bytes_in == 200 and 0 < stats.bytes_out < 200
    assert stats.cpu_seconds > 0


def test_cpu_budget_sends_plain_until_it_refills() -> None:
    """Each compression is charged what the clock says; an empty bucket sends plain."""
    # The clock's readings, in order: the deflater's start; the first compression's start
    # and end (a whole second); the next two only read a start each (plain); a long pause.
    readings = iter([0.0, 0.0, 1.0, 1.0, 2.0, 200.0, 200.001])
    deflater = SharedDeflater(level=1, threshold=0, cpu_per_second=0.02, clock=lambda: next(readings))
    message = b'{"ev":"Q","sym":"AAPL"}' * 10
    # One second of compression overdraws a 20 ms/s budget: what follows goes plain ...
    results = [deflater.compress(message) is not None for _ in range(3)]
    assert results == [True, False, False]
    assert deflater.stats.plain[deflate.PLAIN_CPU] == 2
    # ... until the bucket has refilled.
    assert deflater.compress(message) is not None


# --- inflation -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "compressed",
    [
        HELLO_COMPRESSED,  # 7.2.3.1
        bytes([0x00, 0x05, 0x00, 0xFA, 0xFF]) + HELLO + b"\x00",  # 7.2.3.3: a stored block
        bytes([0xF3, 0x48, 0xCD, 0xC9, 0xC9, 0x07, 0x00, 0x00]),  # 7.2.3.4: BFINAL set
        bytes([0xF2, 0x48, 0x05, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xCA, 0xC9, 0xC9, 0x07, 0x00]),  # 7.2.3.5
    ],
)
def test_inflate_the_rfc_examples(compressed: bytes) -> None:
    assert deflate.inflate(compressed, limit=100) == HELLO


def test_inflate_caps_a_decompression_bomb() -> None:
    """10 MB of zeros is a few KB compressed; inflation stops at the limit."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = compressor.compress(bytes(10_000_000)) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert len(bomb) < 20_000
    with pytest.raises(deflate.TooBig):
        deflate.inflate(bomb[:-4], limit=256 * 1024)
    assert deflate.inflate(bomb[:-4], limit=10_000_000) == bytes(10_000_000)


def test_inflate_rejects_garbage() -> None:
    with pytest.raises(deflate.InflateError):
        deflate.inflate(b"\xff\xff\xff\xff", limit=100)
