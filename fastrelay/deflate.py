"""permessage-deflate (RFC 7692) for the relay's clients: negotiation, compression, inflation; pure.

Theory of operation
-------------------
Every browser, Massive's Python client (through websockets) and Node's ``ws``
offer ``permessage-deflate``. The relay accepts it *without context takeover*
in both directions:

* ``server_no_context_takeover``: each message the relay sends is compressed
  from an empty window, so the same compressed bytes can be written to every
  client of an audience, whatever each has received before. One compressor
  serves the whole relay (``SharedDeflater``): no per-connection memory (a
  per-connection compressor costs 64+ KiB, the reason Node ``ws`` and
  websockets warn about compression at scale), and the cost of compressing a
  frame is paid once per audience frame, not per client.
* ``client_no_context_takeover``: a client's compressed messages are inflated
  each with a fresh window (``inflate``), so no connection holds a 32 KiB
  inflater between messages. RFC 7692 7.1.1.2 lets a server ask for it even
  when the client did not offer it.

A client that limits the server's window below ``WINDOW_BITS`` gets no
compression (its offer is declined): one window size serves everyone.
A client that offers nothing, or only offers the relay cannot honour, gets
a plain connection, as before.

Small frames are sent plain (a frame of one event shrinks by about 1.2x for
about 9 us of CPU, docs/performance.md, "Compression"), as are frames whose
compressed form is no smaller, and frames sent while the relay's compression
CPU budget is spent: RFC 7692 lets each message be compressed or not.
"""

from __future__ import annotations

import re
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

EXTENSION: Final = "permessage-deflate"
WINDOW_BITS: Final = 15  # the one server window size (zlib's largest: the best ratio)
# RFC 7692 7.2.1: a compressed message ends with an empty stored block, 00 00 ff ff,
# which the sender removes and the receiver appends before inflating.
_TAIL: Final = b"\x00\x00\xff\xff"

# Why a frame went out uncompressed to a client that negotiated compression (metric labels).
PLAIN_SMALL: Final = "small"  # under --compression-threshold
PLAIN_NO_GAIN: Final = "no_gain"  # compressed, it was no smaller
PLAIN_CPU: Final = "cpu_budget"  # the relay's compression budget was spent
PLAIN_REASONS: Final = (PLAIN_SMALL, PLAIN_NO_GAIN, PLAIN_CPU)


class InflateError(ValueError):
    """A client's compressed message is not valid deflate data."""


class TooBig(ValueError):
    """A client's compressed message inflates past the message size limit."""


# --- negotiation (RFC 6455 9.1, RFC 7692 5 and 7.1) ------------------------------------------
_TOKEN: Final = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_PARAM: Final = re.compile(rf'\s*({_TOKEN})\s*(?:=\s*(?:({_TOKEN})|"((?:[^"\\]|\\.)*)"))?\s*')


def parse_extensions(header: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    """``Sec-WebSocket-Extensions`` as ``[(name, [(param, value or None), ...]), ...]``, in order.

    Raises ValueError when the header does not follow the grammar; a bad
    header means no extension, never a refused connection.
    """
    offers: list[tuple[str, list[tuple[str, str | None]]]] = []
    for element in _split_outside_quotes(header, ","):
        if not element.strip():
            continue  # RFC 9110 5.6.1: empty list elements are ignored
        name, *params = _split_outside_quotes(element, ";")
        name = name.strip()
        if not re.fullmatch(_TOKEN, name):
            raise ValueError(f"bad extension name {name!r}")
        parsed: list[tuple[str, str | None]] = []
        for param in params:
            match = _PARAM.fullmatch(param)
            if match is None:
                raise ValueError(f"bad extension parameter {param.strip()!r}")
            key, token, quoted = match.groups()
            value = token if quoted is None else re.sub(r"\\(.)", r"\1", quoted)
            parsed.append((key.lower(), value))
        offers.append((name.lower(), parsed))
    return offers


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    if quoted:
        raise ValueError("unterminated quoted string")
    parts.append("".join(current))
    return parts


def _window_bits(value: str | None) -> int | None:
    """A window-bits value, 8 to 15 (RFC 7692 7.1.2.1), or None when invalid."""
    if value is None or not value.isdigit() or len(value) > 2:
        return None
    bits = int(value)
    return bits if 8 <= bits <= 15 else None


def accept(offer: list[tuple[str, str | None]]) -> str | None:
    """The response to one ``permessage-deflate`` offer's parameters, or None to decline it."""
    seen: set[str] = set()
    echo_server_window = False
    for name, value in offer:
        if name in seen:
            return None  # RFC 7692 7: a parameter twice declines the offer
        seen.add(name)
        if name in ("server_no_context_takeover", "client_no_context_takeover"):
            if value is not None:
                return None
        elif name == "server_max_window_bits":
            bits = _window_bits(value)
            if bits is None or bits < WINDOW_BITS:
                return None  # one window size for everyone: a smaller one is declined
            echo_server_window = True
        elif name == "client_max_window_bits":
            # The client can limit its own window; the relay inflates with the largest
            # window, so it never needs to, and need not answer it.
            if value is not None and _window_bits(value) is None:
                return None
        else:
            return None  # a parameter this relay does not know
    response = f"{EXTENSION}; server_no_context_takeover; client_no_context_takeover"
    if echo_server_window:
        response += f"; server_max_window_bits={WINDOW_BITS}"
    return response


def negotiate(header: str | None) -> str | None:
    """The ``Sec-WebSocket-Extensions`` response to a client's offers, or None (no compression).

    The first acceptable ``permessage-deflate`` offer wins (the client lists them
    in its order of preference, RFC 7692 5); other extensions are ignored.
    """
    if not header:
        return None
    try:
        offers = parse_extensions(header)
    except ValueError:
        return None
    for name, params in offers:
        if name == EXTENSION:
            response = accept(params)
            if response is not None:
                return response
    return None


# --- the relay's compressor ----------------------------------------------------------------
@dataclass
class CompressionStatistics:
    """What ``SharedDeflater`` did; read by the metrics."""

    frames: int = 0  # payloads compressed
    bytes_in: int = 0  # their size before ...
    bytes_out: int = 0  # ... and after compression
    cpu_seconds: float = 0.0
    plain: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PLAIN_REASONS, 0))


