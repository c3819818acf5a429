"""Property-based fuzzing of what the relay takes from the outside world (no sockets).

* Client messages, as arbitrary bytes and as structured JSON with random
  actions, params and channels, through ``ClientSession.receive``.
* Upstream frames, as arbitrary bytes and as event arrays whose routing
  fields drift in type, through ``events.decode_frame``, ``Hub.route`` and
  ``Hub.flush``.

No exception may escape (``decode_frame`` may raise its documented
``FrameError``), and the state must stay consistent after every step: the
reference counts match the members' channels exactly and are never negative,
``MarketInterest.wanted()`` is the covered union of what members want plus
what lingers, audiences and the routing index agree with the members'
channel sets, the hub's counters add up, and every member receives exactly
the events its channels select, in order, once.

The stateful machine (``HubMachine``) drives several members on every kind of
path through subscribe, unsubscribe, auth, junk, detach, upstream frames and
the passing of linger time. A membership change between ``route`` and
``flush`` is pinned by the two tests at the end (no loss, no duplicate).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from fastrelay import markets
from fastrelay.cache import Cache
from fastrelay.closes import CloseReason
from fastrelay.events import FrameError, decode_frame
from fastrelay.hub import Hub
from fastrelay.interest import Demand
from fastrelay.member import Member
from fastrelay.outbox import Outbox
from fastrelay.protocol import Channel, parse_channel
from fastrelay.ratelimit import TokenBucket
from fastrelay.session import ClientSession, SessionContext, TokenCheck
from tests.sinks import Core, RecordingSink, make_core

MARKETS = ("stocks", "options", "futures")
CONTRACT_CAP = 3  # options Q/FMV, small so that the cap is reached
MAX_CHANNELS = 12
MAX_FRAME = 2048
LINGER = 1.0
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- strategies -----------------------------------------------------------------------------------

EVS = ["T", "Q", "A", "AM", "FMV", "LULD", "V", "C", "CA", "XT", "XQ", "ZZ"]
TICKERS = ["AAPL", "MSFT", "BRK.B", "O:SPY251219C00600000", "O:X1", "O:X2", "O:X3", "O:X4", "I:SPX", "ESZ5"]
ints = st.integers(-(2**63), 2**64 - 1)  # what orjson can write
evs = st.sampled_from(EVS) | st.from_regex(r"[A-Z][A-Z0-9]{0,8}", fullmatch=True) | st.text(max_size=9)
tickers = (
    st.sampled_from([*TICKERS, "*"])
    | st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=70)
    | st.text(max_size=8)
)
prefixes = st.sampled_from(["", "", "", "futures:", "options:", "stocks:", "futures/cme:", "bonds:", ":"])


@st.composite
def channel_names(draw: st.DrawFn) -> str:
    return (
        f"{draw(prefixes)}{draw(evs)}.{draw(tickers)}" if draw(st.booleans()) else draw(st.text(max_size=12))
    )


@st.composite
def params(draw: st.DrawFn) -> Any:
    names = draw(st.lists(channel_names(), max_size=6))
    sep = draw(st.sampled_from([",", ", ", " ,", ",,"]))
    return draw(
        st.sampled_from([sep.join(names)])
        | st.sampled_from(["tok", "bad", "", "*", ",", "T.*,T.*"])
        | ints
        | st.none()
        | st.lists(st.text(max_size=5), max_size=3)
    )


@st.composite
def client_messages(draw: st.DrawFn) -> bytes:
    """A client frame: mostly a Massive action, sometimes anything JSON."""
    message: dict[str, Any] = {}
    if draw(st.integers(0, 9)):
        message["action"] = draw(
            st.sampled_from(["subscribe", "subscribe", "unsubscribe", "auth", "history"])
            | st.text(max_size=50)
            | ints
        )
    if draw(st.integers(0, 9)):
        message["params"] = draw(params())
    if not draw(st.integers(0, 9)):
        message[draw(st.text(max_size=5))] = draw(ints | st.text(max_size=5))
    value: Any = message
    if not draw(st.integers(0, 14)):
        value = draw(st.lists(ints, max_size=2) | st.text(max_size=5) | ints)
    return orjson.dumps(value)


scalar = st.none() | st.booleans() | ints | st.floats(allow_nan=False) | st.text(max_size=8)
# Mostly values that route somewhere (the members below hold these), often anything else.
routed_evs = st.sampled_from(["T", "T", "Q", "ZZ", "status"])
routed_tickers = st.sampled_from(["AAPL", "ESZ5", "O:X1", "MSFT", "*"])
drifting = st.one_of(
    routed_tickers,
    routed_tickers,
    scalar,
    st.lists(scalar, max_size=2),
    st.dictionaries(st.text(max_size=3), scalar, max_size=2),
)


@st.composite
def upstream_events(draw: st.DrawFn) -> dict[str, Any]:
    """One event whose routing fields drift in type, as real feeds' do (half of them plausible)."""
    event: dict[str, Any] = {}
    if draw(st.booleans()):
        event["ev"] = draw(st.sampled_from(["T", "Q", "ZZ"]))
        event[draw(st.sampled_from(["sym", "sym", "pair", "T", "p"]))] = draw(routed_tickers)
    elif draw(st.integers(0, 9)):
        event["ev"] = draw(st.one_of(routed_evs, routed_evs, evs, scalar, st.lists(scalar, max_size=1)))
    for key in ("sym", "pair", "T", "p"):
        if key not in event and draw(st.booleans()):
            event[key] = draw(drifting)
    event["q"] = draw(st.integers(0, 2**63))
    if draw(st.booleans()):
        event["t"] = draw(scalar)
    if draw(st.booleans()):
        event[draw(st.sampled_from(["x", "c", "i", "market", "status", "message"]))] = draw(drifting)
    return event


