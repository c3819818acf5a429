"""The Massive wire protocol as the relay speaks it on both sides; pure.

Server to client: every text frame is a JSON array of objects with an ``ev``
key. Client to server: one JSON object ``{"action": ..., "params": "..."}``.
See docs/protocol.md. Nothing here touches a socket, so the rules can be
tested and benchmarked alone.
"""

from __future__ import annotations

import re
from typing import Final, NamedTuple

import msgspec
import orjson

from fastrelay import markets

# Status values Massive uses (docs/protocol.md, "Statuses").
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
# fastrelay's own (docs/protocol.md, "Conflation"): a client fell behind, and caught up again.
CONFLATING: Final = "conflating"
CAUGHT_UP: Final = "caught_up"

MAX_TICKER_LENGTH: Final = 64
# What of a client's own input an error status may echo.
MAX_ECHOED: Final = 40
_EV_PATTERN: Final = re.compile(r"[A-Z][A-Z0-9]{0,7}")
# A ticker is anything printable without the separators the params string
# uses; real ones include "BRK.B", "O:SPY241220P00720000", "USD/CNH", "BTC-USD".
_TICKER_PATTERN: Final = re.compile(rf"[!-+\--~]{{1,{MAX_TICKER_LENGTH}}}")


# OCC option symbols as Massive spells them: O:, a root of 1-6 letters or
# digits, expiry YYMMDD, C or P, strike x1000 in 8 digits.
_OPTIONS_CONTRACT: Final = re.compile(r"O:[A-Z0-9]{1,6}\d{6}[CP]\d{8}")


class ChannelError(ValueError):
    """A channel name the relay cannot serve; the message goes to the client."""


class Channel(NamedTuple):
    """One subscribable stream: ``ev.ticker`` on one market (``*`` = every ticker)."""

    market: str
    ev: str
    ticker: str

    @property
    def name(self) -> str:
        """The name sent upstream, e.g. ``T.BRK.B``, ``C.EUR/USD`` (``ticker`` is the event form)."""
        return f"{self.ev}.{markets.subscription_ticker(self.market, self.ev, self.ticker)}"

    @property
    def is_wildcard(self) -> bool:
        return self.ticker == "*"

    def label(self, tagged: bool) -> str:
        """The name as the client wrote it: with the market prefix on /api/socket."""
        return f"{self.market}:{self.name}" if tagged else self.name


def parse_channel(text: str, market: str) -> Channel:
    """Parse ``EV.TICKER`` for one market; split at the first dot only."""
    ev, dot, ticker = text.partition(".")
    shown = text[:MAX_ECHOED]  # what of the client's input an error may echo
    if not dot:
        raise ChannelError(f"invalid channel {shown!r}: expected EV.TICKER, e.g. T.AAPL")
    if not _EV_PATTERN.fullmatch(ev):
        raise ChannelError(f"invalid channel {shown!r}: bad event type")
    if ev not in markets.evs(market):
        known = ",".join(sorted(markets.evs(market)))
        raise ChannelError(f"invalid channel {shown!r}: {market} has no event type {ev} (it has {known})")
    if ticker != "*" and not _TICKER_PATTERN.fullmatch(ticker):
        raise ChannelError(f"invalid channel {shown!r}: bad ticker")
    if ticker == "*" and ev in markets.capped_evs(market):
        raise ChannelError(
            f"invalid channel {shown!r}: {market} {ev} accepts no wildcard, subscribe contracts one by one"
        )
    ticker = markets.event_ticker(market, ev, ticker)
    if market == "options" and ticker != "*" and not _OPTIONS_CONTRACT.fullmatch(ticker):
        raise ChannelError(
            f"invalid channel {shown!r}: not an options contract (O:ROOT YYMMDD C|P STRIKE, "
            "e.g. O:SPY251219C00600000)"
        )
    return Channel(market, ev, ticker)


def parse_api_channel(text: str) -> Channel:
    """Parse a channel of the multi-market /api/socket.

    ``[MARKET:]EV.TICKER``: an explicit market prefix wins; without one the
    market follows from the ev code (forex, crypto, index values) or the
    ticker prefix (``O:`` options, ``I:`` indices), else stocks.
    """
    head, dot, ticker = text.partition(".")
    if dot and ":" in head:
        market, _, rest = text.partition(":")
        if not markets.is_market(market):
            raise ChannelError(f"invalid channel {text[:MAX_ECHOED]!r}: unknown market {market[:20]!r}")
        return parse_channel(rest, market)
    return parse_channel(text, markets.infer_market(head, ticker))


def split_params(params: str) -> list[str]:
    """The comma-separated channel list of a subscribe or unsubscribe."""
    return [part.strip() for part in params.split(",") if part.strip()]


# --- client actions ---------------------------------------------------------------
# One struct per action, told apart by the "action" key (a msgspec tagged
# union): the decoder picks the type, the session dispatches with ``match``.
class Auth(msgspec.Struct, tag_field="action", tag="auth", frozen=True):
    params: str = ""


class Subscribe(msgspec.Struct, tag_field="action", tag="subscribe", frozen=True):
    params: str = ""


class Unsubscribe(msgspec.Struct, tag_field="action", tag="unsubscribe", frozen=True):
    params: str = ""


class History(msgspec.Struct, tag_field="action", tag="history", frozen=True, omit_defaults=True):
    """fastrelay's extension (docs/protocol.md, "history"): the aggregates of exact channels,
    the relay's own and, with a REST source, Massive's; the optional fields choose the bars
    (validated in aggs.py)."""

    params: str = ""
    timespan: str | None = None
    multiplier: int | None = None
    start: int | str | None = msgspec.field(default=None, name="from")
    end: int | str | None = msgspec.field(default=None, name="to")
    limit: int | None = None

    def options(self) -> dict[str, object]:
        """The optional fields given, by their wire names."""
        found = {
            "timespan": self.timespan,
            "multiplier": self.multiplier,
            "from": self.start,
            "to": self.end,
            "limit": self.limit,
        }
        return {name: value for name, value in found.items() if value is not None}


ClientAction = Auth | Subscribe | Unsubscribe | History


class _AnyAction(msgspec.Struct):
    action: object = None


class ClientMessageError(ValueError):
    """A client message that is not a Massive action; the text goes to the client."""


_client_action_decoder: Final = msgspec.json.Decoder(ClientAction)


def decode_client_message(payload: bytes) -> ClientAction:
    try:
        return _client_action_decoder.decode(payload)
    except msgspec.ValidationError as exc:
        if str(exc).endswith("`$.action`"):
            action = msgspec.json.decode(payload, type=_AnyAction).action
            if isinstance(action, str):
                raise ClientMessageError(f"unknown action {action[:MAX_ECHOED]!r}") from None
        raise ClientMessageError(f"invalid message: {exc}") from None
    except msgspec.DecodeError:
        raise ClientMessageError("invalid message: not a JSON object") from None
    except RecursionError:
        # msgspec decodes nesting recursively: a deep enough array raises this.
        raise ClientMessageError("invalid message: nested too deeply") from None


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
