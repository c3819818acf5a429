"""What the simulator can be told: ``SimulatorConfig``, validated on construction."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Final

from fastrelay import markets
from fastrelay.markets import OPTIONS_CONTRACT_CAP

# Named apart: SimulatorConfig has a field called "markets".
_ALL_MARKETS: Final = markets.MARKETS


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
    # The share of tick events that are trades where a market has trades and quotes
    # (T/Q, XT/XQ); None: each tick ev equally likely.
    trade_share: float | None = None
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
    # The account's plan, as Massive enforces it: market -> the evs it may subscribe.
    # A market left out refuses the key at auth (auth_failed, "Your plan doesn't
    # include websocket access..."); an ev left out is refused per channel with
    # "not authorized" and no acknowledgement. None: everything.
    plan: Mapping[str, frozenset[str]] | None = None
    # Capped contracts per connection (Massive: 1,000 options Q/FMV/LV); tests lower it.
    contract_cap: int = OPTIONS_CONTRACT_CAP
    # The Massive feed played (markets.FEEDS): "launchpad" caps options AM too.
    feed: str = "socket"
    # One connection per market per key, as Massive allows: a second one that
    # authenticates evicts the older (max_connections, close 1008), as seen on
    # Massive's stocks cluster. Off by default: tests and benches run several
    # relays on one simulator.
    one_connection_per_key: bool = False

    def __post_init__(self) -> None:
        self.markets = tuple(self.markets)
        unknown = [name for name in (*self.markets, *self.symbols) if not markets.is_market(name)]
        if unknown:
            raise ValueError(f"unknown market(s) {', '.join(unknown)}; known: {', '.join(markets.MARKETS)}")
        if self.feed not in markets.FEEDS:
            raise ValueError(f"unknown feed {self.feed!r}; known: {', '.join(markets.FEEDS)}")
        if self.rate <= 0:
            raise ValueError("rate must be > 0")
        if self.events_per_frame < 1:
            raise ValueError("events_per_frame must be >= 1")
        if self.trade_share is not None and not 0.0 <= self.trade_share <= 1.0:
            raise ValueError("trade_share must be between 0 and 1")
        if self.symbol_count < 0:
            raise ValueError("symbol_count must be >= 0")
        if self.agg_minute_seconds < 0.001:
            raise ValueError("agg_minute_seconds must be >= 0.001")
        if self.max_burst_seconds <= 0:
            raise ValueError("max_burst_seconds must be > 0")
        for market, names in self.symbols.items():
            if not names:
                raise ValueError(f"symbols[{market!r}] is empty")
