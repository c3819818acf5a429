"""NATS subjects of a fastrelay deployment, and the data envelope; pure.

Subjects (``PREFIX`` is ``--nats-prefix``, default ``fastrelay``)::

    PREFIX.data.MARKET.EV            granularity "batch": one message per upstream
                                     frame per ev, every ticker of that ev in it
    PREFIX.data.MARKET.EV.TICKER     granularity "event": one message per event,
                                     so ``PREFIX.data.MARKET.EV.*`` is ``EV.*``
    PREFIX.interest                  edges -> ingest: what each edge's clients want
    PREFIX.ingest                    ingest -> edges: heartbeat, granularity, market states
    PREFIX.snapshot                  edges -> ingest requests: last values and history

A ticker is one subject token, so the characters NATS gives a meaning to
(``.`` separates tokens, ``*`` and ``>`` are wildcards, whitespace ends a
subject) are percent-escaped, as is ``%`` itself and anything outside
printable ASCII: ``BRK.B`` travels as ``BRK%2EB``. Evs come from the upstream
and get the same treatment. An event without a ticker travels under ``%``,
which no escaped ticker can be.

Every data message is an envelope: a header of 18 bytes (a marker byte 0xFA,
the message version, the leader's term as a little-endian uint64 and the time
the ingest read the frame, a little-endian float64 of Unix seconds), then a
JSON array of events exactly as the upstream sent them. Version 1 (before
leader election) had only the 8-byte time: edges still read it, as term 0, so
edges can be upgraded before ingests (docs/scaleout.md, "Versions").
"""

from __future__ import annotations

import re
import struct
from typing import Final
from urllib.parse import unquote

from fastrelay.scaleout.messages import VERSION

BATCH: Final = "batch"
EVENT: Final = "event"

NO_TICKER: Final = "%"
_UNSAFE: Final = re.compile(r"[^\x21-\x7e]|[.*>%]")
_MARKER: Final = 0xFA
_HEADER: Final = struct.Struct("<BBQd")  # marker, version, term, time read
_V1_HEADER: Final = struct.Struct("<d")
ENVELOPE_HEADER: Final = _HEADER.size
_ARRAY: Final = ord("[")


def _percent(match: re.Match[str]) -> str:
    return "".join(f"%{byte:02X}" for byte in match.group().encode("utf-8", "surrogatepass"))


def escape_token(text: str | None) -> str:
    """One subject token for ``text``; the common case (plain tickers) is returned as is."""
    if not text:
        return NO_TICKER
    if _UNSAFE.search(text) is None:
        return text
    return _UNSAFE.sub(_percent, text)


def unescape_token(token: str) -> str | None:
    if token == NO_TICKER:
        return None
    return unquote(token, errors="surrogatepass") if "%" in token else token


class Subjects:
    """The subjects of one deployment (one ``--nats-prefix``)."""

    def __init__(self, prefix: str = "fastrelay") -> None:
        if not prefix or any(not escape_token(t) == t or t == NO_TICKER for t in prefix.split(".")):
            raise ValueError(f"invalid NATS subject prefix {prefix!r}: use tokens like fastrelay.prod")
        self.prefix = prefix
        self.interest = f"{prefix}.interest"
        self.ingest = f"{prefix}.ingest"
        self.snapshot = f"{prefix}.snapshot"
        self._data = f"{prefix}.data."
        # data subjects: PREFIX tokens, "data", market, ev[, ticker]
        self._market_token = prefix.count(".") + 2

    def batch(self, market: str, ev: str) -> str:
        return f"{self._data}{market}.{escape_token(ev)}"

    def event(self, market: str, ev: str, ticker: str | None) -> str:
        return f"{self._data}{market}.{escape_token(ev)}.{escape_token(ticker)}"

    def for_channel(self, market: str, name: str, granularity: str) -> str:
        """What an edge subscribes for channel ``name`` (``T.AAPL``, ``T.*``) of ``market``."""
        ev, _, ticker = name.partition(".")
        if granularity == BATCH:
            return self.batch(market, ev)
        if ticker == "*":
            return f"{self._data}{market}.{escape_token(ev)}.*"
        return self.event(market, ev, ticker)

    def market_of(self, subject: str) -> str:
        return subject.split(".", self._market_token + 1)[self._market_token]


class VersionError(ValueError):
    """A message of a version this process does not read (a newer peer: upgrade order)."""


def seal(payload: bytes, read_at: float, term: int) -> bytes:
    """A data message: the header, then the JSON array."""
    return _HEADER.pack(_MARKER, VERSION, term, read_at) + payload


def open_envelope(data: bytes) -> tuple[int, float, memoryview]:
    """(term, time read, the JSON array) of a data message; ValueError if it is not one,
    VersionError if it is one of a version this edge does not read."""
    size = len(data)
    if size > ENVELOPE_HEADER and data[0] == _MARKER and data[ENVELOPE_HEADER] == _ARRAY:
        _, version, term, read_at = _HEADER.unpack_from(data)
        if version != VERSION:
            raise VersionError(f"a data message of version {version}; this process reads {VERSION} and 1")
        return term, read_at, memoryview(data)[ENVELOPE_HEADER:]
    if size > _V1_HEADER.size and data[_V1_HEADER.size] == _ARRAY:
        return 0, _V1_HEADER.unpack_from(data)[0], memoryview(data)[_V1_HEADER.size :]
    raise ValueError(f"data message of {size} bytes: not an envelope and a JSON array")
