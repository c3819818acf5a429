"""Generates grafana/dashboards/fastrelay.json with grafana-foundation-sdk (typed builders).

    .venv/bin/python grafana/build_dashboard.py           # (re)write the JSON
    .venv/bin/python grafana/build_dashboard.py --check   # exit 1 if the JSON is stale

Edit this file, never the JSON. Every query selects ``{job="$job", instance=~"$instance"}``
and keeps only the instances whose ``fastrelay_build_info`` role (single, ingest, edge) is
selected by ``$role``: aggregations filter with ``and on (job, instance) <info>`` (``only``),
per-instance series take the role as a label with ``* on (job, instance) group_left (role)
<info>`` (``labelled``), so legends name the instance and its role without any scrape-time
label. Every rate window is ``$__rate_interval``, so the dashboard follows the scrape
interval configured on the Grafana datasource (``timeInterval``).

Every graph's legend is a table (min, mean, max, last; sorted by max) so instances and markets
compare at a glance. Panels tied to an alert link to its runbook, a heading of docs/sre.md, as
grafana/alerts.yml's ``runbook_url`` does, under the same base (``--docs-url``, default where the
documented install puts the docs: docs/operations.md, "systemd").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus, stat, statetimeline, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import units
from grafana_foundation_sdk.models.common import (
    BigValueColorMode,
    BigValueGraphMode,
    BigValueTextMode,
    GraphThresholdsStyleMode,
    LegendDisplayMode,
    LegendPlacement,
    SortOrder,
    TooltipDisplayMode,
    VisibilityMode,
)
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DashboardLinkType,
    DataSourceRef,
    DynamicConfigValue,
    Threshold,
    ThresholdsMode,
    ValueMap,
    ValueMappingResult,
    VariableHide,
    VariableRefresh,
    VariableSort,
)

OUTPUT = Path(__file__).resolve().parent / "dashboards" / "fastrelay.json"
UID = "fastrelay"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
SEL = 'job="$job", instance=~"$instance"'
# The selected instances of the selected roles: one series per process, value 1.
INFO = f'fastrelay_build_info{{{SEL}, role=~"$role"}}'
SCALEOUT_ROW = "Scale-out (NATS)"

# Reference lines drawn on panels; keep them equal to the thresholds in grafana/alerts.yml.
RELAY_P99_BUDGET_S = 0.05
CPU_SATURATION = 0.9
NATS_LAG_P99_BUDGET_S = 0.1
# Where the runbooks are: the base of grafana/alerts.yml's runbook_url (keep them equal).
DOCS_URL = "file:///opt/fastrelay/docs"
# A graph's legend: one row per series with these columns, the worst (highest max) first.
LEGEND_CALCS = ["min", "mean", "max", "lastNotNull"]


def only(expr: str) -> str:
    """``expr`` restricted to the instances of the selected roles (inside an aggregation)."""
    return f"{expr} and on (job, instance) {INFO}"


def labelled(expr: str) -> str:
    """Per-instance ``expr`` (it must keep job and instance) with the instance's role as a label,
    for the selected roles only."""
    return f"({expr}) * on (job, instance) group_left (role) {INFO}"


def doc_link(title: str, page: str, tooltip: str) -> dash.DashboardLink:
    """A link to ``page`` (``sre.md#anchor``) of docs/, opened in a new tab."""
    return (
        dash.DashboardLink(title)
        .type(DashboardLinkType.LINK)
        .url(f"{DOCS_URL}/{page}")
        .tooltip(tooltip)
        .target_blank(True)
    )


def runbooks(*alerts: str) -> list[dash.DashboardLink]:
    """Panel links to the runbooks of the alerts the panel shows the cause of."""
    return [
        doc_link(f"Runbook: {alert}", f"sre.md#{alert.lower()}", f"What to do when {alert} fires")
        for alert in alerts
    ]


def q(expr: str, legend: str, ref: str = "A") -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DATASOURCE)


def thresholds(*steps: tuple[float | None, str]) -> dash.ThresholdsConfig:
    return (
        dash.ThresholdsConfig()
        .mode(ThresholdsMode.ABSOLUTE)
        .steps([Threshold(value=value, color=color) for value, color in steps])
    )


def graph(title: str, description: str, unit: str, *targets: prometheus.Dataquery) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .height(10)
        .span(8)
        .line_width(1)
        .fill_opacity(10)
        .show_points(VisibilityMode.NEVER)
        .legend(
            common_builders.VizLegendOptions()
            .show_legend(True)
            .display_mode(LegendDisplayMode.TABLE)
            .placement(LegendPlacement.BOTTOM)
            .calcs(LEGEND_CALCS)
            .sort_by("Max")
            .sort_desc(True)
        )
        .tooltip(
            common_builders.VizTooltipOptions().mode(TooltipDisplayMode.MULTI).sort(SortOrder.DESCENDING)
        )
    )
    for target in targets:
        panel = panel.with_target(target)
    return panel


def with_limit(panel: timeseries.Panel, limit: float) -> timeseries.Panel:
    """A dashed red line at an alert threshold."""
    return panel.thresholds(thresholds((None, "green"), (limit, "red"))).thresholds_style(
        common_builders.GraphThresholdsStyleConfig().mode(GraphThresholdsStyleMode.DASHED)
    )


def limit_line(panel: timeseries.Panel, ref: str) -> timeseries.Panel:
    """Query ``ref`` drawn as a dashed red line without fill: a limit the relay exports, so the
    line is where the running relays drop, whatever they were configured with."""
    return panel.override_by_query(
        ref,
        [
            DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": "red"}),
            DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]}),
            DynamicConfigValue(id_val="custom.fillOpacity", value=0),
        ],
    )


