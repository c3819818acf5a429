"""Conflation: a member that fell behind gets every trade and each state channel's latest (no sockets)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from fastrelay import markets
from fastrelay.cli import _parser
from fastrelay.closes import CloseReason
from fastrelay.config import RELAY_OPTIONS, ConfigError, RelayConfig, build, conflate_above, validate
from fastrelay.conflation import STATE_EVS, Conflation, ConflationPolicy, state_keys
from fastrelay.framing import tag_market
from fastrelay.protocol import CAUGHT_UP, CONFLATING, SLOW_CONSUMER, Channel
from tests.sinks import Core, RecordingSink, make_core

START, HOLD, HARD = 10_000, 1_000, 100_000  # soft limit, high-water mark, --max-client-buffer
POLICY = ConflationPolicy(START, HARD, HOLD, HOLD // 4, quiet=2.0)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def ev(kind: str, sym: str, q: int) -> dict[str, Any]:
    return {"ev": kind, "sym": sym, "q": q}


def frame(*events: dict[str, Any]) -> bytes:
    return orjson.dumps(list(events))


def conflating_core() -> tuple[Core, Clock]:
    clock = Clock()
    return make_core(max_client_buffer=HARD, conflation=POLICY, clock=clock), clock


def subscribed(core: Core, params: str, conflates: bool = True) -> tuple[Any, RecordingSink]:
    member, sink = core.member(conflates=conflates)
    channels = [Channel("stocks", *name.split(".", 1)) for name in params.split(",")]
    core.hub.subscribe(member, channels)
    return member, sink


def publish(core: Core, *events: dict[str, Any]) -> None:
    core.route("stocks", frame(*events))
    core.hub.flush()


def seen(sink: RecordingSink) -> list[tuple[object, object, object]]:
    return [(e["ev"], e["sym"], e["q"]) for e in sink.events()]


# --- the pure parts ----------------------------------------------------------------------


def test_an_ev_is_a_state_in_every_market_that_has_it_or_in_none() -> None:
    """The queue keys events without their market, so no ev may be a state in one market and a
    print in another (T, XT are prints everywhere); a change to markets.py that breaks this fails here."""
    for market in markets.MARKETS:
        assert markets.evs(market) & STATE_EVS == markets.state_evs(market), market
    assert "T" not in STATE_EVS and "XT" not in STATE_EVS and {"Q", "A", "AM", "XQ", "V"} <= STATE_EVS


def test_state_keys_name_each_state_channel_and_leave_prints_alone() -> None:
    """Quotes, aggregates and values are keyed by (market tag, ev, ticker) wherever the ticker is;
    trades, unknown evs and events without a ticker are prints (None)."""
    raws = [
        orjson.dumps(e)
        for e in (
            {"ev": "Q", "sym": "AAPL"},
            {"ev": "T", "sym": "AAPL"},
            {"ev": "XA", "pair": "BTC-USD"},
            {"ev": "V", "T": "I:SPX"},
            {"ev": "C", "p": "EUR/USD"},
            {"ev": "ZZ", "sym": "AAPL"},
            {"ev": "Q"},
        )
    ]
    raws.append(tag_market(orjson.dumps({"ev": "Q", "sym": "ESZ5"}), "futures/cme"))
    assert state_keys(raws) == [
        (None, "Q", "AAPL"),
        None,
        (None, "XA", "BTC-USD"),
        (None, "V", "I:SPX"),
        (None, "C", "EUR/USD"),
        None,
        None,
        ("futures/cme", "Q", "ESZ5"),
    ]


def test_undecodable_events_are_all_kept() -> None:
    """An event the key decoder cannot read is never dropped as superseded."""
    assert state_keys([b'{"ev":"Q","sym":"A"}', b"{not json"]) == [None, None]


def test_a_newer_state_replaces_the_waiting_one_and_goes_to_the_end() -> None:
    """The queue sends a subsequence of what came: Q1 T1 Q2 -> T1 Q2, never Q2 T1."""
    queue = Conflation(0.0)
    events = [orjson.dumps(e) for e in (ev("Q", "A", 1), ev("T", "A", 1), ev("Q", "A", 2), ev("Q", "B", 1))]
    assert queue.add(events, state_keys(events)) == 1
    assert queue.pending_bytes == sum(map(len, events[1:]))
    assert queue.take() == events[1:]
    assert queue.pending_bytes == 0 and queue.take() == []


# --- through the hub ---------------------------------------------------------------------------


def test_a_member_over_the_soft_limit_conflates_instead_of_being_dropped() -> None:
    """Over --conflate-above: a conflating status, events held while the socket is over the mark,
    then every trade and the latest quote of each ticker, in arrival order; the others see no change."""
    core, _ = conflating_core()
    _fast, fast_sink = subscribed(core, "T.*,Q.*")
    slow, slow_sink = subscribed(core, "T.*,Q.*")
    publish(core, ev("Q", "A", 1))
    slow_sink.backlog = START + 1
    publish(core, ev("Q", "A", 2))  # written, then found over the soft limit
    assert slow_sink.statuses()[-1][0] == CONFLATING and core.hub.conflator is not None
    assert core.hub.conflator.stats.episodes == 1 and core.hub.conflator.stats.conflating == 1
    written = len(slow_sink.writes)
    publish(core, ev("T", "A", 1), ev("Q", "A", 3), ev("Q", "B", 1))
    publish(core, ev("Q", "A", 4), ev("T", "A", 2), ev("Q", "B", 2))
    assert len(slow_sink.writes) == written  # held: the socket is over the mark
    slow_sink.backlog = HOLD // 4
    core.hub.drained(slow)
    assert seen(slow_sink) == [
        ("Q", "A", 1), ("Q", "A", 2), ("T", "A", 1), ("Q", "A", 4), ("T", "A", 2), ("Q", "B", 2),
    ]  # fmt: skip
    assert len(seen(fast_sink)) == 8 and fast_sink.statuses() == []
    assert core.hub.conflator.stats.superseded == 2
    assert not slow.closed and core.dropped == []


def test_conflating_members_still_get_writes_while_under_the_mark() -> None:
    """Under the high-water mark a conflating member's events go out at each flush."""
    core, _ = conflating_core()
    slow, sink = subscribed(core, "Q.*")
    sink.backlog = START + 1
    publish(core, ev("Q", "A", 1))
    sink.backlog = 0
    publish(core, ev("Q", "A", 2))
    publish(core, ev("Q", "A", 3))
    assert seen(sink) == [("Q", "A", 1), ("Q", "A", 2), ("Q", "A", 3)]
    assert core.hub.conflator is not None and core.hub.conflator.is_conflating(slow)


