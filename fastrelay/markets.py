"""Massive markets (clusters) and what the relay needs to know about each.

Pure data: no I/O. See docs/protocol.md, "Endpoints" and "Events by market".
"""

from __future__ import annotations

from typing import Final
from urllib.parse import urlsplit

# Each path is a separate Massive cluster and gets its own upstream socket.
MARKETS: Final = (
    "stocks",
    "options",
    "indices",
    "forex",
    "crypto",
    "futures",
    "futures/cme",
    "futures/cbot",
    "futures/nymex",
    "futures/comex",
)
DEFAULT_MARKETS: Final = ("stocks", "options")

# Every event type (ev) each market carries (docs/protocol.md, "Events by
# market"; AM and LV of forex and crypto are Launchpad's). A subscription to any
# other ev is refused: it could only be junk held upstream. A new ev Massive
# introduces is one line here.
_FUTURES_EVS: Final = frozenset({"T", "Q", "A", "AM"})
EVS: Final[dict[str, frozenset[str]]] = {
    "stocks": frozenset({"T", "Q", "A", "AM", "LULD", "NOI", "FMV", "LV"}),
    "options": frozenset({"T", "Q", "A", "AM", "FMV", "LV"}),
    "indices": frozenset({"V", "A", "AM"}),
    "forex": frozenset({"C", "CA", "CAS", "FMV", "AM", "LV"}),
    "crypto": frozenset({"XT", "XQ", "XA", "XAS", "XL2", "FMV", "AM", "LV"}),
}

# Events that describe a state (the latest one replaces the previous), as
# opposed to prints (trades). A new subscriber of an exact channel gets the
# last one at once so a quote box or a chart fills without waiting.
STATE_EVS: Final[dict[str, frozenset[str]]] = {
    "stocks": frozenset({"Q", "A", "AM", "LULD", "NOI", "FMV", "LV"}),
    "options": frozenset({"Q", "A", "AM", "FMV", "LV"}),
    "indices": frozenset({"V", "A", "AM"}),
    # AM and LV are Launchpad's (per-minute aggregates and values of C:/X: tickers).
    "forex": frozenset({"C", "CA", "CAS", "FMV", "AM", "LV"}),
    "crypto": frozenset({"XQ", "XA", "XAS", "FMV", "XL2", "AM", "LV"}),
}
_FUTURES_STATE = frozenset({"Q", "A", "AM"})

# Aggregates (candles) the relay keeps a short history of, per subscribed
# ticker, so a chart loads at once with recent candles (README, "history").
_AGGREGATES = frozenset({"A", "AM"})
HISTORY_EVS: Final[dict[str, frozenset[str]]] = {
    "stocks": _AGGREGATES,
    "options": _AGGREGATES,
    "indices": _AGGREGATES,
    "forex": frozenset({"CA", "CAS", "AM"}),
    "crypto": frozenset({"XA", "XAS", "AM"}),
}

# Massive caps these per connection and accepts no wildcard for them (docs/protocol.md,
# "Caps"): options quotes (real-time feed), FMV (Business feed) and LV (Launchpad's only);
# AM only on the Launchpad feed: on the others options AM takes a wildcard.
CAPPED_EVS: Final[dict[str, frozenset[str]]] = {"options": frozenset({"Q", "FMV", "LV"})}
_LAUNCHPAD_CAPPED_EVS: Final[dict[str, frozenset[str]]] = {"options": frozenset({"AM"})}
OPTIONS_CONTRACT_CAP: Final = 1000
# The official clients' Feed list: the first label of each Massive host (socket.massive.com ...).
FEEDS: Final = (
    "socket",
    "delayed",
    "nasdaqfeed",
    "polyfeed",
    "polyfeedplus",
    "starterfeed",
    "launchpad",
    "business",
    "edgx-business",
    "iex-business",
    "delayed-business",
    "delayed-edgx-business",
    "delayed-nasdaq-last-sale-business",
    "delayed-nasdaq-basic-business",
    "delayed-fullmarket-business",
    "fullmarket-business",
    "nasdaq-last-sale-business",
    "nasdaq-basic-business",
)

