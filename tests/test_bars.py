"""The bars service without a network: a fake Massive REST source, a fake clock."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from fastrelay.aggs import make_query
from fastrelay.bars import COALESCED, HIT, MISS, Bars, BarsError

NOW_MS = 1_764_770_000_000


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeRest:
    """Massive's aggregates endpoint: pages of ``page`` bars, answers held until released."""

    def __init__(self, bars: int = 10, page: int = 1000) -> None:
        self.bars = [{"t": i * 60_000, "o": 1, "h": 2, "l": 0.5, "c": 1.5, "v": 10} for i in range(bars)]
        self.page = page
        self.calls: list[tuple[str, dict[str, str]]] = []
        self.answer: tuple[int, dict[str, str], bytes] | None = None  # forced answer
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail: Exception | None = None

    async def get(self, path: str, params: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        self.calls.append((path, params))
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        if self.answer is not None:
            return self.answer
        offset = int(params.get("cursor", "0"))
        chunk = self.bars[offset : offset + self.page]
        body: dict[str, Any] = {"status": "OK", "results": chunk, "resultsCount": len(chunk)}
        if offset + self.page < len(self.bars):
            body["next_url"] = f"https://api.massive.com{path}?cursor={offset + self.page}"
        return 200, {}, orjson.dumps(body)

    async def close(self) -> None:
        pass


def closed_query(limit: int = 5000) -> Any:
    return make_query("AAPL", 1, "minute", "2025-11-03", "2025-11-03", limit)


def service(source: FakeRest, clock: Clock, **kw: Any) -> Bars:
    return Bars(source, clock=clock, wall_ms=lambda: NOW_MS, **kw)


async def test_many_identical_requests_cost_one_rest_call() -> None:
    """Single flight: 500 at once wait for the one call; afterwards the cache answers."""
    source, clock = FakeRest(), Clock()
    bars = service(source, clock)
    source.gate.clear()
    tasks = [asyncio.ensure_future(bars.fetch(closed_query())) for _ in range(500)]
    await asyncio.sleep(0)
    source.gate.set()
    answers = await asyncio.gather(*tasks)
    assert len(source.calls) == 1 and all(len(a) == 10 for a in answers)
    assert bars.stats.results == {MISS: 1, COALESCED: 499, HIT: 0}
    await bars.fetch(closed_query())
    assert bars.stats.results[HIT] == 1 and len(source.calls) == 1


async def test_pages_are_followed_up_to_the_limit_without_the_key() -> None:
    source, clock = FakeRest(bars=2500, page=1000), Clock()
    got = await service(source, clock).fetch(closed_query(limit=2200))
    assert len(got) == 2200 and [b["t"] for b in got] == [i * 60_000 for i in range(2200)]
    assert len(source.calls) == 3
    assert source.calls[1] == (
        "/v2/aggs/ticker/AAPL/range/1/minute/2025-11-03/2025-11-03",
        {"cursor": "1000"},
    )


async def test_ranges_reaching_now_live_briefly_closed_ones_long() -> None:
    source, clock = FakeRest(), Clock()
    bars = service(source, clock, fresh_ttl=5.0, closed_ttl=3600.0)
    fresh = make_query("AAPL", 1, "minute", str(NOW_MS - 3_600_000), str(NOW_MS))
    await bars.fetch(fresh)
    await bars.fetch(closed_query())
    clock.now += 6.0
    await bars.fetch(fresh)
    await bars.fetch(closed_query())
    assert len(source.calls) == 3  # the fresh range was asked again, the closed one not


async def test_the_cache_is_bounded_in_bytes() -> None:
    source, clock = FakeRest(), Clock()
    bars = service(source, clock, max_bytes=1500)
    for day in range(1, 6):
        await bars.fetch(make_query("AAPL", 1, "minute", f"2025-11-0{day}", f"2025-11-0{day}"))
    assert bars.cache.bytes <= 1500 and len(bars.cache) < 5


async def test_massives_429_pauses_everyone_without_a_retry_storm() -> None:
    source, clock = FakeRest(), Clock()
    bars = service(source, clock)
    source.answer = (429, {"retry-after": "30"}, b'{"status":"ERROR"}')
    with pytest.raises(BarsError, match="rate limit") as first:
        await bars.fetch(closed_query())
    assert first.value.reason == "upstream_429"
    source.answer = None
    clock.now += 10
    with pytest.raises(BarsError, match=r"try again in 20 s"):
        await bars.fetch(make_query("MSFT", 1, "minute", "2025-11-03", "2025-11-03"))
    assert len(source.calls) == 1  # nothing went to Massive during the pause
    clock.now += 21
    assert len(await bars.fetch(closed_query())) == 10


async def test_the_accounts_rate_limit_refuses_before_massive_is_asked() -> None:
    source, clock = FakeRest(), Clock()
    bars = service(source, clock, per_minute=6)  # a burst of one, one every 10 s
    await bars.fetch(make_query("A", 1, "minute", "2025-11-03", "2025-11-03"))
    with pytest.raises(BarsError) as refused:
        await bars.fetch(make_query("B", 1, "minute", "2025-11-03", "2025-11-03"))
    assert refused.value.reason == "rate_limited" and len(source.calls) == 1


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ((404, {}, b"{}"), "not_found"),
        ((502, {}, b"bad gateway"), "upstream_error"),
        ((200, {}, b"not json"), "bad_answer"),
        ((200, {}, b'{"results": 7}'), "bad_answer"),
    ],
)
async def test_failures_get_a_reason_and_are_not_cached(
    answer: tuple[int, dict[str, str], bytes], reason: str
) -> None:
    source, clock = FakeRest(), Clock()
    bars = service(source, clock)
    source.answer = answer
    with pytest.raises(BarsError) as failed:
        await bars.fetch(closed_query())
    assert failed.value.reason == reason and bars.stats.errors[reason] == 1
    source.answer = None
    assert len(await bars.fetch(closed_query())) == 10


async def test_an_unreachable_massive_is_one_error_for_every_waiter() -> None:
    source, clock = FakeRest(), Clock()
    bars = service(source, clock)
    source.gate.clear()
    source.fail = OSError("connection refused")
    tasks = [asyncio.ensure_future(bars.fetch(closed_query())) for _ in range(3)]
    await asyncio.sleep(0)
    source.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, BarsError) and r.reason == "unavailable" for r in results)
    assert len(source.calls) == 1
