"""The per-market event generator (``Feed``): price walks, events, sequences, aggregates, dispatch.

Events carry Massive's field names (docs/protocol.md, "Events by market"), each
with ``t`` (Unix ms at generation) and a per-channel sequence ``q`` that is
global to the simulator, so a client that misses events while disconnected sees
a gap. Aggregates (A/AM, CAS/CA, XAS/XA) are computed from the trades the
simulator actually sent in the window, so a client can check them.

Every closed second window is also recorded per symbol (``LiveBars``): the
seconds, the real minutes they make and, for minutes that aged out, their days.
The REST stand-in (rest.py) serves them after the history it generates, so the
chart history and the live stream are one price path.
"""

from __future__ import annotations

import datetime
import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, cast

import orjson

from fastrelay.sim.bars import MINUTE_MS, Bar, Bars, Buckets, group, zone_of
from fastrelay.sim.config import SimulatorConfig
from fastrelay.sim.connection import Connection
from fastrelay.sim.symbols import Spec, market_kind, symbol_specs

_AUTH_TIMES_KEPT: Final = 100
# Live bars kept per symbol for the REST history: the last hour of seconds and
# the last week of minutes, fewer when a market has many symbols (these many
# bars per market at most, 72 bytes each).
LIVE_SECONDS: Final = 3600
LIVE_MINUTES: Final = 7 * 24 * 60
_LIVE_SECONDS_PER_MARKET: Final = 200_000
_LIVE_MINUTES_PER_MARKET: Final = 500_000

# (ev, channel name, encoded JSON object). Encoded once, shared by every
# connection that receives it.
Event = tuple[str, str, bytes]


class Window:
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


class LiveBars:
    """What one symbol traded live, for the REST history.

    ``seconds``: the closed second windows (the last ``LIVE_SECONDS``);
    ``minutes``: the real minutes they make, whatever ``agg_minute_seconds`` is
    (the last ``LIVE_MINUTES``), with ``current`` the latest one, still growing;
    ``days``: the minutes that aged out of ``minutes``, per day of the market.
    """

    __slots__ = ("current", "day_buckets", "days", "minutes", "seconds")

    def __init__(self, zone: datetime.tzinfo, seconds: int, minutes: int) -> None:
        self.seconds = Bars(seconds)
        self.minutes = Bars(minutes)
        self.days = Bars()
        self.current: list[float] | None = None
        self.day_buckets = Buckets("day", 1, zone)

    def close_second(self, w: Window) -> None:
        s = w.start
        self.seconds.add((s, w.o, w.h, w.l, w.c, w.v, w.pv, w.n))
        self.seconds.trim()
        minute = s - s % MINUTE_MS
        cur = self.current
        if cur is not None and cur[0] == minute:
            if w.h > cur[2]:
                cur[2] = w.h
            if w.l < cur[3]:
                cur[3] = w.l
            cur[4] = w.c
            cur[5] += w.v
            cur[6] += w.pv
            cur[7] += w.n
            return
        if cur is not None:
            self.minutes.add(cast(Bar, tuple(cur)))
            for day, _end, _count in group(self.minutes.trim(collect=True), self.day_buckets):
                self.days.put(day)
        self.current = [minute, w.o, w.h, w.l, w.c, w.v, w.pv, w.n]


class Symbol:
    """One ticker of a feed: its price walk, day totals, open aggregate windows and live bars."""

    __slots__ = (
        "ch", "day_pv", "day_v", "decimals", "live", "minute", "name", "open", "price", "ref", "sec", "spec",
        "tick",
    )  # fmt: skip

    def __init__(self, spec: Spec, evs: Iterable[str], live: LiveBars) -> None:
        self.spec = spec
        self.live = live
        self.name = spec.name
        self.ref = spec.price
        self.price = spec.price
        self.tick = spec.tick
        self.decimals = spec.decimals
        self.open = round(spec.price, spec.decimals)
        self.day_v: float = 0
        self.day_pv = 0.0
        self.sec: Window | None = None
        self.minute: Window | None = None
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


