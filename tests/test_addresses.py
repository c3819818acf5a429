"""Budgets per client address: connections, channels over its connections, failed auths (no sockets)."""

from __future__ import annotations

from fastrelay.addresses import FREE_AUTH_FAILURES, MAX_LOCKOUT, AddressBook
from fastrelay.config import RelayConfig
from fastrelay.protocol import Channel
from fastrelay.session import ClientSession
from tests.sinks import make_core


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_address_book_believes_forwarded_only_from_trusted_peers() -> None:
    """The address rules alone: right-most untrusted hop from a trusted peer, else the peer."""
    book = AddressBook(1, trusted_proxies=["127.0.0.1", "10.0.0.2"])
    peer = ("127.0.0.1", 50000)
    assert book.client_address(peer, "203.0.113.7") == "203.0.113.7"
    assert book.client_address(peer, "1.1.1.1, 203.0.113.7, 10.0.0.2") == "203.0.113.7"
    assert book.client_address(peer, "10.0.0.2") == "127.0.0.1"  # only proxies: the peer
    assert book.client_address(peer, None) == "127.0.0.1"
    assert book.client_address(("192.0.2.5", 1), "203.0.113.7") == "192.0.2.5"  # untrusted peer
    assert book.client_address(None, "203.0.113.7") == "unknown"
    a = book.admit("a")
    assert a is not None and book.admit("a") is None and book.admit("b") is not None
    book.release(a)
    assert book.admit("a") is not None


def test_defaults_let_10000_connections_come_from_one_address() -> None:
    """Load tests and a local nginx connect from one address: the defaults must allow 10,000."""
    defaults = RelayConfig()
    assert defaults.max_connections >= 10_000
    assert defaults.max_connections_per_address >= 10_000
    assert defaults.trusted_proxies == [] and defaults.allowed_origins == []
    book = AddressBook(defaults.max_connections_per_address, defaults.trusted_proxies)
    states = [book.admit("127.0.0.1") for _ in range(10_000)]
    assert all(states)
    # ... and the limit is still a limit.
    while (state := book.admit("127.0.0.1")) is not None:
        states.append(state)
    assert len(states) == defaults.max_connections_per_address
    for state in states:
        assert state is not None
        book.release(state)
    assert book.connections("127.0.0.1") == 0 and book._states == {}  # nothing left behind


def test_channels_are_counted_over_every_connection_of_an_address() -> None:
    """Two connections from one address share its channel budget; another address has its own."""
    core = make_core(markets=("stocks",))
    book = AddressBook(10, [], max_channels=3)
    first, second, other = (book.admit(a) for a in ("1.2.3.4", "1.2.3.4", "5.6.7.8"))
    members = []
    for state in (first, second, other):
        m, _ = core.member()
        m.address = state
        members.append(m)
    ch = [Channel("stocks", "T", f"S{i}") for i in range(4)]
    assert core.hub.subscribe(members[0], ch[:2]).accepted == ch[:2]
    partly = core.hub.subscribe(members[1], ch[2:4])
    assert partly.accepted == ch[2:3]  # the address's third channel fits, its fourth does not
    assert partly.refused == [(ch[3], "too many channels: at most 3 from one address")]
    assert core.hub.subscribe(members[2], ch).accepted == ch[:3]  # another address: its own budget
    core.hub.unsubscribe(members[0], ch[:1])
    core.hub.detach(members[1])
    assert first is not None and first.channels == 1


def test_failed_auths_lock_the_address_out_with_a_growing_delay() -> None:
    """After the free failures each one doubles the lockout, capped; a success forgets them."""
    clock = Clock()
    book = AddressBook(10, [], clock=clock)
    for _ in range(FREE_AUTH_FAILURES - 1):
        book.auth_failed("a")
    assert book.locked_for("a") == 0.0
    book.auth_failed("a")
    assert book.locked_for("a") == 1.0
    book.auth_failed("a")
    assert book.locked_for("a") == 2.0
    for _ in range(20):
        book.auth_failed("a")
    assert book.locked_for("a") == MAX_LOCKOUT
    assert book.locked_for("b") == 0.0  # other addresses are not touched
    clock.now += MAX_LOCKOUT
    assert book.locked_for("a") == 0.0
    book.auth_succeeded("a")
    book.auth_failed("a")
    assert book.locked_for("a") == 0.0  # counting starts again


def test_a_locked_out_address_is_refused_without_checking_its_token() -> None:
    """Even the right token fails while the address is locked out: guessing gets nowhere."""
    core = make_core()
    book = AddressBook(10, [])
    state = book.admit("9.9.9.9")

    def session() -> ClientSession:
        m, _ = core.member()
        m.address = state
        return ClientSession(core.context(tokens=["right-token-0123456789"]), m, "stocks")

    for _ in range(FREE_AUTH_FAILURES):
        reply = session().receive(b'{"action":"auth","params":"guess"}')
        assert reply.close is not None
    locked = session().receive(b'{"action":"auth","params":"right-token-0123456789"}')
    assert locked.close is not None and b"too many failed attempts" in locked.frames[0]