@st.composite
def upstream_frames(draw: st.DrawFn) -> tuple[str, bytes]:
    events = draw(st.lists(upstream_events(), max_size=8))
    return draw(st.sampled_from(MARKETS)), orjson.dumps(events)


# --- the model: what a member should receive, what the interest should want ------------------------


def ticker_of(event: dict[str, Any]) -> str | None:
    for key in ("sym", "pair", "T", "p"):
        if isinstance(event.get(key), str):
            return str(event[key])
    return None


def wants(channels: set[Channel], market: str, event: dict[str, Any]) -> bool:
    ev = event.get("ev")
    if not isinstance(ev, str):
        return False
    if Channel(market, ev, "*") in channels:
        return True
    ticker = ticker_of(event)
    return ticker is not None and Channel(market, ev, ticker) in channels


def covered(names: set[str]) -> set[str]:
    """``EV.*`` covers every ``EV.TICKER``."""
    wild = {n.partition(".")[0] for n in names if n.endswith(".*")}
    return {n for n in names if n.endswith(".*") or n.partition(".")[0] not in wild}


def frame_payloads(writes: list[bytes]) -> list[bytes]:
    payloads = []
    for data in writes:
        assert data[0] == 0x81, "not a final text frame"
        length = data[1] & 0x7F
        offset = {126: 4, 127: 10}.get(length, 2)
        if length == 126:
            length = int.from_bytes(data[2:4], "big")
        elif length == 127:
            length = int.from_bytes(data[2:10], "big")
        assert len(data) == offset + length, "frame length field does not match"
        payloads.append(data[offset:])
    return payloads


