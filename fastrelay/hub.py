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
2. ``flush()`` hands each audience's pending events to the outbox, which
   builds the frames once and writes the same bytes to every member (one
   write per member per flush whatever the number of events) and drops
   members whose backlog passes the limit.
3. A member that fell behind (over ``--conflate-above``, conflation on) leaves
   its audience's ``members`` for its ``conflating`` set: ``flush`` looks at
   that set once per audience, and ``conflation.Conflator`` sends each such
   member every trade and the latest of each state channel until it catches up.

Membership changes (``attach``, ``subscribe``, ``unsubscribe``, ``detach``)
move a member between audiences, and every reference a member takes or drops
is reported to an ``Interest`` (the relay's ``Demand``), which decides the
upstream subscriptions. The hub never touches a socket.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from fastrelay import markets
from fastrelay.conflation import ConflationPolicy, Conflator
from fastrelay.events import EventHead, RawEvent, ticker_of
from fastrelay.framing import tag_market
from fastrelay.histogram import RELAY_LATENCY_BOUNDS, Histogram
from fastrelay.member import Member
from fastrelay.outbox import Outbox
from fastrelay.protocol import Channel

# The loop's timers have millisecond resolution and may fire a little early:
# a window that ends within a millisecond has ended.
TIMER_SLACK = 0.001


class Interest(Protocol):
    """Where the hub reports the references its members take and drop."""

    def headroom(self) -> int:
        """How many channels may surely be added before a global cap."""

    def admit(self, market: str, names: list[str]) -> str | None:
        """Why these new channels cannot be added (a cap), or None."""

    def refusal(self, market: str, name: str) -> str | None:
        """Massive's message if it refused this channel lately (cheap), or None."""

    def capped_evs(self, market: str) -> frozenset[str]:
        """The evs ``market``'s feed caps per connection (no wildcard, the contract cap)."""

    def add(self, channel: Channel) -> None:
        """A member took a reference on ``channel``."""

    def remove(self, channel: Channel) -> None:
        """A member dropped its reference on ``channel``."""


class Audience:
    """Members with one channel set: they share every frame."""

    __slots__ = (
        "channels", "conflating", "first_arrival", "flushed_at", "market", "members", "pending", "tagged",
    )  # fmt: skip

    def __init__(self, channels: frozenset[Channel], tagged: bool) -> None:
        self.channels = channels
        self.tagged = tagged
        # The market its frames are counted under (compression metrics): /api/socket
        # audiences may span markets.
        spanned = {channel.market for channel in channels}
        self.market = spanned.pop() if len(spanned) == 1 else "mixed"
        self.members: dict[Member, None] = {}  # an ordered set
        # Members that fell behind (conflation.py), while there are any: an ordered set.
        self.conflating: dict[Member, None] | None = None
        self.pending: list[RawEvent] = []
        self.first_arrival = 0.0  # perf_counter() arrival of the oldest pending event
        self.flushed_at = -math.inf  # perf_counter() of the last write


class _MarketIndex:
    __slots__ = ("ambiguous", "exact", "wildcard")

    def __init__(self, market: str) -> None:
        self.exact: dict[str, dict[str, list[Audience]]] = {}
        self.wildcard: dict[str, list[Audience]] = {}
        self.ambiguous = markets.is_ambiguous(market)


@dataclass
class SubscribeResult:
    accepted: list[Channel]
    refused: list[tuple[Channel, str]]  # each with why


class Hub:
    def __init__(
        self,
        markets_served: Iterable[str],
        outbox: Outbox,
        interest: Interest,
        max_channels_per_client: int,
        max_contracts_per_client: int = markets.OPTIONS_CONTRACT_CAP,
        conflation: ConflationPolicy | None = None,
        clock: Callable[[], float] = time.perf_counter,  # conflation's; tests use a fake one
    ) -> None:
        self.outbox = outbox
        self.interest = interest
        self.max_channels_per_client = max_channels_per_client
        # A client's fair share of Massive's per-connection contract cap, which
        # the relay's one upstream connection shares among all clients.
        self.max_contracts_per_client = max_contracts_per_client
        self._index = {market: _MarketIndex(market) for market in markets_served}
        self._audiences: dict[tuple[frozenset[Channel], bool], Audience] = {}
        self._audience_of: dict[Member, Audience] = {}
        self._dirty: list[Audience] = []
        self.events_routed = 0  # upstream events that reached the router
        # Arrival of an audience's oldest pending event to its write: per frame
        # written, the worst wait of the events in it.
        self.latency = Histogram(RELAY_LATENCY_BOUNDS)
        self.members = 0
        self.subscriptions = 0  # channels summed over members
        # Members that fell behind get the conflated stream instead of a drop (conflation.py).
        self.conflator: Conflator | None = None
        if conflation is not None:
            self.conflator = Conflator(outbox, conflation, clock)
            outbox.soft_limit = conflation.start_above
            outbox.on_behind = self._fell_behind

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
        if member.address is not None:
            member.address.channels -= len(member.channels)
        for channel in member.channels:
            self.interest.remove(channel)
        member.channels.clear()
        self._leave_audience(member)
        if self.conflator is not None:
            self.conflator.leave(member)

    def subscribe(self, member: Member, channels: Iterable[Channel]) -> SubscribeResult:
        """Add channels, each on its own: what fits is taken, the rest refused one by one
        (as Massive answers per channel); never an exception."""
        result = SubscribeResult([], [])
        added = False
        held_capped: dict[str, int] = {}  # market -> capped contracts this member holds
        # Speed: while this many may surely be added, the global cap needs no exact check.
        headroom = [self.interest.headroom()]
        for channel in dict.fromkeys(channels):
            if channel in member.channels:
                result.accepted.append(channel)  # idempotent, as Massive acknowledges again
                continue
            refusal = self._refusal(member, channel, held_capped, headroom)
            if refusal is not None:
                result.refused.append((channel, refusal))
                continue
            member.channels.add(channel)
            self.subscriptions += 1
            if member.address is not None:
                member.address.channels += 1
            self.interest.add(channel)
            result.accepted.append(channel)
            added = True
        if added:
            self._move(member)
        return result

    def _refusal(
        self, member: Member, channel: Channel, held_capped: dict[str, int], headroom: list[int]
    ) -> str | None:
        """Why ``channel`` cannot be added for ``member``, or None."""
        market = channel.market
        if market not in self._index:
            return f"market {market!r} is not served by this relay"
        if len(member.channels) >= self.max_channels_per_client:
            return f"too many channels: at most {self.max_channels_per_client} per connection"
        address = member.address
        if address is not None and address.channels >= address.max_channels:
            return f"too many channels: at most {address.max_channels} from one address"
        remembered = self.interest.refusal(market, channel.name)
        if remembered is not None:
            return remembered
        capped = self.interest.capped_evs(market)
        if channel.ev in capped:
            if channel.is_wildcard:  # the parser knows the real-time feed's; this, the configured one's
                return (
                    f"{market} {channel.ev} accepts no wildcard on this feed, subscribe contracts one by one"
                )
            held = held_capped.get(market)
            if held is None:
                held = sum(1 for c in member.channels if c.market == market and c.ev in capped)
            if held >= self.max_contracts_per_client:
                return (
                    f"too many {market} contracts: at most {self.max_contracts_per_client} "
                    f"{'/'.join(sorted(capped))} per connection, a share of Massive's cap of "
                    f"{markets.OPTIONS_CONTRACT_CAP} for all clients"
                )
            refusal = self.interest.admit(market, [channel.name])
            if refusal is None:
                held_capped[market] = held + 1
                headroom[0] -= 1
            return refusal
        if headroom[0] > 0:
            headroom[0] -= 1
            return None
        return self.interest.admit(market, [channel.name])

    def unsubscribe(self, member: Member, channels: Iterable[Channel]) -> None:
        removed = [c for c in dict.fromkeys(channels) if c in member.channels]
        self.subscriptions -= len(removed)
        if member.address is not None:
            member.address.channels -= len(removed)
        for channel in removed:
            member.channels.discard(channel)
            self.interest.remove(channel)
        if removed:
            self._move(member)

    def _move(self, member: Member) -> None:
        """Put the member in the audience of its current channel set."""
        channels = frozenset(member.channels)
        tagged = member.tags_markets and any(markets.is_ambiguous(c.market) for c in channels)
        key = (channels, tagged)
        current = self._audience_of.get(member)
        if current is not None and current.channels == channels and current.tagged == tagged:
            return
        # Pending events belong to the members that were there when they were
        # routed: write them out before anyone leaves or joins, so a leaving
        # member loses nothing it was owed and a joining one gets nothing
        # twice (the last value it is sent already covers it).
        now = time.perf_counter()
        for touched in (current, self._audiences.get(key)):
            if touched is not None and touched.pending:
                self._write_audience(touched, now)
        if member.closed:
            return  # dropped as a slow consumer by that write
        self._leave_audience(member)
        audience = self._audiences.get(key)
        if audience is None:
            audience = self._audiences[key] = Audience(channels, tagged)
            self._index_audience(audience)
        if self.conflator is not None and self.conflator.is_conflating(member):
            if audience.conflating is None:
                audience.conflating = {}
            audience.conflating[member] = None
        else:
            audience.members[member] = None
        self._audience_of[member] = audience

    def _leave_audience(self, member: Member) -> None:
        audience = self._audience_of.pop(member, None)
        if audience is None:
            return
        if member in audience.members:
            del audience.members[member]
        elif audience.conflating is not None:
            del audience.conflating[member]
            if not audience.conflating:
                audience.conflating = None
        if not audience.members and audience.conflating is None:
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
        self, market: str, heads: Sequence[EventHead], raws: Sequence[RawEvent], arrival: float | None = None
    ) -> None:
        """Queue one upstream frame's events for the audiences that want them.

        ``raws`` are the events' bytes (``msgspec.Raw`` or ``bytes``), kept as
        they came; ``arrival`` is the frame's ``perf_counter()`` arrival.
        """
        if arrival is None:
            arrival = time.perf_counter()
        index = self._index[market]
        wildcard = index.wildcard
        exact = index.exact
        tagging = index.ambiguous
        dirty = self._dirty
        for head, raw in zip(heads, raws, strict=True):
            ev = head.ev
            if ev.__class__ is not str:
                continue
            ticker = head.sym
            if ticker.__class__ is not str:
                ticker = ticker_of(head)
            by_ticker = exact.get(ev)
            exact_targets = by_ticker.get(ticker) if by_ticker is not None and ticker is not None else None
            # An audience sits in at most one of the two lists (see _index_lists).
            for targets in (wildcard.get(ev), exact_targets):
                if targets is None:
                    continue
                for audience in targets:
                    pending = audience.pending
                    if not pending:
                        dirty.append(audience)
                        audience.first_arrival = arrival
                    pending.append(tag_market(raw, market) if tagging and audience.tagged else raw)
        self.events_routed += len(heads)

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
        # Writing may drop a slow consumer, whose close may empty an audience:
        # this pass works on its own list, and an emptied audience has nothing pending.
        self._dirty = kept
        for audience in dirty:
            if not audience.pending:
                continue  # the audience emptied since it was queued
            ready_at = audience.flushed_at + min_gap
            if ready_at > now + TIMER_SLACK:
                kept.append(audience)
                if due is None or ready_at < due:
                    due = ready_at
                continue
            self._write_audience(audience, now)
        return due

    def _write_audience(self, audience: Audience, now: float) -> None:
        events = audience.pending
        audience.pending = []
        audience.flushed_at = now
        self.latency.observe(now - audience.first_arrival)
        if audience.conflating is None:
            self.outbox.fan_out(audience.members, events, audience.market)
        else:  # members that fell behind: the one test per audience conflation costs a flush
            self._write_conflating(audience, events)

    # --- conflation (conflation.py) ----------------------------------------------
    def _write_conflating(self, audience: Audience, events: list[RawEvent]) -> None:
        if audience.members:
            self.outbox.fan_out(audience.members, events, audience.market)
        assert self.conflator is not None
        self.conflator.flush(audience, events)

    def _fell_behind(self, member: Member) -> None:
        """The outbox's ``on_behind``: ``member`` owes more than the soft limit."""
        audience = self._audience_of.get(member)
        if audience is not None and self.conflator is not None:
            self.conflator.start(member, audience)

    def sweep_conflation(self) -> None:
        """Conflating members of audiences with no events lately: their queue, or caught_up."""
        if self.conflator is not None:
            self.conflator.sweep(self._audience_of.get)

    def drained(self, member: Member) -> None:
        """The member's socket drained to its low-water mark (the shell's ``resume_writing``)."""
        if self.conflator is not None:
            self.conflator.drained(member, self._audience_of.get(member))

    # --- beyond the feed ---------------------------------------------------------
    def members_holding(self, channel: Channel) -> list[Member]:
        """Every member subscribed to exactly ``channel``."""
        return [
            member
            for audience in self._audiences.values()
            if channel in audience.channels
            for member in _everyone(audience)
        ]

    def members_on(self, market: str) -> list[Member]:
        """Every member subscribed to something of ``market`` (for outage statuses)."""
        return [
            member
            for audience in self._audiences.values()
            if any(c.market == market for c in audience.channels)
            for member in _everyone(audience)
        ]

    def audience_count(self) -> int:
        return len(self._audiences)


def _everyone(audience: Audience) -> list[Member]:
    """Plain and conflating members."""
    if audience.conflating is None:
        return list(audience.members)
    return [*audience.members, *audience.conflating]
