"""Reconnect delays: capped exponential backoff with full jitter; pure.

Full jitter (delay drawn uniformly in [0, min(cap, base * 2**attempt)]) spreads
reconnects of many processes apart better than equal or decorrelated jitter
(AWS Architecture Blog, "Exponential Backoff And Jitter"). The attempt count
resets only after a connection stayed healthy for a while, so a server that
accepts and drops at once cannot pull the relay into a tight loop.
"""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, base: float = 0.5, cap: float = 30.0, rng: random.Random | None = None) -> None:
        if base <= 0 or cap < base:
            raise ValueError(f"backoff needs 0 < base <= cap, got base={base} cap={cap}")
        self.base = base
        self.cap = cap
        self.attempt = 0
        self._rng = rng or random.Random()

    def ceiling(self) -> float:
        """The largest delay the next attempt can draw."""
        # min() before the power would overflow for huge attempt counts.
        return min(self.cap, self.base * 2.0 ** min(self.attempt, 64))

    def next_delay(self) -> float:
        delay = self._rng.uniform(0, self.ceiling())
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
