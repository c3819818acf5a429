"""Upstream interest: reference counts, linger, wildcard cover, the contract cap."""

from __future__ import annotations

import pytest

from fastrelay.interest import CapReached, Demand, MarketInterest
from fastrelay.protocol import Channel


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_first_subscriber_subscribes_and_last_unsubscribes_after_linger(clock: FakeClock) -> None:
    """Ref-counted: one upstream subscribe for many clients; unsubscribe only after the linger."""
    interest = MarketInterest("stocks", linger=5.0, clock=clock)
    assert interest.add("T.AAPL") is True
    assert interest.add("T.AAPL") is False
    plan = interest.plan()
    assert (plan.subscribe, plan.unsubscribe) == (["T.AAPL"], [])
    interest.remove("T.AAPL")
    assert not interest.plan()  # one client left
    interest.remove("T.AAPL")
    assert not interest.plan()  # lingering
    assert interest.next_expiry() == 5.0
    clock.now = 5.0
    assert interest.plan().unsubscribe == ["T.AAPL"]
    assert interest.subscribed_upstream == frozenset()


def test_resubscribe_within_linger_sends_nothing(clock: FakeClock) -> None:
    """A page reload (leave then come back within the linger) does not churn the upstream."""
    interest = MarketInterest("stocks", linger=5.0, clock=clock)
    interest.add("Q.MSFT")
    interest.plan()
    interest.remove("Q.MSFT")
    clock.now = 2.0
    interest.add("Q.MSFT")
    clock.now = 10.0
    assert not interest.plan()
    assert interest.refcount("Q.MSFT") == 1


def test_wildcard_covers_per_ticker_channels(clock: FakeClock) -> None:
    """T.* covers T.AAPL: the specific channel leaves the upstream while the wildcard is on."""
    interest = MarketInterest("stocks", linger=0.0, clock=clock)
    interest.add("T.AAPL")
    interest.add("Q.AAPL")
    assert interest.plan().subscribe == ["Q.AAPL", "T.AAPL"]
    interest.add("T.*")
    plan = interest.plan()
    assert (plan.subscribe, plan.unsubscribe) == (["T.*"], ["T.AAPL"])
    interest.remove("T.*")
    plan = interest.plan()
    assert (plan.subscribe, plan.unsubscribe) == (["T.AAPL"], ["T.*"])


def test_resubscribe_all_is_the_whole_wanted_set(clock: FakeClock) -> None:
    """After a reconnect the full set goes up in one list, lingering channels included."""
    interest = MarketInterest("stocks", linger=5.0, clock=clock)
    for name in ("T.AAPL", "Q.MSFT", "AM.*"):
        interest.add(name)
    interest.plan()
    interest.remove("Q.MSFT")
    assert interest.resubscribe_all() == ["AM.*", "Q.MSFT", "T.AAPL"]
    assert not interest.plan()


def test_options_quote_cap_applies_to_the_union_of_clients(clock: FakeClock) -> None:
    """The 1,000-contract cap counts distinct contracts over all clients; shared ones are free."""
    interest = MarketInterest("options", linger=5.0, clock=clock, contract_cap=3)
    for name in ("Q.O:A", "Q.O:B", "Q.O:C"):
        interest.check_cap([name])
        interest.add(name)
    interest.check_cap(["Q.O:A", "T.O:D"])  # already subscribed / not capped
    with pytest.raises(CapReached, match="cap of 3 contracts"):
        interest.check_cap(["Q.O:D"])
    # A lingering contract does not block a new one: it is evicted first.
    interest.remove("Q.O:A")
    interest.check_cap(["Q.O:D"])
    interest.add("Q.O:D")
    assert "Q.O:A" not in interest.wanted()
    assert len([n for n in interest.wanted() if n.startswith("Q.")]) == 3


def test_refcounts_never_go_negative(clock: FakeClock) -> None:
    """Removing more than was added is ignored, not a negative count."""
    interest = MarketInterest("stocks", linger=0.0, clock=clock)
    interest.remove("T.AAPL")
    interest.add("T.AAPL")
    interest.remove("T.AAPL")
    interest.remove("T.AAPL")
    assert interest.refcount("T.AAPL") == 0
    assert interest.wanted() == set()


def test_a_refused_channel_is_dropped_at_once_and_refused_for_a_while(clock: FakeClock) -> None:
    """Massive refused Q.AAPL: no linger keeps it (nor its cap slot), the next plan
    unsubscribes it, and admitting it again gives Massive's message until the memory runs out."""
    demand = Demand(["stocks"], linger=5.0, clock=clock)
    q_aapl = Channel("stocks", "Q", "AAPL")
    demand.add(q_aapl)
    assert demand.plans()["stocks"].subscribe == ["Q.AAPL"]
    demand.remove(q_aapl)  # the holders let go: lingering
    demand.refuse(q_aapl, "not authorized", for_seconds=60.0)
    assert demand["stocks"].held_count == 0
    assert demand.plans()["stocks"].unsubscribe == ["Q.AAPL"]
    assert demand.refusal("stocks", "Q.AAPL") == "not authorized"
    assert demand.admit("stocks", ["T.AAPL", "Q.AAPL"]) == "not authorized"
    assert demand.refusal("stocks", "T.AAPL") is None
    clock.now = 60.0
    assert demand.refusal("stocks", "Q.AAPL") is None
    assert demand.admit("stocks", ["Q.AAPL"]) is None


def test_a_refused_wildcard_uncovers_nothing_it_never_had(clock: FakeClock) -> None:
    """Q.* refused while Q.AAPL is held: Q.AAPL goes upstream on its own again."""
    demand = Demand(["stocks"], linger=0.0, clock=clock)
    demand.add(Channel("stocks", "Q", "AAPL"))
    demand.add(Channel("stocks", "Q", "*"))
    assert demand.plans()["stocks"].subscribe == ["Q.*"]
    demand.refuse(Channel("stocks", "Q", "*"), "not authorized", for_seconds=60.0)
    plan = demand.plans()["stocks"]
    assert (plan.subscribe, plan.unsubscribe) == (["Q.AAPL"], ["Q.*"])
