"""One ``/metrics`` for a whole ``--workers`` tree: every worker's series, labelled; pure.

Each worker's page (its own ``/metrics``, rendered by its own process) is parsed and every
sample gets a ``worker`` label (``ingest``, ``edge-1``, ...). Why a label rather than sums
made here (docs/workers.md, "Metrics"): sums of counters and histograms are what Prometheus
computes anyway (``sum by (instance)``), gauges do not all add up (a backlog's maximum, a
start time), and per-process series keep per-process alerts right (CPU at 90 % of *one*
core, an edge whose loop lags). Three exceptions keep the dashboard's and the alerts' joins
on ``(job, instance)`` one series per instance, as for one process:

* ``fastrelay_build_info``: the workers' are replaced by the tree's one (role ``workers``);
* ``fastrelay_ready``: the workers' are replaced by the tree's readiness, what ``/readyz``
  answers (the ingest and at least one edge ready);
* an edge's ``fastrelay_upstream_*`` and ``fastrelay_feed_latency_seconds`` describe its
  feed from the ingest over NATS: left out, so that upstream series are the ingest's, from
  Massive, as in one process (summed by instance they would count each event 1 + N times).
  The edges' side of the feed is in ``fastrelay_nats_*`` and ``fastrelay_edge_*``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from fastrelay.workers.plan import INGEST

WORKER_LABEL = "worker"
BUILD_INFO = "fastrelay_build_info"
READY = "fastrelay_ready"
TREE_ONLY = frozenset({BUILD_INFO, READY})
EDGE_FEED_PREFIXES = ("fastrelay_upstream_", "fastrelay_feed_latency_seconds")


def _is_edge(worker: str) -> bool:
    return worker.startswith("edge-")


def parse(page: bytes) -> list[Metric]:
    """The families of one worker's page (its exposition text)."""
    return list(text_string_to_metric_families(page.decode("utf-8", errors="replace")))


def worker_ready(families: Iterable[Metric]) -> bool:
    """What the worker's own ``fastrelay_ready`` says."""
    for family in families:
        if family.name == READY:
            return any(sample.value == 1.0 for sample in family.samples)
    return False


def tree_ready(ready: Mapping[str, bool]) -> bool:
    """The tree can serve: its ingest and at least one edge are ready (by worker name)."""
    return ready.get(INGEST, False) and any(up for name, up in ready.items() if _is_edge(name))


def merge(pages: Mapping[str, list[Metric]]) -> list[Metric]:
    """Every worker's families as one list, each sample labelled with its worker."""
    merged: dict[str, Metric] = {}
    for worker, families in pages.items():
        for family in families:
            if family.name in TREE_ONLY:
                continue
            if _is_edge(worker) and family.name.startswith(EDGE_FEED_PREFIXES):
                continue
            into = merged.get(family.name)
            if into is None:
                into = Metric(family.name, family.documentation, family.type, family.unit)
                merged[family.name] = into
            into.samples.extend(
                sample._replace(labels={**sample.labels, WORKER_LABEL: worker}) for sample in family.samples
            )
    return list(merged.values())


def ready_family(ready: bool) -> Metric:
    family = GaugeMetricFamily(
        READY, "1 when the tree can serve (what /readyz reports): its ingest and at least one edge ready."
    )
    family.add_metric([], 1.0 if ready else 0.0)
    return family


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def render(families: list[Metric]) -> bytes:
    """The exposition text of ``families`` (Prometheus' text format)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    return generate_latest(registry)
