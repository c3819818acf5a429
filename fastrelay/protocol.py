"""The Massive wire protocol as the relay speaks it on both sides; pure.

Server to client: every text frame is a JSON array of objects with an ``ev``
key. Client to server: one JSON object ``{"action": ..., "params": "..."}``.
See ../shared/PROTOCOL.md. Nothing here touches a socket, so the rules can be
tested and benchmarked alone.
"""

from __future__ import annotations

import re
import struct
from typing import Final, NamedTuple

import msgspec
import orjson

from fastrelay import markets

# Status values Massive uses (PROTOCOL.md, "Messages").
CONNECTED: Final = "connected"
AUTH_SUCCESS: Final = "auth_success"
AUTH_FAILED: Final = "auth_failed"
AUTH_TIMEOUT: Final = "auth_timeout"
AUTH_REQUIRED: Final = "auth_required"
SUCCESS: Final = "success"
ERROR: Final = "error"
MAX_CONNECTIONS: Final = "max_connections"
FORCE_DISCONNECT: Final = "force_disconnect"
SLOW_CONSUMER: Final = "slow_consumer"

MAX_TICKER_LENGTH: Final = 64
_EV_PATTERN: Final = re.compile(r"[A-Z][A-Z0-9]{0,7}")
# A ticker is anything printable without the separators the params string
# uses; real ones include "BRK.B", "O:SPY241220P00720000", "USD/CNH", "BTC-USD".
_TICKER_PATTERN: Final = re.compile(rf"[!-+\--~]{{1,{MAX_TICKER_LENGTH}}}")


class ChannelError(ValueError):
    """A channel name the relay cannot serve; the message goes to the client."""


class Channel(NamedTuple):
    """One subscribable stream: ``ev.ticker`` on one market (``*`` = every ticker)."""

    market: str
    ev: str
    ticker: str

    @property
    def name(self) -> str:
        """The name Massive uses on the wire, e.g. ``T.BRK.B``."""
        return f"{self.ev}.{self.ticker}"

    @property
    def is_wildcard(self) -> bool:
        return self.ticker == "*"

    def label(self, tagged: bool) -> str:
        """The name as the client wrote it: with the market prefix on /api/socket."""
        return f"{self.market}:{self.name}" if tagged else self.name


def parse_channel(text: str, market: str) -> Channel:
    """Parse ``EV.TICKER`` for one market; split at the first dot only."""
    ev, dot, ticker = text.partition(".")
    if not dot:
        raise ChannelError(f"invalid channel {text!r}: expected EV.TICKER, e.g. T.AAPL")
    if not _EV_PATTERN.fullmatch(ev):
        raise ChannelError(f"invalid channel {text!r}: bad event type {ev!r}")
    if ticker != "*" and not _TICKER_PATTERN.fullmatch(ticker):
        raise ChannelError(f"invalid channel {text!r}: bad ticker")
    if ticker == "*" and ev in markets.capped_evs(market):
        raise ChannelError(
            f"invalid channel {text!r}: {market} {ev} accepts no wildcard, subscribe contracts one by one"
        )
    return Channel(market, ev, ticker)


def parse_api_channel(text: str) -> Channel:
    """Parse a channel of the multi-market /api/socket.

    ``[MARKET:]EV.TICKER``: an explicit market prefix wins; without one the
    market follows from the ev code (forex, crypto, index values) or the
    ticker prefix (``O:`` options, ``I:`` indices), else stocks.
    """
    head, dot, _ = text.partition(".")
    if dot and ":" in head:
        market, _, rest = text.partition(":")
        if not markets.is_market(market):
            raise ChannelError(f"invalid channel {text!r}: unknown market {market!r}")
        return parse_channel(rest, market)
    channel = parse_channel(text, "stocks")
    inferred = markets.infer_market(channel.ev, channel.ticker)
    if inferred == "stocks":
        return channel
    return parse_channel(text, inferred)


def split_params(params: str) -> list[str]:
    """The comma-separated channel list of a subscribe or unsubscribe."""
    return [part.strip() for part in params.split(",") if part.strip()]


class ClientMessage(msgspec.Struct):
    action: str
    params: str = ""


class ClientMessageError(ValueError):
    """A client message that is not a Massive action; the text goes to the client."""


_client_message_decoder: Final = msgspec.json.Decoder(ClientMessage)