def test_after_a_quiet_while_it_catches_up_and_shares_frames_again() -> None:
    """Nothing held for `quiet` seconds: a caught_up status, and it rejoins the plain member set
    (the same frame object as the others)."""
    core, clock = conflating_core()
    _fast, fast_sink = subscribed(core, "T.*")
    _slow, sink = subscribed(core, "T.*")
    sink.backlog = START + 1
    publish(core, ev("T", "A", 1))
    publish(core, ev("T", "A", 2))  # held
    sink.backlog = 0
    clock.now += 1.0
    publish(core, ev("T", "A", 3))
    assert [s for s, _ in sink.statuses()] == [CONFLATING]
    clock.now += 1.5  # 2.5 s since anything was held
    publish(core, ev("T", "A", 4))
    assert [s for s, _ in sink.statuses()] == [CONFLATING, CAUGHT_UP]
    publish(core, ev("T", "A", 5))
    assert sink.writes[-1] is fast_sink.writes[-1]
    assert [q for _, _, q in seen(sink)] == [1, 2, 3, 4, 5]
    conflator = core.hub.conflator
    assert conflator is not None and conflator.stats.conflating == 0 and conflator.stats.caught_up == 1


def test_on_a_quiet_feed_the_sweep_sends_the_queue_and_then_caught_up() -> None:
    """No flush comes when the feed goes quiet: the relay's once-a-second sweep sends what is
    held once the socket is under the mark, and caught_up after `quiet` seconds of nothing held."""
    core, clock = conflating_core()
    _slow, sink = subscribed(core, "Q.*")
    sink.backlog = START + 1
    publish(core, ev("Q", "A", 1))
    publish(core, ev("Q", "A", 2))
    publish(core, ev("Q", "A", 3))  # held: the socket is over the mark; then the feed goes quiet
    core.hub.sweep_conflation()
    assert [q for _, _, q in seen(sink)] == [1]  # still over the mark: nothing more
    sink.backlog = 0
    clock.now += 1.0
    core.hub.sweep_conflation()
    assert [q for _, _, q in seen(sink)] == [1, 3]  # the latest, without a flush
    assert [s for s, _ in sink.statuses()] == [CONFLATING]
    clock.now += 2.0
    core.hub.sweep_conflation()
    assert [s for s, _ in sink.statuses()] == [CONFLATING, CAUGHT_UP]
    assert core.hub.conflator is not None and core.hub.conflator.stats.conflating == 0


