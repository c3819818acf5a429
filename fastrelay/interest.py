"""Which channels the relay wants from one upstream market; pure.

Theory of operation
-------------------
Clients subscribe and unsubscribe channels; the upstream connection must carry
the union of what they want, and nothing more for long. ``MarketInterest``
counts references per channel name (``T.AAPL``, ``T.*``):

* the first reference makes a channel wanted;
* the last reference leaving starts a *linger* (a page reload must not churn
  the upstream): the channel stays wanted until the linger expires, unless a
  reference comes back first;
* an ``EV.*`` channel covers every ``EV.TICKER`` of the same ev, so covered
  channels are not subscribed upstream separately (nor would Massive need
  them, and both at once could deliver an event twice);
* ``plan()`` diffs the wanted set with what is subscribed upstream and
  returns one subscribe and one unsubscribe list, so all changes of one pass
  of the event loop go upstream as one message per direction.

Massive caps options quotes and FMV at 1,000 contracts per connection with no
wildcard; the relay's single upstream connection carries every client's
contracts, so the cap applies to their union (``CapReached``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from fastrelay import markets
from fastrelay.protocol import Channel


class CapReached(ValueError):
    """Subscribing would pass Massive's per-connection contract cap."""


@dataclass
class Plan:
    """Upstream changes: subscribe first, then unsubscribe (no gap)."""

    subscribe: list[str] = field(default_factory=list)
    unsubscribe: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.subscribe or self.unsubscribe)


def _ev(name: str) -> str:
    return name.partition(".")[0]


class MarketInterest:
    def __init__(
        self,
        market: str,
        linger: float,
        clock: Callable[[], float],
        contract_cap: int = markets.OPTIONS_CONTRACT_CAP,
    ) -> None:
        self.market = market
        self.linger = linger
        self._clock = clock
        self._capped_evs = markets.capped_evs(market)
        self._contract_cap = contract_cap
        self._refs: dict[str, int] = {}
        self._lingering: dict[str, float] = {}  # name -> expiry (clock time)
        self._upstream: set[str] = set()  # what the upstream has been told
        self._capped: set[str] = set()  # capped channels wanted or lingering

    # --- references ---------------------------------------------------------
    def add(self, name: str) -> bool:
        """One more client wants ``name``. True when the channel is new to the relay."""
        count = self._refs.get(name, 0)
        if count:
            self._refs[name] = count + 1
            return False
        if name not in self._lingering and _ev(name) in self._capped_evs:
            self._make_room_for_capped()
            self._capped.add(name)
        self._lingering.pop(name, None)
        self._refs[name] = 1
        return True

    def check_cap(self, names: list[str]) -> None:
        """Raise ``CapReached`` if adding these names would pass the cap."""
        if not self._capped_evs:
            return
        new = {n for n in names if _ev(n) in self._capped_evs and n not in self._refs}
        live = sum(1 for n in self._capped if n in self._refs)
        if new and live + len(new) > self._contract_cap:
            raise CapReached(
                f"{self.market} {'/'.join(sorted(self._capped_evs))} cap of {self._contract_cap} "
                f"contracts per upstream connection reached ({live} in use by all clients)"
            )

    def remove(self, name: str) -> bool:
        """One client no longer wants ``name``; the last one starts the linger.

        True when that was the last reference.
        """
        count = self._refs.get(name, 0)
        if count > 1:
            self._refs[name] = count - 1
            return False
        if count == 1:
            del self._refs[name]
            if self.linger > 0:
                self._lingering[name] = self._clock() + self.linger
            else:
                self._capped.discard(name)
            return True
        return False

    def _make_room_for_capped(self) -> None:
        """At the cap, drop the lingering capped channel that expires first."""
        if len(self._capped) < self._contract_cap:
            return
        lingering = [(expiry, n) for n, expiry in self._lingering.items() if n in self._capped]
        if lingering:
            _, name = min(lingering)
            del self._lingering[name]
            self._capped.discard(name)

    # --- what goes upstream ---------------------------------------------------
    def refcount(self, name: str) -> int:
        return self._refs.get(name, 0)

    def wanted(self) -> set[str]:
        """The minimal channel set that serves every client and every linger."""
        self._expire()
        names = self._refs.keys() | self._lingering.keys()
        wildcard_evs = {_ev(n) for n in names if n.endswith(".*")}
        if not wildcard_evs:
            return set(names)
        return {n for n in names if n.endswith(".*") or _ev(n) not in wildcard_evs}

    def plan(self) -> Plan:
        """The changes that bring the upstream to ``wanted()``; records them as done."""
        target = self.wanted()
        plan = Plan(sorted(target - self._upstream), sorted(self._upstream - target))
        self._upstream = target
        return plan

    def resubscribe_all(self) -> list[str]:
        """After a reconnect: the whole wanted set, to send in one message."""
        self._upstream = self.wanted()
        return sorted(self._upstream)

    @property
    def subscribed_upstream(self) -> frozenset[str]:
        return frozenset(self._upstream)

    def next_expiry(self) -> float | None:
        return min(self._lingering.values(), default=None)

    def _expire(self) -> None:
        if not self._lingering:
            return
        now = self._clock()
        for name in [n for n, expiry in self._lingering.items() if expiry <= now]:
            del self._lingering[name]
            self._capped.discard(name)


