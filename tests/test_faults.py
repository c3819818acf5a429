"""Upstream faults injected under load: clients subscribed, data flowing, every fault survived.

Each test starts the simulator and the relay in this process, connects a few
clients on several paths (the ``Watcher`` reads continuously, as a client that
keeps up does), waits for data, injects one fault (often many times) and then
checks what an operator and a client see:

* every client stays connected, and data flows again;
* the relay recovers per the upstream policy (backoff, auth retry, cooldown);
* the fault is counted (``UpstreamSession.stats``, /metrics) and logged a
  bounded number of times (no log storm);
* clients of the market whose upstream was lost get one ``feed interrupted``
  and one ``feed restored`` status per outage, others none;
* per-channel sequence numbers ``q`` have no gap, except for the first event of
  a channel after a ``feed restored`` status (Massive does not replay what was
  sent while the relay was disconnected).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from fastrelay import markets
from fastrelay.app import RunningRelay, running_relay
from fastrelay.sim import Simulator
from tests.utils import TIMEOUT, Client, fast_relay_config, http_get, wait_until

MAX_FRAME = 64 * 1024  # the relay's --max-frame-size here: the 1 MiB+ frame must be split
AUTH_RETRY = 0.5
COOLDOWN = 0.5


class Watcher:
    """A client that reads all the time, keeping every message in arrival order."""

    def __init__(self, name: str, path: str, ws: websockets.ClientConnection) -> None:
        self.name = name
        self.path = path
        self.ws = ws
        self.messages: list[dict[str, Any]] = []
        self.frame_sizes: list[int] = []  # payload bytes of each frame received
        self.closed: websockets.ConnectionClosed | None = None
        self._task = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def connect(cls, port: int, name: str, path: str, channels: str) -> Watcher:
        client = await Client.connect(f"ws://127.0.0.1:{port}/{path}")
        watcher = cls(name, path, client.ws)
        await watcher.ws.send(orjson.dumps({"action": "subscribe", "params": channels}).decode())
        wanted = {f"subscribed to: {c}" for c in channels.split(",")}
        await wait_until(
            lambda: wanted <= {s["message"] for s in watcher.statuses()}, what=f"{name} subscribed"
        )
        return watcher

    async def _read(self) -> None:
        try:
            while True:
                frame = await self.ws.recv(decode=False)
                self.frame_sizes.append(len(frame))
                self.messages.extend(orjson.loads(frame))
        except websockets.ConnectionClosed as exc:
            self.closed = exc

    def statuses(self, start: int = 0) -> list[dict[str, Any]]:
        return [m for m in self.messages[start:] if m.get("ev") == "status"]

    def events(self, start: int = 0) -> list[dict[str, Any]]:
        return [m for m in self.messages[start:] if m.get("ev") != "status"]

    def outage_statuses(self, start: int = 0) -> tuple[list[str], list[str]]:
        """(interrupted, restored) status messages since ``start``."""
        down = [s["message"] for s in self.statuses(start) if "feed interrupted" in s["message"]]
        up = [s["message"] for s in self.statuses(start) if "feed restored" in s["message"]]
        return down, up

    def market_of(self, event: dict[str, Any]) -> str:
        if self.path != "api/socket":
            return self.path
        return markets.infer_market(event["ev"], ticker(event))

    async def close(self) -> None:
        await self.ws.close()
        await asyncio.wait_for(self._task, TIMEOUT)


def ticker(event: dict[str, Any]) -> str:
    return str(event.get("sym") or event.get("pair") or event.get("T") or event.get("p"))


@dataclass
class SequenceReport:
    unexpected: list[tuple[str, int, int]]  # gaps, repeats or reorders not explained by an outage
    across_outages: list[tuple[str, int, int]]  # gaps right after a "feed restored" status


def check_sequences(watcher: Watcher, start: int) -> SequenceReport:
    """Per-channel ``q`` from message ``start`` on: a step of one, except across an outage.

    A gap is explained only for the first event of a channel after a
    ``MARKET feed restored`` status of its market: events sent while the
    relay was disconnected are not replayed. A repeated or decreasing ``q``
    is never explained.
    """
    restored: dict[str, int] = {}  # market -> restores seen so far
    last: dict[str, tuple[int, int]] = {}  # channel -> (q, restores of its market at that time)
    report = SequenceReport([], [])
    for message in watcher.messages[start:]:
        if message.get("ev") == "status":
            text = str(message.get("message", ""))
            if " feed restored" in text:
                market = text.split(" feed restored", 1)[0]
                restored[market] = restored.get(market, 0) + 1
            continue
        q = message.get("q")
        if not isinstance(q, int):
            continue
        market = watcher.market_of(message)
        channel = f"{market}:{message['ev']}.{ticker(message)}"
        epoch = restored.get(market, 0)
        if channel in last:
            previous, previous_epoch = last[channel]
            if q != previous + 1:
                if q > previous and epoch != previous_epoch:
                    report.across_outages.append((channel, previous, q))
                else:
                    report.unexpected.append((channel, previous, q))
        last[channel] = (q, epoch)
    return report


@dataclass
class Load:
    sim: Simulator
    relay: RunningRelay
    watchers: dict[str, Watcher]
    marks: dict[str, int]  # where each watcher's messages stood when the fault was injected

    def mark(self) -> None:
        self.marks = {name: len(w.messages) for name, w in self.watchers.items()}

    def stocks_watchers(self) -> list[Watcher]:
        return [w for name, w in self.watchers.items() if name != "options"]

    async def more_events(self, count: int = 20) -> None:
        """Every watcher receives ``count`` more events from now."""
        for watcher in self.watchers.values():
            have = len(watcher.events())
            await wait_until(
                lambda w=watcher, h=have: len(w.events()) >= h + count,
                timeout=TIMEOUT * 2,
                what=f"{count} more events on {watcher.name}",
            )

    def assert_connected(self) -> None:
        for watcher in self.watchers.values():
            assert watcher.closed is None, f"{watcher.name} was closed: {watcher.closed}"
            assert watcher.ws.state is websockets.protocol.State.OPEN
        assert self.relay.relay.hub.members == len(self.watchers)

    def sequences(self) -> dict[str, SequenceReport]:
        return {name: check_sequences(w, self.marks[name]) for name, w in self.watchers.items()}

    def assert_no_gap(self) -> None:
        for name, report in self.sequences().items():
            assert report.unexpected == [], f"{name}: {report.unexpected[:5]}"
            assert report.across_outages == [], f"{name}: {report.across_outages[:5]}"

    def assert_outages(self, count: int, reason: str | None) -> None:
        """``count`` interrupted + ``count`` restored statuses to stocks clients; none to options-only."""
        for watcher in self.stocks_watchers():
            down, up = watcher.outage_statuses(self.marks[watcher.name])
            assert len(down) == count and len(up) == count, (watcher.name, down, up)
            for message in down:
                assert message.startswith(f"stocks feed interrupted ({reason})"), message
                assert "not replayed" in message
            assert all(m == "stocks feed restored: subscriptions resumed" for m in up)
        options = self.watchers["options"]
        assert options.outage_statuses(self.marks["options"]) == ([], [])


# Clients on every kind of path: a stocks wildcard, exact stocks channels, an
# exact trade channel the wildcard covers upstream, /api/socket mixing markets, and
# an options-only client that a stocks fault must not disturb.
CLIENTS = {
    "trades": ("stocks", "T.*"),
    "aapl": ("stocks", "T.AAPL,Q.AAPL"),
    "quotes": ("stocks", "Q.MSFT,T.MSFT"),
    "api": ("api/socket", "T.*,T.O:SPY251219C00600000"),
    "options": ("options", "T.*"),
}


@pytest.fixture
async def load(sim: Simulator) -> AsyncIterator[Load]:
    config = fast_relay_config(sim.base_url, "sim-key", max_frame_size=MAX_FRAME, metrics_interval=0.05)
    config.upstream_timers.auth_retry = AUTH_RETRY
    config.upstream_timers.max_connections_cooldown = COOLDOWN
    async with running_relay(config) as relay:
        await wait_until(lambda: relay.ready, what="relay ready")
        watchers = {
            name: await Watcher.connect(relay.port, name, path, channels)
            for name, (path, channels) in CLIENTS.items()
        }
        loaded = Load(sim, relay, watchers, {})
        await loaded.more_events(20)
        loaded.mark()
        try:
            yield loaded
        finally:
            for watcher in watchers.values():
                await watcher.close()


def upstream_warnings(caplog: pytest.LogCaptureFixture, fragment: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("fastrelay") and r.levelno >= logging.WARNING and fragment in r.getMessage()
    ]


async def metric(relay: RunningRelay, name: str, **labels: str) -> float:
    """One sample of a fresh /metrics rendering."""
    metrics = relay.metrics
    before = metrics.text
    await wait_until(lambda: metrics.text is not before, what="a new /metrics rendering")
    status, body = await http_get(relay.port, "/metrics")
    assert status == 200
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    raise AssertionError(f"no sample {name}{labels}")


@pytest.fixture(autouse=True)
def _capture_relay_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fastrelay")


# --- connection lost -------------------------------------------------------------------------------


async def test_drop_under_load_reconnects_resubscribes_and_announces(
    load: Load, caplog: pytest.LogCaptureFixture
) -> None:
    """Three drops (one over the HTTP fault endpoint): each one reconnect within the backoff cap,
    one outage status pair per drop to stocks clients, gaps only across the outages, one log line."""
    relay = load.relay.relay
    stocks = relay.feeds["stocks"]
    options_connects = relay.feeds["options"].stats.connects
    cap = stocks.timers.backoff_cap
    for round_ in range(3):
        connects = stocks.stats.connects
        started = time.monotonic()
        if round_ == 1:
            status, body = await http_get(load.sim.port, "/sim/fault/drop?market=stocks")
            assert status == 200 and orjson.loads(body)["affected"] == 1
        else:
            assert load.sim.fault("drop", "stocks") == 1
        await wait_until(lambda c=connects: stocks.stats.connects > c and stocks.live, what="reconnected")
        # Full jitter draws at most the cap; the rest is a loopback handshake.
        assert time.monotonic() - started < cap + TIMEOUT / 5
        await wait_until(
            lambda: (
                {"T.*", "Q.AAPL", "Q.MSFT"} <= set(load.sim.stats()["markets"]["stocks"]["subscriptions"])
            ),
            what="resubscribed upstream",
        )
        await load.more_events(10)
    assert stocks.stats.reconnects["drop"] == 3
    assert relay.feeds["options"].stats.connects == options_connects  # the other market untouched
    load.assert_connected()
    load.assert_outages(3, "drop")
    sequences = load.sequences()
    for name, report in sequences.items():
        assert report.unexpected == [], f"{name}: {report.unexpected[:5]}"
    # The checker sees the outage gaps: trades sent while disconnected are missing.
    assert sequences["trades"].across_outages
    assert sequences["options"].across_outages == []
    assert len(upstream_warnings(caplog, "upstream stocks: lost (drop)")) == 1
    assert (
        await metric(load.relay, "fastrelay_upstream_reconnects_total", market="stocks", reason="drop") == 3
    )


async def test_stall_is_detected_by_ping_and_recovered(load: Load, caplog: pytest.LogCaptureFixture) -> None:
    """A silent upstream (no data, no pong) is dropped after the ping timeout and replaced."""
    stocks = load.relay.relay.feeds["stocks"]
    timers = stocks.timers
    connects = stocks.stats.connects
    started = time.monotonic()
    try:
        assert load.sim.fault("stall", "stocks") == 1
        await wait_until(lambda: stocks.stats.reconnects["stall"] == 1, what="stall detected")
        detected = time.monotonic() - started
        # Idle for ping_interval, then no pong for ping_timeout: not earlier, not much later.
        assert (
            timers.ping_timeout * 0.9 <= detected < timers.ping_interval + timers.ping_timeout + TIMEOUT / 5
        )
        await wait_until(lambda: stocks.stats.connects > connects and stocks.live, what="reconnected")
        await load.more_events(20)
    finally:
        load.sim.unstall("stocks")
    load.assert_connected()
    load.assert_outages(1, "stall")
    for name, report in load.sequences().items():
        assert report.unexpected == [], f"{name}: {report.unexpected[:5]}"
    assert len(upstream_warnings(caplog, "upstream stocks: lost (stall)")) == 1


# --- bad frames ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["malformed", "not_array"])
async def test_bad_frames_are_counted_logged_once_and_skipped(
    load: Load, caplog: pytest.LogCaptureFixture, fault: str
) -> None:
    """50 undecodable frames: 50 counted, logged once, no reconnect, no status, no gap."""
    stocks = load.relay.relay.feeds["stocks"]
    connects = stocks.stats.connects
    for _ in range(50):
        assert load.sim.fault(fault, "stocks") == 1
    await wait_until(lambda: stocks.stats.decode_errors == 50, what="50 decode errors counted")
    await load.more_events(20)
    assert stocks.stats.connects == connects
    assert sum(stocks.stats.reconnects.values()) == 0
    load.assert_connected()
    load.assert_no_gap()
    for watcher in load.watchers.values():
        assert watcher.statuses(load.marks[watcher.name]) == []
    assert len(upstream_warnings(caplog, "skipped a bad frame")) == 1
    assert await metric(load.relay, "fastrelay_upstream_decode_errors_total", market="stocks") == 50


async def test_an_unknown_ev_upstream_is_skipped_quietly(
    load: Load, caplog: pytest.LogCaptureFixture
) -> None:
    """An ev the market does not have (ZZ) cannot be subscribed (docs/protocol.md), so when the
    upstream sends one it reaches nobody; it is not an error and disturbs nothing."""
    stocks = load.relay.relay.feeds["stocks"]
    events_before = stocks.stats.events
    for _ in range(5):
        assert load.sim.fault("unknown_ev", "stocks") == 1
    await wait_until(lambda: stocks.stats.events >= events_before + 5, what="the ZZ events received")
    await load.more_events(10)
    for name, watcher in load.watchers.items():
        assert [e for e in watcher.events(load.marks[name]) if e["ev"] == "ZZ"] == [], name
    assert stocks.stats.decode_errors == 0 and sum(stocks.stats.reconnects.values()) == 0
    load.assert_connected()
    load.assert_no_gap()
    assert upstream_warnings(caplog, "upstream") == []


async def test_frame_over_one_mib_is_delivered_split_and_in_order(load: Load) -> None:
    """A 1 MiB+ upstream frame reaches clients whole, in frames under --max-frame-size, in order."""
    stocks = load.relay.relay.feeds["stocks"]
    received = stocks.stats.bytes
    frames = {name: len(w.frame_sizes) for name, w in load.watchers.items()}
    assert load.sim.fault("huge", "stocks") == 1
    await wait_until(lambda: stocks.stats.bytes - received > 1024 * 1024, what="the huge frame read")
    await load.more_events(20)
    trades = load.watchers["trades"]
    new_sizes = trades.frame_sizes[frames["trades"] :]
    # Most of the huge frame is trades of every symbol: over half a MiB for T.*.
    assert sum(new_sizes) > 512 * 1024
    assert sum(1 for size in new_sizes if size > MAX_FRAME // 2) >= 4  # it was split, not trickled
    for name, watcher in load.watchers.items():
        assert max(watcher.frame_sizes[frames[name] :]) <= MAX_FRAME, name
    assert stocks.stats.decode_errors == 0 and sum(stocks.stats.reconnects.values()) == 0
    load.assert_connected()
    load.assert_no_gap()
    assert load.relay.relay.outbox.stats.slow_consumers == 0


# --- refused by the upstream -----------------------------------------------------------------------


async def test_auth_failed_keeps_clients_and_retries_after_the_delay(
    load: Load, caplog: pytest.LogCaptureFixture
) -> None:
    """The upstream drops and then refuses the key: clients stay, one error log, the refusal
    reported by /readyz (refused markets are not waited for, docs/operations.md "Readiness"),
    no retry before --auth-retry, and data again once the key is accepted."""
    relay = load.relay.relay
    stocks = relay.feeds["stocks"]
    load.sim.fault("auth_fail", "stocks")
    load.sim.fault("drop", "stocks")
    await wait_until(lambda: stocks.stats.reconnects["auth_failed"] == 1, what="auth failure")
    failed_at = time.monotonic()
    assert stocks.refused is not None and load.relay.ready  # options is live; stocks is reported
    status, body = await http_get(load.relay.port, "/readyz")
    assert status == 200 and b"stocks: refused by Massive (auth_failed" in body
    load.sim.fault("auth_ok", "stocks")
    await wait_until(lambda: stocks.live, timeout=TIMEOUT + AUTH_RETRY, what="live again")
    assert time.monotonic() - failed_at >= AUTH_RETRY * 0.95
    assert stocks.stats.reconnects["auth_failed"] == 1
    await load.more_events(20)
    load.assert_connected()
    load.assert_outages(1, "drop")  # the drop ended the live session; the refusal came after
    for name, report in load.sequences().items():
        assert report.unexpected == [], f"{name}: {report.unexpected[:5]}"
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len([m for m in errors if "authentication failed" in m]) == 1
    assert all("sim-key" not in r.getMessage() for r in caplog.records)


async def test_max_connections_then_close_1008_cools_down(
    load: Load, caplog: pytest.LogCaptureFixture
) -> None:
    """Evicted (max_connections, then close 1008): one clear error, a cooldown, then back."""
    stocks = load.relay.relay.feeds["stocks"]
    assert load.sim.fault("max_connections", "stocks") == 1
    await wait_until(lambda: stocks.stats.reconnects["max_connections"] == 1, what="evicted")
    evicted_at = time.monotonic()
    load.sim.fault("auth_ok", "stocks")
    await wait_until(lambda: stocks.live, timeout=TIMEOUT + COOLDOWN, what="live after the cooldown")
    assert time.monotonic() - evicted_at >= COOLDOWN * 0.95
    assert stocks.stats.reconnects["max_connections"] == 1
    await load.more_events(20)
    load.assert_connected()
    load.assert_outages(1, "max_connections")
    for name, report in load.sequences().items():
        assert report.unexpected == [], f"{name}: {report.unexpected[:5]}"
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len([m for m in errors if "another process uses the same API key" in m]) == 1


# --- slow ------------------------------------------------------------------------------------------


async def test_slow_upstream_is_not_a_fault(load: Load, caplog: pytest.LogCaptureFixture) -> None:
    """Late and sparse data (0.5 s behind, silent longer than the ping interval) with pongs answered:
    no reconnect, no status, no gap; the feed latency histogram shows the delay."""
    stocks = load.relay.relay.feeds["stocks"]
    delay = 0.5
    assert delay > stocks.timers.ping_interval  # the relay must ping and accept the pong
    late_bucket = stocks.stats.latency.bounds.index(0.25) + 1  # first bucket above 0.25 s

    def late() -> int:
        return sum(stocks.stats.latency.counts[late_bucket:])

    before = late()
    load.sim.fault("slow", "stocks", factor=0.2, delay=delay)
    try:
        await wait_until(lambda: late() >= before + 20, timeout=TIMEOUT * 2, what="late events")
        await load.more_events(5)
    finally:
        load.sim.fault("unslow", "stocks")
    await load.more_events(20)
    assert sum(stocks.stats.reconnects.values()) == 0 and stocks.stats.connects == 1
    load.assert_connected()
    load.assert_no_gap()
    for watcher in load.watchers.values():
        assert watcher.statuses(load.marks[watcher.name]) == []
    assert upstream_warnings(caplog, "upstream") == []