def test_a_member_without_conflation_waits_between_the_limits_and_is_dropped_past_the_hard_one() -> None:
    """Opted out: no status, every event between the limits; slow_consumer and 1013 past the hard one."""
    core, _ = conflating_core()
    member, sink = subscribed(core, "T.*", conflates=False)
    sink.backlog = START + 1
    publish(core, ev("T", "A", 1))
    publish(core, ev("T", "A", 2))
    assert sink.statuses() == [] and len(seen(sink)) == 2
    sink.backlog = HARD + 1
    publish(core, ev("T", "A", 3))
    assert sink.closes == [(CloseReason.SLOW_CONSUMER, "slow consumer")] and core.dropped == [member]


def test_a_conflating_member_still_over_the_hard_limit_is_dropped() -> None:
    """Socket plus queue past --max-client-buffer (trades alone can outrun a link): slow_consumer."""
    core, _ = conflating_core()
    member, sink = subscribed(core, "T.*")
    sink.backlog = START + 1
    publish(core, ev("T", "A", 0))
    sink.backlog = HARD - 200
    publish(core, *(ev("T", "A", q) for q in range(1, 5)))  # held: within the limit
    assert not member.closed
    publish(core, *(ev("T", "A", q) for q in range(5, 20)))
    assert member.closed and sink.statuses()[-1][0] == SLOW_CONSUMER
    assert core.hub.conflator is not None and core.hub.conflator.stats.conflating == 0
    assert core.hub.audience_count() == 0


class TickingClock(Clock):
    """Every reading is ``tick`` seconds after the previous one: work takes time."""

    def __init__(self, tick: float) -> None:
        super().__init__()
        self.tick = tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def test_the_conflated_stream_is_charged_to_its_client() -> None:
    """Loop time spent on a conflating member's queue comes out of its own budget; a member that
    keeps up is charged nothing for the same events."""
    clock = TickingClock(0.001)
    core = make_core(max_client_buffer=HARD, conflation=POLICY, clock=clock)
    fast, fast_sink = subscribed(core, "T.*,Q.*")
    slow, slow_sink = subscribed(core, "T.*,Q.*")
    slow_sink.backlog = START + 1
    publish(core, ev("Q", "A", 1))  # starts conflating
    assert slow_sink.charged == 0.0
    publish(core, ev("Q", "A", 2), ev("T", "A", 1))
    after_flush = slow_sink.charged
    assert after_flush > 0.0
    slow_sink.backlog = 0
    core.hub.drained(slow)  # the queue goes out: charged too
    assert slow_sink.charged > after_flush
    assert fast_sink.charged == 0.0 and not fast.closed


