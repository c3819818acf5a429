"""Routing and fan-out: who gets which event, and one frame per audience; pure.

Theory of operation
-------------------
Clients that subscribe exactly the same channels receive exactly the same
events, so the hub groups them in *audiences* keyed by their channel set, and
does per-event work per audience, not per client:

1. ``route()`` takes one decoded upstream frame and appends each event's raw
   bytes to the pending list of every audience that wants it (through an
   index ``ev -> ticker -> audiences`` plus ``ev -> audiences`` for ``EV.*``).
   An audience that has ``T.*`` is not indexed under ``T.AAPL`` too, so it
   gets each event once.
2. ``flush()`` turns each audience's pending events into complete WebSocket
   frames (a JSON array, split below the maximum frame size), built once, and
   writes the same bytes objects to every member: one write per member per
   flush whatever the number of events.
3. After each write the member's unsent backlog is checked; a member past
   the limit is handed to ``on_slow_consumer`` after the flush. Nobody waits
   for it.

The hub also keeps the last event of state-like channels (quotes, aggregates,
index values, forex quotes) so a new subscriber of an exact channel fills at
once, and owns the per-market ``MarketInterest`` reference counts that decide
the upstream subscriptions. It never touches a socket: members are given a
``write`` and a ``buffered`` callable, so tests use a recording sink.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from fastrelay import markets
from fastrelay.events import EventHead, ticker_of
from fastrelay.histogram import RELAY_LATENCY_BOUNDS, Histogram
from fastrelay.interest import CapReached, MarketInterest
from fastrelay.protocol import Channel, event_array_frames, tag_market, text_frame

TIMER_SLACK = 0.001


class Member:
    """The hub's view of one client connection."""

    __slots__ = ("audience", "buffered", "channels", "closed", "owner", "tags_markets", "write")

    def __init__(
        self,
        write: Callable[[bytes], Any],
        buffered: Callable[[], int],
        tags_markets: bool = False,
        owner: Any = None,
    ) -> None:
        self.owner = owner  # the connection this member stands for (opaque to the hub)
        self.write = write  # writes bytes to the client's socket, never blocks
        self.buffered = buffered  # bytes written but not yet sent
        # /api/socket clients mix markets on one socket: events of ambiguous
        # markets (futures) reach them with a "market" key.
        self.tags_markets = tags_markets
        self.channels: set[Channel] = set()
        self.audience: Audience | None = None
        self.closed = False


class Audience:
    """Members with one channel set: they share every frame."""

    __slots__ = ("channels", "first_arrival", "flushed_at", "members", "pending", "tagged")

    def __init__(self, channels: frozenset[Channel], tagged: bool) -> None:
        self.channels = channels
        self.tagged = tagged
        self.members: dict[Member, None] = {}  # an ordered set
        self.pending: list[bytes] = []
        self.first_arrival = 0.0  # perf_counter() arrival of the oldest pending event
        self.flushed_at = -math.inf  # perf_counter() of the last write


class _MarketIndex:
    __slots__ = (
        "ambiguous",
        "exact",
        "history",
        "history_evs",
        "last",
        "market",
        "recorded",
        "state_evs",
        "wildcard",
    )

    def __init__(self, market: str) -> None:
        self.market = market
        self.exact: dict[str, dict[str, list[Audience]]] = {}
        self.wildcard: dict[str, list[Audience]] = {}
        # Stored events are copies: a msgspec.Raw pins its whole upstream frame.
        self.last: dict[str, dict[str, bytes]] = {}
        self.history: dict[str, dict[str, deque[bytes]]] = {}
        # ev -> tickers with an exact subscription: the ones whose history is kept.
        self.recorded: dict[str, set[str]] = {}
        self.state_evs = markets.state_evs(market)
        self.history_evs = markets.history_evs(market)
        self.ambiguous = markets.is_ambiguous(market)


class FillSource(Protocol):
    """Last values and history this hub lacks, fetched from elsewhere (a scale-out ingest)."""

    def missing(self, member: Member, channels: list[Channel]) -> None:
        """A new subscriber's exact state channels with no last value (or, aggregates, no history)."""

    def filling(self, channel: Channel) -> bool:
        """A fetch for this channel is on its way."""

    def when_filled(self, channels: list[Channel], callback: Callable[[], None]) -> None:
        """Call back once every one of these channels' fetches is in (or failed)."""