def big(title: str, description: str, unit: str, target: prometheus.Dataquery) -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .height(4)
        .span(6)
        .graph_mode(BigValueGraphMode.AREA)
        .color_mode(BigValueColorMode.VALUE)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .with_target(target)
    )


def states(
    title: str,
    description: str,
    down: str,
    up: str,
    target: prometheus.Dataquery,
    down_color: str = "red",
) -> statetimeline.Panel:
    """A 0/1 gauge per series as a band: ``down_color`` (red) for 0, green for 1."""
    return (
        statetimeline.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(units.NoUnit)
        .height(10)
        .span(8)
        .show_value(VisibilityMode.NEVER)
        .merge_values(True)
        .mappings(
            [
                ValueMap(
                    {
                        "0": ValueMappingResult(text=down, color=down_color, index=0),
                        "1": ValueMappingResult(text=up, color="green", index=1),
                    }
                )
            ]
        )
        .thresholds(thresholds((None, down_color), (1, "green")))
        .with_target(target)
    )


def right_axis(panel: timeseries.Panel, ref: str, unit: str) -> timeseries.Panel:
    """Query ``ref`` in another unit, on a right-hand axis."""
    return panel.override_by_query(
        ref,
        [
            DynamicConfigValue(id_val="unit", value=unit),
            DynamicConfigValue(id_val="custom.axisPlacement", value="right"),
        ],
    )


def overview() -> list[stat.Panel | statetimeline.Panel]:
    return [
        big(
            "Ready",
            "fastrelay_ready: 1 when the instance can serve (what /readyz reports): every configured "
            "upstream market authenticated; for an ingest also NATS connected; for an edge NATS "
            "connected and the ingest heard. The lowest value over the selected instances: NOT "
            "READY as soon as one of them is not (see Readiness per instance).",
            units.NoUnit,
            q(f"min({only(f'fastrelay_ready{{{SEL}}}')})", "ready"),
        )
        .mappings(
            [
                ValueMap(
                    {
                        "0": ValueMappingResult(text="NOT READY", color="red", index=0),
                        "1": ValueMappingResult(text="READY", color="green", index=1),
                    }
                )
            ]
        )
        .thresholds(thresholds((None, "red"), (1, "green")))
        .color_mode(BigValueColorMode.BACKGROUND),
        big(
            "Clients",
            "Client WebSocket connections open now, over all paths and selected instances (an "
            "ingest serves no clients).",
            units.Short,
            q(f"sum({only(f'fastrelay_clients{{{SEL}}}')})", "clients"),
        ),
        big(
            "Deliveries / s",
            "Events written to clients per second over the selected instances (one event to N "
            "clients counts N).",
            units.EventsPerSecond,
            q(
                f"sum({only(f'rate(fastrelay_client_events_sent_total{{{SEL}}}[$__rate_interval])')})",
                "deliveries",
            ),
        ),
        big(
            "Relay latency p99 (worst instance)",
            "99th percentile of frame arrival (from Massive, or from NATS on an edge) to the write "
            "of its events to client sockets, including the --flush-interval coalescing window, "
            "for the worst selected instance: the red threshold is the per-instance budget of the "
            "FastrelayRelayLatencyHigh alert. An ingest has no clients, hence no relay latency.",
            units.Seconds,
            q(
                "max(histogram_quantile(0.99, sum by (job, instance, le) "
                f"({only(f'rate(fastrelay_relay_latency_seconds_bucket{{{SEL}}}[$__rate_interval])')})))",
                "p99",
            ),
        )
        .thresholds(thresholds((None, "green"), (RELAY_P99_BUDGET_S, "red")))
        .links(runbooks("FastrelayRelayLatencyHigh")),
        big(
            "Instances by role",
            "Processes reporting fastrelay_build_info, by role: single (one process does "
            "everything), ingest (Massive to NATS) and edge (NATS to clients). In scale-out mode "
            "expect your number of ingests per deployment (one leads, the others are hot "
            "standbys: see Leader per ingest) and of edges.",
            units.Short,
            q(f"count by (role) ({INFO})", "{{role}}"),
        )
        .height(6)
        .graph_mode(BigValueGraphMode.NONE)
        .text_mode(BigValueTextMode.VALUE_AND_NAME),
        big(
            "Version and uptime",
            "Per instance: the fastrelay version it runs (fastrelay_build_info) and the time since "
            "its process started (process_start_time_seconds). An uptime that keeps dropping is a "
            "crash loop (systemd restarts the unit: journalctl -u fastrelay); two versions side by "
            "side belong to an upgrade in progress (upgrade ingests and edges together).",
            units.DurationSeconds,
            q(
                f"(time() - process_start_time_seconds{{{SEL}}}) "
                f"* on (job, instance) group_left (role, version) {INFO}",
                "{{version}} {{role}} {{instance}}",
            ),
        )
        .height(6)
        .graph_mode(BigValueGraphMode.NONE)
        .text_mode(BigValueTextMode.VALUE_AND_NAME)
        .color_mode(BigValueColorMode.NONE),
        states(
            "Readiness per instance",
            "fastrelay_ready per instance (what its /readyz answers): green while it can serve, "
            "red while an upstream market is down or, in scale-out mode, NATS or the ingest is "
            "missing. A gap means Prometheus could not scrape it (FastrelayTargetDown).",
            "not ready",
            "ready",
            q(labelled(f"fastrelay_ready{{{SEL}}}"), "{{role}} {{instance}}"),
        )
        .height(6)
        .span(12)
        .links(runbooks("FastrelayTargetDown", "FastrelayUpstreamDown")),
    ]


