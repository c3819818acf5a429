"""Conflation: a client that fell behind gets every trade and the latest of each state; pure.

Theory of operation
-------------------
A client whose unsent backlog passes ``--conflate-above`` (the soft limit),
on a connection where conflation is on (``--conflate-paths``, or
``?conflate=1``), is not dropped: the hub moves it out of its audience's plain
member set (``Audience.members``, the hot fan-out) into the audience's
``conflating`` set, which the hub looks at once per audience flush. From then
on its events wait here, in one ``Conflation`` per client:

* a *state* event (a quote, an aggregate, a value: ``STATE_EVS``, the evs that
  also get a last value on subscribe) replaces the one of the same channel still
  waiting: the older one is dropped as superseded, the newer one takes its
  place at the end of the queue;
* every other event (trades: prints, not states) is kept.

What the client receives is therefore always a subsequence of what it would
have received: nothing is reordered, an event is left out only when a later
event of the same state channel is sent after it, and the last event of every
channel is never left out. The hypothesis state machine in
``tests/test_conflation.py`` checks exactly that.

When it is sent: while the socket holds more than ``hold_above`` unsent bytes
(the transport's high-water mark) the queue waits; the transport calls
``resume_writing`` when its buffer drains to the low-water mark (the server
shell sets both, ``ClientConnection.resume_writing`` -> ``Hub.drained``), and
every audience flush that finds the socket under the mark writes the queue at
once. A conflating client's data is therefore at most about ``hold_above``
bytes plus one batch behind, instead of the megabytes of a full backlog.

Caught up: a client that went ``quiet`` seconds without anything held back
received every event in that time (nothing could be superseded) with at most
``hold_above`` bytes unsent: its link carries the full stream again, and it
rejoins the plain member set; on a quiet feed no flush comes, and the relay's
once-a-second ``sweep`` does the same. To fall behind again it must owe
``--conflate-above`` once more, far above ``hold_above``: the two statuses
(``conflating``, ``caught_up``) cannot alternate faster than that hysteresis
allows. A client still owing more than ``--max-client-buffer`` (socket plus
queue: trades alone can outrun a link) is dropped with ``slow_consumer`` and
1013, as without conflation.

Conflation costs the relay loop time per event and per conflating client (a
client that keeps up costs one write per audience flush instead), so it is a
courtesy within the client's own budget: the time spent on a client's queue
(its share of the flush's decode, the queue, its writes) is charged to its
loop-time budget (``Connection.charge_loop_time``, ``budget.ClientBudget``),
and a client over it is dropped with ``slow_consumer`` and 1013 like one over
the hard limit. A slow link costs about 1 us per event of its subscription (10
ms/s on the 10,000 events/s of bench ``slow-link``, a fifth of the default); what the
budget stops is a client that subscribes to everything and reads slowly on
purpose, to make the relay do per-event work for it.

The fast path does not see any of it: a client that keeps up never passes the
soft limit, and the hub's only addition to a flush is one attribute test per
audience (``bench/micro``: ``test_fan_out_keeping_up``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import msgspec

from fastrelay import markets, protocol
from fastrelay.events import RawEvent
from fastrelay.member import Member

# Every ev that is a state in a market that has it (the latest replaces the previous).
# An audience's pending events carry no market (only futures events on /api/socket
# are tagged), so the set is market-free: tests/test_conflation.py checks that no ev
# is a state in one market and a print in another.
STATE_EVS: Final = frozenset().union(*markets.STATE_EVS.values(), markets.state_evs("futures"))

# The transport's write-buffer marks while conflation is on (uvloop's defaults, set
# explicitly): events are held while more than HOLD_ABOVE bytes are unsent, and the
# queue goes out when the buffer drains to RESUME_AT (``resume_writing``). 64 KiB is
# a fraction of a second on any link that can carry a browser's share of the feed.
HOLD_ABOVE: Final = 64 * 1024
RESUME_AT: Final = 16 * 1024
# Seconds without anything held back before a conflating client counts as caught up.
CATCH_UP_QUIET: Final = 2.0

CONFLATING_FRAME: Final = protocol.status_frame(
    protocol.CONFLATING,
    "behind: quotes, aggregates and values are sent as their latest only, trades all, until caught up",
)
CAUGHT_UP_FRAME: Final = protocol.status_frame(protocol.CAUGHT_UP, "caught up: every event is sent again")


class _Identity(msgspec.Struct, gc=False):
    """What tells an event's channel: ev, ticker (wherever its market puts it), market tag."""

    ev: Any = None
    market: Any = None  # /api/socket's tag on futures events (framing.tag_market)
    sym: Any = None
    pair: Any = None
    T: Any = None
    p: Any = None


