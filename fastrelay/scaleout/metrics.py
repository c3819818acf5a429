"""Metrics of the scale-out roles, read from plain counters at scrape time.

Same rule as ``fastrelay.metrics``: nothing is counted through Prometheus on
the hot path. Both roles export the NATS link; the ingest adds its edges and its
leadership, an edge its ingest-to-edge lag, last-value fills and fencing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from fastrelay.histogram import Histogram
from fastrelay.scaleout.election import CHANGE_REASONS, Election
from fastrelay.scaleout.fills import Fills
from fastrelay.scaleout.link import Link
from fastrelay.scaleout.registry import EdgeRegistry

# Ingest publish to edge receipt.
LAG_BOUNDS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class IngestView(Protocol):
    """What the ingest's metrics read (``scaleout.ingest.Ingest``)."""

    link: Link
    registry: EdgeRegistry
    refused: int
    election: Election
    fenced: int
    stalls: int


class EdgeView(Protocol):
    """What an edge's metrics read (``scaleout.edge.Edge``)."""

    link: Link
    lag: Histogram
    fills: Fills
    term: int
    leader_changes: int
    fenced: int
    early: int
    not_live: int
    stale_dropped: int

    @property
    def ingest_heard(self) -> bool: ...


def _link_families(link: Link) -> Iterator[Metric]:
    stats = link.stats
    yield GaugeMetricFamily(
        "fastrelay_nats_connected", "1 while connected to NATS.", value=int(link.connected)
    )
    yield CounterMetricFamily(
        "fastrelay_nats_disconnects",
        "NATS connections lost (nats-py reconnects).",
        value=stats.disconnects,
    )
    yield CounterMetricFamily(
        "fastrelay_nats_bad_messages",
        "NATS messages that did not decode, skipped.",
        value=stats.bad_messages,
    )
    yield CounterMetricFamily(
        "fastrelay_nats_slow_consumer_drops",
        "Messages nats-py dropped because this process did not take them fast enough.",
        value=stats.slow_consumer_drops,
    )


class IngestCollector(Collector):
    def __init__(self, ingest: IngestView) -> None:
        self._ingest = ingest

    def collect(self) -> Iterator[Metric]:
        ingest = self._ingest
        yield from _link_families(ingest.link)
        stats = ingest.link.stats
        yield CounterMetricFamily(
            "fastrelay_nats_published_messages", "Data messages published.", value=stats.published
        )
        yield CounterMetricFamily(
            "fastrelay_nats_published_bytes", "Data bytes published.", value=stats.published_bytes
        )
        dropped = CounterMetricFamily(
            "fastrelay_nats_publish_dropped",
            "Data not published: events while NATS was down (nats_down), messages whose "
            "publish failed while connected (error).",
            labels=["reason"],
        )
        dropped.add_metric(["nats_down"], stats.publish_dropped_down)
        dropped.add_metric(["error"], stats.publish_failed)
        yield dropped
        yield GaugeMetricFamily(
            "fastrelay_ingest_edges", "Edges heard within --peer-timeout.", value=len(ingest.registry)
        )
        per_edge = GaugeMetricFamily(
            "fastrelay_ingest_edge_channels",
            "Channels each edge heard within --peer-timeout wants (label: its --instance-name).",
            labels=["edge"],
        )
        for name, count in sorted(ingest.registry.channel_counts().items()):
            per_edge.add_metric([name], count)
        yield per_edge
        yield CounterMetricFamily(
            "fastrelay_ingest_edges_expired",
            "Edges dropped after --peer-timeout of silence (their channels released).",
            value=ingest.registry.expired_total,
        )
        yield CounterMetricFamily(
            "fastrelay_ingest_refused_channels",
            "Edge channels not taken: bad names, unserved markets, the options contract cap.",
            value=ingest.refused,
        )
        election = ingest.election
        yield GaugeMetricFamily(
            "fastrelay_ingest_leader",
            "1 while this ingest holds the lease: it alone connects to Massive and publishes.",
            value=int(election.leading()),
        )
        yield GaugeMetricFamily(
            "fastrelay_ingest_term", "The term of this ingest's lease (0: standby).", value=election.term
        )
        changes = CounterMetricFamily(
            "fastrelay_ingest_leader_changes",
            "This ingest's leadership changes: elected, lease_expired (renewals failed until the "
            "deadline: NATS trouble or a frozen loop), lease_taken (another ingest holds the key), "
            "resigned (a graceful stop).",
            labels=["reason"],
        )
        for reason in CHANGE_REASONS:
            changes.add_metric([reason], election.changes[reason])
        yield changes
        yield CounterMetricFamily(
            "fastrelay_ingest_lease_renewals_failed",
            "Lease renewals that did not get through (the lease runs out after a few).",
            value=election.renewals_failed,
        )
        yield CounterMetricFamily(
            "fastrelay_ingest_fenced_events",
            "Events not published because this ingest's lease had run out.",
            value=ingest.fenced,
        )
        yield CounterMetricFamily(
            "fastrelay_ingest_stalls",
            "Times this ingest's loop was found frozen (SIGSTOP, a VM pause, a long GC).",
            value=ingest.stalls,
        )


class EdgeCollector(Collector):
    def __init__(self, edge: EdgeView) -> None:
        self._edge = edge

    def collect(self) -> Iterator[Metric]:
        edge = self._edge
        yield from _link_families(edge.link)
        stats = edge.link.stats
        yield CounterMetricFamily(
            "fastrelay_nats_received_messages", "Data messages received.", value=stats.received
        )
        yield CounterMetricFamily(
            "fastrelay_nats_received_bytes", "Data bytes received.", value=stats.received_bytes
        )
        lag = HistogramMetricFamily(
            "fastrelay_nats_lag_seconds",
            "Ingest publish to edge receipt (wall clocks: meaningful across hosts with synced clocks).",
        )
        lag.add_metric([], edge.lag.cumulative(), edge.lag.sum)
        yield lag
        fills = CounterMetricFamily(
            "fastrelay_edge_last_value_fills",
            "Last-value fetches from the ingest: channels requested, channels whose request failed, "
            "values delivered to subscribers.",
            labels=["result"],
        )
        fills.add_metric(["requested"], edge.fills.requested)
        fills.add_metric(["failed"], edge.fills.failed)
        fills.add_metric(["delivered"], edge.fills.delivered)
        yield fills
        yield GaugeMetricFamily(
            "fastrelay_edge_ingest_heard",
            "1 while the leader ingest is heard within --ingest-timeout.",
            value=int(edge.ingest_heard),
        )
        yield GaugeMetricFamily(
            "fastrelay_edge_leader_term", "The term of the leader ingest this edge follows.", value=edge.term
        )
        yield CounterMetricFamily(
            "fastrelay_edge_leader_changes",
            "Times this edge followed a new leader ingest.",
            value=edge.leader_changes,
        )
        dropped = CounterMetricFamily(
            "fastrelay_edge_dropped",
            "Data dropped at this edge: fenced (messages of a deposed leader's older term), early "
            "(messages of a newer term before its state), not_live (events of a market not live "
            "yet: clients get `restored` first), stale (events read by the ingest more than "
            "--max-event-age ago).",
            labels=["reason"],
        )
        dropped.add_metric(["fenced"], edge.fenced)
        dropped.add_metric(["early"], edge.early)
        dropped.add_metric(["not_live"], edge.not_live)
        dropped.add_metric(["stale"], edge.stale_dropped)
        yield dropped
