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

import heapq
from collections.abc import Callable, Iterable, Mapping
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
    """Reference counts, lingers and the upstream set of one market.

    ``plan()`` costs in proportion to what changed since the last plan, not to
    everything held: each change marks the names it touches (a wildcard
    coming or going touches every name of its ev), and only those are looked
    at again. Lingers expire from a heap. A relay holding 100,000 channels
    pays microseconds for a pass in which a few clients come and go
    (``bench/micro/test_interest.py``).
    """

    def __init__(
        self,
        market: str,
        linger: float,
        clock: Callable[[], float],
        contract_cap: int = markets.OPTIONS_CONTRACT_CAP,
        capped_evs: frozenset[str] | None = None,
    ) -> None:
        self.market = market
        self.linger = linger
        self._clock = clock
        self.capped_evs = markets.capped_evs(market) if capped_evs is None else capped_evs
        self._contract_cap = contract_cap
        self._refs: dict[str, int] = {}
        self._lingering: dict[str, float] = {}  # name -> expiry (clock time)
        self._expiries: list[tuple[float, str]] = []  # heap; entries of re-referenced names are stale
        self._upstream: set[str] = set()  # what the upstream has been told
        self._capped: set[str] = set()  # capped channels wanted or lingering
        self._wildcards: dict[str, int] = {}  # ev -> 1 while EV.* is referenced or lingering
        self._by_ev: dict[str, set[str]] = {}  # ev -> names present (or still upstream)
        self._changed: set[str] = set()  # names to look at in the next plan

    # --- references ---------------------------------------------------------
    def add(self, name: str) -> bool:
        """One more client wants ``name``. True when the channel is new to the relay."""
        count = self._refs.get(name, 0)
        if count:
            self._refs[name] = count + 1
            return False
        lingered = self._lingering.pop(name, None) is not None
        if not lingered and _ev(name) in self.capped_evs:
            self._make_room_for_capped()
            self._capped.add(name)
        self._refs[name] = 1
        if not lingered:
            self._appeared(name)
        return True

    def check_cap(self, names: list[str]) -> None:
        """Raise ``CapReached`` if adding these names would pass the cap."""
        if not self.capped_evs:
            return
        new = {n for n in names if _ev(n) in self.capped_evs and n not in self._refs}
        live = sum(1 for n in self._capped if n in self._refs)
        if new and live + len(new) > self._contract_cap:
            raise CapReached(
                f"{self.market} {'/'.join(sorted(self.capped_evs))} cap of {self._contract_cap} "
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
                expiry = self._clock() + self.linger
                self._lingering[name] = expiry
                heapq.heappush(self._expiries, (expiry, name))
            else:
                self._capped.discard(name)
                self._vanished(name)
            return True
        return False

    def drop(self, name: str) -> None:
        """Forget ``name`` at once: every reference and its linger (Massive refused it)."""
        self._refs.pop(name, None)
        present = self._lingering.pop(name, None) is not None
        self._capped.discard(name)
        if present or name in self._by_ev.get(_ev(name), ()):
            self._vanished(name)

    def _make_room_for_capped(self) -> None:
        """At the cap, drop the lingering capped channel that expires first."""
        if len(self._capped) < self._contract_cap:
            return
        lingering = [(self._lingering[n], n) for n in self._capped if n in self._lingering]
        if lingering:
            _, name = min(lingering)
            del self._lingering[name]
            self._capped.discard(name)
            self._vanished(name)

    def _appeared(self, name: str) -> None:
        """``name`` is now referenced or lingering (it was neither)."""
        ev = _ev(name)
        self._by_ev.setdefault(ev, set()).add(name)
        if name.endswith(".*"):
            self._wildcards[ev] = 1
            self._changed.update(self._by_ev[ev])  # the cover of every name of this ev changes
        self._changed.add(name)

    def _vanished(self, name: str) -> None:
        """``name`` is neither referenced nor lingering any more."""
        ev = _ev(name)
        if name.endswith(".*"):
            self._wildcards.pop(ev, None)
            self._changed.update(self._by_ev.get(ev, ()))
        self._changed.add(name)

    # --- what goes upstream ---------------------------------------------------
    def refcount(self, name: str) -> int:
        return self._refs.get(name, 0)

    def _present(self, name: str) -> bool:
        return name in self._refs or name in self._lingering

    def is_wanted(self, name: str) -> bool:
        """Upstream should carry ``name``: held or lingering, and not covered by ``EV.*``."""
        return self._present(name) and (name.endswith(".*") or _ev(name) not in self._wildcards)

    def wanted(self) -> set[str]:
        """The minimal channel set that serves every client and every linger (the whole of it)."""
        self._expire()
        return {n for n in (*self._refs, *self._lingering) if self.is_wanted(n)}

    def plan(self) -> Plan:
        """The changes that bring the upstream to ``wanted()``; records them as done."""
        self._expire()
        changed, self._changed = self._changed, set()
        plan = Plan()
        for name in changed:
            wanted = self.is_wanted(name)
            if wanted and name not in self._upstream:
                self._upstream.add(name)
                plan.subscribe.append(name)
            elif not wanted and name in self._upstream:
                self._upstream.discard(name)
                plan.unsubscribe.append(name)
            if not wanted and not self._present(name):
                names = self._by_ev.get(_ev(name))
                if names is not None:
                    names.discard(name)
                    if not names:
                        del self._by_ev[_ev(name)]
        plan.subscribe.sort()
        plan.unsubscribe.sort()
        return plan

    def resubscribe_all(self) -> list[str]:
        """After a reconnect: the whole wanted set, to send in one message."""
        self.plan()
        return sorted(self._upstream)

    @property
    def subscribed_upstream(self) -> frozenset[str]:
        return frozenset(self._upstream)

    @property
    def upstream_count(self) -> int:
        return len(self._upstream)

    @property
    def held_count(self) -> int:
        """Channels referenced or lingering: what the global channel cap counts."""
        return len(self._refs) + len(self._lingering)

    def next_expiry(self) -> float | None:
        expiries = self._expiries
        while expiries and self._lingering.get(expiries[0][1]) != expiries[0][0]:
            heapq.heappop(expiries)  # stale: re-referenced or given up since
        return expiries[0][0] if expiries else None

    def _expire(self) -> None:
        expiries = self._expiries
        if not expiries:
            return
        now = self._clock()
        while expiries and expiries[0][0] <= now:
            expiry, name = heapq.heappop(expiries)
            if self._lingering.get(name) == expiry:
                del self._lingering[name]
                self._capped.discard(name)
                self._vanished(name)


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
        max_channels: int = 1 << 62,
        capped_evs: Mapping[str, frozenset[str]] | None = None,
    ) -> None:
        # capped_evs: per market, the evs its feed caps (markets.capped_evs); default socket's.
        capped = capped_evs or {}
        self.markets = {
            m: MarketInterest(m, linger, clock, contract_cap, capped.get(m)) for m in markets_served
        }
        # Channels held upstream over every market (referenced or lingering): junk
        # subscriptions must not grow the upstream and the relay's memory without bound.
        self.max_channels = max_channels
        self._on_first = on_first
        self._on_last = on_last
        self._on_changed = on_changed
        self._changed: set[str] = set()
        self._clock = clock
        # (market, name) -> (Massive's refusal, until): refused at once, not asked again, for a while.
        self._refused: dict[tuple[str, str], tuple[str, float]] = {}

    def __getitem__(self, market: str) -> MarketInterest:
        return self.markets[market]

    def capped_evs(self, market: str) -> frozenset[str]:
        """The evs ``market``'s feed caps per connection (no wildcard, the contract cap)."""
        return self.markets[market].capped_evs

    def is_wanted(self, channel: Channel) -> bool:
        """The upstream should still carry ``channel`` (held or lingering, not covered)."""
        return self.markets[channel.market].is_wanted(channel.name)

    def headroom(self) -> int:
        """Channels that may still be added before the relay's cap (a lower bound: a name
        already held costs nothing)."""
        return self.max_channels - sum(i.held_count for i in self.markets.values())

    def admit(self, market: str, names: list[str]) -> str | None:
        """Why these channels cannot be added (the relay's channel cap, the contract cap), or None."""
        interest = self.markets[market]
        if self._refused:
            for name in names:
                refusal = self.refusal(market, name)
                if refusal is not None:
                    return refusal
        new = sum(1 for n in names if not interest.refcount(n))
        held = sum(i.held_count for i in self.markets.values())
        if new and held + new > self.max_channels:
            return (
                f"the relay's cap of {self.max_channels} upstream channels is reached: "
                "subscribe fewer channels or a wildcard"
            )
        try:
            interest.check_cap(names)
        except CapReached as exc:
            return str(exc)
        return None

    def add(self, channel: Channel) -> None:
        if self.markets[channel.market].add(channel.name):
            self._on_first(channel)
        if channel.market not in self._changed:
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

    def refusal(self, market: str, name: str) -> str | None:
        """Massive's message if it refused this channel lately, else None."""
        if not self._refused:
            return None
        refused = self._refused.get((market, name))
        if refused is None:
            return None
        if refused[1] > self._clock():
            return refused[0]
        del self._refused[(market, name)]
        return None

    def refusals(self) -> dict[str, dict[str, str]]:
        """Every refusal still remembered: market -> channel name -> Massive's message."""
        now = self._clock()
        remembered: dict[str, dict[str, str]] = {}
        for (market, name), (message, until) in list(self._refused.items()):
            if until <= now:
                del self._refused[(market, name)]
            else:
                remembered.setdefault(market, {})[name] = message
        return remembered

    def refuse(self, channel: Channel, message: str, for_seconds: float) -> None:
        """Massive refused ``channel``: stop holding it now (no linger: it may hold a cap), and
        refuse it at once, with Massive's message, for a while."""
        self.markets[channel.market].drop(channel.name)
        self._mark(channel.market)
        self._refused[(channel.market, channel.name)] = (message, self._clock() + for_seconds)
        if len(self._refused) > 10_000:  # junk from many clients stays bounded
            self._refused.pop(next(iter(self._refused)))

    def lingering_expired(self) -> None:
        """A linger may have run out in any market: look at all of them at the next ``plans``."""
        self._changed.update(self.markets)

    def next_expiry(self) -> float | None:
        return min((e for i in self.markets.values() if (e := i.next_expiry()) is not None), default=None)