_identities: Final = msgspec.json.Decoder(list[_Identity])

# A state event's channel: (market tag or None, ev, ticker).
StateKey = tuple[Any, str, str]


def state_keys(events: Sequence[RawEvent]) -> list[StateKey | None]:
    """Per event, its state channel, or None for a print (always kept); one decode for all.

    Decoded only when an audience has conflating members, once for all of them.
    The ticker is looked up as ``events.ticker_of`` does (``sym``, ``pair``, ``T``, ``p``).
    """
    try:
        found = _identities.decode(b"[" + b",".join(events) + b"]")
    except (msgspec.DecodeError, msgspec.ValidationError):
        return [None] * len(events)  # undecodable: keep everything, drop nothing
    keys: list[StateKey | None] = []
    for identity in found:
        ev = identity.ev
        ticker = None
        if ev.__class__ is str and ev in STATE_EVS:
            for value in (identity.sym, identity.pair, identity.T, identity.p):
                if value.__class__ is str:
                    ticker = value
                    break
        keys.append(None if ticker is None else (identity.market, ev, ticker))
    return keys


class Conflation:
    """One client's queue while it is behind: trades all, each state channel's latest."""

    __slots__ = ("_serial", "held_at", "pending", "pending_bytes")

    def __init__(self, now: float) -> None:
        # Insertion order is send order. Prints get int keys, never equal to a StateKey.
        self.pending: dict[Hashable, RawEvent] = {}
        self.pending_bytes = 0
        self.held_at = now  # the last time events had to wait (the socket over HOLD_ABOVE)
        self._serial = 0

    def add(self, events: Sequence[RawEvent], keys: Sequence[StateKey | None]) -> int:
        """Queue events in order; returns how many waiting ones they superseded."""
        pending = self.pending
        size = self.pending_bytes
        superseded = 0
        serial = self._serial
        for event, key in zip(events, keys, strict=True):
            slot: Hashable
            if key is None:
                slot = serial
                serial += 1
            else:
                slot = key
                older = pending.pop(key, None)  # the newer one goes to the end: order kept
                if older is not None:
                    superseded += 1
                    size -= len(older)
            pending[slot] = event
            size += len(event)
        self._serial = serial
        self.pending_bytes = size
        return superseded

    def take(self) -> list[RawEvent]:
        """Everything waiting, in order, and an empty queue."""
        events = list(self.pending.values())
        self.pending.clear()
        self.pending_bytes = 0
        return events


@dataclass
class ConflationStatistics:
    conflating: int = 0  # clients conflating now
    episodes: int = 0  # times a client started conflating
    caught_up: int = 0  # times a client caught up and left conflation
    superseded: int = 0  # events not sent: a later event of their state channel replaced them
    over_budget: int = 0  # clients dropped: their conflated stream cost more loop time than their budget