def check_hub(
    hub: Hub, demand: Demand, live: list[Member], lingering: dict[tuple[str, str], float], now: float
) -> None:
    """Every structural invariant of the hub and its interests."""
    # Counters.
    assert hub.members == len(live)
    assert hub.subscriptions == sum(len(m.channels) for m in live)
    # Reference counts: exactly the members' channels, never zero or negative.
    for market, interest in demand.markets.items():
        expected = Counter(c.name for m in live for c in m.channels if c.market == market)
        assert dict(interest._refs) == dict(expected), market
        assert all(count > 0 for count in interest._refs.values())
        wanted = interest.wanted()  # expires lingering channels first
        still = set(interest._lingering)
        assert not still & set(expected), "a channel both referenced and lingering"
        assert wanted == covered(set(expected) | still), market
        # What lingers is what the model says lingers, with the same expiry; only a capped
        # contract may stop lingering early (given up to make room under the cap).
        model = {name: expiry for (mkt, name), expiry in lingering.items() if mkt == market and expiry > now}
        assert all(model.get(name) == expiry for name, expiry in interest._lingering.items())
        assert all(n.partition(".")[0] in markets.capped_evs(market) for n in set(model) - still)
        capped = {n for n in interest._refs if n.partition(".")[0] in markets.capped_evs(market)}
        assert len(capped) <= CONTRACT_CAP
    # Audiences: one per distinct (channel set, tagged), holding exactly its members.
    audiences = list(hub._audiences.values())
    assert sum(len(a.members) for a in audiences) == len(live)
    assert set(hub._audience_of) == set(live)
    for m in live:
        audience = hub._audience_of[m]
        assert m in audience.members
        assert audience.channels == frozenset(m.channels)
        assert audience.tagged == (m.tags_markets and any(markets.is_ambiguous(c.market) for c in m.channels))
        assert hub._audiences[(audience.channels, audience.tagged)] is audience
    for audience in audiences:
        assert audience.members
    # The routing index lists exactly the audiences that want each channel, once.
    indexed: Counter[tuple[str, str, str, int]] = Counter()
    for market, index in hub._index.items():
        for ev, lists in index.wildcard.items():
            assert lists, "empty wildcard entry left behind"
            indexed.update((market, ev, "*", id(a)) for a in lists)
        for ev, by_ticker in index.exact.items():
            assert by_ticker, "empty exact entry left behind"
            for ticker, lists in by_ticker.items():
                assert lists, "empty exact entry left behind"
                indexed.update((market, ev, ticker, id(a)) for a in lists)
    expected_index: Counter[tuple[str, str, str, int]] = Counter()
    for audience in audiences:
        wild = {(c.market, c.ev) for c in audience.channels if c.is_wildcard}
        for c in audience.channels:
            if c.is_wildcard or (c.market, c.ev) not in wild:
                expected_index[(c.market, c.ev, c.ticker, id(audience))] += 1
    assert indexed == expected_index


# --- client messages through ClientSession.receive ---------------------------------------------------


def fresh_session(path: str | None, tokens: list[str]) -> tuple[ClientSession, Core]:
    core = make_core(markets=MARKETS, max_channels=MAX_CHANNELS)
    return core.session(path, tokens), core


def check_reply_frames(frames: list[bytes]) -> None:
    for payload in frames:
        items = orjson.loads(payload)
        assert isinstance(items, list) and items
        for item in items:
            assert isinstance(item, dict) and isinstance(item.get("ev"), str)
            if item["ev"] == "status":
                assert isinstance(item["status"], str) and isinstance(item["message"], str)


@FUZZ
@given(
    st.lists(st.binary(max_size=200) | client_messages(), max_size=12),
    st.sampled_from(["stocks", "options", "futures", None]),
    st.booleans(),
    st.booleans(),
)
def test_client_messages_never_raise_and_keep_the_hub_consistent(
    payloads: list[bytes], path: str | None, with_tokens: bool, authenticated: bool
) -> None:
    """Any sequence of client frames: Massive-style replies (JSON arrays of statuses and events),
    a close only after a failed auth, and a consistent hub after each message."""
    session, core = fresh_session(path, ["tok"] if with_tokens else [])
    if authenticated:
        assert session.receive(b'{"action":"auth","params":"tok"}').close is None
    for payload in payloads:
        reply = session.receive(payload)
        check_reply_frames(reply.frames)
        check_hub(core.hub, core.demand, [session.member], {}, 0.0)
        if reply.close is not None:
            assert reply.close[0] is CloseReason.AUTH_FAILED
            break
    session.leave()
    check_hub(core.hub, core.demand, [], {}, 0.0)
    assert all(not i.wanted() for i in core.demand.markets.values())


# --- upstream frames through decode_frame, route and flush ---------------------------------------------