def test_a_conflating_member_over_its_loop_time_budget_is_dropped() -> None:
    """A client that reads slowly on purpose to make the relay work per event for it: once its
    conflated stream has cost its budget, slow_consumer (1013), counted; the others go on."""
    clock = TickingClock(0.001)
    core = make_core(max_client_buffer=HARD, conflation=POLICY, clock=clock)
    greedy, greedy_sink = subscribed(core, "T.*,Q.*")
    modest, modest_sink = subscribed(core, "T.*,Q.*")
    greedy_sink.loop_time_left = 0.0025
    greedy_sink.backlog = modest_sink.backlog = START + 1
    publish(core, ev("Q", "A", 1))  # both start conflating
    for q in range(2, 6):
        publish(core, ev("Q", "A", q))
    assert greedy.closed and greedy_sink.closes == [(CloseReason.SLOW_CONSUMER, "slow consumer")]
    assert greedy_sink.statuses()[-1][0] == SLOW_CONSUMER
    assert core.hub.conflator is not None and core.hub.conflator.stats.over_budget == 1
    assert not modest.closed and core.dropped == [greedy]


def test_subscribing_while_conflating_keeps_the_queue() -> None:
    """A conflating member that changes its channels moves audiences with its queue and state."""
    core, _ = conflating_core()
    member, sink = subscribed(core, "Q.*")
    sink.backlog = START + 1
    publish(core, ev("Q", "A", 1))
    publish(core, ev("Q", "A", 2))
    core.hub.subscribe(member, [Channel("stocks", "T", "*")])
    publish(core, ev("T", "A", 1), ev("Q", "A", 3))
    sink.backlog = 0
    core.hub.drained(member)
    assert seen(sink) == [("Q", "A", 1), ("T", "A", 1), ("Q", "A", 3)]
    assert core.hub.audience_count() == 1 and core.hub.members_on("stocks") == [member]


def test_an_audience_of_conflating_members_only_builds_no_plain_frames() -> None:
    """Nobody keeps up: the flush writes only the conflating member's queue."""
    core, _ = conflating_core()
    _member, sink = subscribed(core, "T.*")
    sink.backlog = START + 1
    publish(core, ev("T", "A", 1))
    before = core.outbox.stats.deliveries
    publish(core, ev("T", "A", 2))  # held
    assert core.outbox.stats.deliveries == before


def test_detach_forgets_a_conflating_member() -> None:
    core, _ = conflating_core()
    member, sink = subscribed(core, "T.*")
    sink.backlog = START + 1
    publish(core, ev("T", "A", 1))
    core.hub.detach(member)
    assert core.hub.conflator is not None and core.hub.conflator.stats.conflating == 0
    assert core.hub.audience_count() == 0 and core.hub.members == 0
    core.hub.drained(member)  # a late resume_writing: nothing happens


# --- the state machine ---------------------------------------------------------------------------

TICKERS = ("A", "B", "C")


