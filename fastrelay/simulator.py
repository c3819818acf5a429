"""A Massive-compatible WebSocket server: the stand-in feed for dev, demos, tests and load tests.

It speaks the protocol of ../shared/PROTOCOL.md on every market path (``/stocks``,
``/options``, ... ``/futures/comex``): the connected/auth/subscribe statuses, then
events with Massive's field names, each with ``t`` (Unix ms at generation) and a
per-channel sequence ``q`` that is global to the simulator, so a client that
misses events while disconnected sees a gap. Aggregates (A/AM, CAS/CA, XAS/XA) are
computed from the trades the simulator actually sent in the window, so a client
can check them.

Faults for resilience tests are methods of :class:`Simulator` and plain HTTP GETs
on the same port: ``/sim/fault/<name>[?market=stocks]``, ``/sim/stats``.

The event loop is the caller's: the simulator runs on uvloop (``fastrelay.loops``)
or the default loop and never installs a policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import random
import ssl
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

import orjson
from picows import (
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
    ws_create_server,
)

from fastrelay import markets, protocol

__all__ = ["FAULTS", "Simulator", "SimulatorConfig", "run_simulator"]

log = logging.getLogger("fastrelay.simulator")

MAX_CONNECTIONS_MESSAGE: Final = (
    "Maximum number of websocket connections exceeded. You have reached the connection limit "
    "for your account. Please contact support at https://massive.com/contact to increase your limit."
)
# Faults a caller can inject; also the names after /sim/fault/.
FAULTS: Final = (
    "drop",
    "stall",
    "unstall",
    "malformed",
    "not_array",
    "unknown_ev",
    "huge",
    "auth_fail",
    "auth_ok",
    "max_connections",
    "slow",
    "unslow",
)
# Comfortably over the 1 MiB default cap of Massive's official clients, which
# is what the fault exists to exercise.
HUGE_FRAME_BYTES: Final = 1024 * 1024 + 64 * 1024
# After our CLOSE, how long a client gets to answer before the socket is cut.
_CLOSE_TIMEOUT: Final = 1.0
# Timer bounds: finer than 1 ms is not honoured by the loops, coarser than
# 50 ms would delay aggregates (emitted at the first tick after the window).
_MIN_TICK: Final = 0.001
_MAX_TICK: Final = 0.05
_AUTH_TIMES_KEPT: Final = 100
_OPEN_FRAME: Final = protocol.status_frame(protocol.CONNECTED, "Connected Successfully")
# Named apart: SimulatorConfig has a field called "markets".
_ALL_MARKETS: Final = markets.MARKETS

# (ev, channel name, encoded JSON object). Encoded once, shared by every
# connection that receives it.
_Event = tuple[str, str, bytes]
_Params = Mapping[str, str]


# --- configuration ----------------------------------------------------------------------------------


@dataclasses.dataclass
class SimulatorConfig:
    """Everything the simulator can be told; defaults suit a demo."""

    api_key: str = "sim-key"
    # Markets that generate data. Every market path accepts connections; the
    # others simply stay quiet (load tests run one market at 10k frames/s).
    markets: tuple[str, ...] = _ALL_MARKETS
    # Ticker lists per market path; overrides symbol_count and the built-in lists.
    symbols: Mapping[str, Sequence[str]] = dataclasses.field(default_factory=dict)
    # > 0: that many synthetic tickers per market (S0001, O:S0001..., I:S0001, ...).
    symbol_count: int = 0
    # Upstream frames per second, per market.
    rate: float = 20.0
    # Trade/quote events in each of those frames, of random symbols.
    events_per_frame: int = 1
    aggregates: bool = True
    # Length of the "minute" window of AM, CA and XA; tests shrink it.
    agg_minute_seconds: float = 60.0
    # Add "sim_ns" (time.time_ns() at send) to every event, for latency measurements.
    stamp_ns: bool = False
    seed: int | None = None
    # A stalled loop catches up at most this much generation time, so it never bursts unboundedly.
    max_burst_seconds: float = 0.1
    # Defaults of the slow fault: rate multiplier and extra delivery delay (s).
    slow_factor: float = 0.1
    slow_delay: float = 0.0
    # Unsent bytes to one connection before it gets slow_consumer and is closed (0: never).
    slow_consumer_bytes: int = 64 * 1024 * 1024
    # Close unauthenticated connections after this many seconds with auth_timeout (None: never).
    auth_timeout: float | None = None

    def __post_init__(self) -> None:
        self.markets = tuple(self.markets)
        unknown = [name for name in (*self.markets, *self.symbols) if not markets.is_market(name)]
        if unknown:
            raise ValueError(f"unknown market(s) {', '.join(unknown)}; known: {', '.join(markets.MARKETS)}")
        if self.rate <= 0:
            raise ValueError("rate must be > 0")
        if self.events_per_frame < 1:
            raise ValueError("events_per_frame must be >= 1")
        if self.symbol_count < 0:
            raise ValueError("symbol_count must be >= 0")
        if self.agg_minute_seconds < 0.001:
            raise ValueError("agg_minute_seconds must be >= 0.001")
        if self.max_burst_seconds <= 0:
            raise ValueError("max_burst_seconds must be > 0")
        for market, names in self.symbols.items():
            if not names:
                raise ValueError(f"symbols[{market!r}] is empty")


# --- symbols ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Spec:
    name: str
    price: float
    tick: float
    decimals: int


def _third_friday(year: int, month: int) -> datetime.date:
    first = datetime.date(year, month, 1)
    return first + datetime.timedelta(days=(4 - first.weekday()) % 7 + 14)


def _options_expiry(today: datetime.date) -> str:
    """The next monthly expiry at least a few weeks out, as YYMMDD: contracts look live."""
    year, month = (today.year, today.month + 1) if today.month < 12 else (today.year + 1, 1)
    return _third_friday(year, month).strftime("%y%m%d")


_MONTH_CODES: Final = "FGHJKMNQUVXZ"


def _contract(root: str, months: str, today: datetime.date) -> str:
    """The front contract code after this month, e.g. ``ESZ6``: root, month letter, year digit."""
    for year in (today.year, today.year + 1):
        for code in months:
            month = _MONTH_CODES.index(code) + 1
            if year > today.year or month > today.month:
                return f"{root}{code}{year % 10}"
    raise AssertionError("unreachable: every months string is non-empty")


_QUARTERLY: Final = "HMUZ"
_MONTHLY: Final = _MONTH_CODES
# (root, months traded, price, tick, decimals) per futures exchange path.
_FUTURES: Final[dict[str, tuple[tuple[str, str, float, float, int], ...]]] = {
    "futures/cme": (
        ("ES", _QUARTERLY, 5950.0, 0.25, 2),
        ("NQ", _QUARTERLY, 21000.0, 0.25, 2),
        ("RTY", _QUARTERLY, 2300.0, 0.1, 1),
        ("6E", _QUARTERLY, 1.085, 0.00005, 5),
    ),
    "futures/cbot": (
        ("YM", _QUARTERLY, 43000.0, 1.0, 0),
        ("ZN", _QUARTERLY, 110.5, 0.015625, 6),
        ("ZB", _QUARTERLY, 117.0, 0.03125, 5),
        ("ZC", "HKNUZ", 430.0, 0.25, 2),
    ),
    "futures/nymex": (
        ("CL", _MONTHLY, 70.5, 0.01, 2),
        ("NG", _MONTHLY, 3.1, 0.001, 3),
    ),
    "futures/comex": (
        ("GC", "GJMQVZ", 2650.0, 0.1, 1),
        ("SI", "HKNUZ", 31.0, 0.005, 3),
        ("HG", "HKNUZ", 4.2, 0.0005, 4),
    ),
}

_STOCKS: Final = (
    ("AAPL", 228.0),
    ("MSFT", 415.0),
    ("TSLA", 250.0),
    ("NVDA", 135.0),
    ("AMZN", 190.0),
    ("GOOGL", 175.0),
    ("META", 560.0),
    ("BRK.B", 455.0),
    ("SPY", 590.0),
    ("QQQ", 505.0),
    ("AMD", 150.0),
    ("NFLX", 700.0),
)
# (root, C/P, strike, option price)
_OPTIONS: Final = (
    ("SPY", "C", 600, 12.5),
    ("SPY", "P", 590, 8.2),
    ("SPY", "C", 610, 7.1),
    ("QQQ", "P", 500, 9.3),
    ("AAPL", "C", 230, 6.4),
    ("TSLA", "C", 300, 18.0),
    ("NVDA", "C", 140, 5.2),
    ("AMZN", "C", 200, 4.1),
)
_INDICES: Final = (
    ("I:SPX", 5900.0),
    ("I:NDX", 20800.0),
    ("I:DJI", 43000.0),
    ("I:VIX", 16.5),
    ("I:RUT", 2300.0),
    ("I:COMP", 19000.0),
)
_FOREX: Final = (
    ("EUR/USD", 1.085),
    ("USD/JPY", 151.2),
    ("GBP/USD", 1.27),
    ("USD/CNH", 7.25),
    ("USD/CAD", 1.39),
    ("AUD/USD", 0.655),
    ("USD/CHF", 0.88),
)
_CRYPTO: Final = (
    ("BTC-USD", 68000.0),
    ("ETH-USD", 3400.0),
    ("SOL-USD", 160.0),
    ("DOGE-USD", 0.16),
    ("XRP-USD", 0.6),
    ("LTC-USD", 80.0),
)


def _kind(market: str) -> str:
    return "futures" if market.startswith("futures") else market


def _decimal_spec(kind: str, name: str, price: float) -> _Spec:
    """Price precision as Massive shows it: cents for equities, pips for forex, finer below $1."""
    if kind == "forex":
        decimals = 3 if price > 20 else 5
    elif kind == "crypto":
        decimals = 2 if price >= 100 else 4 if price >= 1 else 6
    elif kind == "stocks":
        decimals = 2 if price >= 1 else 4
    else:
        decimals = 2
    return _Spec(name, price, 10.0**-decimals, decimals)


def _builtin_specs(market: str, today: datetime.date) -> list[_Spec]:
    kind = _kind(market)
    if kind == "futures":
        paths = [market] if market in _FUTURES else list(_FUTURES)
        return [
            _Spec(_contract(root, months, today), price, tick, decimals)
            for path in paths
            for root, months, price, tick, decimals in _FUTURES[path]
        ]
    if kind == "options":
        expiry = _options_expiry(today)
        return [
            _Spec(f"O:{root}{expiry}{cp}{strike * 1000:08d}", price, 0.01, 2)
            for root, cp, strike, price in _OPTIONS
        ]
    table = {"stocks": _STOCKS, "indices": _INDICES, "forex": _FOREX, "crypto": _CRYPTO}[kind]
    return [_decimal_spec(kind, name, price) for name, price in table]


def _synthetic_name(kind: str, index: int, width: int, expiry: str) -> str:
    n = f"{index:0{width}d}"
    if kind == "options":
        return f"O:S{n}{expiry}C00100000"
    if kind == "indices":
        return f"I:S{n}"
    if kind == "forex":
        return f"S{n}/USD"
    if kind == "crypto":
        return f"S{n}-USD"
    if kind == "futures":
        return f"S{n}Z9"
    return f"S{n}"


def _guess_price(name: str, kind: str) -> float:
    # Stable per name, so a restarted simulator shows the same ballpark prices.
    ranges = {"forex": (0.5, 2.0), "options": (0.5, 30.0), "indices": (100.0, 20000.0)}
    spread = ranges.get(kind, (5.0, 500.0))
    fraction = (zlib.crc32(name.encode()) % 10_000) / 10_000
    return spread[0] + fraction * (spread[1] - spread[0])


def _symbol_specs(market: str, config: SimulatorConfig, today: datetime.date | None = None) -> list[_Spec]:
    """The tickers a market generates, with start prices and precision."""
    kind = _kind(market)
    today = today or datetime.date.today()
    explicit = config.symbols.get(market)
    if explicit is not None:
        known = {spec.name: spec for spec in _builtin_specs(market, today)}
        return [known.get(name) or _decimal_spec(kind, name, _guess_price(name, kind)) for name in explicit]
    if config.symbol_count > 0:
        width = max(4, len(str(config.symbol_count)))
        expiry = _options_expiry(today)
        names = [_synthetic_name(kind, i, width, expiry) for i in range(1, config.symbol_count + 1)]
        return [_decimal_spec(kind, name, _guess_price(name, kind)) for name in names]
    return _builtin_specs(market, today)


# --- generation ---------------------------------------------------------------------------------


class _Window:
    """One aggregate window (a second or a "minute") of one symbol."""

    __slots__ = ("c", "h", "l", "n", "o", "pv", "start", "v")

    def __init__(self, start: int, price: float) -> None:
        self.start = start
        self.o = self.h = self.l = self.c = price
        # Stays an int for share/contract sizes, so "v" encodes like Massive's.
        self.v: float = 0
        self.pv = 0.0
        self.n = 0

    def add(self, price: float, size: float) -> None:
        if price > self.h:
            self.h = price
        elif price < self.l:
            self.l = price
        self.c = price
        self.v += size
        self.pv += price * size
        self.n += 1


class _Symbol:
    __slots__ = ("ch", "day_pv", "day_v", "decimals", "minute", "name", "open", "price", "ref", "sec", "tick")

    def __init__(self, spec: _Spec, evs: Iterable[str]) -> None:
        self.name = spec.name
        self.ref = spec.price
        self.price = spec.price
        self.tick = spec.tick
        self.decimals = spec.decimals
        self.open = round(spec.price, spec.decimals)
        self.day_v: float = 0
        self.day_pv = 0.0
        self.sec: _Window | None = None
        self.minute: _Window | None = None
        # Channel names precomputed: building f"T.{sym}" per event is measurable at 10k frames/s.
        self.ch = {ev: f"{ev}.{spec.name}" for ev in evs}


# Per kind: tick evs generated each frame, the ev whose prints feed the
# aggregates, and the per-second and per-minute aggregate evs.
_KINDS: Final[dict[str, tuple[tuple[str, ...], str, str, str]]] = {
    "stocks": (("T", "Q"), "T", "A", "AM"),
    "options": (("T", "Q"), "T", "A", "AM"),
    "futures": (("T", "Q"), "T", "A", "AM"),
    "indices": (("V",), "V", "A", "AM"),
    "forex": (("C",), "C", "CAS", "CA"),
    "crypto": (("XT", "XQ"), "XT", "XAS", "XA"),
}
_STOCK_EXCHANGES: Final = (1, 2, 3, 4, 7, 8, 10, 11, 12, 15, 19, 21)
_STOCK_SIZES: Final = (1, 5, 10, 25, 50, 100, 100, 100, 100, 200, 200, 300, 500, 1000, 2500)
_OPTION_EXCHANGES: Final = (300, 301, 302, 303, 307, 308, 312, 313, 316, 319, 322, 323, 65)
_dumps: Final = orjson.dumps


class _Feed:
    """One market path: its symbols, price walks, aggregates, sequences and connections."""

    def __init__(self, market: str, config: SimulatorConfig, rng: random.Random, generate: bool) -> None:
        self.market = market
        self.kind = _kind(market)
        self.generate = generate
        self.config = config
        self.rng = rng
        tick_evs, self.trade_ev, self.second_ev, self.minute_ev = _KINDS[self.kind]
        self.tick_evs = tick_evs
        self.key = "pair" if self.kind in ("crypto", "forex") else "sym"
        evs = (*tick_evs, self.second_ev, self.minute_ev)
        self.symbols = [_Symbol(spec, evs) for spec in _symbol_specs(market, config)]
        self.by_name = {sym.name: sym for sym in self.symbols}
        self.aggregates = config.aggregates
        self.minute_ms = max(1, round(config.agg_minute_seconds * 1000))
        self.seq: dict[str, int] = {}
        self.trade_id = 0
        self.sec_start = -1
        self.min_start = -1
        self.sec_open: list[_Symbol] = []
        self.min_open: list[_Symbol] = []
        self.owed = 0.0
        makers: Mapping[str, Callable[[_Symbol, int, list[_Event]], None]] = {
            "stocks": {"T": self._stock_trade, "Q": self._stock_quote},
            "options": {"T": self._option_trade, "Q": self._option_quote},
            "futures": {"T": self._futures_trade, "Q": self._futures_quote},
            "indices": {"V": self._index_value},
            "forex": {"C": self._forex_quote},
            "crypto": {"XT": self._crypto_trade, "XQ": self._crypto_quote},
        }[self.kind]
        self.makers = makers
        self.tick_makers = [makers[ev] for ev in tick_evs]
        # Connections and what the live ones want.
        self.conns: dict[_Connection, None] = {}
        self.receivers: list[_Connection] = []
        self.wild: frozenset[str] = frozenset()
        self.exact: frozenset[str] = frozenset()
        # Faults.
        self.auth_fail = False
        self.max_connections = False
        self.slow = False
        self.slow_factor = 1.0
        self.slow_delay = 0.0
        self.delayed: deque[tuple[float, list[_Event]]] = deque()
        # Stats.
        self.connects = 0
        self.auth_attempts = 0
        self.auth_failures = 0
        self.auth_times: deque[int] = deque(maxlen=_AUTH_TIMES_KEPT)
        self.events_generated = 0
        self.events_sent = 0
        self.frames_sent = 0

    # --- who wants what ---

    def refresh(self) -> None:
        """Recompute the live receivers and the union of their interest (after any change)."""
        receivers = [c for c in self.conns if c.authenticated and not c.stalled and not c.closing]
        self.receivers = receivers
        wild: set[str] = set()
        exact: set[str] = set()
        for conn in receivers:
            wild |= conn.wild
            exact |= conn.exact
        self.wild = frozenset(wild)
        self.exact = frozenset(exact)

    def subscriptions(self) -> list[str]:
        names: set[str] = set()
        for conn in self.conns:
            names.update(f"{ev}.*" for ev in conn.wild)
            names.update(conn.exact)
        return sorted(names)

    # --- the clock ---

    def tick(self, elapsed: float, t: int, now: float) -> None:
        rate = self.config.rate * (self.slow_factor if self.slow else 1.0)
        burst = max(1.0, rate * self.config.max_burst_seconds)
        self.owed = min(self.owed + elapsed * rate, burst)
        count = int(self.owed)
        self.owed -= count
        if self.aggregates:
            aggs: list[_Event] = []
            self.roll(t, aggs)
            if aggs:
                self.emit(aggs, now)
        for _ in range(count):
            self.emit(self.frame(t), now)
        if self.delayed:
            self.flush_delayed(now)

    def frame(self, t: int) -> list[_Event]:
        """One upstream frame: events_per_frame tick events of random symbols."""
        out: list[_Event] = []
        rng = self.rng
        symbols = self.symbols
        makers = self.tick_makers
        n_symbols = len(symbols)
        n_makers = len(makers)
        for _ in range(self.config.events_per_frame):
            sym = symbols[int(rng.random() * n_symbols)]
            makers[int(rng.random() * n_makers) if n_makers > 1 else 0](sym, t, out)
        self.events_generated += self.config.events_per_frame
        return out

    def emit(self, events: list[_Event], now: float) -> None:
        if self.slow and self.slow_delay > 0:
            self.delayed.append((now + self.slow_delay, events))
        else:
            self.dispatch(events)

    def flush_delayed(self, now: float | None) -> None:
        delayed = self.delayed
        while delayed and (now is None or delayed[0][0] <= now):
            self.dispatch(delayed.popleft()[1])

    def dispatch(self, events: list[_Event]) -> None:
        """Send each live connection one frame of the events it subscribed to."""
        receivers = self.receivers
        if not receivers or not events:
            return
        n = len(events)
        full: bytes | None = None
        stamp = self.config.stamp_ns
        for conn in receivers:
            wild = conn.wild
            exact = conn.exact
            matched = [e[2] for e in events if e[0] in wild or e[1] in exact]
            m = len(matched)
            if not m:
                continue
            if stamp:
                head = b'{"sim_ns":%d,' % time.time_ns()
                payload = b"[" + b",".join([head + event[1:] for event in matched]) + b"]"
            elif m == n:
                # The common case (one relay, wildcard subscriptions): one join for all.
                if full is None:
                    full = b"[" + b",".join(matched) + b"]"
                payload = full
            else:
                payload = b"[" + b",".join(matched) + b"]"
            conn.send_data(payload, m)
            self.events_sent += m
            self.frames_sent += 1

    # --- prices, sequences, aggregates ---

    def _next(self, channel: str) -> int:
        q = self.seq.get(channel, 0) + 1
        self.seq[channel] = q
        return q

    def _wants(self, ev: str, channel: str) -> bool:
        return ev in self.wild or channel in self.exact

    def _walk(self, sym: _Symbol) -> float:
        # A small random walk, pulled gently back to the start price so a
        # long run stays plausible.
        price = sym.price * (1.0 + self.rng.gauss(0.0, 0.0004)) + (sym.ref - sym.price) * 0.002
        if price < sym.tick:
            price = sym.tick
        sym.price = price
        return round(round(price / sym.tick) * sym.tick, sym.decimals)

    def _print(self, sym: _Symbol, price: float, size: float) -> None:
        """Account one print (trade, index value, forex quote) for the aggregates."""
        sym.day_v += size
        sym.day_pv += price * size
        if not self.aggregates:
            return
        w = sym.sec
        if w is None:
            w = sym.sec = _Window(self.sec_start, price)
            self.sec_open.append(sym)
        w.add(price, size)
        w = sym.minute
        if w is None:
            w = sym.minute = _Window(self.min_start, price)
            self.min_open.append(sym)
        w.add(price, size)

    def roll(self, t: int, out: list[_Event]) -> None:
        """Close the windows ``t`` has left and emit their aggregates into ``out``."""
        sec = t - t % 1000
        if sec != self.sec_start:
            if self.sec_open:
                for sym in self.sec_open:
                    window = sym.sec
                    sym.sec = None
                    if window is not None:
                        self._aggregate(self.second_ev, sym, window, 1000, t, out)
                self.sec_open.clear()
            self.sec_start = sec
        minute = t - t % self.minute_ms
        if minute != self.min_start:
            if self.min_open:
                for sym in self.min_open:
                    window = sym.minute
                    sym.minute = None
                    if window is not None:
                        self._aggregate(self.minute_ev, sym, window, self.minute_ms, t, out)
                self.min_open.clear()
            self.min_start = minute

    def _aggregate(self, ev: str, sym: _Symbol, w: _Window, length: int, t: int, out: list[_Event]) -> None:
        channel = sym.ch[ev]
        q = self._next(channel)
        self.events_generated += 1
        if not self._wants(ev, channel):
            return
        kind = self.kind
        s = w.start
        e = s + length
        vw = round(w.pv / w.v, 4) if w.v else w.c
        event: dict[str, Any]
        if kind == "indices":
            event = {"ev": ev, "sym": sym.name, "op": sym.open, "o": w.o, "c": w.c, "h": w.h, "l": w.l}
        elif kind == "forex":
            event = {"ev": ev, "pair": sym.name, "o": w.o, "c": w.c, "h": w.h, "l": w.l, "v": w.v}
        elif kind == "crypto":
            v = round(w.v, 8)
            event = {
                "ev": ev, "pair": sym.name, "o": w.o, "c": w.c, "h": w.h, "l": w.l, "v": v, "vw": vw,
                "z": round(w.v / w.n, 8),
            }  # fmt: skip
        elif kind == "futures":
            dv = round(w.pv, 2)
            event = {
                "ev": ev, "sym": sym.name, "v": w.v, "dv": dv, "o": w.o, "c": w.c, "h": w.h, "l": w.l,
                "n": w.n,
            }  # fmt: skip
        else:
            day_vwap = round(sym.day_pv / sym.day_v, 4) if sym.day_v else w.c
            event = {
                "ev": ev, "sym": sym.name, "v": w.v, "av": sym.day_v, "op": sym.open, "vw": vw,
                "o": w.o, "c": w.c, "h": w.h, "l": w.l, "a": day_vwap, "z": int(w.v // w.n),
            }  # fmt: skip
        event["s"] = s
        event["e"] = e
        event["t"] = t
        event["q"] = q
        out.append((ev, channel, _dumps(event)))

    # --- one event per (market, ev); field names as PROTOCOL.md lists them ---

    def _quote_sides(self, sym: _Symbol, price: float, spread_ticks: int) -> tuple[float, float]:
        half = sym.tick * spread_ticks
        return round(price - half, sym.decimals), round(price + half, sym.decimals)

    def _stock_trade(self, sym: _Symbol, t: int, out: list[_Event]) -> None:
        rng = self.rng
        price = self._walk(sym)
        size = _STOCK_SIZES[int(rng.random() * len(_STOCK_SIZES))]
        self._print(sym, price, size)
        self.trade_id += 1
        channel = sym.ch["T"]
        q = self._next(channel)
        if self._wants("T", channel):
            event: dict[str, Any] = {
                "ev": "T", "sym": sym.name, "x": _STOCK_EXCHANGES[int(rng.random() * len(_STOCK_EXCHANGES))],
                "i": str(self.trade_id), "z": 3 if len(sym.name) <= 4 else 1, "p": price, "s": size,
                "c": [37] if size < 100 else [], "t": t, "q": q,
            }  # fmt: skip
            out.append(("T", channel, _dumps(event)))

    def _stock_quote(self, sym: _Symbol, t: int, out: list[_Event]) -> None:
        rng = self.rng
        price = self._walk(sym)
        channel = sym.ch["Q"]
        q = self._next(channel)
        if self._wants("Q", channel):
            bid, ask = self._quote_sides(sym, price, 1 + int(rng.random() * 3))
            event: dict[str, Any] = {
                "ev": "Q", "sym": sym.name, "bx": _STOCK_EXCHANGES[int(rng.random() * 12)], "bp": bid,
                "bs": 100 * (1 + int(rng.random() * 10)), "ax": _STOCK_EXCHANGES[int(rng.random() * 12)],
                "ap": ask, "as": 100 * (1 + int(rng.random() * 10)), "c": 0, "i": [], "t": t, "q": q,
                "z": 3 if len(sym.name) <= 4 else 1,
            }  # fmt: skip
            out.append(("Q", channel, _dumps(event)))

    def _option_trade(self, sym: _Symbol, t: int, out: list[_Event]) -> None:
        rng = self.rng
        price = self._walk(sym)
        size = 1 + int(rng.random() * 20)
        self._print(sym, price, size)
        channel = sym.ch["T"]
        q = self._next(channel)
        if self._wants("T", channel):
            exchange = _OPTION_EXCHANGES[int(rng.random() * len(_OPTION_EXCHANGES))]
            event: dict[str, Any] = {
                "ev": "T", "sym": sym.name, "x": exchange,
                "p": price, "s": size, "c": [209] if size > 10 else [227], "t": t, "q": q,
            }  # fmt: skip
            out.append(("T", channel, _dumps(event)))

    def _option_quote(self, sym: _Symbol, t: int, out: list[_Event]) -> None:
        rng = self.rng
        price = self._walk(sym)
        channel = sym.ch["Q"]
        q = self._next(channel)
        if self._wants("Q", channel):
            bid, ask = self._quote_sides(sym, price, 2 + int(rng.random() * 5))
            exchange = _OPTION_EXCHANGES[int(rng.random() * len(_OPTION_EXCHANGES))]
            event: dict[str, Any] = {
                "ev": "Q", "sym": sym.name, "bx": exchange, "ax": exchange, "bp": max(bid, 0.01), "ap": ask,
                "bs": 1 + int(rng.random() * 200), "as": 1 + int(rng.random() * 200), "t": t, "q": q,
            }  # fmt: skip
            out.append(("Q", channel, _dumps(event)))

    def _index_value(self, sym: _Symbol, t: int, out: list[_Event]) -> None:
        price = self._walk(sym)
        self._print(sym, price, 0)
        channel = sym.ch["V"]
        q = self._next(channel)
        if self._wants("V", channel):
            out.append(("V", channel, _dumps({"ev": "V", "val": price, "T": sym.name, "t": t, "q": q})))

    def _forex_quote(self, sym: _Symbol, t: int, out: list[_Event]) -> None:
        rng = self.rng
        price = self._walk(sym)
        bid, ask = self._quote_sides(sym, price, 1 + int(rng.random() * 3))
        # CA/CAS are built from the mid, with the number of quotes as volume.
        self._print(sym, round((bid + ask) / 2, sym.decimals + 1), 1)
        channel = sym.ch["C"]
        q = self._next(channel)
        if self._wants("C", channel):
            # Real feeds send the venue id as a number or as a string (PROTOCOL.md, type drift).
            venue: int | str = 48 if rng.random() < 0.9 else "44"
            event = {"ev": "C", "p": sym.name, "x": venue, "a": ask, "b": bid, "t": t, "q": q}
            out.append(("C", channel, _dumps(event)))

    def _crypto_trade(self, sym: _Symbol, t: int, out: list[_Event]) -> None:
        rng = self.rng
        price = self._walk(sym)
        size = round(0.0001 + rng.random() * (50.0 / max(price, 1.0)) ** 0.5, 8)
        self._print(sym, price, size)
        self.trade_id += 1
        channel = sym.ch["XT"]
        q = self._next(channel)
        if self._wants("XT", channel):
            exchange = 1 + int(rng.random() * 6)
            # Some venues send numeric trade ids, others strings (PROTOCOL.md, type drift).
            trade_id: int | str = self.trade_id if exchange % 2 else str(self.trade_id)
            event: dict[str, Any] = {
                "ev": "XT", "pair": sym.name, "p": price, "t": t, "s": size,
                "c": [1 + int(rng.random() * 2)], "i": trade_id, "x": exchange, "r": t, "q": q,
            }  # fmt: skip
            out.append(("XT", channel, _dumps(event)))

    def _crypto_quote(self, sym: _Symbol, t: int, out: list[_Event]) -> None:
        rng = self.rng
        price = self._walk(sym)
        channel = sym.ch["XQ"]
        q = self._next(channel)
        if self._wants("XQ", channel):
            bid, ask = self._quote_sides(sym, price, 1 + int(rng.random() * 4))
            event: dict[str, Any] = {
                "ev": "XQ", "pair": sym.name, "bp": bid, "bs": round(rng.random() * 5, 8), "ap": ask,
                "as": round(rng.random() * 5, 8), "t": t, "x": 1 + int(rng.random() * 6), "r": t, "q": q,
            }  # fmt: skip
            out.append(("XQ", channel, _dumps(event)))

    def _futures_trade(self, sym: _Symbol, t: int, out: list[_Event]) -> None:
        price = self._walk(sym)
        size = 1 + int(self.rng.random() * 10)
        self._print(sym, price, size)
        channel = sym.ch["T"]
        q = self._next(channel)
        if self._wants("T", channel):
            out.append(
                ("T", channel, _dumps({"ev": "T", "sym": sym.name, "p": price, "s": size, "t": t, "q": q}))
            )

    def _futures_quote(self, sym: _Symbol, t: int, out: list[_Event]) -> None:
        rng = self.rng
        price = self._walk(sym)
        channel = sym.ch["Q"]
        q = self._next(channel)
        if self._wants("Q", channel):
            bid, ask = self._quote_sides(sym, price, 1)
            event: dict[str, Any] = {
                "ev": "Q", "sym": sym.name, "bp": bid, "bs": 1 + int(rng.random() * 50), "bt": t, "ap": ask,
                "as": 1 + int(rng.random() * 50), "at": t, "t": t, "q": q,
            }  # fmt: skip
            out.append(("Q", channel, _dumps(event)))

    # --- faults that need generated events ---

    def channels_of(self, conn: _Connection) -> list[tuple[str, _Symbol]]:
        """The (tick ev, symbol) pairs a connection is subscribed to."""
        pairs: list[tuple[str, _Symbol]] = []
        for ev in self.tick_evs:
            if ev in conn.wild:
                pairs.extend((ev, sym) for sym in self.symbols)
            else:
                pairs.extend((ev, sym) for sym in self.symbols if sym.ch[ev] in conn.exact)
        return pairs

    def huge(self) -> int:
        """One frame over 1 MiB to every live connection, of events it subscribed to."""
        t = _now_ms()
        if self.aggregates:
            aggs: list[_Event] = []
            self.roll(t, aggs)
            self.dispatch(aggs)
        burst: list[_Event] = []
        targets = 0
        for conn in self.receivers:
            pairs = self.channels_of(conn)
            if not pairs:
                continue
            targets += 1
            size = 0
            i = 0
            while size <= HUGE_FRAME_BYTES:
                ev, sym = pairs[i % len(pairs)]
                i += 1
                before = len(burst)
                self.makers[ev](sym, t, burst)
                self.events_generated += 1
                size += sum(len(event[2]) + 1 for event in burst[before:])
        self.dispatch(burst)
        return targets

    def sample_symbol(self) -> str:
        return self.symbols[0].name

    def stats(self) -> dict[str, Any]:
        faults = [
            name
            for name, active in (
                ("auth_fail", self.auth_fail),
                ("max_connections", self.max_connections),
                ("slow", self.slow),
                ("stall", any(c.stalled for c in self.conns)),
            )
            if active
        ]
        return {
            "generating": self.generate,
            "symbols": len(self.symbols),
            "connections": len(self.conns),
            "authenticated": sum(1 for c in self.conns if c.authenticated),
            "stalled": sum(1 for c in self.conns if c.stalled),
            "subscriptions": self.subscriptions(),
            "connects": self.connects,
            "auth_attempts": self.auth_attempts,
            "auth_failures": self.auth_failures,
            "auth_attempt_times_ms": list(self.auth_times),
            "events_generated": self.events_generated,
            "events_sent": self.events_sent,
            "frames_sent": self.frames_sent,
            "faults": faults,
        }


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


# --- one client connection ----------------------------------------------------------------------


class _Connection(WSListener):
    """One client of one market path."""

    def __init__(self, sim: Simulator, feed: _Feed) -> None:
        super().__init__()
        self.sim = sim
        self.feed = feed
        self.transport: WSTransport | None = None
        self.authenticated = False
        self.stalled = False
        self.closing = False
        self.write_paused = False
        self.wild: set[str] = set()
        self.exact: set[str] = set()
        self.events_sent = 0
        self._timer: asyncio.TimerHandle | None = None

    # --- picows callbacks ---

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.sim._attach(self)
        self._send(_OPEN_FRAME)
        timeout = self.sim.config.auth_timeout
        if timeout is not None:
            self._arm(self._auth_timed_out, timeout)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        msg_type = frame.msg_type
        if msg_type == WSMsgType.TEXT or msg_type == WSMsgType.BINARY:
            self._on_message(frame.get_payload_as_bytes())
        elif msg_type == WSMsgType.PING:
            # Auto-pong is off so that a stalled connection can ignore pings.
            if not self.stalled:
                transport.send_pong(frame.get_payload_as_bytes())
        elif msg_type == WSMsgType.CLOSE:
            if not self.closing:
                self.closing = True
                self.feed.refresh()
            if not transport.is_close_frame_sent:
                try:
                    code = frame.get_close_code()
                except ValueError:  # an application code (3000-4999) picows has no enum member for
                    code = WSCloseCode.OK
                transport.send_close(code if code != WSCloseCode.NO_INFO else WSCloseCode.OK)
            transport.disconnect()
            # A graceful close waits for the send buffer to drain, forever if
            # the client stopped reading: bound it.
            self._arm(self.abort)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.sim._detach(self)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False

    # --- sending ---

    def _send(self, payload: bytes) -> None:
        transport = self.transport
        if transport is None:
            return
        transport.send(WSMsgType.TEXT, payload)
        if self.write_paused:
            self._check_backlog()

    def send_data(self, payload: bytes, events: int) -> None:
        transport = self.transport
        if transport is None:
            return
        transport.send(WSMsgType.TEXT, payload)
        self.events_sent += events
        if self.write_paused:
            self._check_backlog()

    def _status(self, status: str, message: str) -> None:
        self._send(protocol.status_frame(status, message))

    def _check_backlog(self) -> None:
        limit = self.sim.config.slow_consumer_bytes
        transport = self.transport
        if not limit or transport is None or self.closing:
            return
        if transport.underlying_transport.get_write_buffer_size() > limit:
            log.warning("simulator %s: slow consumer, closing", self.feed.market)
            self._status(protocol.SLOW_CONSUMER, "slow consumer: the server buffer is full")
            self.close(WSCloseCode.POLICY_VIOLATION, "slow consumer")

    # --- client messages ---

    def _on_message(self, payload: bytes) -> None:
        # Messages read just before a stall still go unanswered: a stalled server says nothing.
        if self.closing or self.stalled:
            return
        try:
            message = protocol.decode_client_message(payload)
        except protocol.ClientMessageError as exc:
            self._status(protocol.ERROR, str(exc))
            return
        match message:
            case protocol.Auth(params=key):
                self._auth(key)
            case protocol.Subscribe(params=params):
                self._subscribe(params, True)
            case protocol.Unsubscribe(params=params):
                self._subscribe(params, False)
            case _:  # fastrelay's own extensions are not Massive's
                self._status(protocol.ERROR, "unknown action: history")

    def _auth(self, key: str) -> None:
        feed = self.feed
        feed.auth_attempts += 1
        feed.auth_times.append(_now_ms())
        if key != self.sim.config.api_key or feed.auth_fail:
            feed.auth_failures += 1
            self._status(protocol.AUTH_FAILED, "authentication failed")
            self.close(WSCloseCode.POLICY_VIOLATION, "authentication failed")
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.authenticated = True
        self._status(protocol.AUTH_SUCCESS, "authenticated")
        if feed.max_connections:
            # Massive completes the auth, then evicts: clients must handle both in a row.
            self.evict()
            return
        feed.refresh()
        self.sim._changed()

    def _subscribe(self, params: str, subscribe: bool) -> None:
        if not self.authenticated:
            self._status(protocol.AUTH_REQUIRED, "authentication required")
            return
        names = protocol.split_params(params)
        if not names:
            self._status(protocol.ERROR, "no channels given")
            return
        market = self.feed.market
        capped = markets.capped_evs(market)
        for name in names:
            try:
                channel = protocol.parse_channel(name, market)
            except protocol.ChannelError as exc:
                self._status(protocol.ERROR, str(exc))
                continue
            if subscribe:
                if channel.is_wildcard:
                    self.wild.add(channel.ev)
                else:
                    if channel.ev in capped and channel.name not in self.exact:
                        used = sum(1 for ch in self.exact if ch.partition(".")[0] in capped)
                        if used >= markets.OPTIONS_CONTRACT_CAP:
                            self._status(
                                protocol.ERROR,
                                f"{name}: at most {markets.OPTIONS_CONTRACT_CAP} contracts per connection",
                            )
                            continue
                    self.exact.add(channel.name)
                self._status(protocol.SUCCESS, protocol.subscribed_message(channel.name))
            else:
                if channel.is_wildcard:
                    self.wild.discard(channel.ev)
                else:
                    self.exact.discard(channel.name)
                self._status(protocol.SUCCESS, protocol.unsubscribed_message(channel.name))
        self.feed.refresh()
        self.sim._changed()

    # --- ending ---

    def _auth_timed_out(self) -> None:
        self._timer = None
        if not self.authenticated and not self.closing:
            self._status(protocol.AUTH_TIMEOUT, "authentication timed out")
            self.close(WSCloseCode.POLICY_VIOLATION, "authentication timed out")

    def evict(self) -> None:
        self._status(protocol.MAX_CONNECTIONS, MAX_CONNECTIONS_MESSAGE)
        self.close(WSCloseCode.POLICY_VIOLATION, "max connections")

    def close(self, code: WSCloseCode, reason: str) -> None:
        """Start the closing handshake; cut the socket if the client does not answer."""
        transport = self.transport
        if self.closing or transport is None:
            return
        self.closing = True
        self.feed.refresh()
        if self.stalled:
            # A stalled socket would never read the client's CLOSE.
            transport.disconnect(graceful=False)
            return
        transport.send_close(code, reason.encode())
        self._arm(self.abort)

    def _arm(self, callback: Callable[[], None], delay: float = _CLOSE_TIMEOUT) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(delay, callback)

    def abort(self) -> None:
        self._timer = None
        if self.transport is not None:
            self.transport.disconnect(graceful=False)

    def stall(self) -> None:
        if self.stalled or self.transport is None:
            return
        self.stalled = True
        with contextlib.suppress(RuntimeError):
            self.transport.underlying_transport.pause_reading()

    def unstall(self) -> None:
        if not self.stalled or self.transport is None:
            return
        self.stalled = False
        if not self.transport.is_disconnected:
            with contextlib.suppress(RuntimeError):
                self.transport.underlying_transport.resume_reading()

    def describe(self) -> dict[str, Any]:
        peer = None
        if self.transport is not None:
            peer = self.transport.underlying_transport.get_extra_info("peername")
        return {
            "market": self.feed.market,
            "peer": f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else None,
            "authenticated": self.authenticated,
            "stalled": self.stalled,
            "subscriptions": sorted([*(f"{ev}.*" for ev in self.wild), *self.exact]),
            "events_sent": self.events_sent,
        }


# --- the server ---------------------------------------------------------------------------------


class Simulator:
    """A Massive-compatible feed on one port, every market path, with fault injection.

    ``async with Simulator(config) as sim`` starts it on ``host:port`` given here
    (default 127.0.0.1, a free port); ``start()`` may also be called explicitly.
    """

    def __init__(
        self,
        config: SimulatorConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.config = config or SimulatorConfig()
        self._default_bind = (host, port, ssl_context)
        rng = random.Random(self.config.seed)
        # One generator per market, seeded from the first, so a seed reproduces every market.
        self._feeds: dict[str, _Feed] = {
            market: _Feed(market, self.config, random.Random(rng.random()), market in self.config.markets)
            for market in markets.MARKETS
        }
        self._server: asyncio.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._ssl: ssl.SSLContext | None = None
        self._host = host
        self._port = 0
        self._started_at = 0.0
        self._change = asyncio.Event()
        self._all_gone: asyncio.Future[None] | None = None

    # --- lifecycle ---

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, *, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        """Listen on ``host:port`` (0: a free port, see ``port``); TLS (wss) with ``ssl_context``."""
        if self._server is not None:
            # Already started (e.g. by ``async with``): fine if this asks for the same thing.
            if host == self._host and port in (0, self._port) and ssl_context is self._ssl:
                return
            raise RuntimeError(f"simulator already listening on {self._host}:{self._port}")
        self._server = await ws_create_server(
            self._route,
            host,
            port,
            ssl=ssl_context,
            enable_auto_pong=False,
            use_aiofastnet=False,
            # Massive's own limit on client messages is small; a subscribe of
            # thousands of channels still fits.
            max_frame_size=4 * 1024 * 1024,
        )
        self._ssl = ssl_context
        self._host = host
        self._port = self._server.sockets[0].getsockname()[1]
        self._started_at = time.monotonic()
        self._task = asyncio.get_running_loop().create_task(self._clock(), name="simulator-clock")
        log.info(
            "simulator listening on %s (markets generating: %s)",
            self.url("stocks"),
            ",".join(self.config.markets),
        )

    async def stop(self) -> None:
        """Stop the clock, close every connection (1001) and the listening socket."""
        server, task = self._server, self._task
        self._server = None
        self._task = None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if server is None:
            return
        server.close()
        conns = [conn for feed in self._feeds.values() for conn in feed.conns]
        if conns:
            self._all_gone = asyncio.get_running_loop().create_future()
            for conn in conns:
                conn.close(WSCloseCode.GOING_AWAY, "server shutting down")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._all_gone), _CLOSE_TIMEOUT + 0.5)
            for conn in [conn for feed in self._feeds.values() for conn in feed.conns]:
                conn.abort()
            self._all_gone = None
        for feed in self._feeds.values():
            feed.delayed.clear()
        await server.wait_closed()

    async def __aenter__(self) -> Simulator:
        if self._server is None:
            host, port, ssl_context = self._default_bind
            await self.start(host, port, ssl_context=ssl_context)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # --- addresses ---

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("simulator not started")
        return self._port

    @property
    def secure(self) -> bool:
        return self._ssl is not None

    def _netloc(self) -> str:
        host = self._host
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"{host}:{self.port}"

    def url(self, market: str = "stocks") -> str:
        """``ws://127.0.0.1:PORT/market`` (``wss`` under TLS)."""
        if not markets.is_market(market):
            raise ValueError(f"unknown market {market!r}")
        return f"{'wss' if self.secure else 'ws'}://{self._netloc()}/{market}"

    @property
    def base_url(self) -> str:
        """``ws://127.0.0.1:PORT``: what a relay takes as its upstream."""
        return f"{'wss' if self.secure else 'ws'}://{self._netloc()}"

    def http_url(self, path: str = "/sim/stats") -> str:
        return f"{'https' if self.secure else 'http'}://{self._netloc()}{path}"

    def symbols(self, market: str) -> tuple[str, ...]:
        return tuple(sym.name for sym in self._feed(market).symbols)

    # --- generation clock ---

    async def _clock(self) -> None:
        loop = asyncio.get_running_loop()
        feeds = [feed for feed in self._feeds.values() if feed.generate]
        interval = min(_MAX_TICK, max(_MIN_TICK, 1.0 / self.config.rate))
        last = loop.time()
        last_ms = 0
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            elapsed = now - last
            last = now
            # Wall clock for "t", never going backwards (windows assume it).
            t = max(_now_ms(), last_ms)
            last_ms = t
            for feed in feeds:
                try:
                    feed.tick(elapsed, t, now)
                except Exception:
                    log.exception("simulator %s: generation failed", feed.market)

    # --- connections ---

    def _feed(self, market: str) -> _Feed:
        try:
            return self._feeds[market]
        except KeyError:
            raise ValueError(f"unknown market {market!r}; known: {', '.join(markets.MARKETS)}") from None

    def _route(self, request: WSUpgradeRequest) -> WSListener | WSUpgradeResponseWithListener | None:
        target = urlsplit(request.path.decode("latin-1"))
        path = target.path.rstrip("/")
        feed = self._feeds.get(path[1:])
        if feed is not None:
            return _Connection(self, feed)
        if path == "/sim" or path.startswith("/sim/"):
            query = {key: values[-1] for key, values in parse_qs(target.query).items()}
            status, body = self._control(path, query)
            if status == 200:
                response = WSUpgradeResponse.create_ok_response(
                    body, extra_headers={"Content-Type": "application/json"}
                )
            else:
                response = WSUpgradeResponse.create_error_response(
                    status, body, extra_headers={"Content-Type": "application/json"}
                )
            return WSUpgradeResponseWithListener(response, None)
        return None

    def _attach(self, conn: _Connection) -> None:
        conn.feed.conns[conn] = None
        conn.feed.connects += 1
        self._changed()

    def _detach(self, conn: _Connection) -> None:
        feed = conn.feed
        feed.conns.pop(conn, None)
        feed.refresh()
        self._changed()
        gone = self._all_gone
        if gone is not None and not gone.done() and not any(f.conns for f in self._feeds.values()):
            gone.set_result(None)

    def _changed(self) -> None:
        self._change.set()
        self._change = asyncio.Event()

    async def wait_connections(self, market: str, count: int = 1, *, authenticated: bool = True) -> None:
        """Return once ``market`` has at least ``count`` (authenticated) connections.

        No timeout of its own: wrap it in ``asyncio.wait_for``.
        """
        feed = self._feed(market)
        while True:
            have = sum(1 for c in feed.conns if c.authenticated or not authenticated)
            if have >= count:
                return
            await self._change.wait()

    # --- faults ---

    def _targets(self, market: str | None) -> list[_Feed]:
        return list(self._feeds.values()) if market is None else [self._feed(market)]

    def drop(self, market: str | None = None) -> int:
        """Cut every connection (of ``market``) without a closing handshake."""
        conns = [conn for feed in self._targets(market) for conn in feed.conns]
        for conn in conns:
            conn.abort()
        return len(conns)

    def stall(self, market: str | None = None) -> int:
        """Current connections go silent: no data, no reading, no pongs; still open.

        Connections made afterwards are normal, so a client that detects the
        stall and reconnects recovers.
        """
        count = 0
        for feed in self._targets(market):
            for conn in feed.conns:
                if not conn.stalled and not conn.closing:
                    conn.stall()
                    count += 1
            feed.refresh()
        return count

    def unstall(self, market: str | None = None) -> int:
        count = 0
        for feed in self._targets(market):
            for conn in feed.conns:
                if conn.stalled:
                    conn.unstall()
                    count += 1
            feed.refresh()
        return count

    def _send_raw(self, market: str | None, make: Callable[[_Feed], bytes]) -> int:
        count = 0
        for feed in self._targets(market):
            if not feed.receivers:
                continue
            payload = make(feed)
            for conn in feed.receivers:
                conn._send(payload)
                count += 1
        return count

    def malformed(self, market: str | None = None) -> int:
        """One frame that is not JSON to every live connection."""
        return self._send_raw(market, lambda feed: b'[{"ev":"T","sym":')

    def not_array(self, market: str | None = None) -> int:
        """One frame that is a JSON object, not an array."""

        def make(feed: _Feed) -> bytes:
            ev = feed.tick_evs[0]
            key = "T" if ev == "V" else "p" if ev == "C" else feed.key
            return _dumps({"ev": ev, key: feed.sample_symbol(), "t": _now_ms()})

        return self._send_raw(market, make)

    def unknown_ev(self, market: str | None = None) -> int:
        """One frame with an event type no client knows (``ZZ``)."""
        return self._send_raw(
            market,
            lambda feed: _dumps([{"ev": "ZZ", feed.key: feed.sample_symbol(), "t": _now_ms(), "zz": 1}]),
        )

    def huge(self, market: str | None = None) -> int:
        """One valid frame over 1 MiB, of subscribed channels, to every live connection."""
        return sum(feed.huge() for feed in self._targets(market))

    def auth_fail(self, market: str | None = None) -> int:
        """Answer every following auth with auth_failed (and close 1008) until ``auth_ok``."""
        for feed in self._targets(market):
            feed.auth_fail = True
        return len(self._targets(market))

    def auth_ok(self, market: str | None = None) -> int:
        """End ``auth_fail`` and ``max_connections``."""
        for feed in self._targets(market):
            feed.auth_fail = False
            feed.max_connections = False
        return len(self._targets(market))

    def max_connections(self, market: str | None = None, *, current: bool = True) -> int:
        """Evict as Massive does when the key is used elsewhere, until ``auth_ok``.

        Following auths get auth_success, then max_connections and a close 1008;
        with ``current`` the authenticated connections get the same now.
        """
        count = 0
        for feed in self._targets(market):
            feed.max_connections = True
            if current:
                for conn in list(feed.conns):
                    if conn.authenticated and not conn.closing:
                        conn.evict()
                        count += 1
        return count

    def slow(
        self, market: str | None = None, *, factor: float | None = None, delay: float | None = None
    ) -> int:
        """Generate at ``factor`` x the rate and deliver ``delay`` seconds late, until ``unslow``."""
        factor = self.config.slow_factor if factor is None else factor
        delay = self.config.slow_delay if delay is None else delay
        if factor < 0 or delay < 0:
            raise ValueError("factor and delay must be >= 0")
        for feed in self._targets(market):
            feed.slow = True
            feed.slow_factor = factor
            feed.slow_delay = delay
        return len(self._targets(market))

    def unslow(self, market: str | None = None) -> int:
        for feed in self._targets(market):
            feed.slow = False
            feed.slow_factor = 1.0
            feed.slow_delay = 0.0
            feed.flush_delayed(None)
        return len(self._targets(market))

    def fault(self, name: str, market: str | None = None, **params: Any) -> int:
        """Inject a fault by name (see ``FAULTS``); returns connections or markets affected."""
        if name not in FAULTS:
            raise KeyError(name)
        method: Callable[..., int] = getattr(self, name)
        return method(market, **params)

    # --- stats and HTTP control ---

    def stats(self) -> dict[str, Any]:
        per_market = {market: feed.stats() for market, feed in self._feeds.items()}
        return {
            "uptime_seconds": round(time.monotonic() - self._started_at, 3) if self._server else 0.0,
            "port": self._port,
            "secure": self.secure,
            "connections": sum(m["connections"] for m in per_market.values()),
            "events_generated": sum(m["events_generated"] for m in per_market.values()),
            "events_sent": sum(m["events_sent"] for m in per_market.values()),
            "frames_sent": sum(m["frames_sent"] for m in per_market.values()),
            "auth_attempts": sum(m["auth_attempts"] for m in per_market.values()),
            "markets": per_market,
            "clients": [conn.describe() for feed in self._feeds.values() for conn in feed.conns],
        }

    def _control(self, path: str, query: _Params) -> tuple[int, bytes]:
        """``/sim/stats``, ``/sim/health``, ``/sim/fault/<name>?market=&factor=&delay=&current=``."""
        if path == "/sim/stats":
            return 200, _dumps(self.stats())
        if path == "/sim/health":
            return 200, b'{"ok":true}'
        name = path.removeprefix("/sim/fault/")
        if name == path or name not in FAULTS:
            return 404, _dumps({"error": f"unknown path {path}", "faults": FAULTS})
        market = query.get("market") or None
        params: dict[str, Any] = {}
        try:
            if market is not None:
                self._feed(market)
            if name == "slow":
                if "factor" in query:
                    params["factor"] = float(query["factor"])
                if "delay" in query:
                    params["delay"] = float(query["delay"])
            if name == "max_connections" and "current" in query:
                params["current"] = query["current"].lower() not in ("0", "false", "no")
            affected = self.fault(name, market, **params)
        except ValueError as exc:
            return 400, _dumps({"error": str(exc)})
        log.info("simulator: fault %s on %s (%d affected)", name, market or "all markets", affected)
        return 200, _dumps({"fault": name, "market": market, "affected": affected})


async def run_simulator(
    config: SimulatorConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    ssl_context: ssl.SSLContext | None = None,
) -> None:
    """Serve the simulated feed until cancelled (``fastrelay sim``)."""
    sim = Simulator(config)
    await sim.start(host, port, ssl_context=ssl_context)
    log.info(
        "simulated Massive feed: %s (api key %r); control: %s, %s",
        sim.base_url,
        sim.config.api_key,
        sim.http_url("/sim/stats"),
        sim.http_url("/sim/fault/<name>[?market=...]"),
    )
    try:
        await asyncio.Event().wait()
    finally:
        await sim.stop()