@dataclass
class HubStatistics:
    events_routed: int = 0  # upstream events that reached at least the router
    deliveries: int = 0  # events times members they were written to
    frames_written: int = 0  # frames times members
    bytes_written: int = 0
    slow_consumers: int = 0
    max_backlog: int = 0  # largest member backlog seen at the last flush


@dataclass
class SubscribeResult:
    accepted: list[Channel]
    errors: list[str]


class Hub:
    def __init__(
        self,
        interests: dict[str, MarketInterest],
        max_frame_payload: int,
        max_client_buffer: int,
        max_channels_per_client: int,
        on_slow_consumer: Callable[[Member], None],
        history_size: int = 500,
    ) -> None:
        self.interests = interests
        self.history_size = history_size
        self.max_frame_payload = max_frame_payload
        self.max_client_buffer = max_client_buffer
        self.max_channels_per_client = max_channels_per_client
        self.on_slow_consumer = on_slow_consumer
        self._index = {market: _MarketIndex(market) for market in interests}
        self._audiences: dict[tuple[frozenset[Channel], bool], Audience] = {}
        self._dirty: list[Audience] = []
        self.dirty_markets: set[str] = set()  # markets whose upstream interest changed
        self.outages: dict[str, str] = {}  # market -> reason, while its upstream is lost
        self.stats = HubStatistics()
        # Arrival of an audience's oldest pending event to its write: per frame
        # written, the worst wait of the events in it.
        self.latency = Histogram(RELAY_LATENCY_BOUNDS)
        self.members = 0
        self.subscriptions = 0  # channels summed over members
        # Where a scale-out edge fetches what it lacks (scaleout/fills.py); None: nowhere.
        self.fills: FillSource | None = None

    # --- membership -----------------------------------------------------------
    def attach(self, member: Member) -> None:
        self.members += 1
        self._move(member)

    def detach(self, member: Member) -> None:
        if member.closed:
            return
        member.closed = True
        self.members -= 1
        self.subscriptions -= len(member.channels)
        for channel in member.channels:
            self._release(channel)
        member.channels.clear()
        self._leave_audience(member)

    def subscribe(self, member: Member, channels: Iterable[Channel]) -> SubscribeResult:
        """Add channels; unknown markets and the contract cap give errors, not exceptions."""
        accepted: list[Channel] = []
        errors: list[str] = []
        new: dict[str, list[Channel]] = {}
        for channel in dict.fromkeys(channels):
            if channel.market not in self.interests:
                errors.append(f"market {channel.market!r} is not served by this relay ({channel.name})")
            elif channel in member.channels:
                accepted.append(channel)  # idempotent, as Massive acknowledges again
            else:
                new.setdefault(channel.market, []).append(channel)
        room = self.max_channels_per_client - len(member.channels)
        for market, wanted in new.items():
            if len(wanted) > room:
                errors.append(
                    f"too many channels: at most {self.max_channels_per_client} per connection "
                    f"({len(wanted)} more requested on {market}, room for {max(room, 0)})"
                )
                continue
            interest = self.interests[market]
            try:
                interest.check_cap([c.name for c in wanted])
            except CapReached as exc:
                errors.append(str(exc))
                continue
            room -= len(wanted)
            self.subscriptions += len(wanted)
            for channel in wanted:
                member.channels.add(channel)
                self._reference(channel)
            self.dirty_markets.add(market)
            accepted.extend(wanted)
        if new:
            self._move(member)
        return SubscribeResult(accepted, errors)

    def unsubscribe(self, member: Member, channels: Iterable[Channel]) -> list[Channel]:
        removed = [c for c in dict.fromkeys(channels) if c in member.channels]
        self.subscriptions -= len(removed)
        for channel in removed:
            member.channels.discard(channel)
            self._release(channel)
        if removed:
            self._move(member)
        return removed

    def hold(self, channel: Channel) -> None:
        """A reference that is not a client: a scale-out ingest holds one per edge wanting it."""
        self._reference(channel)
        self.dirty_markets.add(channel.market)

    def let_go(self, channel: Channel) -> None:
        """Drop a reference taken with ``hold``."""
        self._release(channel)

    def _reference(self, channel: Channel) -> None:
        self.interests[channel.market].add(channel.name)
        index = self._index[channel.market]
        if channel.ev in index.history_evs and not channel.is_wildcard:
            index.recorded.setdefault(channel.ev, set()).add(channel.ticker)

    def _release(self, channel: Channel) -> None:
        interest = self.interests[channel.market]
        interest.remove(channel.name)
        if not interest.refcount(channel.name):
            self._index[channel.market].recorded.get(channel.ev, set()).discard(channel.ticker)
        self.dirty_markets.add(channel.market)

    def _move(self, member: Member) -> None:
        """Put the member in the audience of its current channel set."""
        channels = frozenset(member.channels)
        tagged = member.tags_markets and any(markets.is_ambiguous(c.market) for c in channels)
        key = (channels, tagged)
        current = member.audience
        if current is not None and current.channels == channels and current.tagged == tagged:
            return
        audience = self._audiences.get(key)
        # Pending events belong to the members that were there when they were
        # routed: write them out before anyone leaves or joins, so a leaving
        # member loses nothing it was owed and a joining one gets nothing
        # twice (the last value it is sent already covers it).
        slow: list[Member] = []
        for touched in (current, audience):
            if touched is not None and touched.pending:
                slow.extend(self._write_audience(touched, time.perf_counter()))
        self._leave_audience(member)
        if audience is None:
            audience = self._audiences[key] = Audience(channels, tagged)
            self._index_audience(audience)
        audience.members[member] = None
        member.audience = audience
        self._drop_slow(slow)

    def _leave_audience(self, member: Member) -> None:
        audience = member.audience
        if audience is None:
            return
        member.audience = None
        del audience.members[member]
        if not audience.members:
            del self._audiences[(audience.channels, audience.tagged)]
            self._unindex_audience(audience)
            # Events still pending for nobody: drop them, skip the flush.
            audience.pending.clear()

    def _index_lists(self, audience: Audience) -> list[list[Audience]]:
        """The index lists this audience belongs in (created on demand)."""
        wildcard_evs = {(c.market, c.ev) for c in audience.channels if c.is_wildcard}
        lists: list[list[Audience]] = []
        for channel in audience.channels:
            index = self._index[channel.market]
            if channel.is_wildcard:
                lists.append(index.wildcard.setdefault(channel.ev, []))
            elif (channel.market, channel.ev) not in wildcard_evs:
                lists.append(index.exact.setdefault(channel.ev, {}).setdefault(channel.ticker, []))
        return lists

    def _index_audience(self, audience: Audience) -> None:
        for audiences in self._index_lists(audience):
            audiences.append(audience)

    def _unindex_audience(self, audience: Audience) -> None:
        for audiences in self._index_lists(audience):
            audiences.remove(audience)
        for channel in audience.channels:  # prune empty index entries
            index = self._index[channel.market]
            if channel.is_wildcard:
                if not index.wildcard.get(channel.ev, True):
                    del index.wildcard[channel.ev]
            else:
                by_ticker = index.exact.get(channel.ev)
                if by_ticker is not None and not by_ticker.get(channel.ticker, True):
                    del by_ticker[channel.ticker]
                    if not by_ticker:
                        del index.exact[channel.ev]

    # --- the hot path -----------------------------------------------------------
    def route(
        self, market: str, heads: list[EventHead], raws: list[Any], arrival: float | None = None
    ) -> int:
        """Queue one upstream frame's events for the audiences that want them.

        ``raws`` are the events' bytes (``msgspec.Raw`` or ``bytes``), kept as
        they came; ``arrival`` is the frame's ``perf_counter()`` arrival.
        Returns how many (event, audience) pairs were queued.
        """
        if arrival is None:
            arrival = time.perf_counter()
        index = self._index[market]
        wildcard = index.wildcard
        exact = index.exact
        last = index.last
        state_evs = index.state_evs
        recorded = index.recorded
        tagging = index.ambiguous
        dirty = self._dirty
        queued = 0
        for head, raw in zip(heads, raws, strict=True):
            ev = head.ev
            if ev.__class__ is not str:
                continue
            ticker = head.sym
            if ticker.__class__ is not str:
                ticker = ticker_of(head)
            if ev in state_evs and ticker is not None:
                by_ticker_last = last.get(ev)
                if by_ticker_last is None:
                    by_ticker_last = last[ev] = {}
                by_ticker_last[ticker] = bytes(raw)
                # Candles (history evs) are all state evs, so this sits inside.
                if ev in recorded and ticker in recorded[ev]:
                    self._remember(index, ev, ticker, raw)
            by_ticker = exact.get(ev)
            exact_targets = by_ticker.get(ticker) if by_ticker is not None and ticker is not None else None
            # An audience sits in at most one of the two lists (see _index_lists).
            for targets in (wildcard.get(ev), exact_targets):
                if targets is None:
                    continue
                queued += len(targets)
                for audience in targets:
                    pending = audience.pending
                    if not pending:
                        dirty.append(audience)
                        audience.first_arrival = arrival
                    pending.append(tag_market(raw, market) if tagging and audience.tagged else raw)
        self.stats.events_routed += len(heads)
        return queued

    def _remember(self, index: _MarketIndex, ev: str, ticker: str, raw: Any) -> None:
        """Keep an aggregate of an exactly subscribed ticker (about one a second each)."""
        by_ticker = index.history.get(ev)
        if by_ticker is None:
            by_ticker = index.history[ev] = {}
        events = by_ticker.get(ticker)
        if events is None:
            events = by_ticker[ticker] = deque(maxlen=self.history_size)
        events.append(bytes(raw))

    def history(self, member: Member, channel: Channel) -> list[bytes]:
        """The kept aggregates of an exact channel, oldest first (empty if none)."""
        index = self._index.get(channel.market)
        if index is None or channel.is_wildcard:
            return []
        events = index.history.get(channel.ev, {}).get(channel.ticker)
        if not events:
            return []
        if member.tags_markets and index.ambiguous:
            return [tag_market(e, channel.market) for e in events]
        return list(events)

    def has_pending(self) -> bool:
        return bool(self._dirty)

    def flush(self, now: float | None = None, min_gap: float = 0.0) -> float | None:
        """Write pending events: per audience, frames built once, one write per member.

        ``min_gap`` is the coalescing window: an audience written less than
        that long ago keeps its events for later, while one that has been
        quiet is written at once (a leading edge: a sparse channel pays no
        window, a busy one is coalesced). Returns when the earliest audience
        kept back falls due (``perf_counter`` time), or None.
        """
        dirty = self._dirty
        if not dirty:
            return None
        if now is None:
            now = time.perf_counter()
        kept: list[Audience] = []
        due: float | None = None
        slow: list[Member] = []
        self.stats.max_backlog = 0
        for audience in dirty:
            events = audience.pending
            if not events:
                continue  # the audience emptied since it was queued
            ready_at = audience.flushed_at + min_gap
            # The loop's timers have millisecond resolution and may fire a
            # little early: a window that ends within a millisecond has ended.
            if ready_at > now + TIMER_SLACK:
                kept.append(audience)
                if due is None or ready_at < due:
                    due = ready_at
                continue
            slow.extend(self._write_audience(audience, now))
        self._dirty = kept
        self._drop_slow(slow)
        return due

    def _write_audience(self, audience: Audience, now: float) -> list[Member]:
        """Write an audience's pending events to every member; returns the slow ones."""
        events = audience.pending
        audience.pending = []
        audience.flushed_at = now
        self.latency.observe(now - audience.first_arrival)
        frames = event_array_frames(events, self.max_frame_payload)
        members = audience.members
        count = len(members)
        stats = self.stats
        stats.deliveries += len(events) * count
        stats.frames_written += len(frames) * count
        stats.bytes_written += sum(map(len, frames)) * count
        limit = self.max_client_buffer
        max_backlog = 0
        slow: list[Member] = []
        for member in members:
            write = member.write
            for frame in frames:
                write(frame)
            backlog = member.buffered()
            if backlog > max_backlog:
                max_backlog = backlog
            if backlog > limit:
                slow.append(member)
        if max_backlog > stats.max_backlog:
            stats.max_backlog = max_backlog
        return slow

    def _drop_slow(self, slow: list[Member]) -> None:
        # After the writes: the callback detaches members, which changes audiences.
        for member in slow:
            if not member.closed:
                self.stats.slow_consumers += 1
                self.on_slow_consumer(member)

    # --- last value on subscribe -----------------------------------------------
    def last_values(
        self, member: Member, channels: Iterable[Channel], fetch_missing: bool = True
    ) -> list[bytes]:
        """The latest event seen on each exact state-like channel, ready to send."""
        found: list[bytes] = []
        missing: list[Channel] = []
        fills = self.fills if fetch_missing else None
        for channel in channels:
            if channel.is_wildcard:
                continue
            index = self._index.get(channel.market)
            if index is None or channel.ev not in index.state_evs:
                continue
            raw = index.last.get(channel.ev, {}).get(channel.ticker)
            if raw is not None:
                tagged = member.tags_markets and index.ambiguous
                found.append(tag_market(raw, channel.market) if tagged else raw)
            if fills is not None and (
                raw is None
                or (
                    channel.ev in index.history_evs
                    and not index.history.get(channel.ev, {}).get(channel.ticker)
                )
            ):
                missing.append(channel)
        if missing and fills is not None:
            fills.missing(member, missing)
        return found

    def seed_last_value(self, channel: Channel, raw: bytes) -> bool:
        """Store a last value fetched from elsewhere unless a live one came first."""
        index = self._index[channel.market]
        if channel.ev not in index.state_evs:
            return False
        by_ticker = index.last.setdefault(channel.ev, {})
        if channel.ticker in by_ticker:
            return False
        by_ticker[channel.ticker] = bytes(raw)
        return True

    def seed_history(self, channel: Channel, events: list[bytes]) -> None:
        """Put fetched history before what was recorded here since (same bytes = same event)."""
        index = self._index[channel.market]
        if channel.ticker not in index.recorded.get(channel.ev, ()):
            return
        by_ticker = index.history.setdefault(channel.ev, {})
        local = by_ticker.get(channel.ticker, ())
        seen = set(local)
        merged = [bytes(e) for e in events if bytes(e) not in seen]
        merged.extend(local)
        by_ticker[channel.ticker] = deque(merged, maxlen=self.history_size)

    def snapshot(
        self, market: str, last: Iterable[str], history: Iterable[str]
    ) -> tuple[dict[str, bytes], dict[str, list[bytes]]]:
        """Last values and history by channel name, for a scale-out edge's new subscribers."""
        index = self._index.get(market)
        if index is None:
            return {}, {}
        found_last: dict[str, bytes] = {}
        for name in last:
            ev, _, ticker = name.partition(".")
            raw = index.last.get(ev, {}).get(ticker)
            if raw is not None:
                found_last[name] = raw
        found_history: dict[str, list[bytes]] = {}
        for name in history:
            ev, _, ticker = name.partition(".")
            events = index.history.get(ev, {}).get(ticker)
            if events:
                found_history[name] = list(events)
        return found_last, found_history

    def forget_market_last_values(self, market: str) -> None:
        self._index[market].last.clear()

    def forget_last_values(self, market: str, unsubscribed: Iterable[str]) -> None:
        """Drop last values and history of channels no longer subscribed upstream.

        Nothing stale is served, and memory follows what clients want.
        """
        index = self._index[market]
        wanted = self.interests[market].wanted()
        for name in unsubscribed:
            ev, _, ticker = name.partition(".")
            for store in (index.last, index.history):
                by_ticker: dict[str, Any] | None = store.get(ev)
                if by_ticker is None:
                    continue
                if ticker == "*":
                    for symbol in [s for s in by_ticker if f"{ev}.{s}" not in wanted]:
                        del by_ticker[symbol]
                elif f"{ev}.*" not in wanted:
                    by_ticker.pop(ticker, None)

    def announce(self, market: str, payload: bytes) -> int:
        """Write one status payload to every member subscribed to ``market``; returns how many."""
        frame = text_frame(payload)
        reached = 0
        for audience in list(self._audiences.values()):
            if any(c.market == market for c in audience.channels):
                for member in audience.members:
                    member.write(frame)
                reached += len(audience.members)
        return reached

    def audience_count(self) -> int:
        return len(self._audiences)