def upstream() -> list[timeseries.Panel | statetimeline.Panel]:
    return [
        states(
            "Upstream state per market",
            "fastrelay_upstream_connected per instance and market: green while the market's "
            "upstream is live, red while it is down. On a single relay or the ingest that is the "
            "authenticated connection to Massive (reconnecting, auth_failed or max_connections "
            "cool-down while red); on an edge it is its feed from the ingest (down while NATS is "
            "down, the ingest is not heard, or the ingest's own upstream is down). Clients stay "
            "connected through an outage but receive nothing for that market; events of the "
            "outage are lost (Massive does not replay). A standby ingest (see Leader per ingest) "
            "holds no Massive connection: red is its normal state.",
            "down",
            "connected",
            q(
                labelled(f"max by (job, instance, market) (fastrelay_upstream_connected{{{SEL}}})"),
                "{{market}} {{role}} {{instance}}",
            ),
        ).links(runbooks("FastrelayUpstreamDown")),
        graph(
            "Upstream events / s by market",
            "Events received per second, by instance and market: from Massive on a single relay "
            "or the ingest, from NATS on an edge (only the channels its clients want). Zero while "
            "clients are subscribed means a closed market, quiet channels, or a silent upstream "
            "(see the FastrelayUpstreamSilent alert).",
            units.EventsPerSecond,
            q(
                labelled(
                    "sum by (job, instance, market) "
                    f"(rate(fastrelay_upstream_events_total{{{SEL}}}[$__rate_interval]))"
                ),
                "{{market}} {{role}} {{instance}}",
            ),
        ).links(runbooks("FastrelayUpstreamSilent")),
        graph(
            "Upstream reconnects / min",
            "Upstream connections lost or refused per minute, by instance, market and reason: drop "
            "(socket closed), stall (no data nor pong within the ping timeout), auth_failed (API "
            "key rejected), max_connections (the key is used by another process). An edge counts "
            "nats (its NATS link lost) and ingest (the ingest not heard), and repeats the ingest's "
            "own reason when the ingest's upstream goes down.",
            units.CountsPerMinute,
            q(
                labelled(
                    "sum by (job, instance, market, reason) "
                    f"(rate(fastrelay_upstream_reconnects_total{{{SEL}}}[$__rate_interval])) * 60"
                ),
                "{{market}} {{reason}} {{role}} {{instance}}",
            ),
        ).links(runbooks("FastrelayUpstreamRefused", "FastrelayUpstreamReconnectStorm")),
        graph(
            "Feed latency by market and role",
            "Exchange/Massive event timestamp (ms) to arrival, sampled on the first event of each "
            "frame, over the instances of each role: at a single relay or the ingest, network plus "
            "Massive delay; at the edges, that plus the ingest and NATS (the difference is the "
            "NATS lag, see Scale-out). Rises with a delayed feed or a congested link; includes "
            "clock skew between Massive and the hosts.",
            units.Seconds,
            q(
                "histogram_quantile(0.5, sum by (role, market, le) "
                f"({labelled(f'rate(fastrelay_feed_latency_seconds_bucket{{{SEL}}}[$__rate_interval])')}))",
                "p50 {{market}} {{role}}",
            ),
            q(
                "histogram_quantile(0.99, sum by (role, market, le) "
                f"({labelled(f'rate(fastrelay_feed_latency_seconds_bucket{{{SEL}}}[$__rate_interval])')}))",
                "p99 {{market}} {{role}}",
                "B",
            ),
        ),
        graph(
            "Upstream channels subscribed",
            "Channels each instance holds subscribed per market: on a single relay or the ingest, "
            "upstream at Massive (the union of all clients' or edges' channels, a wildcard "
            "covering its tickers, plus lingering ones); on an edge, the NATS subjects its "
            "clients need.",
            units.Short,
            q(
                labelled(f"sum by (job, instance, market) (fastrelay_upstream_channels{{{SEL}}})"),
                "{{market}} {{role}} {{instance}}",
            ),
        ),
        right_axis(
            graph(
                "Upstream ingress and decode errors",
                "Payload bytes received per second by instance and market, from Massive or (edge) "
                "from NATS (left), and frames that failed to decode and were skipped, per minute "
                "(right; should stay at 0: see the logs).",
                units.BytesPerSecondSI,
                q(
                    labelled(
                        "sum by (job, instance, market) "
                        f"(rate(fastrelay_upstream_received_bytes_total{{{SEL}}}[$__rate_interval]))"
                    ),
                    "{{market}} {{role}} {{instance}} bytes/s",
                ),
                q(
                    labelled(
                        "sum by (job, instance, market) "
                        f"(rate(fastrelay_upstream_decode_errors_total{{{SEL}}}[$__rate_interval])) * 60"
                    ),
                    "{{market}} {{role}} {{instance}} decode errors/min",
                    "B",
                ),
            ),
            "B",
            units.CountsPerMinute,
        ),
    ]


