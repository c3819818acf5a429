"""Where a market's events come from, as the relay sees it; pure.

A ``Feed`` is Massive itself (``upstream.UpstreamSession``) in one process and
on a scale-out ingest, or the ingest over NATS on an edge
(``scaleout.edge.EdgeFeed``). Either reports to the relay through
``FeedHandler`` and counts what it receives in one ``FeedStatistics``.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Sequence
from typing import Protocol

from fastrelay.events import EventHead, RawEvent, timestamp_ms
from fastrelay.histogram import FEED_LATENCY_BOUNDS, Histogram


class DisconnectReason(enum.Enum):
    """Why a Massive upstream connection went away (the metrics' ``reason`` label)."""

    DROP = "drop"
    STALL = "stall"
    AUTH_FAILED = "auth_failed"
    MAX_CONNECTIONS = "max_connections"


MASSIVE_REASONS = tuple(reason.value for reason in DisconnectReason)
# Kinds of channel refusal (docs/protocol.md, "Refusals"): outside the plan, past a
# cap, anything else.
REJECTION_REASONS = ("not_authorized", "limit", "other")


def rejection_reason(message: str) -> str:
    """The kind of a refusal, from Massive's message."""
    text = message.lower()
    if "not authorized" in text:
        return "not_authorized"
    if "limit" in text:
        return "limit"
    return "other"


class FeedStatistics:
    """What a feed received: plain counters, read by the metrics at scrape time."""

    __slots__ = (
        "bytes",
        "connects",
        "decode_errors",
        "events",
        "frames",
        "last_event_at",
        "latency",
        "reconnects",
        "rejections",
    )

    def __init__(self, reasons: Sequence[str] = MASSIVE_REASONS) -> None:
        self.frames = 0
        self.events = 0
        self.bytes = 0
        self.decode_errors = 0
        self.connects = 0
        self.reconnects = dict.fromkeys(reasons, 0)  # connections lost or refused, by reason
        self.rejections = dict.fromkeys(REJECTION_REASONS, 0)  # channels Massive refused, by kind
        self.last_event_at = 0.0  # wall-clock time of the last data frame (0: none yet)
        # Event timestamp (ms ones) to arrival.
        self.latency = Histogram(FEED_LATENCY_BOUNDS)

    def received(self, heads: Sequence[EventHead], size: int, now: float | None = None) -> None:
        """One data frame of ``size`` bytes arrived with these events."""
        self.frames += 1
        self.events += len(heads)
        self.bytes += size
        if now is None:
            now = time.time()
        self.last_event_at = now
        # Sampled: the first event of each frame, so the cost is per frame, not per event.
        sent_ms = timestamp_ms(heads[0]) if heads else None
        if sent_ms is not None:
            self.latency.observe(max(0.0, now - sent_ms / 1000.0))

    def lost(self, reason: str) -> None:
        self.reconnects[reason] = self.reconnects.get(reason, 0) + 1

    def rejected(self, message: str) -> None:
        """Massive refused a channel (counted by the kind of refusal)."""
        reason = rejection_reason(message)
        self.rejections[reason] = self.rejections.get(reason, 0) + 1


class Feed(Protocol):
    """One market's source of events."""

    market: str
    stats: FeedStatistics

    @property
    def live(self) -> bool:
        """Events flow (Massive: authenticated; an edge: NATS and the ingest up)."""

    @property
    def where(self) -> str:
        """Where the events come from, for logs and metrics (never a secret)."""

    @property
    def refused(self) -> str | None:
        """Why Massive refuses this market (its answer to the key: a wrong key, no such
        plan), while it does; None otherwise. A refusal does not fix itself."""

    def start(self) -> None: ...

    async def stop(self) -> None: ...

    def send_subscriptions(self, subscribe: list[str], unsubscribe: list[str]) -> None:
        """The upstream plan: channels to add, then channels to drop."""


class FeedHandler(Protocol):
    """What a feed reports to (the relay)."""

    def feed_live(self, feed: Feed) -> None:
        """The feed is live again (or for the first time): resubscribe it."""

    def feed_events(
        self,
        market: str,
        heads: list[EventHead],
        raws: Sequence[RawEvent],
        arrival: float,
        last_in_buffer: bool,
    ) -> None:
        """One frame's events; ``last_in_buffer`` is False while more of the same read follow."""

    def feed_down(self, feed: Feed, reason: str) -> None:
        """The feed stopped; clients stay connected and are told why."""

    def feed_refused(self, feed: Feed) -> None:
        """Massive refused the feed's key or plan (``feed.refused`` says why)."""

    def feed_rejected(self, feed: Feed, refused: list[tuple[str, str]]) -> None:
        """Massive refused these channels (name, its message) after the relay took them."""
