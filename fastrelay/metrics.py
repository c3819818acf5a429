"""Every metric of the relay in one place, read from plain counters at scrape time.

Instrumentation stays off the hot path: the hub, the upstream sessions and the
server count in plain integers and ``histogram.Histogram``; this collector
turns them into Prometheus families when ``/metrics`` is rendered. There is no
Prometheus call per event or per client, and no label per symbol or per client.

Rendering (``generate_latest``) takes milliseconds for a few hundred lines,
and picows answers plain HTTP synchronously inside the loop, so the text is
rendered on a timer (``--metrics-interval``) and ``/metrics`` serves the
latest rendering.
"""

from __future__ import annotations

import asyncio
import platform
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from fastrelay import __version__
from fastrelay.bars import ERROR_REASONS, LATENCY_BOUNDS, RESULTS
from fastrelay.histogram import LOOP_LAG_BOUNDS, Histogram

if TYPE_CHECKING:
    from fastrelay.roles import Role
    from fastrelay.server import ServerStatistics

CONTENT_TYPE = CONTENT_TYPE_LATEST


def _histogram(name: str, doc: str, hist: Histogram, labels: dict[str, str] | None = None) -> Metric:
    family = HistogramMetricFamily(name, doc, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), hist.cumulative(), hist.sum)
    return family