def clients() -> list[timeseries.Panel]:
    return [
        graph(
            "Clients by path",
            "Open client connections by path (/stocks, /options, ..., /api/socket), summed over "
            "the selected instances.",
            units.Short,
            q(f"sum by (path) ({only(f'fastrelay_clients{{{SEL}}}')})", "{{path}}"),
        ),
        graph(
            "Clients per instance",
            "Open client connections per instance: how the load balancer spreads clients over the "
            "edges (an ingest has none).",
            units.Short,
            q(labelled(f"sum by (job, instance) (fastrelay_clients{{{SEL}}})"), "{{role}} {{instance}}"),
        ),
        graph(
            "Deliveries / s",
            "Events written to client sockets per second over the selected instances (events x "
            "recipients), and the WebSocket frames carrying them (several events share a frame "
            "within the flush window).",
            units.EventsPerSecond,
            q(
                f"sum({only(f'rate(fastrelay_client_events_sent_total{{{SEL}}}[$__rate_interval])')})",
                "events",
            ),
            q(
                f"sum({only(f'rate(fastrelay_client_frames_sent_total{{{SEL}}}[$__rate_interval])')})",
                "frames",
                "B",
            ),
        ),
        graph(
            "Client egress per instance",
            "Bytes written to client sockets per second, per instance (each host's NIC carries its own).",
            units.BytesPerSecondSI,
            q(
                labelled(f"rate(fastrelay_client_sent_bytes_total{{{SEL}}}[$__rate_interval])"),
                "{{role}} {{instance}}",
            ),
        ),
        graph(
            "Slow-consumer drops / min",
            "Clients closed (1013) for owing more than --max-client-buffer of unsent data, per "
            "minute and instance. A few are normal (bad mobile links); many at once on one instance "
            "point at its host or network, or at clients subscribing to more than they can read.",
            units.CountsPerMinute,
            q(
                labelled(f"rate(fastrelay_client_slow_consumer_drops_total{{{SEL}}}[$__rate_interval]) * 60"),
                "{{role}} {{instance}}",
            ),
        ).links(runbooks("FastrelaySlowConsumerDrops")),
        limit_line(
            graph(
                "Largest client backlog",
                "Largest unsent backlog of any one client at the last flush, per instance; a client "
                "is dropped (slow_consumer, close 1013) when it exceeds --max-client-buffer, the "
                "dashed red line (the relay's configured value, from "
                "fastrelay_client_buffer_limit_bytes).",
                units.BytesIEC,
                q(labelled(f"fastrelay_client_max_backlog_bytes{{{SEL}}}"), "{{role}} {{instance}}"),
                q(f"min({only(f'fastrelay_client_buffer_limit_bytes{{{SEL}}}')})", "limit", "LIMIT"),
            ),
            "LIMIT",
        ).links(runbooks("FastrelaySlowConsumerDrops")),
        graph(
            "Client connects and disconnects / min",
            "Connections accepted per minute, and connections closed per minute by reason "
            "(normal, slow_consumer, auth_failed, policy, limit, idle, shutdown, error), summed "
            "over the selected instances.",
            units.CountsPerMinute,
            q(
                f"sum({only(f'rate(fastrelay_client_connections_total{{{SEL}}}[$__rate_interval])')}) * 60",
                "accepted",
            ),
            q(
                "sum by (reason) "
                f"({only(f'rate(fastrelay_client_disconnections_total{{{SEL}}}[$__rate_interval])')}) * 60",
                "closed: {{reason}}",
                "B",
            ),
        ),
        graph(
            "Subscriptions and audiences",
            "Channels subscribed summed over clients, and audiences (groups of clients of one "
            "instance with the same channel set: one frame is built per audience), summed over "
            "the selected instances.",
            units.Short,
            q(f"sum({only(f'fastrelay_client_subscriptions{{{SEL}}}')})", "subscriptions"),
            q(f"sum({only(f'fastrelay_audiences{{{SEL}}}')})", "audiences", "B"),
        ),
        graph(
            "Conflation (slow links)",
            "Clients now conflated (their link is behind: every trade, but only the latest quote, "
            "aggregate or value of each channel, until caught_up), episodes started per minute, and "
            "events per second left out because a later one of the same channel replaced them; "
            "summed over the selected instances. A client still past --max-client-buffer is dropped "
            "(Slow-consumer drops), as is one whose conflated stream costs more loop time than its "
            "budget (--max-cpu-ms-per-second: dropped over budget / min).",
            units.Short,
            q(f"sum({only(f'fastrelay_client_conflating{{{SEL}}}')})", "conflating now"),
            q(
                "sum("
                f"{only(f'rate(fastrelay_client_conflation_episodes_total{{{SEL}}}[$__rate_interval])')}"
                ") * 60",
                "episodes / min",
                "B",
            ),
            q(
                f"sum({only(f'rate(fastrelay_client_conflated_events_total{{{SEL}}}[$__rate_interval])')})",
                "events left out / s",
                "C",
            ),
            q(
                "sum("
                f"{only(f'rate(fastrelay_client_conflation_over_budget_total{{{SEL}}}[$__rate_interval])')}"
                ") * 60",
                "dropped over budget / min",
                "D",
            ),
        ).links(runbooks("FastrelaySlowConsumerDrops")),
        graph(
            "Compression: egress before and after",
            "For clients that negotiated permessage-deflate, by market (an audience's market, "
            "mixed for /api/socket audiences over several, replies): bytes per second they would "
            "have been sent uncompressed (dashed: before) and what they were sent (after). Each "
            "frame is compressed once for every client of an audience; frames under "
            "--compression-threshold go plain.",
            units.BytesPerSecondSI,
            q(
                "sum by (market) "
                f"({only(f'rate(fastrelay_client_deflate_input_bytes_total{{{SEL}}}[$__rate_interval])')})",
                "before {{market}}",
            ),
            q(
                "sum by (market) "
                f"({only(f'rate(fastrelay_client_deflate_output_bytes_total{{{SEL}}}[$__rate_interval])')})",
                "after {{market}}",
                "B",
            ),
        ),
        right_axis(
            graph(
                "Compression: work and frames sent plain",
                "Frames compressed per second, frames sent uncompressed to clients that negotiated "
                "compression by reason (small: under --compression-threshold; no_gain; cpu_budget: "
                "--compression-cpu was spent, a sign compression would slow the loop), and the CPU "
                "compression took (right axis, % of one core), per instance.",
                units.Short,
                q(
                    labelled(f"rate(fastrelay_compression_frames_total{{{SEL}}}[$__rate_interval])"),
                    "compressed {{role}} {{instance}}",
                ),
                q(
                    labelled(f"rate(fastrelay_compression_skipped_frames_total{{{SEL}}}[$__rate_interval])"),
                    "plain ({{reason}}) {{role}} {{instance}}",
                    "B",
                ),
                q(
                    labelled(f"rate(fastrelay_compression_cpu_seconds_total{{{SEL}}}[$__rate_interval])"),
                    "CPU {{role}} {{instance}}",
                    "C",
                ),
            ),
            "C",
            units.PercentUnit,
        ).span(16),
    ]