# ev codes that exist in exactly one market, so a channel on /api/socket
# needs no market prefix for them.
_EV_ONLY_IN: Final[dict[str, str]] = {
    "C": "forex",
    "CA": "forex",
    "CAS": "forex",
    "XT": "crypto",
    "XQ": "crypto",
    "XA": "crypto",
    "XAS": "crypto",
    "XL2": "crypto",
    "V": "indices",
}


def is_market(name: str) -> bool:
    return name in MARKETS


def evs(market: str) -> frozenset[str]:
    if market.startswith("futures"):
        return _FUTURES_EVS
    return EVS.get(market, frozenset())


def state_evs(market: str) -> frozenset[str]:
    if market.startswith("futures"):
        return _FUTURES_STATE
    return STATE_EVS.get(market, frozenset())


def history_evs(market: str) -> frozenset[str]:
    if market.startswith("futures"):
        return _AGGREGATES
    return HISTORY_EVS.get(market, frozenset())


def feed_of(url: str) -> str:
    """The Massive feed a base URL names (``wss://delayed.massive.com`` -> ``delayed``); a
    host that is not Massive's (the simulator, a proxy) counts as the real-time ``socket``."""
    host = urlsplit(url).hostname or ""
    label, _, domain = host.partition(".")
    return label if domain in _MASSIVE_DOMAINS and label in FEEDS else "socket"


_MASSIVE_DOMAINS: Final = ("massive.com", "polygon.io")


def capped_evs(market: str, feed: str = "socket") -> frozenset[str]:
    """The evs Massive caps per connection on ``market`` served by ``feed``."""
    capped = CAPPED_EVS.get(market, frozenset())
    if feed == "launchpad":
        capped |= _LAUNCHPAD_CAPPED_EVS.get(market, frozenset())
    return capped


def is_ambiguous(market: str) -> bool:
    """Events of this market cannot be told from stocks events by their shape.

    Futures share T, Q, A, AM and plain tickers with stocks, so on the
    multi-market /api/socket their events carry an explicit market tag.
    """
    return market.startswith("futures")


def infer_market(ev: str, ticker: str) -> str:
    """The market of an untagged /api/socket channel (see README, /api/socket)."""
    market = _EV_ONLY_IN.get(ev)
    if market is not None:
        return market
    if ticker.startswith("O:"):
        return "options"
    if ticker.startswith("I:"):
        return "indices"
    # Business (FMV) and Launchpad (AM, LV) name forex and crypto pairs C:EURUSD, X:BTCUSD.
    if ticker.startswith("C:"):
        return "forex"
    if ticker.startswith("X:"):
        return "crypto"
    return "stocks"


# --- ticker spellings (docs/protocol.md, "Ticker spellings") ---------------------------
# A subscription may spell a ticker differently from the events that carry it:
# forex pairs are subscribed EUR-USD or EUR/USD and arrive as EUR/USD (C, CA,
# CAS) or C:EURUSD (Business FMV, Launchpad LV); crypto pairs are subscribed
# BTC-USD and Business/Launchpad events carry X:BTC-USD. The relay routes on the
# event form, and subscribes upstream in the form Massive's own clients use.
_FOREX_PLAIN = frozenset({"C", "CA", "CAS"})
_CRYPTO_PLAIN = frozenset({"XT", "XQ", "XA", "XAS", "XL2"})


def _pair(ticker: str, prefix: str, three_letters: bool) -> tuple[str, str] | None:
    """(base, quote) of a pair written BASE/QUOTE, BASE-QUOTE, with or without ``prefix``;
    also BASEQUOTE where every currency has three letters (forex), else None."""
    body = ticker[len(prefix) :] if ticker.startswith(prefix) else ticker
    for separator in ("/", "-"):
        base, found, quote = body.partition(separator)
        if found and base and quote:
            return base, quote
    if three_letters and len(body) == 6 and body.isalpha():  # EURUSD
        return body[:3], body[3:]
    return None