class Feed:
    """One market path: its symbols, price walks, aggregates, sequences and connections."""

    def __init__(self, market: str, config: SimulatorConfig, rng: random.Random, generate: bool) -> None:
        self.market = market
        self.kind = market_kind(market)
        self.generate = generate
        self.config = config
        self.rng = rng
        tick_evs, self.trade_ev, self.second_ev, self.minute_ev = _KINDS[self.kind]
        self.tick_evs = tick_evs
        self.key = "pair" if self.kind in ("crypto", "forex") else "sym"
        evs = (*tick_evs, self.second_ev, self.minute_ev)
        specs = symbol_specs(market, config)
        zone = zone_of(self.kind)
        n_specs = max(1, len(specs))
        kept_seconds = min(LIVE_SECONDS, max(60, _LIVE_SECONDS_PER_MARKET // n_specs))
        kept_minutes = min(LIVE_MINUTES, max(60, _LIVE_MINUTES_PER_MARKET // n_specs))
        self.symbols = [Symbol(spec, evs, LiveBars(zone, kept_seconds, kept_minutes)) for spec in specs]
        self.by_name = {sym.name: sym for sym in self.symbols}
        self.aggregates = config.aggregates
        self.minute_ms = max(1, round(config.agg_minute_seconds * 1000))
        self.seq: dict[str, int] = {}
        self.trade_id = 0
        self.sec_start = -1
        self.min_start = -1
        self.sec_open: list[Symbol] = []
        self.min_open: list[Symbol] = []
        self.owed = 0.0
        makers: Mapping[str, Callable[[Symbol, int, list[Event]], None]] = {
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
        self.conns: dict[Connection, None] = {}
        self.receivers: list[Connection] = []
        self.wild: frozenset[str] = frozenset()
        self.exact: frozenset[str] = frozenset()
        # Faults.
        self.auth_fail = False
        self.auth_fail_old = False  # answer a refused auth in the older servers' form
        self.max_connections = False
        self.slow = False
        self.slow_factor = 1.0
        self.slow_delay = 0.0
        self.delayed: deque[tuple[float, list[Event]]] = deque()
        # REST faults for this market's tickers (faults.py): answer late, answer with
        # this status instead, answer with a body that is not JSON.
        self.rest_delay = 0.0
        self.rest_status: int | None = None
        self.rest_malformed = False
        # Stats.
        self.connects = 0
        self.auth_attempts = 0
        self.auth_failures = 0
        self.auth_times: deque[int] = deque(maxlen=_AUTH_TIMES_KEPT)
        self.channels_asked = 0  # channel names in subscribe messages, refused ones too
        self.channels_refused = 0  # "not authorized" and cap refusals sent
        self.events_generated = 0
        self.events_sent = 0
        self.frames_sent = 0

    # --- connections and who wants what ---

    def attach(self, conn: Connection) -> None:
        self.conns[conn] = None
        self.connects += 1

    def detach(self, conn: Connection) -> None:
        self.conns.pop(conn, None)
        self.refresh()

    def connections(self) -> list[Connection]:
        return list(self.conns)

    def count_auth(self, key_ok: bool) -> bool:
        """Count an auth attempt; whether it succeeds (a right key and no auth_fail fault)."""
        self.auth_attempts += 1
        self.auth_times.append(now_ms())
        if not key_ok or self.auth_fail:
            self.auth_failures += 1
            return False
        return True

    def count_subscribe(self, asked: int, refused: int) -> None:
        self.channels_asked += asked
        self.channels_refused += refused

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
            aggs: list[Event] = []
            self.roll(t, aggs)
            if aggs:
                self.emit(aggs, now)
        for _ in range(count):
            self.emit(self.frame(t), now)
        if self.delayed:
            self.flush_delayed(now)

    def frame(self, t: int) -> list[Event]:
        """One upstream frame: events_per_frame tick events of random symbols."""
        out: list[Event] = []
        rng = self.rng
        symbols = self.symbols
        makers = self.tick_makers
        n_symbols = len(symbols)
        n_makers = len(makers)
        trade_share = self.config.trade_share if n_makers == 2 else None
        for _ in range(self.config.events_per_frame):
            sym = symbols[int(rng.random() * n_symbols)]
            if trade_share is not None:  # the trade maker first (_KINDS), the quote maker second
                makers[0 if rng.random() < trade_share else 1](sym, t, out)
            else:
                makers[int(rng.random() * n_makers) if n_makers > 1 else 0](sym, t, out)
        self.events_generated += self.config.events_per_frame
        return out

    def emit(self, events: list[Event], now: float) -> None:
        if self.slow and self.slow_delay > 0:
            self.delayed.append((now + self.slow_delay, events))
        else:
            self.dispatch(events)

    def flush_delayed(self, now: float | None) -> None:
        delayed = self.delayed
        while delayed and (now is None or delayed[0][0] <= now):
            self.dispatch(delayed.popleft()[1])

    def dispatch(self, events: list[Event]) -> None:
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

    def _walk(self, sym: Symbol) -> float:
        # A small random walk, pulled gently back to the start price so a
        # long run stays plausible.
        price = sym.price * (1.0 + self.rng.gauss(0.0, 0.0004)) + (sym.ref - sym.price) * 0.002
        if price < sym.tick:
            price = sym.tick
        sym.price = price
        return round(round(price / sym.tick) * sym.tick, sym.decimals)

    def _print(self, sym: Symbol, price: float, size: float) -> None:
        """Account one print (trade, index value, forex quote) for the aggregates."""
        sym.day_v += size
        sym.day_pv += price * size
        if not self.aggregates:
            return
        w = sym.sec
        if w is None:
            w = sym.sec = Window(self.sec_start, price)
            self.sec_open.append(sym)
        w.add(price, size)
        w = sym.minute
        if w is None:
            w = sym.minute = Window(self.min_start, price)
            self.min_open.append(sym)
        w.add(price, size)

    def roll(self, t: int, out: list[Event]) -> None:
        """Close the windows ``t`` has left and emit their aggregates into ``out``."""
        sec = t - t % 1000
        if sec != self.sec_start:
            if self.sec_open:
                for sym in self.sec_open:
                    window = sym.sec
                    sym.sec = None
                    if window is not None:
                        sym.live.close_second(window)
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

    def _aggregate(self, ev: str, sym: Symbol, w: Window, length: int, t: int, out: list[Event]) -> None:
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

    # --- one event per (market, ev); field names as docs/protocol.md lists them ("Events by market") ---

    def _quote_sides(self, sym: Symbol, price: float, spread_ticks: int) -> tuple[float, float]:
        half = sym.tick * spread_ticks
        return round(price - half, sym.decimals), round(price + half, sym.decimals)

    def _stock_trade(self, sym: Symbol, t: int, out: list[Event]) -> None:
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

    def _stock_quote(self, sym: Symbol, t: int, out: list[Event]) -> None:
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

    def _option_trade(self, sym: Symbol, t: int, out: list[Event]) -> None:
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

    def _option_quote(self, sym: Symbol, t: int, out: list[Event]) -> None:
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

    def _index_value(self, sym: Symbol, t: int, out: list[Event]) -> None:
        price = self._walk(sym)
        self._print(sym, price, 0)
        channel = sym.ch["V"]
        q = self._next(channel)
        if self._wants("V", channel):
            out.append(("V", channel, _dumps({"ev": "V", "val": price, "T": sym.name, "t": t, "q": q})))

    def _forex_quote(self, sym: Symbol, t: int, out: list[Event]) -> None:
        rng = self.rng
        price = self._walk(sym)
        bid, ask = self._quote_sides(sym, price, 1 + int(rng.random() * 3))
        # CA/CAS are built from the mid, with the number of quotes as volume.
        self._print(sym, round((bid + ask) / 2, sym.decimals + 1), 1)
        channel = sym.ch["C"]
        q = self._next(channel)
        if self._wants("C", channel):
            # Real feeds send the venue id as a number or as a string (docs/protocol.md, "Type drift").
            venue: int | str = 48 if rng.random() < 0.9 else "44"
            event = {"ev": "C", "p": sym.name, "x": venue, "a": ask, "b": bid, "t": t, "q": q}
            out.append(("C", channel, _dumps(event)))

    def _crypto_trade(self, sym: Symbol, t: int, out: list[Event]) -> None:
        rng = self.rng
        price = self._walk(sym)
        size = round(0.0001 + rng.random() * (50.0 / max(price, 1.0)) ** 0.5, 8)
        self._print(sym, price, size)
        self.trade_id += 1
        channel = sym.ch["XT"]
        q = self._next(channel)
        if self._wants("XT", channel):
            exchange = 1 + int(rng.random() * 6)
            # Some venues send numeric trade ids, others strings (docs/protocol.md, "Type drift").
            trade_id: int | str = self.trade_id if exchange % 2 else str(self.trade_id)
            event: dict[str, Any] = {
                "ev": "XT", "pair": sym.name, "p": price, "t": t, "s": size,
                "c": [1 + int(rng.random() * 2)], "i": trade_id, "x": exchange, "r": t, "q": q,
            }  # fmt: skip
            out.append(("XT", channel, _dumps(event)))

    def _crypto_quote(self, sym: Symbol, t: int, out: list[Event]) -> None:
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

    def _futures_trade(self, sym: Symbol, t: int, out: list[Event]) -> None:
        price = self._walk(sym)
        size = 1 + int(self.rng.random() * 10)
        self._print(sym, price, size)
        channel = sym.ch["T"]
        q = self._next(channel)
        if self._wants("T", channel):
            out.append(
                ("T", channel, _dumps({"ev": "T", "sym": sym.name, "p": price, "s": size, "t": t, "q": q}))
            )

    def _futures_quote(self, sym: Symbol, t: int, out: list[Event]) -> None:
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

    # --- stats ---

    def stats(self) -> dict[str, Any]:
        faults = [
            name
            for name, active in (
                ("auth_fail", self.auth_fail),
                ("max_connections", self.max_connections),
                ("slow", self.slow),
                ("stall", any(c.stalled for c in self.conns)),
                ("rest_slow", self.rest_delay > 0),
                ("rest_429", self.rest_status == 429),
                ("rest_5xx", self.rest_status is not None and self.rest_status >= 500),
                ("rest_malformed", self.rest_malformed),
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
            "channels_asked": self.channels_asked,
            "channels_refused": self.channels_refused,
            "auth_failures": self.auth_failures,
            "auth_attempt_times_ms": list(self.auth_times),
            "events_generated": self.events_generated,
            "events_sent": self.events_sent,
            "frames_sent": self.frames_sent,
            "faults": faults,
        }


def now_ms() -> int:
    """Wall clock in Unix ms, as events carry it in ``t``."""
    return time.time_ns() // 1_000_000