def performance() -> list[timeseries.Panel]:
    def relay_quantile(quantile: str, ref: str) -> prometheus.Dataquery:
        return q(
            labelled(
                f"histogram_quantile({quantile}, sum by (job, instance, le) "
                f"(rate(fastrelay_relay_latency_seconds_bucket{{{SEL}}}[$__rate_interval])))"
            ),
            f"p{float(quantile) * 100:g} {{{{role}}}} {{{{instance}}}}",
            ref,
        )

    return [
        with_limit(
            graph(
                "Relay latency p50 / p99 / p99.9",
                "Frame arrival (from Massive, or from NATS on an edge) to the write of its events "
                "to client sockets (buckets 10 us to 1 s), per instance, including the "
                "--flush-interval coalescing window (5 ms by default). An ingest has no clients "
                "and no relay latency. The dashed line is the p99 budget of the "
                f"FastrelayRelayLatencyHigh alert ({RELAY_P99_BUDGET_S * 1000:g} ms).",
                units.Seconds,
                relay_quantile("0.5", "A"),
                relay_quantile("0.99", "B"),
                relay_quantile("0.999", "C"),
            ),
            RELAY_P99_BUDGET_S,
        ).links(runbooks("FastrelayRelayLatencyHigh")),
        with_limit(
            graph(
                "CPU (% of one core)",
                "CPU time of each relay process per second of wall time, from "
                "process_cpu_seconds_total: 100 % is one core fully busy. Each process runs one "
                "event loop, so it saturates near one core whatever the machine has; the dashed "
                f"line is the FastrelayCpuSaturated threshold ({CPU_SATURATION:.0%}).",
                units.PercentUnit,
                q(
                    labelled(f"rate(process_cpu_seconds_total{{{SEL}}}[$__rate_interval])"),
                    "{{role}} {{instance}}",
                ),
            ).axis_soft_max(1),
            CPU_SATURATION,
        ).links(runbooks("FastrelayCpuSaturated")),
        graph(
            "Event loop lag",
            "How late each process's event loop runs a 250 ms timer (p99 and p50 over the window): "
            "the time the loop was busy or blocked. Sustained tens of ms mean the loop is "
            "saturated, and relay latency (and, on the ingest, NATS lag) rises with it.",
            units.Seconds,
            q(
                labelled(
                    "histogram_quantile(0.99, sum by (job, instance, le) "
                    f"(rate(fastrelay_event_loop_lag_seconds_bucket{{{SEL}}}[$__rate_interval])))"
                ),
                "p99 {{role}} {{instance}}",
            ),
            q(
                labelled(
                    "histogram_quantile(0.5, sum by (job, instance, le) "
                    f"(rate(fastrelay_event_loop_lag_seconds_bucket{{{SEL}}}[$__rate_interval])))"
                ),
                "p50 {{role}} {{instance}}",
                "B",
            ),
        ).links(runbooks("FastrelayEventLoopLagged")),
        graph(
            "Resident memory (RSS)",
            "Resident set size of each relay process. Grows with clients (socket buffers, "
            "backlogs of slow clients) and with the channels whose last value is kept.",
            units.BytesIEC,
            q(labelled(f"process_resident_memory_bytes{{{SEL}}}"), "{{role}} {{instance}}"),
        ).span(12),
        graph(
            "Open file descriptors",
            "Open file descriptors of each process (about one per client plus one per upstream "
            "market) against the process limit: at the limit new clients are refused.",
            units.Short,
            q(labelled(f"process_open_fds{{{SEL}}}"), "open {{role}} {{instance}}"),
            q(labelled(f"process_max_fds{{{SEL}}}"), "limit {{role}} {{instance}}", "B"),
        )
        .span(12)
        .links(runbooks("FastrelayFileDescriptorsNearLimit")),
    ]