def decode_client_message(payload: bytes) -> ClientMessage:
    try:
        return _client_message_decoder.decode(payload)
    except msgspec.ValidationError as exc:
        raise ClientMessageError(f"invalid message: {exc}") from None
    except msgspec.DecodeError:
        raise ClientMessageError("invalid message: not a JSON object") from None


def status(status: str, message: str) -> dict[str, str]:
    return {"ev": "status", "status": status, "message": message}


def status_frame(status_value: str, message: str) -> bytes:
    """One status as a Massive frame payload (a JSON array)."""
    return orjson.dumps([status(status_value, message)])


def statuses_frame(statuses: list[dict[str, str]]) -> bytes:
    """Several statuses batched in one frame payload, as Massive sometimes does."""
    return orjson.dumps(statuses)


def subscribed_message(channel_label: str) -> str:
    return f"subscribed to: {channel_label}"


def feed_interrupted_frame(market: str, reason: str) -> bytes:
    """fastrelay's outage status (README): an ``error`` Massive's clients log and go on.

    The wording is part of the interface: the dashboard matches
    ``^MARKET feed interrupted`` and ``^MARKET feed restored``.
    """
    return status_frame(
        ERROR,
        f"{market} feed interrupted ({reason}): reconnecting; events during the outage are not replayed",
    )


def feed_restored_frame(market: str) -> bytes:
    return status_frame(SUCCESS, f"{market} feed restored: subscriptions resumed")


def unsubscribed_message(channel_label: str) -> str:
    # Massive's own wording, grammar included: clients may match on it.
    return f"unsubscribed to: {channel_label}"


# --- WebSocket framing -------------------------------------------------------
# Server-to-client frames are not masked (RFC 6455, 5.1), so one complete
# frame can be built once and written as the same bytes to every client that
# should receive exactly those events.
_OPCODE_TEXT_FIN: Final = 0x81
_pack_u16: Final = struct.Struct("!BBH").pack
_pack_u64: Final = struct.Struct("!BBQ").pack


def text_frame_header(payload_length: int) -> bytes:
    if payload_length < 126:
        return bytes((_OPCODE_TEXT_FIN, payload_length))
    if payload_length < 65536:
        return _pack_u16(_OPCODE_TEXT_FIN, 126, payload_length)
    return _pack_u64(_OPCODE_TEXT_FIN, 127, payload_length)


def text_frame(payload: bytes) -> bytes:
    """A complete unmasked text frame carrying ``payload``."""
    return text_frame_header(len(payload)) + payload


def event_array_payloads(events: list[bytes], max_payload: int) -> list[bytes]:
    """``events`` as JSON arrays, in order, each under ``max_payload`` bytes.

    Massive's official clients reject frames over 1 MiB by default. One event
    alone larger than the limit still goes out whole: an event is never cut.
    """
    size = 2 + sum(map(len, events)) + len(events)
    if size <= max_payload:
        return [b"[" + b",".join(events) + b"]"]
    payloads: list[bytes] = []
    batch: list[bytes] = []
    batch_size = 2
    for event in events:
        if batch and batch_size + len(event) + 1 > max_payload:
            payloads.append(b"[" + b",".join(batch) + b"]")
            batch = []
            batch_size = 2
        batch.append(event)
        batch_size += len(event) + 1
    payloads.append(b"[" + b",".join(batch) + b"]")
    return payloads


def event_array_frames(events: list[bytes], max_payload: int) -> list[bytes]:
    """Complete WebSocket frames carrying ``events`` (see ``event_array_payloads``)."""
    if len(events) == 1:  # the common case under a firehose: skip the size pass
        event = events[0]
        if len(event) + 2 <= max_payload:
            return [text_frame(b"[" + event + b"]")]
    return [text_frame(payload) for payload in event_array_payloads(events, max_payload)]


def tag_market(event: bytes | msgspec.Raw, market: str) -> bytes:
    """The event with a leading ``"market"`` key, for /api/socket clients.

    The bytes after the opening brace are kept as they came, so no market
    value is re-encoded; only events of ambiguous markets (futures) get this.
    """
    data = bytes(event)
    if data[:1] != b"{" or data[1:2] == b"}":
        return data
    return b'{"market":' + orjson.dumps(market) + b"," + data[1:]