class RelayCollector(Collector):
    """Reads the relay's plain counters into Prometheus families."""

    def __init__(self, role: Role, server: ServerStatistics, loop_lag: Histogram) -> None:
        self._role = role
        self._relay = role.relay
        self._server = server
        self._loop_lag = loop_lag

    def collect(self) -> Iterator[Metric]:
        yield from self._upstream()
        yield from self._clients()
        yield from self._rest()
        relay = self._relay
        yield _histogram(
            "fastrelay_relay_latency_seconds",
            "Upstream frame arrival to the write of its events to client sockets.",
            relay.hub.latency,
        )
        yield _histogram(
            "fastrelay_event_loop_lag_seconds",
            "How late the event loop runs a timer: time the loop was busy or blocked.",
            self._loop_lag,
        )
        yield GaugeMetricFamily(
            "fastrelay_event_loop_tasks",
            "asyncio tasks alive: flat over days, or something leaks.",
            value=len(asyncio.all_tasks()),
        )
        ready = GaugeMetricFamily("fastrelay_ready", "1 when every configured upstream is authenticated.")
        ready.add_metric([], 1.0 if self._role.not_ready_reason() is None else 0.0)
        yield ready
        info = GaugeMetricFamily(
            "fastrelay_build_info", "fastrelay build and role.", labels=["version", "python", "role"]
        )
        info.add_metric([__version__, platform.python_version(), self._role.name], 1.0)
        yield info

    def _upstream(self) -> Iterator[Metric]:
        connected = GaugeMetricFamily(
            "fastrelay_upstream_connected",
            "1 while the market's upstream is authenticated.",
            labels=["market"],
        )
        refused = GaugeMetricFamily(
            "fastrelay_upstream_refused",
            "1 while Massive refuses the market's key or plan (not waited for by /readyz unless required).",
            labels=["market"],
        )
        where = GaugeMetricFamily(
            "fastrelay_upstream_info",
            "Where each market's events come from (1 per market; the host is a label).",
            labels=["market", "host"],
        )
        reconnects = CounterMetricFamily(
            "fastrelay_upstream_reconnects",
            "Upstream connections lost or refused, by reason.",
            labels=["market", "reason"],
        )
        frames = CounterMetricFamily("fastrelay_upstream_frames", "Frames received.", labels=["market"])
        events = CounterMetricFamily("fastrelay_upstream_events", "Events received.", labels=["market"])
        received = CounterMetricFamily(
            "fastrelay_upstream_received_bytes", "Payload bytes received.", labels=["market"]
        )
        errors = CounterMetricFamily(
            "fastrelay_upstream_decode_errors",
            "Frames that failed to decode and were skipped.",
            labels=["market"],
        )
        channels = GaugeMetricFamily(
            "fastrelay_upstream_channels", "Channels subscribed upstream.", labels=["market"]
        )
        last_event = GaugeMetricFamily(
            "fastrelay_upstream_last_event_timestamp_seconds",
            "Unix time of the last data frame received (0: none since start).",
            labels=["market"],
        )
        feed = HistogramMetricFamily(
            "fastrelay_feed_latency_seconds",
            "Event timestamp (ms ones) to arrival at the relay; sampled: first event of each frame.",
            labels=["market"],
        )
        rejections = CounterMetricFamily(
            "fastrelay_upstream_rejections",
            "Channels Massive refused after the relay took them, by kind (clients told, channel let go).",
            labels=["market", "reason"],
        )
        for market, source in self._relay.feeds.items():
            stats = source.stats
            for reason, count in stats.rejections.items():
                rejections.add_metric([market, reason], count)
            connected.add_metric([market], 1.0 if source.live else 0.0)
            refused.add_metric([market], 0.0 if source.refused is None else 1.0)
            where.add_metric([market, source.where], 1.0)
            # Edges add their own reasons (nats, ingest) to Massive's.
            for reason, count in stats.reconnects.items():
                reconnects.add_metric([market, reason], count)
            frames.add_metric([market], stats.frames)
            events.add_metric([market], stats.events)
            received.add_metric([market], stats.bytes)
            errors.add_metric([market], stats.decode_errors)
            channels.add_metric([market], self._relay.demand[market].upstream_count)
            last_event.add_metric([market], stats.last_event_at)
            feed.add_metric([market], stats.latency.cumulative(), stats.latency.sum)
        yield from (connected, refused, where, reconnects, frames, events, received, errors, channels)
        yield from (last_event, feed, rejections)

    def _clients(self) -> Iterator[Metric]:
        server = self._server
        hub = self._relay.hub
        outbox = self._relay.outbox
        stats = outbox.stats
        connected = GaugeMetricFamily("fastrelay_clients", "Connected clients.", labels=["path"])
        accepted = CounterMetricFamily(
            "fastrelay_client_connections", "Client connections accepted.", labels=["path"]
        )
        closed = CounterMetricFamily(
            "fastrelay_client_disconnections",
            "Client connections closed (or refused before the upgrade), by path and reason.",
            labels=["path", "reason"],
        )
        for path, count in server.connected.items():
            connected.add_metric([path], count)
            accepted.add_metric([path], server.accepted[path])
            for reason, closes in server.closed_by_path[path].items():
                closed.add_metric([path, reason], closes)
        yield from (connected, accepted, closed)
        yield GaugeMetricFamily(
            "fastrelay_client_subscriptions",
            "Channels subscribed, summed over clients.",
            value=hub.subscriptions,
        )
        yield CounterMetricFamily(
            "fastrelay_client_events_sent",
            "Events written to clients (events x recipients).",
            value=stats.deliveries,
        )
        yield CounterMetricFamily(
            "fastrelay_client_frames_sent",
            "Frames written to clients (replies included).",
            value=stats.frames,
        )
        yield CounterMetricFamily(
            "fastrelay_client_sent_bytes", "Bytes written to client sockets.", value=stats.bytes
        )
        yield CounterMetricFamily(
            "fastrelay_client_slow_consumer_drops",
            "Clients dropped for owing more than --max-client-buffer.",
            value=stats.slow_consumers,
        )
        yield GaugeMetricFamily(
            "fastrelay_client_max_backlog_bytes",
            "Largest unsent backlog of any client since the previous rendering of /metrics.",
            value=outbox.take_max_backlog(),
        )
        yield GaugeMetricFamily(
            "fastrelay_client_buffer_limit_bytes",
            "--max-client-buffer: a client owing more unsent bytes than this is dropped (slow_consumer).",
            value=outbox.max_client_buffer,
        )
        if hub.conflator is not None:
            conflation = hub.conflator.stats
            yield GaugeMetricFamily(
                "fastrelay_client_conflating",
                "Clients behind by more than --conflate-above, sent every trade and the latest "
                "quote/aggregate/value of each channel until they catch up.",
                value=conflation.conflating,
            )
            yield CounterMetricFamily(
                "fastrelay_client_conflation_episodes",
                "Times a client started conflating (a conflating status sent).",
                value=conflation.episodes,
            )
            yield CounterMetricFamily(
                "fastrelay_client_conflation_caught_up",
                "Times a conflating client caught up (a caught_up status sent).",
                value=conflation.caught_up,
            )
            yield CounterMetricFamily(
                "fastrelay_client_conflated_events",
                "Events not sent to a conflating client: replaced by a later event of their state channel.",
                value=conflation.superseded,
            )
            yield CounterMetricFamily(
                "fastrelay_client_conflation_over_budget",
                "Conflating clients dropped (slow_consumer) because their conflated stream cost more "
                "loop time than their budget (--max-cpu-ms-per-second).",
                value=conflation.over_budget,
            )
        yield GaugeMetricFamily(
            "fastrelay_audiences", "Groups of clients sharing a channel set.", value=hub.audience_count()
        )
        yield from self._compression()

    def _compression(self) -> Iterator[Metric]:
        """permessage-deflate (deflate.py): what it saved, what it cost, when it was skipped."""
        stats = self._relay.outbox.stats
        yield CounterMetricFamily(
            "fastrelay_client_deflate_connections",
            "Client connections that negotiated permessage-deflate.",
            value=self._server.deflate_connections,
        )
        before = CounterMetricFamily(
            "fastrelay_client_deflate_input_bytes",
            "Bytes clients that negotiated compression would have been sent uncompressed, by market "
            "(an audience's market, mixed for /api/socket audiences over several, replies).",
            labels=["market"],
        )
        after = CounterMetricFamily(
            "fastrelay_client_deflate_output_bytes",
            "Bytes those clients were sent (compressed where it paid), by market.",
            labels=["market"],
        )
        for label, size in stats.deflate_before.items():
            before.add_metric([label], size)
            after.add_metric([label], stats.deflate_after[label])
        yield from (before, after)
        deflater = self._relay.outbox.deflater
        if deflater is None:
            return
        work = deflater.stats
        yield CounterMetricFamily(
            "fastrelay_compression_frames",
            "Frames compressed (once each, for every client of an audience that negotiated it).",
            value=work.frames,
        )
        plain = CounterMetricFamily(
            "fastrelay_compression_skipped_frames",
            "Frames sent uncompressed to clients that negotiated compression, by reason: small "
            "(under --compression-threshold), no_gain, cpu_budget (--compression-cpu spent).",
            labels=["reason"],
        )
        for reason, count in work.plain.items():
            plain.add_metric([reason], count)
        yield plain
        yield CounterMetricFamily(
            "fastrelay_compression_cpu_seconds",
            "CPU time spent compressing frames.",
            value=work.cpu_seconds,
        )

    def _rest(self) -> Iterator[Metric]:
        """Massive's REST aggregates (bars.py) and the relay's own REST answers (front.py)."""
        responses = CounterMetricFamily(
            "fastrelay_rest_responses",
            "REST answers the relay gave its clients at /v2/aggs/..., by HTTP status.",
            labels=["status"],
        )
        for status, count in sorted(self._server.rest_responses.items()):
            responses.add_metric([str(status)], count)
        yield responses
        bars = self._relay.bars
        if bars is None:
            return
        accounts = bars.accounts()
        requests = CounterMetricFamily(
            "fastrelay_rest_requests",
            "Bars requests (history and REST) by result: hit (the cache), miss (asked Massive), "
            "coalesced (waited for the same query already on its way), error.",
            labels=["result"],
        )
        for result in RESULTS:
            requests.add_metric([result], sum(a.stats.results[result] for a in accounts))
        requests.add_metric(["error"], sum(sum(a.stats.errors.values()) for a in accounts))
        yield requests
        errors = CounterMetricFamily(
            "fastrelay_rest_errors",
            "Bars requests that failed, by reason: rate_limited (the relay's --rest-per-minute), "
            "upstream_429 (Massive's rate limit), upstream_error, not_found, bad_answer, unavailable.",
            labels=["reason"],
        )
        for reason in ERROR_REASONS:
            errors.add_metric([reason], sum(a.stats.errors[reason] for a in accounts))
        yield errors
        yield CounterMetricFamily(
            "fastrelay_rest_upstream_requests",
            "HTTP requests sent to Massive's REST API (pages included).",
            value=sum(a.stats.upstream_requests for a in accounts),
        )
        latency = Histogram(LATENCY_BOUNDS)
        for account in accounts:
            latency.merge(account.stats.latency)
        yield _histogram(
            "fastrelay_rest_latency_seconds", "Fetching a query's bars from Massive (all pages).", latency
        )
        yield GaugeMetricFamily(
            "fastrelay_rest_cache_bytes",
            "Bytes of Massive's answers kept in the bars cache.",
            value=sum(a.cache.bytes for a in accounts),
        )