def scaleout() -> list[timeseries.Panel | statetimeline.Panel]:
    """The NATS link between the ingests and the edges, and the leader (empty for single relays)."""
    return [
        states(
            "NATS connection per instance",
            "fastrelay_nats_connected: green while the instance's NATS connection is up. An "
            "ingest cut off publishes nothing (every edge's clients get 'feed interrupted'); an "
            "edge cut off reports its markets down to its clients and /readyz 503. Both "
            "reconnect by themselves; FastrelayNatsDisconnected after 2 min.",
            "disconnected",
            "connected",
            q(labelled(f"fastrelay_nats_connected{{{SEL}}}"), "{{role}} {{instance}}"),
        ).links(runbooks("FastrelayNatsDisconnected")),
        states(
            "Edges hearing the ingest",
            "fastrelay_edge_ingest_heard per edge: green while the leader ingest's state arrived "
            "within --ingest-timeout. Red with NATS connected: no ingest leads (Leader per "
            "ingest), the leader is down or hung, or it uses another NATS cluster or "
            "--nats-prefix (FastrelayEdgeIngestNotHeard). A failover shows as a short red.",
            "ingest not heard",
            "hears the ingest",
            q(labelled(f"fastrelay_edge_ingest_heard{{{SEL}}}"), "{{instance}}"),
        ).links(runbooks("FastrelayEdgeIngestNotHeard")),
        graph(
            "NATS drops, bad messages and disconnects / min",
            "Per minute and instance: data the ingest did not publish (NATS down, a failed "
            "publish: edges' clients miss those events; FastrelayNatsPublishDrops), NATS "
            "messages that did not decode and were skipped (mixed versions or a foreign "
            "publisher on the prefix; FastrelayNatsBadMessages), and NATS connections lost. All "
            "should stay at 0.",
            units.CountsPerMinute,
            q(
                labelled(f"rate(fastrelay_nats_publish_dropped_total{{{SEL}}}[$__rate_interval]) * 60"),
                "publish drops ({{reason}}) {{instance}}",
            ),
            q(
                labelled(f"rate(fastrelay_nats_bad_messages_total{{{SEL}}}[$__rate_interval]) * 60"),
                "bad messages {{role}} {{instance}}",
                "B",
            ),
            q(
                labelled(f"rate(fastrelay_nats_disconnects_total{{{SEL}}}[$__rate_interval]) * 60"),
                "disconnects {{role}} {{instance}}",
                "C",
            ),
        ).links(runbooks("FastrelayNatsPublishDrops", "FastrelayNatsBadMessages")),
        right_axis(
            graph(
                "NATS publish (ingest)",
                "Data messages (left) and bytes (right) the ingest publishes to NATS per second: "
                "everything it receives from Massive for the channels some edge wants, one message "
                "per frame and event type (--nats-granularity batch) or per event (event).",
                units.MessagesPerSecond,
                q(
                    labelled(f"rate(fastrelay_nats_published_messages_total{{{SEL}}}[$__rate_interval])"),
                    "{{instance}} msgs/s",
                ),
                q(
                    labelled(f"rate(fastrelay_nats_published_bytes_total{{{SEL}}}[$__rate_interval])"),
                    "{{instance}} bytes/s",
                    "B",
                ),
            ),
            "B",
            units.BytesPerSecondSI,
        ),
        right_axis(
            graph(
                "NATS receive per edge",
                "Data messages (left) and bytes (right) each edge receives from NATS per second: "
                "only the subjects its clients' channels need, so an edge receives at most what "
                "the ingest publishes. An edge at 0 while its clients are subscribed and the "
                "ingest publishes: see Edges heard by the ingest.",
                units.MessagesPerSecond,
                q(
                    labelled(f"rate(fastrelay_nats_received_messages_total{{{SEL}}}[$__rate_interval])"),
                    "{{instance}} msgs/s",
                ),
                q(
                    labelled(f"rate(fastrelay_nats_received_bytes_total{{{SEL}}}[$__rate_interval])"),
                    "{{instance}} bytes/s",
                    "B",
                ),
            ),
            "B",
            units.BytesPerSecondSI,
        ),
        with_limit(
            graph(
                "Ingest-to-edge lag p50 / p99 per edge",
                "Time from the ingest's publish to the edge's receipt of a data message (wall "
                "clocks of two hosts: includes their clock skew, keep them NTP-synced). Adds to "
                "the edge's relay latency for its clients. The dashed line is the p99 budget of the "
                f"FastrelayNatsLagHigh alert ({NATS_LAG_P99_BUDGET_S * 1000:g} ms).",
                units.Seconds,
                q(
                    labelled(
                        "histogram_quantile(0.5, sum by (job, instance, le) "
                        f"(rate(fastrelay_nats_lag_seconds_bucket{{{SEL}}}[$__rate_interval])))"
                    ),
                    "p50 {{instance}}",
                ),
                q(
                    labelled(
                        "histogram_quantile(0.99, sum by (job, instance, le) "
                        f"(rate(fastrelay_nats_lag_seconds_bucket{{{SEL}}}[$__rate_interval])))"
                    ),
                    "p99 {{instance}}",
                    "B",
                ),
            ),
            NATS_LAG_P99_BUDGET_S,
        ).links(runbooks("FastrelayNatsLagHigh")),
        graph(
            "Edges heard by the ingest",
            "fastrelay_ingest_edges: the edges whose interest heartbeat the ingest heard within "
            "--peer-timeout, against the edges Prometheus scrapes that are connected to NATS, and "
            "those hearing the ingest. The three lines should coincide; the ingest hearing fewer "
            "edges (FastrelayIngestMissingEdges) means some edges' channels are not subscribed "
            "at Massive: another --nats-prefix or NATS cluster, or two edges with one "
            "--instance-name.",
            units.Short,
            q(labelled(f"fastrelay_ingest_edges{{{SEL}}}"), "heard by ingest {{instance}}"),
            q(
                "count("
                + only(
                    f"fastrelay_edge_ingest_heard{{{SEL}}} "
                    f"and on (job, instance) fastrelay_nats_connected{{{SEL}}} == 1"
                )
                + ") or vector(0)",
                "edges on NATS",
                "B",
            ),
            q(
                f"sum({only(f'fastrelay_edge_ingest_heard{{{SEL}}}')}) or vector(0)",
                "edges hearing the ingest",
                "C",
            ),
        ).links(runbooks("FastrelayIngestMissingEdges")),
        graph(
            "Edge expiries and refused channels / min",
            "Per minute at the ingest: edges dropped after --peer-timeout without a goodbye (an "
            "edge crashed, hung or was cut off from NATS; the channels only it wanted are "
            "released at Massive), and edge channels the ingest refused (bad names, markets it "
            "does not serve, the options contract cap; see the ingest's log).",
            units.CountsPerMinute,
            q(
                labelled(f"rate(fastrelay_ingest_edges_expired_total{{{SEL}}}[$__rate_interval]) * 60"),
                "edges expired {{instance}}",
            ),
            q(
                labelled(f"rate(fastrelay_ingest_refused_channels_total{{{SEL}}}[$__rate_interval]) * 60"),
                "refused channels {{instance}}",
                "B",
            ),
        ),
        graph(
            "Last-value fills / min by result",
            "A new subscriber of an exact state channel (e.g. Q.AAPL) that the edge has no last "
            "value for makes the edge ask the ingest, summed over the selected edges: requested "
            "and failed count channels (failed: timeout or no answer, the subscriber just waits "
            "for the next live event), "
            "delivered counts last values written to subscribers (one per subscriber and "
            "channel; none when a live event came first or the ingest had no value either).",
            units.CountsPerMinute,
            q(
                "sum by (result) "
                f"({only(f'rate(fastrelay_edge_last_value_fills_total{{{SEL}}}[$__rate_interval])')}) * 60",
                "{{result}}",
            ),
        ),
        *high_availability(),
    ]