class ConflationMachine(RuleBasedStateMachine):
    """Any interleaving of events, backlogs, drains and time: what the conflating member receives
    is the routed stream minus superseded states; a member that keeps up gets all of it."""

    def __init__(self) -> None:
        super().__init__()
        self.core, self.clock = conflating_core()
        self.member, self.sink = subscribed(self.core, "T.*,Q.*,AM.*")
        self.fast, self.fast_sink = subscribed(self.core, "T.*,Q.*,AM.*", conflates=False)
        self.routed: list[tuple[str, str, int]] = []
        self.q: dict[tuple[str, str], int] = {}

    @rule(events=st.lists(st.tuples(st.sampled_from(("T", "Q", "AM")), st.sampled_from(TICKERS)), max_size=8))
    def publish(self, events: list[tuple[str, str]]) -> None:
        batch = []
        for kind, sym in events:
            q = self.q[(kind, sym)] = self.q.get((kind, sym), 0) + 1
            batch.append(ev(kind, sym, q))
            self.routed.append((kind, sym, q))
        if batch:
            publish(self.core, *batch)

    @rule(backlog=st.sampled_from((0, HOLD // 4, HOLD + 1, START + 1, HARD // 2)))
    def socket(self, backlog: int) -> None:
        self.sink.backlog = backlog

    @rule()
    def drained(self) -> None:
        if self.sink.backlog <= HOLD // 4:
            self.core.hub.drained(self.member)

    @rule(seconds=st.sampled_from((0.5, 2.5)))
    def wait(self, seconds: float) -> None:
        self.clock.now += seconds

    @invariant()
    def nothing_reordered_and_only_superseded_states_left_out(self) -> None:
        received = seen(self.sink)
        position = 0
        for item in received:  # a subsequence of the routed stream
            while self.routed[position] != item:
                kind, sym, q = self.routed[position]
                # Left out: a state with a later event of its channel routed.
                assert kind != "T", f"trade {self.routed[position]} was dropped"
                assert (kind, sym, q + 1) in self.routed[position:], self.routed[position]
                position += 1
            position += 1
        assert seen(self.fast_sink) == self.routed
        assert not self.member.closed

    def teardown(self) -> None:
        """Once the socket drains, the member has every trade and every channel's latest."""
        self.sink.backlog = 0
        self.core.hub.drained(self.member)
        self.publish([])
        received = seen(self.sink)
        trades = [e for e in self.routed if e[0] == "T"]
        assert [e for e in received if e[0] == "T"] == trades
        for (kind, sym), last in self.q.items():
            got = [q for k, s, q in received if (k, s) == (kind, sym)]
            assert got and got[-1] == last, (kind, sym, got, last)
        super().teardown()


TestConflationMachine = ConflationMachine.TestCase
TestConflationMachine.settings = settings(
    max_examples=150, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@pytest.mark.parametrize(("start", "hold"), [(512 * 1024, 64 * 1024), (8 * 1024, 4 * 1024), (100, 50)])
def test_the_marks_stay_under_the_soft_limit(start: int, hold: int) -> None:
    policy = ConflationPolicy.of(start, 4 * 1024 * 1024)
    assert policy.hold_above == hold and 0 < policy.resume_at <= policy.hold_above < start


# --- the settings ---------------------------------------------------------------------------------


def test_the_settings_have_environment_twins_and_a_default_under_the_hard_limit() -> None:
    """--conflate-paths / FASTRELAY_CONFLATE_PATHS ('' for none), --conflate-above (0: an eighth)."""
    default = RelayConfig()
    assert default.conflate_paths == ["/api/socket"] and conflate_above(default) == 512 * 1024
    args = _parser().parse_args(["serve", "--conflate-above", "100000"])
    env = {"FASTRELAY_CONFLATE_PATHS": "/api/socket,/stocks", "FASTRELAY_CONFLATE_ABOVE": "5"}
    config = build(RelayConfig(), RELAY_OPTIONS, args, env)
    assert (config.conflate_paths, conflate_above(config)) == (["/api/socket", "/stocks"], 100_000)
    validate(config)
    assert (
        build(
            RelayConfig(), RELAY_OPTIONS, _parser().parse_args(["serve"]), {"FASTRELAY_CONFLATE_PATHS": ""}
        ).conflate_paths
        == []
    )


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"conflate_paths": ["/crypto"]}, "--conflate-paths: /crypto not a client path"),
        ({"conflate_paths": ["/api"]}, "--conflate-paths: /api not a client path"),
        ({"conflate_above": 4 * 1024 * 1024}, "--conflate-above .* must be below --max-client-buffer"),
    ],
)
def test_bad_settings_name_the_flag(overrides: dict[str, Any], fragment: str) -> None:
    config = RelayConfig(**overrides)
    with pytest.raises(ConfigError, match=fragment):
        validate(config)
