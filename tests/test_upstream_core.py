"""The upstream connection's decisions with a fake clock: handshake, liveness, reconnect delays."""

from __future__ import annotations

import random

import pytest

from fastrelay.backoff import Backoff
from fastrelay.config import UpstreamTimers
from fastrelay.feed import DisconnectReason
from fastrelay.upstream_core import Action, Phase, UpstreamCore


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def core(**timers: float) -> tuple[UpstreamCore, Clock]:
    clock = Clock()
    settings = UpstreamTimers(
        backoff_base=1.0,
        backoff_cap=8.0,
        healthy_after=10.0,
        auth_retry=60.0,
        max_connections_cooldown=90.0,
        ping_interval=20.0,
        ping_timeout=10.0,
    )
    for name, value in timers.items():
        setattr(settings, name, value)
    machine = UpstreamCore(
        settings, Backoff(settings.backoff_base, settings.backoff_cap, random.Random(1)), clock
    )
    machine.attempt()
    machine.opened()
    return machine, clock


@pytest.mark.parametrize(
    ("first", "second"), [("connected", "auth_success"), ("success", "success"), ("connected", "success")]
)
def test_connect_then_auth_in_new_and_old_forms(first: str, second: str) -> None:
    """'connected' or old 'success' asks for auth; 'auth_success' or old 'success' goes live."""
    machine, _ = core()
    assert machine.status(first) is Action.SEND_AUTH
    assert machine.status(second) is Action.GO_LIVE
    assert machine.phase is Phase.LIVE and machine.live
    assert machine.status("success") is Action.NOTHING  # subscribe acks later


def test_auth_failed_waits_the_long_delay() -> None:
    """auth_failed: the reason is recorded and the next attempt waits at least --auth-retry."""
    machine, _ = core()
    machine.status("connected")
    assert machine.status("auth_failed") is Action.AUTH_FAILED
    assert machine.closed() == (DisconnectReason.AUTH_FAILED, False)
    assert machine.next_delay() >= 60.0


def test_max_connections_even_after_auth_cools_down() -> None:
    """max_connections comes after auth_success on Massive: it still ends the session, then a cooldown."""
    machine, _ = core()
    machine.status("connected")
    machine.status("auth_success")
    assert machine.status("max_connections") is Action.MAX_CONNECTIONS
    assert machine.closed() == (DisconnectReason.MAX_CONNECTIONS, True)
    assert machine.next_delay() >= 90.0


def test_out_of_order_statuses_do_nothing() -> None:
    """auth_success before connected is ignored rather than trusted."""
    machine, _ = core()
    assert machine.status("auth_success") is Action.NOTHING
    assert machine.phase is Phase.AWAIT_CONNECTED


def test_silence_is_not_a_fault_until_a_ping_goes_unanswered() -> None:
    """Idle past the ping interval: ping; data (any, not only a pong) clears it; no answer: stall."""
    machine, clock = core()
    assert machine.check_liveness() == (Action.NOTHING, 20.0)
    clock.now += 20.0
    assert machine.check_liveness() == (Action.PING, 10.0)
    clock.now += 4.0
    assert machine.check_liveness() == (Action.NOTHING, 6.0)
    machine.received()  # an event, not a pong: alive all the same
    clock.now += 1.0
    assert machine.check_liveness() == (Action.NOTHING, 19.0)
    clock.now += 19.0
    assert machine.check_liveness()[0] is Action.PING
    clock.now += 10.0
    assert machine.check_liveness() == (Action.STALL, 0.0)
    assert machine.closed()[0] is DisconnectReason.STALL


def test_backoff_resets_only_after_a_healthy_connection() -> None:
    """Drops of short connections keep growing the delay ceiling; one that lasted resets it."""
    machine, clock = core()
    for _ in range(3):
        machine.status("connected")
        machine.status("auth_success")
        clock.now += 1.0
        assert machine.closed() == (DisconnectReason.DROP, True)
        machine.next_delay()
        machine.attempt()
        machine.opened()
    assert machine.backoff.ceiling() == 8.0
    machine.status("connected")
    machine.status("auth_success")
    clock.now += 10.0
    machine.closed()
    assert machine.backoff.ceiling() == 1.0


def test_handshake_deadline_aborts_only_an_unauthenticated_connection() -> None:
    """The handshake timeout ends an attempt still waiting for auth, never a live one."""
    machine, _ = core()
    machine.status("connected")
    assert machine.handshake_expired()
    assert machine.closed() == (DisconnectReason.DROP, False)
    machine.attempt()
    machine.opened()
    machine.status("connected")
    machine.status("auth_success")
    assert not machine.handshake_expired()


def test_a_failed_attempt_is_a_drop() -> None:
    """Refused, TLS error, timeout before the upgrade: a drop, with the usual backoff."""
    machine, _ = core()
    machine.attempt()
    machine.failed()
    assert machine.reason is DisconnectReason.DROP
    assert 0.0 <= machine.next_delay() <= 1.0


def test_older_servers_error_authentication_failed_is_an_auth_failure() -> None:
    """An `error` status saying "authentication failed" during the handshake means auth_failed;
    the same words once live are just an error."""
    machine, _ = core()
    machine.status("connected")
    assert machine.status("error", "Authentication Failed") is Action.AUTH_FAILED
    assert machine.closed()[0] is DisconnectReason.AUTH_FAILED
    machine.attempt()
    machine.opened()
    machine.status("connected")
    machine.status("auth_success")
    assert machine.status("error", "authentication failed") is Action.NOTHING