def subscribed_hub() -> tuple[Core, list[tuple[Member, RecordingSink]]]:
    core = make_core(markets=MARKETS, max_frame_payload=MAX_FRAME)
    members = []
    for channels, tagged in (
        ({Channel("stocks", "T", "*")}, False),
        ({Channel("stocks", "T", "AAPL"), Channel("stocks", "ZZ", "*")}, False),
        ({Channel("futures", "T", "*"), Channel("stocks", "Q", "AAPL")}, True),
        ({Channel("options", "T", "O:X1"), Channel("futures", "Q", "ESZ5")}, True),
        ({Channel("stocks", "T", "*"), Channel("stocks", "T", "AAPL")}, False),
        ({Channel("options", "T", "*"), Channel("options", "Q", "O:X1")}, True),
    ):
        m, sink = core.member(tags_markets=tagged)
        assert not core.hub.subscribe(m, channels).refused
        members.append((m, sink))
    return core, members


@FUZZ
@given(st.binary(max_size=300))
def test_arbitrary_upstream_bytes_raise_only_frame_error(payload: bytes) -> None:
    core, _ = subscribed_hub()
    try:
        heads, raws = decode_frame(payload)
    except FrameError:
        return
    core.cache["stocks"].record(heads, raws)
    core.hub.route("stocks", heads, raws)
    core.hub.flush()


@FUZZ
@given(st.lists(upstream_frames(), min_size=1, max_size=5))
def test_drifting_upstream_events_reach_exactly_their_subscribers(frames: list[tuple[str, bytes]]) -> None:
    """Events with any types in ev/sym/pair/T/p: routed where a string ev and ticker say, to each
    member once and in order, byte for byte (plus the market tag for futures on /api/socket)."""
    core, members = subscribed_hub()
    hub = core.hub
    expected: dict[int, list[dict[str, Any]]] = {id(m): [] for m, _ in members}
    for market, payload in frames:
        heads, raws = decode_frame(payload)
        assert len(heads) == len(raws)
        core.cache[market].record(heads, raws)
        hub.route(market, heads, raws)
        for event in orjson.loads(payload):
            for m, _ in members:
                if wants(m.channels, market, event):
                    tagged = m.tags_markets and markets.is_ambiguous(market)
                    expected[id(m)].append({"market": market, **event} if tagged else event)
    hub.flush()
    assert all(not a.pending for a in hub._audiences.values())
    for m, sink in members:
        received = []
        for payload in frame_payloads(sink.writes):
            events = orjson.loads(payload)
            assert len(payload) <= MAX_FRAME or len(events) == 1
            received.extend(events)
        assert received == expected[id(m)]
    check_hub(hub, core.demand, [m for m, _ in members], {}, 0.0)


# --- the stateful machine ------------------------------------------------------------------------------


