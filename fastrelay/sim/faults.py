"""Fault injection: the fault names and what each fault does to the feeds it targets.

Each fault is a function of the feeds of one market path (or of all of them)
that returns how many connections or markets it affected. ``Simulator`` has a
method per name, ``Simulator.fault(name, market)`` calls it, and so does the
HTTP ``GET /sim/fault/NAME[?market=...]`` on the simulator's port, whose query
parameters ``query_params`` reads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import orjson

from fastrelay.sim.connection import Connection
from fastrelay.sim.feed import Event, Feed, Symbol, now_ms

# Faults a caller can inject; also the names after /sim/fault/.
FAULTS: Final = (
    "drop",
    "stall",
    "unstall",
    "malformed",
    "not_array",
    "unknown_ev",
    "huge",
    "auth_fail",
    "auth_fail_old",
    "auth_ok",
    "max_connections",
    "slow",
    "unslow",
    "rest_slow",
    "rest_429",
    "rest_5xx",
    "rest_malformed",
    "rest_ok",
)
# Defaults of the REST faults: the delay of rest_slow (s), the status of rest_5xx.
REST_SLOW_DELAY: Final = 1.0
REST_5XX_STATUS: Final = 502
REST_5XX_STATUSES: Final = (500, 502, 503, 504)
# Comfortably over the 1 MiB default cap of Massive's official clients, which
# is what the fault exists to exercise.
HUGE_FRAME_BYTES: Final = 1024 * 1024 + 64 * 1024


def query_params(name: str, query: Mapping[str, str]) -> dict[str, Any]:
    """Fault ``name``'s keyword arguments in an HTTP query: ``factor``, ``delay``, ``current``, ``status``.

    Raises ``ValueError`` for a number that does not parse.
    """
    params: dict[str, Any] = {}
    if name == "slow":
        if "factor" in query:
            params["factor"] = float(query["factor"])
        if "delay" in query:
            params["delay"] = float(query["delay"])
    if name == "rest_slow" and "delay" in query:
        params["delay"] = float(query["delay"])
    if name == "rest_5xx" and "status" in query:
        params["status"] = int(query["status"])
    if name == "max_connections" and "current" in query:
        params["current"] = query["current"].lower() not in ("0", "false", "no")
    return params


# --- connections ---


def drop(feeds: Sequence[Feed]) -> int:
    """Cut every connection without a closing handshake."""
    conns = [conn for feed in feeds for conn in feed.conns]
    for conn in conns:
        conn.abort()
    return len(conns)


def stall(feeds: Sequence[Feed]) -> int:
    """Current connections go silent: no data, no reading, no pongs; still open.

    Connections made afterwards are normal, so a client that detects the
    stall and reconnects recovers.
    """
    count = 0
    for feed in feeds:
        for conn in feed.conns:
            if not conn.stalled and not conn.closing:
                conn.stall()
                count += 1
        feed.refresh()
    return count


def unstall(feeds: Sequence[Feed]) -> int:
    """Stalled connections read, send and answer pings again."""
    count = 0
    for feed in feeds:
        for conn in feed.conns:
            if conn.stalled:
                conn.unstall()
                count += 1
        feed.refresh()
    return count


# --- frames no client should have to take ---


def _send_raw(feeds: Sequence[Feed], make: Callable[[Feed], bytes]) -> int:
    count = 0
    for feed in feeds:
        if not feed.receivers:
            continue
        payload = make(feed)
        for conn in feed.receivers:
            conn.send(payload)
            count += 1
    return count


def _sample_symbol(feed: Feed) -> str:
    return feed.symbols[0].name


def malformed(feeds: Sequence[Feed]) -> int:
    """One frame that is not JSON to every live connection."""
    return _send_raw(feeds, lambda feed: b'[{"ev":"T","sym":')


def not_array(feeds: Sequence[Feed]) -> int:
    """One frame that is a JSON object, not an array."""

    def make(feed: Feed) -> bytes:
        ev = feed.tick_evs[0]
        key = "T" if ev == "V" else "p" if ev == "C" else feed.key
        return orjson.dumps({"ev": ev, key: _sample_symbol(feed), "t": now_ms()})

    return _send_raw(feeds, make)


def unknown_ev(feeds: Sequence[Feed]) -> int:
    """One frame with an event type no client knows (``ZZ``)."""
    return _send_raw(
        feeds,
        lambda feed: orjson.dumps([{"ev": "ZZ", feed.key: _sample_symbol(feed), "t": now_ms(), "zz": 1}]),
    )


def huge(feeds: Sequence[Feed]) -> int:
    """One valid frame over 1 MiB, of subscribed channels, to every live connection."""
    return sum(_huge_frames(feed) for feed in feeds)


def _channels_of(feed: Feed, conn: Connection) -> list[tuple[str, Symbol]]:
    """The (tick ev, symbol) pairs a connection is subscribed to."""
    pairs: list[tuple[str, Symbol]] = []
    for ev in feed.tick_evs:
        if ev in conn.wild:
            pairs.extend((ev, sym) for sym in feed.symbols)
        else:
            pairs.extend((ev, sym) for sym in feed.symbols if sym.ch[ev] in conn.exact)
    return pairs


def _huge_frames(feed: Feed) -> int:
    """One frame over 1 MiB to every live connection of ``feed``, of events it subscribed to."""
    t = now_ms()
    if feed.aggregates:
        aggs: list[Event] = []
        feed.roll(t, aggs)
        feed.dispatch(aggs)
    burst: list[Event] = []
    targets = 0
    for conn in feed.receivers:
        pairs = _channels_of(feed, conn)
        if not pairs:
            continue
        targets += 1
        size = 0
        i = 0
        while size <= HUGE_FRAME_BYTES:
            ev, sym = pairs[i % len(pairs)]
            i += 1
            before = len(burst)
            feed.makers[ev](sym, t, burst)
            feed.events_generated += 1
            size += sum(len(event[2]) + 1 for event in burst[before:])
    feed.dispatch(burst)
    return targets


# --- auth and eviction ---


def auth_fail(feeds: Sequence[Feed]) -> int:
    """Answer every following auth with auth_failed (and close 1008) until ``auth_ok``."""
    for feed in feeds:
        feed.auth_fail = True
    return len(feeds)


def auth_fail_old(feeds: Sequence[Feed]) -> int:
    """As ``auth_fail``, in the older servers' form: an ``error`` status "authentication failed"."""
    for feed in feeds:
        feed.auth_fail = True
        feed.auth_fail_old = True
    return len(feeds)


