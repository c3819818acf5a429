"""The tickers the simulator trades, each with a start price and a precision (``Spec``).

Built-in lists per market (options contracts of next month's expiry, futures
front contracts), synthetic names for load tests (``S0001``...), and stable
price guesses for names a caller gives.
"""

from __future__ import annotations

import dataclasses
import datetime
import zlib
from typing import Final

from fastrelay.sim.config import SimulatorConfig


@dataclasses.dataclass(frozen=True)
class Spec:
    """One ticker: its start price, price tick and the decimals its prices show."""

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


def market_kind(market: str) -> str:
    """The market's family: every ``futures/...`` exchange path is ``futures``."""
    return "futures" if market.startswith("futures") else market


def _decimal_spec(kind: str, name: str, price: float) -> Spec:
    """Price precision as Massive shows it: cents for equities, pips for forex, finer below $1."""
    if kind == "forex":
        decimals = 3 if price > 20 else 5
    elif kind == "crypto":
        decimals = 2 if price >= 100 else 4 if price >= 1 else 6
    elif kind == "stocks":
        decimals = 2 if price >= 1 else 4
    else:
        decimals = 2
    return Spec(name, price, 10.0**-decimals, decimals)


def _builtin_specs(market: str, today: datetime.date) -> list[Spec]:
    kind = market_kind(market)
    if kind == "futures":
        paths = [market] if market in _FUTURES else list(_FUTURES)
        return [
            Spec(_contract(root, months, today), price, tick, decimals)
            for path in paths
            for root, months, price, tick, decimals in _FUTURES[path]
        ]
    if kind == "options":
        expiry = _options_expiry(today)
        return [
            Spec(f"O:{root}{expiry}{cp}{strike * 1000:08d}", price, 0.01, 2)
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


def symbol_specs(market: str, config: SimulatorConfig, today: datetime.date | None = None) -> list[Spec]:
    """The tickers a market generates, with start prices and precision."""
    kind = market_kind(market)
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