class BootTimeProcessCollector(ProcessCollector):
    """prometheus-client's ``process_*`` metrics, also where ``/proc/stat`` is hidden.

    The stock collector reads the boot time from ``/proc/stat`` and exports
    nothing at all without it; systemd's ``ProcSubset=pid`` (deploy/) hides it.
    The process's own ``/proc/PID`` is still there, and the boot time is the
    wall clock minus the time since boot.
    """

    def _boot_time(self) -> float:
        try:
            return float(super()._boot_time())  # type: ignore[no-untyped-call]
        except OSError:
            return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


class LoopLagMonitor:
    """Measures how late a periodic timer fires: the loop's responsiveness."""

    def __init__(self, interval: float = 0.25) -> None:
        self.interval = interval
        self.histogram = Histogram(LOOP_LAG_BOUNDS)
        self._timer: asyncio.TimerHandle | None = None
        self._due = 0.0

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._due = loop.time() + self.interval
        self._timer = loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        self.histogram.observe(max(0.0, now - self._due))
        self._due = now + self.interval
        self._timer = loop.call_at(self._due, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class Metrics:
    """The registry, its periodic rendering and the loop-lag monitor."""

    def __init__(self, role: Role, server: ServerStatistics, interval: float) -> None:
        self.interval = interval
        self.loop_lag = LoopLagMonitor()
        self.registry = CollectorRegistry(auto_describe=False)
        # The default process_* and python_* families, as SREs' dashboards expect.
        BootTimeProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.registry.register(RelayCollector(role, server, self.loop_lag.histogram))
        for collector in role.collectors():
            self.registry.register(collector)
        self.text = b""
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self.loop_lag.start()
        self._render()

    def stop(self) -> None:
        self.loop_lag.stop()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def page(self) -> tuple[bytes, str]:
        """The latest rendering, and its content type."""
        return self.text, CONTENT_TYPE

    def _render(self) -> None:
        self.text = generate_latest(self.registry)
        self._timer = asyncio.get_running_loop().call_later(self.interval, self._render)
