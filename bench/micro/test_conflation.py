"""Conflation's cost on the hot path (`make bench-micro`): none for clients that keep up.

The firehose flush of ``test_hot_paths`` (10 single-event frames to 100 clients on
T.*), with conflation off (no policy: the hub before conflation existed), on with
every client keeping up (the production default), and on with one of the 100
conflating (its queue written at each flush, the rest sharing the frames).
The first two must not differ beyond noise.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from bench.micro.test_hot_paths import NullSink, trade
from fastrelay.cache import Cache
from fastrelay.conflation import ConflationPolicy
from fastrelay.events import decode_frame
from fastrelay.hub import Hub
from fastrelay.interest import Demand
from fastrelay.member import Member
from fastrelay.outbox import Outbox
from fastrelay.protocol import Channel

HARD = 1 << 22
POLICY = ConflationPolicy.of(HARD // 8, HARD)


class BehindOnce(NullSink):
    """Owes more than the soft limit at its first write, then keeps up: conflating for good
    (the fake clock never lets it count as caught up), its queue written at every flush."""

    def __init__(self) -> None:
        self.backlog = HARD // 4

    def write(self, data: bytes) -> None:
        pass

    def buffered(self) -> int:
        backlog, self.backlog = self.backlog, 0
        return backlog


def firehose_hub(conflation: ConflationPolicy | None, behind: int) -> Hub:
    cache = Cache(("stocks",), 500)
    demand = Demand(("stocks",), 0.0, lambda: 0.0, on_first=cache.watch, on_last=cache.unwatch)
    hub = Hub(("stocks",), Outbox(256 * 1024, HARD), demand, 2000, conflation=conflation, clock=lambda: 0.0)
    for index in range(100):
        sink = BehindOnce() if index < behind else NullSink()
        member = Member(sink.write, sink.buffered, sink, conflates=conflation is not None)
        hub.attach(member)
        hub.subscribe(member, [Channel("stocks", "T", "*")])
    return hub


@pytest.mark.parametrize(
    ("conflation", "behind"),
    [(None, 0), (POLICY, 0), (POLICY, 1)],
    ids=["conflation-off", "on-all-keep-up", "on-1-of-100-conflating"],
)
def test_firehose_flush_100_clients(benchmark: Any, conflation: ConflationPolicy | None, behind: int) -> None:
    hub = firehose_hub(conflation, behind)
    frames = [decode_frame(orjson.dumps([trade("AAPL", q)])) for q in range(10)]
    for heads, raws in frames:  # the first flush: the one behind starts conflating
        hub.route("stocks", heads, raws)
    hub.flush()

    def one_flush() -> None:
        for heads, raws in frames:
            hub.route("stocks", heads, raws)
        hub.flush()

    benchmark(one_flush)
    conflating = hub.conflator.stats.conflating if hub.conflator is not None else 0
    assert conflating == behind and hub.outbox.stats.deliveries > 0 and hub.members == 100