class HubMachine(RuleBasedStateMachine):
    """Several clients on every kind of path, an upstream, and time passing (linger)."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.cache = Cache(MARKETS, 500)
        self.demand = Demand(
            MARKETS,
            LINGER,
            lambda: self.now,
            on_first=self.cache.watch,
            on_last=self.cache.unwatch,
            contract_cap=CONTRACT_CAP,
        )
        self.outbox = Outbox(MAX_FRAME, 1 << 30)
        self.hub = Hub(MARKETS, self.outbox, self.demand, MAX_CHANNELS)
        self.sessions: list[ClientSession] = []
        self.sinks: dict[int, RecordingSink] = {}
        self.expected: dict[int, list[dict[str, Any]]] = {}
        self.lingering: dict[tuple[str, str], float] = {}  # (market, name) -> expiry, the model's

    # --- the model of lingering: the last reference leaving starts it, a new one ends it
    def _refs(self) -> Counter[tuple[str, str]]:
        return Counter((c.market, c.name) for s in self._live() for c in s.member.channels)

    def _apply(self, change: Any) -> Any:
        before = self._refs()
        result = change()
        after = self._refs()
        for key in before.keys() | after.keys():
            if before[key] and not after[key]:
                self.lingering[key] = self.now + LINGER
            elif after[key]:
                self.lingering.pop(key, None)
        return result

    def _live(self) -> list[ClientSession]:
        return [s for s in self.sessions if not s.member.closed]

    @initialize()
    def start(self) -> None:
        self.connect(None, False)

    @precondition(lambda self: len(self._live()) < 5)
    @rule(path=st.sampled_from(["stocks", "options", "futures", None]), with_tokens=st.booleans())
    def connect(self, path: str | None, with_tokens: bool) -> None:
        sink = RecordingSink()
        m = Member(sink.write, sink.buffered, sink, tags_markets=path is None)
        self.hub.attach(m)
        context = SessionContext(
            self.hub,
            self.cache,
            TokenCheck(["tok"] if with_tokens else []),
            MAX_FRAME,
            limiter=lambda: TokenBucket(50.0, 20, clock=lambda: self.now),
        )
        session = ClientSession(context, m, path)
        self.sessions.append(session)
        self.sinks[id(m)] = sink
        self.expected[id(m)] = []
        check_reply_frames([session.opened()])

    def _pick(self, data: st.DataObject) -> ClientSession:
        return data.draw(st.sampled_from(self._live()))

    @precondition(lambda self: bool(self._live()))
    @rule(data=st.data(), payload=client_messages() | st.binary(max_size=60))
    def send(self, data: st.DataObject, payload: bytes) -> None:
        session = self._pick(data)
        reply = self._apply(lambda: session.receive(payload))
        check_reply_frames(reply.frames)
        if reply.close is not None:
            self._apply(session.leave)  # what the server does on a close

    @precondition(lambda self: bool(self._live()))
    @rule(data=st.data(), auth=st.sampled_from(["tok", "bad"]))
    def auth_and_subscribe(self, data: st.DataObject, auth: str) -> None:
        """The usual conversation, so that most clients do hold channels."""
        session = self._pick(data)
        names = data.draw(st.lists(st.sampled_from([f"{e}.{t}" for e in EVS[:4] for t in [*TICKERS, "*"]])))
        if session.market is None:
            names = [data.draw(st.sampled_from(["", "futures:", "options:"])) + n for n in names]
        for message in (
            {"action": "auth", "params": auth},
            {"action": "subscribe", "params": ",".join(names)},
        ):
            reply = self._apply(lambda m=message: session.receive(orjson.dumps(m)))  # type: ignore[misc]
            check_reply_frames(reply.frames)
            if reply.close is not None:
                self._apply(session.leave)
                return

    @precondition(lambda self: bool(self._live()))
    @rule(data=st.data())
    def unsubscribe_some(self, data: st.DataObject) -> None:
        session = self._pick(data)
        held = sorted(session.member.channels)
        if held:
            dropped = data.draw(st.lists(st.sampled_from(held), unique=True))
            self._apply(lambda: self.hub.unsubscribe(session.member, dropped))

    @precondition(lambda self: bool(self._live()))
    @rule(data=st.data())
    def disconnect(self, data: st.DataObject) -> None:
        session = self._pick(data)
        self._apply(session.leave)
        self._apply(session.leave)  # the server may report a close twice: harmless

    @rule(frame=upstream_frames(), flush=st.booleans())
    def upstream(self, frame: tuple[str, bytes], flush: bool) -> None:
        """A frame routed, flushed now or left pending: clients may subscribe, unsubscribe or
        leave inside the flush window. An event is owed to the members that wanted it when it
        was routed."""
        market, payload = frame
        heads, raws = decode_frame(payload)
        self.cache[market].record(heads, raws)
        self.hub.route(market, heads, raws)
        for event in orjson.loads(payload):
            for session in self._live():
                m = session.member
                if wants(m.channels, market, event):
                    tagged = m.tags_markets and markets.is_ambiguous(market)
                    self.expected[id(m)].append({"market": market, **event} if tagged else event)
        if flush:
            self.flush()

    @precondition(lambda self: any(s.member.channels for s in self._live()))
    @rule(data=st.data(), flush=st.booleans())
    def upstream_for_members(self, data: st.DataObject, flush: bool) -> None:
        """Events on channels members hold (drawn frames rarely hit them), often left pending."""
        events: list[tuple[str, dict[str, Any]]] = []
        for _ in range(data.draw(st.integers(1, 4))):
            session = data.draw(st.sampled_from([s for s in self._live() if s.member.channels]))
            channel = data.draw(st.sampled_from(sorted(session.member.channels)))
            ticker = data.draw(routed_tickers) if channel.is_wildcard else channel.ticker
            events.append((channel.market, {"ev": channel.ev, "sym": ticker, "q": len(events)}))
        for market in dict.fromkeys(m for m, _ in events):
            payload = orjson.dumps([e for m, e in events if m == market])
            self.upstream((market, payload), flush=False)
        if flush:
            self.flush()

    @rule()
    def flush(self) -> None:
        self.hub.flush()
        assert all(not a.pending for a in self.hub._audiences.values())
        for session in self._live():
            assert self._received(session.member) == self.expected[id(session.member)]

    def _received(self, m: Member) -> list[dict[str, Any]]:
        received = []
        for payload in frame_payloads(self.sinks[id(m)].writes):
            received.extend(orjson.loads(payload))
        return received

    @rule(seconds=st.sampled_from([0.1, 0.5, LINGER, 2.0]))
    def time_passes(self, seconds: float) -> None:
        """The relay's linger timer: plan the upstream, forget last values of what went."""
        self.now += seconds
        self.demand.lingering_expired()
        for market, plan in self.demand.plans().items():
            assert not set(plan.subscribe) & set(plan.unsubscribe)
            if plan.unsubscribe:
                gone = [parse_channel(name, market) for name in plan.unsubscribe]
                self.cache[market].forget(gone, self.demand.is_wanted)
        for interest in self.demand.markets.values():
            assert interest.subscribed_upstream == interest.wanted()

    @invariant()
    def consistent(self) -> None:
        check_hub(self.hub, self.demand, [s.member for s in self._live()], self.lingering, self.now)
        assert self.outbox.stats.slow_consumers == 0

    @invariant()
    def delivered_exactly_once_in_order(self) -> None:
        """What each member received is what it is owed, in order, once: all of it after a flush,
        a prefix of it while events are pending. (Events only: statuses and last values on
        subscribe come from session replies, not the hub.)"""
        for session in self._live():
            m = session.member
            received = self._received(m)
            assert received == self.expected[id(m)][: len(received)]


HubMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_hub_state_machine = HubMachine.TestCase


# --- membership changes inside the flush window ---------------------------------------------------------


def _trade(q: int) -> bytes:
    return orjson.dumps([{"ev": "T", "sym": "AAPL", "q": q}])


def test_subscribing_inside_the_flush_window_keeps_pending_events() -> None:
    """A client on T.AAPL subscribes Q.MSFT while T.AAPL q=2 waits for the flush: it must get q=2."""
    core = make_core()
    hub = core.hub
    m, sink = core.member()
    hub.subscribe(m, [Channel("stocks", "T", "AAPL")])
    hub.route("stocks", *decode_frame(_trade(1)))
    hub.flush()
    hub.route("stocks", *decode_frame(_trade(2)))  # pending until the flush window closes
    hub.subscribe(m, [Channel("stocks", "Q", "MSFT")])  # the client's message, inside the window
    hub.route("stocks", *decode_frame(_trade(3)))
    hub.flush()
    assert [e["q"] for e in sink.events()] == [1, 2, 3]


def test_last_value_on_subscribe_is_not_delivered_twice() -> None:
    """B subscribes Q.AAPL (A's channel set) while A's Q.AAPL q=1 is pending: B gets q=1 once."""
    core = make_core()
    a, _ = core.member()
    core.hub.subscribe(a, [Channel("stocks", "Q", "AAPL")])
    core.route("stocks", orjson.dumps([{"ev": "Q", "sym": "AAPL", "q": 1}]))
    b, sink = core.member()
    session = ClientSession(core.context(), b, "stocks")
    session.receive(b'{"action":"auth","params":"x"}')
    reply = session.receive(b'{"action":"subscribe","params":"Q.AAPL"}')
    core.outbox.send(b, reply.frames)  # what the server does with the reply, before the flush
    core.hub.flush()
    quotes = [e for e in sink.events() if e.get("ev") == "Q"]
    assert [e["q"] for e in quotes] == [1]