def auth_ok(feeds: Sequence[Feed]) -> int:
    """End ``auth_fail`` (either form) and ``max_connections``."""
    for feed in feeds:
        feed.auth_fail = False
        feed.auth_fail_old = False
        feed.max_connections = False
    return len(feeds)


def max_connections(feeds: Sequence[Feed], *, current: bool) -> int:
    """Evict as Massive does when the key is used elsewhere, until ``auth_ok``.

    Following auths get auth_success, then max_connections and a close 1008;
    with ``current`` the authenticated connections get the same now.
    """
    count = 0
    for feed in feeds:
        feed.max_connections = True
        if current:
            for conn in list(feed.conns):
                if conn.authenticated and not conn.closing:
                    conn.evict()
                    count += 1
    return count


# --- pace ---


def slow(feeds: Sequence[Feed], *, factor: float, delay: float) -> int:
    """Generate at ``factor`` x the rate and deliver ``delay`` seconds late, until ``unslow``."""
    if factor < 0 or delay < 0:
        raise ValueError("factor and delay must be >= 0")
    for feed in feeds:
        feed.slow = True
        feed.slow_factor = factor
        feed.slow_delay = delay
    return len(feeds)


def unslow(feeds: Sequence[Feed]) -> int:
    """Back to the configured rate; what ``slow`` held back is delivered now."""
    for feed in feeds:
        feed.slow = False
        feed.slow_factor = 1.0
        feed.slow_delay = 0.0
        feed.flush_delayed(None)
    return len(feeds)


# --- REST (rest.py): per market, for the tickers of that market ---


def rest_slow(feeds: Sequence[Feed], *, delay: float) -> int:
    """Answer every REST request ``delay`` seconds late (errors too), until ``rest_ok``."""
    if delay < 0:
        raise ValueError("delay must be >= 0")
    for feed in feeds:
        feed.rest_delay = delay
    return len(feeds)


def rest_429(feeds: Sequence[Feed]) -> int:
    """Answer every REST request 429 with Massive's rate-limit error, until ``rest_ok``."""
    for feed in feeds:
        feed.rest_status = 429
    return len(feeds)


def rest_5xx(feeds: Sequence[Feed], *, status: int) -> int:
    """Answer every REST request ``status`` (502, 503...) with a gateway's HTML page, until ``rest_ok``."""
    if status not in REST_5XX_STATUSES:
        raise ValueError(f"status must be one of {', '.join(map(str, REST_5XX_STATUSES))}")
    for feed in feeds:
        feed.rest_status = status
    return len(feeds)


def rest_malformed(feeds: Sequence[Feed]) -> int:
    """Cut every REST answer's body in half, short of valid JSON (status kept), until ``rest_ok``."""
    for feed in feeds:
        feed.rest_malformed = True
    return len(feeds)


def rest_ok(feeds: Sequence[Feed]) -> int:
    """End every REST fault."""
    for feed in feeds:
        feed.rest_delay = 0.0
        feed.rest_status = None
        feed.rest_malformed = False
    return len(feeds)
