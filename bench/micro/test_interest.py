"""Micro-benchmarks of upstream interest under churn (`make bench-micro`).

With many channels held upstream, each loop pass that changes a few of them
must cost in proportion to the change, not to everything held: a relay with
100,000 channels and clients coming and going computes a plan every pass.
"""

from __future__ import annotations

from typing import Any

import pytest

from fastrelay.interest import MarketInterest


@pytest.mark.parametrize("held", [1_000, 100_000])
def test_churn_plan(benchmark: Any, held: int) -> None:
    """One pass: 10 channels come, 10 go, with ``held`` channels already upstream."""
    now = [0.0]
    interest = MarketInterest("stocks", 0.0, lambda: now[0])
    for i in range(held):
        interest.add(f"T.S{i:06d}")
    interest.plan()
    state = {"next": 0}

    def one_pass() -> None:
        base = state["next"]
        state["next"] += 10
        for i in range(base, base + 10):
            interest.add(f"Q.N{i:07d}")
            if i >= 10:
                interest.remove(f"Q.N{i - 10:07d}")
        interest.plan()

    benchmark(one_pass)
    assert len(interest.wanted()) >= held
