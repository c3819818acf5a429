"""/metrics: every series from start-up, counters that move with what happens."""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from fastrelay.app import RunningRelay, running_relay
from fastrelay.closes import CLOSE_LABELS
from fastrelay.feed import MASSIVE_REASONS
from fastrelay.histogram import Histogram
from fastrelay.metrics import BootTimeProcessCollector
from fastrelay.sim import Simulator
from tests.utils import Client, fast_relay_config, http_get, wait_until


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(text: bytes, name: str, **labels: str) -> float:
    return samples(text)[(name, tuple(sorted(labels.items())))]


async def scrape(relay: RunningRelay) -> bytes:
    """A fresh rendering: wait for the next render tick, then GET /metrics."""
    metrics = relay.metrics
    before = metrics.text
    await wait_until(lambda: metrics.text is not before, what="a new rendering")
    status, body = await http_get(relay.server.metrics_port or relay.port, "/metrics")
    assert status == 200
    return body


async def test_every_labelled_series_exists_at_zero_from_start(sim: Simulator) -> None:
    """Before any event: one series per market and reason, at 0, plus process_* and python_*."""
    config = fast_relay_config(sim.base_url, "wrong", metrics_interval=0.05)
    async with running_relay(config) as relay:
        text = await scrape(relay)
    for market in ("stocks", "options"):
        for reason in MASSIVE_REASONS:
            assert (
                "fastrelay_upstream_reconnects_total",
                (("market", market), ("reason", reason)),
            ) in samples(text)
        assert value(text, "fastrelay_upstream_events_total", market=market) == 0
    for reason in CLOSE_LABELS:
        for path in ("/stocks", "/options", "/api/socket"):
            assert value(text, "fastrelay_client_disconnections_total", path=path, reason=reason) == 0
    names = {name for name, _ in samples(text)}
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "python_info"} <= names
    assert value(text, "fastrelay_ready") == 0


async def test_counters_move_with_reconnects_and_deliveries(sim: Simulator) -> None:
    """A forced drop counts a reconnect; deliveries, subscriptions and latency histograms fill."""
    config = fast_relay_config(sim.base_url, "sim-key", metrics_interval=0.05, metrics_port=0)
    async with running_relay(config) as relay:
        await wait_until(lambda: relay.ready, what="ready")
        client = await Client.connect(f"ws://127.0.0.1:{relay.port}/stocks")
        await client.subscribe("T.*,Q.AAPL")
        await client.wait_events(20)
        session = relay.relay.feeds["stocks"]
        sim.drop("stocks")
        await wait_until(lambda: session.stats.reconnects["drop"] >= 1 and session.live, what="reconnect")
        text = await scrape(relay)
        assert value(text, "fastrelay_upstream_reconnects_total", market="stocks", reason="drop") >= 1
        assert value(text, "fastrelay_client_events_sent_total") >= 20
        assert value(text, "fastrelay_client_subscriptions") == 2
        assert value(text, "fastrelay_clients", path="/stocks") == 1
        assert value(text, "fastrelay_relay_latency_seconds_count") >= 1
        assert value(text, "fastrelay_feed_latency_seconds_count", market="stocks") >= 1
        assert value(text, "fastrelay_upstream_channels", market="stocks") == 2
        # The same endpoints on --metrics-port.
        assert relay.server.metrics_port is not None
        status, body = await http_get(relay.server.metrics_port, "/metrics")
        assert status == 200 and b"fastrelay_upstream_connected" in body
        assert (await http_get(relay.server.metrics_port, "/readyz"))[0] == 200
        # With a metrics port, metrics and readiness are internal: not on the client port.
        assert (await http_get(relay.port, "/metrics"))[0] == 404
        assert (await http_get(relay.port, "/readyz"))[0] == 404
        assert (await http_get(relay.port, "/healthz"))[0] == 200
        await client.close()
        await wait_until(lambda: relay.server.stats.closed["normal"] == 1, what="normal close counted")


def test_histogram_buckets_are_cumulative_with_le_semantics() -> None:
    """A value equal to a bound falls in that bucket; buckets accumulate; +Inf holds all."""
    hist = Histogram([0.001, 0.01])
    for v in (0.0005, 0.001, 0.005, 5.0):
        hist.observe(v)
    assert hist.cumulative() == [("0.001", 2), ("0.01", 3), ("+Inf", 4)]
    assert hist.count == 4 and abs(hist.sum - 5.0065) < 1e-9


def test_process_metrics_survive_a_hidden_proc_stat(tmp_path: Path) -> None:
    """Under systemd's ProcSubset=pid /proc/stat is gone; CPU, memory and fds are still exported."""
    os.symlink(f"/proc/{os.getpid()}", tmp_path / "self")  # only the process's own directory
    registry = CollectorRegistry()
    BootTimeProcessCollector(proc=str(tmp_path), registry=registry)
    names = {family.name for family in registry.collect()}
    assert {"process_cpu_seconds", "process_resident_memory_bytes", "process_open_fds"} <= names
    stock = CollectorRegistry()
    ProcessCollector(proc=str(tmp_path), registry=stock)
    assert list(stock.collect()) == []  # what the stock collector gives there: nothing