def high_availability() -> list[timeseries.Panel | statetimeline.Panel]:
    """Which ingest leads (the lease on NATS JetStream) and how the edges follow it."""
    return [
        states(
            "Leader per ingest",
            "fastrelay_ingest_leader per ingest: green while it holds the leader's lease (it alone "
            "connects to Massive and publishes), blue while it is a hot standby. Exactly one "
            "ingest per deployment should be green: none for more than a few seconds is "
            "FastrelayNoLeaderIngest (every client without data), two for more than a scrape "
            "interval FastrelayMultipleLeaderIngests (ingests that do not share a lease). A "
            "failover shows as the green band moving to another ingest.",
            "standby",
            "leader",
            q(labelled(f"fastrelay_ingest_leader{{{SEL}}}"), "{{instance}}"),
            down_color="blue",
        ).links(runbooks("FastrelayNoLeaderIngest", "FastrelayMultipleLeaderIngests")),
        graph(
            "Leader term: ingests and edges",
            "The term of the lease: on an ingest fastrelay_ingest_term (its term while it leads, "
            "0 as a standby), on an edge fastrelay_edge_leader_term (the term of the leader it "
            "follows). Every election gives a higher term; edges drop messages of older terms. "
            "Normal: every edge's line on the leader's. An edge left on an older term does not "
            "hear the new leader (see Edges hearing the ingest).",
            units.Short,
            q(labelled(f"fastrelay_ingest_term{{{SEL}}}"), "ingest {{instance}}"),
            q(labelled(f"fastrelay_edge_leader_term{{{SEL}}}"), "edge {{instance}}", "B"),
        ),
        graph(
            "Leader changes / min by reason",
            "Per minute, each ingest's leadership changes by reason: elected (it won the lease), "
            "lease_expired (its renewals failed until the deadline: NATS trouble or a frozen "
            "loop), lease_taken (another ingest held the key), resigned (a graceful stop); and "
            "how often the edges followed a new leader, summed. A failover is one elected on the "
            "new leader, with lease_expired or resigned on the old one if it survived; repeated "
            "elections: FastrelayLeaderFlapping.",
            units.CountsPerMinute,
            q(
                labelled(f"rate(fastrelay_ingest_leader_changes_total{{{SEL}}}[$__rate_interval]) * 60"),
                "{{reason}} {{instance}}",
            ),
            q(
                "sum("
                + only(f"rate(fastrelay_edge_leader_changes_total{{{SEL}}}[$__rate_interval])")
                + ") * 60",
                "edges following a new leader",
                "B",
            ),
        ).links(runbooks("FastrelayLeaderFlapping")),
        graph(
            "Lease renewals failed, loop stalls and fenced events / min",
            "Per minute and ingest: lease renewals that did not get through (the leader rewrites "
            "the key every --lease-ttl / 3; a few failures in a row end its lease), times its "
            "event loop was found frozen (SIGSTOP, a paused VM, a long GC), and events it did not "
            "publish because its lease had run out (fencing at the sender). All 0 normally; "
            "renewals failing: NATS or JetStream slow or unreachable; stalls: CPU starvation.",
            units.CountsPerMinute,
            q(
                labelled(
                    f"rate(fastrelay_ingest_lease_renewals_failed_total{{{SEL}}}[$__rate_interval]) * 60"
                ),
                "renewals failed {{instance}}",
            ),
            q(
                labelled(f"rate(fastrelay_ingest_stalls_total{{{SEL}}}[$__rate_interval]) * 60"),
                "stalls {{instance}}",
                "B",
            ),
            q(
                labelled(f"rate(fastrelay_ingest_fenced_events_total{{{SEL}}}[$__rate_interval]) * 60"),
                "fenced events {{instance}}",
                "C",
            ),
        ).span(12),
        graph(
            "Edge drops / min by reason",
            "Data each edge dropped per minute, by reason: fenced (messages of a deposed leader's "
            "older term; a few right after a failover, steady: FastrelayEdgeFencedData), early "
            "(messages of a new leader before its state; a few per failover), not_live (events of "
            "a market not live yet: its clients get feed restored first), stale (events the "
            "ingest read more than --max-event-age ago: a frozen ingest, or clocks apart; "
            "steady: FastrelayEdgeStaleData). fenced and early count messages, the others events.",
            units.CountsPerMinute,
            q(
                labelled(f"rate(fastrelay_edge_dropped_total{{{SEL}}}[$__rate_interval]) * 60"),
                "{{reason}} {{instance}}",
            ),
        )
        .span(12)
        .links(runbooks("FastrelayEdgeStaleData", "FastrelayEdgeFencedData")),
    ]