@dataclass(frozen=True)
class ConflationPolicy:
    """The thresholds (bytes unsent on one client's socket) and the catch-up time."""

    start_above: int  # --conflate-above: over this a write starts conflation
    hard_limit: int  # --max-client-buffer: socket plus queue over this: slow_consumer
    hold_above: int = HOLD_ABOVE  # the transport's high-water mark
    resume_at: int = RESUME_AT  # its low-water mark
    quiet: float = CATCH_UP_QUIET

    @classmethod
    def of(cls, start_above: int, hard_limit: int) -> ConflationPolicy:
        """The marks for these limits: at most half the soft limit, so that falling behind
        again takes owing far more than a conflating client is let owe."""
        hold = min(HOLD_ABOVE, max(1, start_above // 2))
        return cls(start_above, hard_limit, hold, min(RESUME_AT, hold // 4))


class Group(Protocol):
    """An audience as conflation sees it: plain members and conflating ones."""

    members: dict[Member, None]
    conflating: dict[Member, None] | None


class Writer(Protocol):
    """The outbox's part: what to write, and the slow-consumer drop."""

    def send(self, member: Member, payloads: Sequence[bytes]) -> None: ...

    def send_events(self, member: Member, events: list[RawEvent]) -> None: ...

    def drop_slow_consumer(self, member: Member, why: str = "") -> None: ...


class Conflator:
    """Every conflating client: moves them between a group's two sets, holds and sends."""

    def __init__(self, writer: Writer, policy: ConflationPolicy, clock: Callable[[], float]) -> None:
        self._writer = writer
        self.policy = policy
        self._clock = clock
        self._states: dict[Member, Conflation] = {}
        self.stats = ConflationStatistics()

    def is_conflating(self, member: Member) -> bool:
        return member in self._states

    def start(self, member: Member, group: Group) -> None:
        """``member`` owes more than the soft limit: from now on it is sent the conflated stream."""
        if member in self._states or member.closed:
            return
        del group.members[member]
        if group.conflating is None:
            group.conflating = {}
        group.conflating[member] = None
        self._states[member] = Conflation(self._clock())
        self.stats.conflating += 1
        self.stats.episodes += 1
        # Behind what it owes already: it reads this just before the conflated events.
        self._writer.send(member, [CONFLATING_FRAME])

    def leave(self, member: Member) -> None:
        """The member is detached (closed): forget its queue."""
        if self._states.pop(member, None) is not None:
            self.stats.conflating -= 1

    def flush(self, group: Group, events: Sequence[RawEvent]) -> None:
        """An audience's events for its conflating members (after its plain members had them)."""
        conflating = group.conflating
        if not conflating or not events:
            return
        clock = self._clock
        began = clock()
        keys = state_keys(events)
        now = clock()
        decode_share = (now - began) / len(conflating)  # one decode for all: each pays its part
        # A copy: a drop detaches the member, a catch-up moves it back to the plain set.
        for member in list(conflating):
            state = self._states[member]
            self.stats.superseded += state.add(events, keys)
            self._send(member, state, group, now)
            done = clock()
            self._charge(member, decode_share + done - now)
            now = done

    def drained(self, member: Member, group: Group | None) -> None:
        """The member's socket drained to the low-water mark: its queue goes out."""
        state = self._states.get(member)
        if state is not None and group is not None and not member.closed:
            self._send_charged(member, state, group)

    def sweep(self, group_of: Callable[[Member], Group | None]) -> None:
        """Called about once a second (the relay's timer): a conflating client whose feed went
        quiet gets no flush that would send its queue or say ``caught_up``; this does both."""
        if not self._states:
            return
        for member, state in list(self._states.items()):  # a catch-up or a drop changes the dict
            group = group_of(member)
            if group is not None and not member.closed and member in self._states:
                self._send_charged(member, state, group)

    def _send_charged(self, member: Member, state: Conflation, group: Group) -> None:
        began = self._clock()
        self._send(member, state, group, began)
        self._charge(member, self._clock() - began)

    def _charge(self, member: Member, seconds: float) -> None:
        """The loop time spent on ``member``'s conflated stream, out of its own budget."""
        if member.closed or member.owner.charge_loop_time(seconds):
            return
        self.stats.over_budget += 1
        self._writer.drop_slow_consumer(member, "its conflated stream costs more loop time than its budget")

    def _send(self, member: Member, state: Conflation, group: Group, now: float) -> None:
        backlog = member.buffered()
        if backlog > self.policy.hold_above:
            state.held_at = now  # the transport pauses over the mark: resume_writing calls back
            if backlog + state.pending_bytes > self.policy.hard_limit:
                self._writer.drop_slow_consumer(member)  # even the conflated stream outruns it
            return
        if state.pending:
            self._writer.send_events(member, state.take())
            if member.closed:
                return
        if now - state.held_at >= self.policy.quiet:
            self._caught_up(member, group)

    def _caught_up(self, member: Member, group: Group) -> None:
        del self._states[member]
        self.stats.conflating -= 1
        self.stats.caught_up += 1
        conflating = group.conflating
        assert conflating is not None
        del conflating[member]
        if not conflating:
            group.conflating = None
        self._writer.send(member, [CAUGHT_UP_FRAME])
        group.members[member] = None

    def members(self) -> Collection[Member]:
        return self._states.keys()
