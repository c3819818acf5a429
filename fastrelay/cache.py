"""What the relay remembers of each market: last values and recent aggregates; pure.

Theory of operation
-------------------
A new subscriber of an exact state-like channel (a quote, an aggregate, an
index value: ``markets.state_evs``) should not wait for the next event to fill
its quote box or chart, so every market keeps the latest event of each such
channel (``last``), and of aggregate channels someone subscribes exactly, the
last ``history_size`` candles (``history``, for the ``history`` action).

``record`` is on the data path: the relay calls it with every upstream frame
before routing it, and it costs a type check and a set lookup per event that
is not state-like (trades). Everything stored is a copy: a ``msgspec.Raw``
pins its whole upstream frame.

Which tickers have their history kept follows the references the relay
counts (``watch``/``unwatch``, called when a channel gains its first or loses
its last reference); last values follow the upstream subscriptions (``forget``
when a channel leaves the upstream, ``forget_market`` on an outage, since
Massive does not replay what was missed and an old value would be stale).

A scale-out edge fills what it lacks from the ingest: ``snapshot`` on the
ingest, ``seed_last_value`` and ``seed_history`` on the edge.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from fastrelay import markets
from fastrelay.events import EventHead, RawEvent, ticker_of
from fastrelay.framing import tag_market
from fastrelay.protocol import Channel


class MarketCache:
    """Last values and kept aggregates of one market."""

    __slots__ = (
        "ambiguous",
        "history",
        "history_evs",
        "history_size",
        "last",
        "market",
        "recorded",
        "state_evs",
    )

    def __init__(self, market: str, history_size: int) -> None:
        self.market = market
        self.history_size = history_size
        self.last: dict[str, dict[str, bytes]] = {}  # ev -> ticker -> event
        self.history: dict[str, dict[str, deque[bytes]]] = {}  # ev -> ticker -> events, oldest first
        # ev -> tickers with an exact subscription: the ones whose history is kept.
        self.recorded: dict[str, set[str]] = {}
        self.state_evs = markets.state_evs(market)
        self.history_evs = markets.history_evs(market)
        self.ambiguous = markets.is_ambiguous(market)

    # --- the data path ---------------------------------------------------------------
    def record(self, heads: Sequence[EventHead], raws: Sequence[RawEvent]) -> None:
        """Remember the state-like events of one upstream frame."""
        state_evs = self.state_evs
        index = -1
        # Speed: no zip (its set-up costs more than a one-event frame's loop);
        # the raw event is looked up only for the state-like ones.
        for head in heads:
            index += 1
            ev = head.ev
            # Drifting types (an ev that is not a string) are not ours to keep.
            if ev.__class__ is not str or ev not in state_evs:
                continue
            ticker = head.sym
            if ticker.__class__ is not str:
                ticker = ticker_of(head)
                if ticker is None:
                    continue
            by_ticker = self.last.get(ev)
            if by_ticker is None:
                by_ticker = self.last[ev] = {}
            kept = by_ticker[ticker] = bytes(raws[index])
            # Candles (history evs) are all state evs, so this sits inside.
            watched = self.recorded.get(ev)
            if watched is not None and ticker in watched:
                self._remember(ev, ticker, kept)

    def _remember(self, ev: str, ticker: str, event: bytes) -> None:
        """Keep an aggregate of an exactly subscribed ticker (about one a second each)."""
        by_ticker = self.history.get(ev)
        if by_ticker is None:
            by_ticker = self.history[ev] = {}
        events = by_ticker.get(ticker)
        if events is None:
            events = by_ticker[ticker] = deque(maxlen=self.history_size)
        events.append(event)

    # --- what is kept ------------------------------------------------------------------
    def watch(self, ev: str, ticker: str) -> None:
        """An exact channel gained its first reference: keep its candles from now on."""
        if ev in self.history_evs and ticker != "*":
            self.recorded.setdefault(ev, set()).add(ticker)

    def unwatch(self, ev: str, ticker: str) -> None:
        """An exact channel lost its last reference: record no more of it."""
        watched = self.recorded.get(ev)
        if watched is not None:
            watched.discard(ticker)

    def last_value(self, ev: str, ticker: str) -> bytes | None:
        by_ticker = self.last.get(ev)
        return by_ticker.get(ticker) if by_ticker is not None else None

    def has_history(self, ev: str, ticker: str) -> bool:
        by_ticker = self.history.get(ev)
        return bool(by_ticker and by_ticker.get(ticker))

    def history_of(self, ev: str, ticker: str) -> list[bytes]:
        by_ticker = self.history.get(ev)
        events = by_ticker.get(ticker) if by_ticker is not None else None
        return list(events) if events else []

    # --- filled from elsewhere (a scale-out edge) -----------------------------------------
    def seed_last_value(self, ev: str, ticker: str, raw: bytes) -> bool:
        """Store a last value fetched from elsewhere unless a live one came first."""
        if ev not in self.state_evs:
            return False
        by_ticker = self.last.setdefault(ev, {})
        if ticker in by_ticker:
            return False
        by_ticker[ticker] = bytes(raw)
        return True

    def seed_history(self, ev: str, ticker: str, events: Iterable[bytes]) -> None:
        """Put fetched history before what was recorded here since (same bytes = same event)."""
        if ticker not in self.recorded.get(ev, ()):
            return
        by_ticker = self.history.setdefault(ev, {})
        local = by_ticker.get(ticker, ())
        seen = set(local)
        merged = [bytes(e) for e in events if bytes(e) not in seen]
        merged.extend(local)
        by_ticker[ticker] = deque(merged, maxlen=self.history_size)

    def snapshot(
        self, last: Iterable[Channel], history: Iterable[Channel]
    ) -> tuple[dict[str, bytes], dict[str, list[bytes]]]:
        """Last values and history by channel name, for a scale-out edge's new subscribers."""
        found_last: dict[str, bytes] = {}
        for channel in last:
            raw = self.last_value(channel.ev, channel.ticker)
            if raw is not None:
                found_last[channel.name] = raw
        found_history: dict[str, list[bytes]] = {}
        for channel in history:
            events = self.history_of(channel.ev, channel.ticker)
            if events:
                found_history[channel.name] = events
        return found_last, found_history

    # --- forgetting ----------------------------------------------------------------------
    def forget_market(self) -> None:
        """The upstream is lost: every last value is stale from now on."""
        self.last.clear()

    def forget(self, unsubscribed: Iterable[Channel], wanted: Callable[[Channel], bool]) -> None:
        """Drop last values and history of channels no longer subscribed upstream.

        Nothing stale is served, and memory follows what clients want.
        ``wanted`` says whether a channel is still wanted upstream.
        """
        market = self.market
        for channel in unsubscribed:
            ev, ticker = channel.ev, channel.ticker
            for store in (self.last, self.history):
                by_ticker: dict[str, Any] | None = store.get(ev)
                if by_ticker is None:
                    continue
                if ticker == "*":
                    for symbol in [s for s in by_ticker if not wanted(Channel(market, ev, s))]:
                        del by_ticker[symbol]
                elif not wanted(Channel(market, ev, "*")):
                    by_ticker.pop(ticker, None)


