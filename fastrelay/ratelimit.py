"""Throttles for things that can repeat without bound: log lines, control messages."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any


class LogThrottle:
    """Logs each message template at most once per interval, counting the rest.

    A broken upstream or a misbehaving client can repeat a fault thousands of
    times a second; operators need to see it once, with how often it happened.
    """

    def __init__(
        self, logger: logging.Logger, interval: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, level: int, msg: str, *args: Any, extra: dict[str, Any] | None = None) -> None:
        """Log unless ``msg`` was logged less than an interval ago (``extra``: as logging's,
        plus ``suppressed``, the count of lines left out since the last)."""
        now = self._clock()
        last = self._last.get(msg)
        if last is not None and now - last < self._interval:
            self._suppressed[msg] = self._suppressed.get(msg, 0) + 1
            return
        self._last[msg] = now
        suppressed = self._suppressed.pop(msg, 0)
        if suppressed:
            msg = f"{msg} (and {suppressed} more like it since the last report)"
            extra = {**(extra or {}), "suppressed": suppressed}
        self._logger.log(level, msg, *args, extra=extra)


class TokenBucket:
    """``rate`` actions per second with bursts up to ``burst``; pure."""

    __slots__ = ("_clock", "_tokens", "_updated", "burst", "rate")

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._updated = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False