def chart_history() -> list[timeseries.Panel]:
    """Chart history from Massive's REST aggregates (bars.py): what it costs the account."""
    return [
        graph(
            "Bars requests / min by result",
            "History and REST aggregate requests per minute: hit (the relay's cache answered), "
            "miss (Massive was asked), coalesced (waited for the same query already on its way: a "
            "crowd opening one chart), error. Misses are what the account pays for; a high miss "
            "rate with few distinct charts means --rest-cache-bytes is too small.",
            units.CountsPerMinute,
            q(
                "sum by (result) ("
                + only(f"rate(fastrelay_rest_requests_total{{{SEL}}}[$__rate_interval])")
                + ") * 60",
                "{{result}}",
            ),
        ),
        graph(
            "Bars errors / min by reason",
            "Failed bars requests: rate_limited (the relay's own --rest-per-minute budget), "
            "upstream_429 (Massive's rate limit: the relay pauses as it asks), upstream_error "
            "(Massive's 5xx), not_found, bad_answer, unavailable (Massive unreachable). Clients get "
            "an error status and the bars the relay kept.",
            units.CountsPerMinute,
            q(
                "sum by (reason) ("
                + only(f"rate(fastrelay_rest_errors_total{{{SEL}}}[$__rate_interval])")
                + ") * 60",
                "{{reason}}",
            ),
        ),
        right_axis(
            graph(
                "Massive REST latency and cache",
                "p50 and p99 of fetching a query's bars from Massive (every page), and the bytes of "
                "answers the relay keeps (right axis; bounded by --rest-cache-bytes).",
                units.Seconds,
                q(
                    "histogram_quantile(0.5, sum by (le) ("
                    + only(f"rate(fastrelay_rest_latency_seconds_bucket{{{SEL}}}[$__rate_interval])")
                    + "))",
                    "p50",
                ),
                q(
                    "histogram_quantile(0.99, sum by (le) ("
                    + only(f"rate(fastrelay_rest_latency_seconds_bucket{{{SEL}}}[$__rate_interval])")
                    + "))",
                    "p99",
                    "B",
                ),
                q("sum(" + only(f"fastrelay_rest_cache_bytes{{{SEL}}}") + ")", "cache bytes", "C"),
            ),
            "C",
            units.BytesIEC,
        ),
    ]


def build() -> dash.Dashboard:
    builder = (
        dash.Dashboard("fastrelay")
        .uid(UID)
        .description(
            "fastrelay, the Massive.com market-data relay: upstream connections per market, clients, "
            "deliveries, latency and the process, for single relays and for scale-out deployments "
            "(ingests, one of them leading, and edges over NATS). Generated by grafana/build_dashboard.py."
        )
        .tags(["fastrelay", "massive", "generated"])
        .refresh("30s")
        .time("now-3h", "now")
        .timezone("browser")
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .links(
            [
                doc_link("Panels explained", "sre.md#the-dashboard", "What each panel means, what is normal"),
                doc_link("Alerts and runbooks", "sre.md#alerts", "Every alert and what it asks of you"),
                doc_link("Operations", "operations.md", "Limits, outages, shutdown, systemd"),
            ]
        )
        .with_variable(
            dash.DatasourceVariable("datasource")
            .label("Data source")
            .type("prometheus")
            .hide(VariableHide.DONT_HIDE)
        )
        .with_variable(
            dash.QueryVariable("job")
            .label("Job")
            .description("The Prometheus job scraping fastrelay (one deployment per job).")
            .datasource(DATASOURCE)
            .query("label_values(fastrelay_build_info, job)")
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(VariableSort.ALPHABETICAL_ASC)
        )
        .with_variable(
            dash.QueryVariable("role")
            .label("Role")
            .description(
                "single (one process), ingest (Massive to NATS) or edge (NATS to clients), from "
                "fastrelay_build_info."
            )
            .datasource(DATASOURCE)
            .query('label_values(fastrelay_build_info{job="$job"}, role)')
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".*")
        )
        .with_variable(
            dash.QueryVariable("instance")
            .label("Instance")
            .description("One or more relay processes of the selected roles (host:port of their /metrics).")
            .datasource(DATASOURCE)
            .query('label_values(fastrelay_build_info{job="$job", role=~"$role"}, instance)')
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".*")
        )
    )
    sections: list[tuple[str, list[Any]]] = [
        ("Overview", overview()),
        ("Upstream (Massive; on an edge, its feed from the ingest)", upstream()),
        ("Clients", clients()),
        ("Relay and process", performance()),
        (SCALEOUT_ROW, scaleout()),
        ("Chart history (Massive REST)", chart_history()),
    ]
    for title, section in sections:
        builder = builder.with_row(dash.Row(title))
        for panel in section:
            builder = builder.with_panel(panel)
    return builder


def render(docs_url: str = DOCS_URL) -> str:
    """The dashboard JSON, stable across runs (sorted keys, panel ids in order), its links to
    docs/ under ``docs_url``."""
    model = build().build()
    for number, panel in enumerate(model.panels or [], start=1):
        panel.id_val = number
    text = JSONEncoder(sort_keys=True, indent=2).encode(model) + "\n"
    return text.replace(f'"{DOCS_URL}/', f'"{docs_url.rstrip("/")}/')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed JSON is not up to date")
    parser.add_argument(
        "--docs-url",
        default=DOCS_URL,
        help=f"where docs/ is read, for the runbook links (default {DOCS_URL}; as alerts.yml's runbook_url)",
    )
    args = parser.parse_args()
    text = render(args.docs_url)
    if args.check:
        if not OUTPUT.exists() or OUTPUT.read_text() != text:
            print(f"{OUTPUT} is stale: run {sys.argv[0]}", file=sys.stderr)
            return 1
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