class Cache:
    """Every served market's ``MarketCache``, and the questions clients ask of them."""

    def __init__(self, markets_served: Iterable[str], history_size: int) -> None:
        self.markets = {m: MarketCache(m, history_size) for m in markets_served}

    def __getitem__(self, market: str) -> MarketCache:
        return self.markets[market]

    def watch(self, channel: Channel) -> None:
        self.markets[channel.market].watch(channel.ev, channel.ticker)

    def unwatch(self, channel: Channel) -> None:
        self.markets[channel.market].unwatch(channel.ev, channel.ticker)

    def last_values(
        self, channels: Iterable[Channel], tags_markets: bool
    ) -> tuple[list[bytes], list[Channel]]:
        """For a new subscriber: the latest event of each exact state-like channel,
        ready to send, and the channels that lack one (or, aggregates, lack history)."""
        found: list[bytes] = []
        missing: list[Channel] = []
        for channel in channels:
            if channel.is_wildcard:
                continue
            cache = self.markets.get(channel.market)
            if cache is None or channel.ev not in cache.state_evs:
                continue
            raw = cache.last_value(channel.ev, channel.ticker)
            if raw is not None:
                found.append(tag_market(raw, channel.market) if tags_markets and cache.ambiguous else raw)
            if raw is None or (
                channel.ev in cache.history_evs and not cache.has_history(channel.ev, channel.ticker)
            ):
                missing.append(channel)
        return found, missing

    def history(self, channel: Channel, tags_markets: bool) -> list[bytes]:
        """The kept aggregates of an exact channel, oldest first (empty if none)."""
        cache = self.markets.get(channel.market)
        if cache is None or channel.is_wildcard:
            return []
        events = cache.history_of(channel.ev, channel.ticker)
        if tags_markets and cache.ambiguous:
            return [tag_market(e, channel.market) for e in events]
        return events