def _nothing(channel: Channel) -> None:
    pass


class Demand:
    """What every market's upstream should carry: the relay's interest bookkeeping.

    The hub reports each reference a member takes or drops (``add``,
    ``remove``), a scale-out ingest each edge's; the counts live in one
    ``MarketInterest`` per market. The first reference of a channel and its
    last one are passed on (``on_first``, ``on_last``: the cache starts and
    stops keeping its candles), and any change wakes ``on_changed`` (the relay
    syncs the upstreams at the end of the loop pass). ``plans()`` then gives,
    per market changed since the last call, what to subscribe and unsubscribe.
    """

    def __init__(
        self,
        markets_served: Iterable[str],
        linger: float,
        clock: Callable[[], float],
        on_first: Callable[[Channel], None] = _nothing,
        on_last: Callable[[Channel], None] = _nothing,
        on_changed: Callable[[], None] = lambda: None,
        contract_cap: int = markets.OPTIONS_CONTRACT_CAP,
    ) -> None:
        self.markets = {m: MarketInterest(m, linger, clock, contract_cap) for m in markets_served}
        self._on_first = on_first
        self._on_last = on_last
        self._on_changed = on_changed
        self._changed: set[str] = set()

    def __getitem__(self, market: str) -> MarketInterest:
        return self.markets[market]

    def admit(self, market: str, names: list[str]) -> str | None:
        """Why these channels cannot be added (the contract cap), or None."""
        try:
            self.markets[market].check_cap(names)
        except CapReached as exc:
            return str(exc)
        return None

    def add(self, channel: Channel) -> None:
        if self.markets[channel.market].add(channel.name):
            self._on_first(channel)
        self._mark(channel.market)

    def remove(self, channel: Channel) -> None:
        if self.markets[channel.market].remove(channel.name):
            self._on_last(channel)
        self._mark(channel.market)

    def _mark(self, market: str) -> None:
        self._changed.add(market)
        self._on_changed()

    def plans(self) -> dict[str, Plan]:
        """Per market changed since the last call: the upstream changes to make (recorded as done)."""
        changed, self._changed = self._changed, set()
        plans = {}
        for market in changed:
            plan = self.markets[market].plan()
            if plan:
                plans[market] = plan
        return plans

    def lingering_expired(self) -> None:
        """A linger may have run out in any market: look at all of them at the next ``plans``."""
        self._changed.update(self.markets)

    def next_expiry(self) -> float | None:
        return min((e for i in self.markets.values() if (e := i.next_expiry()) is not None), default=None)