class SharedDeflater:
    """One compressor for the whole relay, reset after every message (no context takeover).

    ``Z_FULL_FLUSH`` ends each message on a byte boundary *and* forgets the
    window, so the next message never refers back: what RFC 7692 calls no
    context takeover, without building a compressor per message (7 us against
    11 us for a 570-byte frame). ``cpu_per_second`` is a budget: compression
    spends from a bucket that refills at that rate (seconds of CPU per second,
    one second of burst); when it is empty, frames go out plain until it refills,
    so a flood of audiences can never make compression starve the loop.
    """

    def __init__(
        self,
        level: int,
        threshold: int,
        cpu_per_second: float,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.threshold = threshold
        self.stats = CompressionStatistics()
        self._compressor = zlib.compressobj(level, zlib.DEFLATED, -WINDOW_BITS)
        self._clock = clock
        self._rate = cpu_per_second
        self._tokens = cpu_per_second  # a second's worth of burst
        self._refilled_at = clock()

    def compress(self, payload: bytes) -> bytes | None:
        """``payload`` compressed for a frame with RSV1 set, or None to send it plain."""
        stats = self.stats
        if len(payload) < self.threshold:
            stats.plain[PLAIN_SMALL] += 1
            return None
        clock = self._clock
        started = clock()
        if self._tokens <= 0.0:
            self._refill(started)
            if self._tokens <= 0.0:
                stats.plain[PLAIN_CPU] += 1
                return None
        compressor = self._compressor
        data = compressor.compress(payload) + compressor.flush(zlib.Z_FULL_FLUSH)
        spent = clock() - started
        self._tokens -= spent
        stats.cpu_seconds += spent
        compressed = data[:-4] if data.endswith(_TAIL) else data
        if len(compressed) >= len(payload):
            stats.plain[PLAIN_NO_GAIN] += 1
            return None
        stats.frames += 1
        stats.bytes_in += len(payload)
        stats.bytes_out += len(compressed)
        return compressed

    def _refill(self, now: float) -> None:
        elapsed = now - self._refilled_at
        self._refilled_at = now
        self._tokens = min(self._rate, self._tokens + elapsed * self._rate)


# --- clients' compressed messages ----------------------------------------------------------
def inflate(payload: bytes, limit: int) -> bytes:
    """A client's compressed message, inflated with a fresh window (client_no_context_takeover).

    At most ``limit`` bytes are ever produced: a small message that would
    inflate to gigabytes (a decompression bomb) raises TooBig after ``limit``.
    """
    inflater = zlib.decompressobj(-WINDOW_BITS)
    try:
        data = inflater.decompress(payload + _TAIL, limit + 1)
    except zlib.error as exc:
        raise InflateError(str(exc)) from None
    if len(data) > limit or inflater.unconsumed_tail:
        raise TooBig(f"inflates past {limit} bytes")
    return data
