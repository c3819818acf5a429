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

Every data message is an envelope: 8 bytes of the ingest's wall clock at
publish (little-endian float64 seconds, for the ingest-to-edge lag metric),
then a JSON array of events exactly as the upstream sent them.
"""

from __future__ import annotations

import re
import struct
from typing import Final
from urllib.parse import unquote

BATCH: Final = "batch"
EVENT: Final = "event"

NO_TICKER: Final = "%"
_UNSAFE: Final = re.compile(r"[^\x21-\x7e]|[.*>%]")
_STAMP: Final = struct.Struct("<d")
ENVELOPE_HEADER: Final = _STAMP.size


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


def seal(payload: bytes, sent_at: float) -> bytes:
    """A data message: the publish time, then the JSON array."""
    return _STAMP.pack(sent_at) + payload


def open_envelope(data: bytes) -> tuple[float, memoryview]:
    """(publish time, the JSON array) of a data message; ValueError if too short."""
    if len(data) <= ENVELOPE_HEADER:
        raise ValueError(f"data message of {len(data)} bytes: shorter than its envelope")
    return _STAMP.unpack_from(data)[0], memoryview(data)[ENVELOPE_HEADER:]