def event_ticker(market: str, ev: str, ticker: str) -> str:
    """The ticker as events of ``market``'s ``ev`` carry it, from the way a client wrote it."""
    if ticker == "*":
        return ticker
    if market == "options":
        return ticker if ticker.startswith("O:") else f"O:{ticker}"
    if market == "indices":
        return ticker if ticker.startswith("I:") else f"I:{ticker}"
    if market == "forex":
        pair = _pair(ticker, "C:", three_letters=True)
        if pair is None:
            return ticker
        base, quote = pair
        if ev in _FOREX_PLAIN:
            return f"{base}/{quote}"
        if ev == "AM":  # Launchpad's sample: C:USD-EUR (assumed; docs/protocol.md)
            return f"C:{base}-{quote}"
        return f"C:{base}{quote}"  # FMV, LV: C:EURUSD
    if market == "crypto":
        # BTCUSD is left alone: crypto symbols vary in length, no split is safe.
        pair = _pair(ticker, "X:", three_letters=False)
        if pair is None:
            return ticker
        base, quote = pair
        return f"{base}-{quote}" if ev in _CRYPTO_PLAIN else f"X:{base}-{quote}"
    return ticker


def subscription_ticker(market: str, ev: str, ticker: str) -> str:
    """What the relay sends upstream for an event-form ticker: the form Massive's clients use
    (forex BASE/QUOTE, crypto BASE-QUOTE, without the C:/X: of Business and Launchpad events)."""
    if ticker == "*":
        return ticker
    if market == "forex" and ev not in _FOREX_PLAIN:
        pair = _pair(ticker, "C:", three_letters=True)
        return f"{pair[0]}/{pair[1]}" if pair is not None else ticker
    if market == "crypto" and ev not in _CRYPTO_PLAIN and ticker.startswith("X:"):
        return ticker[2:]
    return ticker


def parse_markets(text: str) -> tuple[str, ...]:
    """Parse a comma-separated market list, rejecting unknown names clearly."""
    names = tuple(dict.fromkeys(part.strip().lower() for part in text.split(",") if part.strip()))
    if not names:
        raise ValueError("no market given")
    unknown = [name for name in names if name not in MARKETS]
    if unknown:
        raise ValueError(f"unknown market(s) {', '.join(unknown)}; known: {', '.join(MARKETS)}")
    return names


def parse_feed(text: str) -> str:
    """One of the official clients' feeds, by its host's first label."""
    name = text.strip().lower()
    if name not in FEEDS:
        raise ValueError(f"unknown feed {text!r}; known: {', '.join(FEEDS)}")
    return name


def parse_plan(text: str) -> dict[str, frozenset[str]]:
    """A plan, as ``stocks=T,A,AM;crypto=*``: per market, the evs it allows (``*``: all of
    them); a market left out is outside the plan."""
    plan: dict[str, frozenset[str]] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        market, found, evs_text = part.partition("=")
        market = market.strip().lower()
        if not found or market not in MARKETS:
            raise ValueError(f"bad plan entry {part!r}: expected MARKET=EV,EV,... with a known market")
        allowed = {ev.strip().upper() for ev in evs_text.split(",") if ev.strip()}
        if allowed == {"*"}:
            plan[market] = evs(market)
            continue
        unknown = allowed - evs(market)
        if unknown or not allowed:
            raise ValueError(f"bad plan entry {part!r}: {market} has evs {','.join(sorted(evs(market)))}")
        plan[market] = frozenset(allowed)
    if not plan:
        raise ValueError("empty plan: give MARKET=EV,... entries separated by ';'")
    return plan
