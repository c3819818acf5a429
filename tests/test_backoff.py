"""The reconnect schedule: capped exponential growth with full jitter."""

from __future__ import annotations

import random

import pytest

from fastrelay.backoff import Backoff


def test_ceiling_doubles_to_the_cap() -> None:
    """Ceilings go 0.5, 1, 2, ... and stop at the cap."""
    backoff = Backoff(0.5, 30.0, random.Random(1))
    ceilings = []
    for _ in range(10):
        ceilings.append(backoff.ceiling())
        backoff.next_delay()
    assert ceilings == [0.5, 1, 2, 4, 8, 16, 30, 30, 30, 30]


def test_full_jitter_draws_within_the_ceiling_and_is_seeded() -> None:
    """Each delay lies in [0, ceiling]; the same seed gives the same schedule."""
    a = Backoff(0.5, 30.0, random.Random(7))
    b = Backoff(0.5, 30.0, random.Random(7))
    delays = [a.next_delay() for _ in range(20)]
    assert delays == [b.next_delay() for _ in range(20)]
    check = Backoff(0.5, 30.0)
    for delay in delays:
        assert 0 <= delay <= check.ceiling()
        check.next_delay()
    assert len(set(delays)) == 20  # jittered, not constant


def test_reset_starts_over() -> None:
    """After a healthy connection the next delay is small again."""
    backoff = Backoff(0.5, 30.0, random.Random(3))
    for _ in range(8):
        backoff.next_delay()
    backoff.reset()
    assert backoff.ceiling() == 0.5


def test_huge_attempt_counts_do_not_overflow() -> None:
    """A relay down for days keeps a capped delay."""
    backoff = Backoff(0.5, 30.0)
    backoff.attempt = 10_000
    assert backoff.ceiling() == 30.0


@pytest.mark.parametrize(("base", "cap"), [(0, 1), (2, 1), (-1, 5)])
def test_bad_parameters_are_refused(base: float, cap: float) -> None:
    """Zero, negative or inverted settings are a clear error."""
    with pytest.raises(ValueError, match="backoff"):
        Backoff(base, cap)
