"""Generates grafana/dashboards/fastrelay.json with grafana-foundation-sdk (typed builders).

    .venv/bin/python grafana/build_dashboard.py           # (re)write the JSON
    .venv/bin/python grafana/build_dashboard.py --check   # exit 1 if the JSON is stale

Edit this file, never the JSON. Every query selects ``{job="$job", instance=~"$instance"}``
and every rate window is ``$__rate_interval``, so the dashboard follows the scrape
interval configured on the Grafana datasource (``timeInterval``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus, stat, statetimeline, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import units
from grafana_foundation_sdk.models.common import (
    BigValueColorMode,
    BigValueGraphMode,
    GraphThresholdsStyleMode,
    LegendDisplayMode,
    LegendPlacement,
    SortOrder,
    TooltipDisplayMode,
    VisibilityMode,
)
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
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

# Reference lines drawn on panels; keep them equal to the thresholds in grafana/alerts.yml.
RELAY_P99_BUDGET_S = 0.05
CPU_SATURATION = 0.9


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
        .height(8)
        .span(8)
        .line_width(1)
        .fill_opacity(10)
        .show_points(VisibilityMode.NEVER)
        .legend(
            common_builders.VizLegendOptions()
            .show_legend(True)
            .display_mode(LegendDisplayMode.LIST)
            .placement(LegendPlacement.BOTTOM)
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


def overview() -> list[stat.Panel]:
    return [
        big(
            "Ready",
            "fastrelay_ready: 1 when every configured upstream market is authenticated (what /readyz "
            "reports). The lowest value over the selected instances.",
            units.NoUnit,
            q(f"min(fastrelay_ready{{{SEL}}})", "ready"),
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
            "Client WebSocket connections open now, over all paths and selected instances.",
            units.Short,
            q(f"sum(fastrelay_clients{{{SEL}}})", "clients"),
        ),
        big(
            "Deliveries / s",
            "Events written to clients per second (one event to N clients counts N).",
            units.EventsPerSecond,
            q(f"sum(rate(fastrelay_client_events_sent_total{{{SEL}}}[$__rate_interval]))", "deliveries"),
        ),
        big(
            "Relay latency p99",
            "99th percentile of upstream frame arrival to the write of its events to client "
            "sockets, including the --flush-interval coalescing window.",
            units.Seconds,
            q(
                "histogram_quantile(0.99, sum by (le) "
                f"(rate(fastrelay_relay_latency_seconds_bucket{{{SEL}}}[$__rate_interval])))",
                "p99",
            ),
        ).thresholds(thresholds((None, "green"), (RELAY_P99_BUDGET_S, "red"))),
    ]


def upstream() -> list[timeseries.Panel | statetimeline.Panel]:
    state = (
        statetimeline.Panel()
        .title("Upstream state per market")
        .description(
            "fastrelay_upstream_connected: green while the market's upstream connection to Massive "
            "is authenticated, red while it is down (reconnecting, auth_failed or max_connections "
            "cool-down). Clients stay connected through an outage but receive nothing for that "
            "market; events of the outage are lost (Massive does not replay)."
        )
        .datasource(DATASOURCE)
        .unit(units.NoUnit)
        .height(8)
        .span(8)
        .show_value(VisibilityMode.NEVER)
        .merge_values(True)
        .mappings(
            [
                ValueMap(
                    {
                        "0": ValueMappingResult(text="down", color="red", index=0),
                        "1": ValueMappingResult(text="connected", color="green", index=1),
                    }
                )
            ]
        )
        .thresholds(thresholds((None, "red"), (1, "green")))
        .with_target(
            q(f"max by (instance, market) (fastrelay_upstream_connected{{{SEL}}})", "{{market}} {{instance}}")
        )
    )
    return [
        state,
        graph(
            "Upstream events / s by market",
            "Events received from Massive per second, by market. Zero while clients are subscribed "
            "means a closed market, quiet channels, or a silent upstream (see the "
            "FastrelayUpstreamSilent alert).",
            units.EventsPerSecond,
            q(
                f"sum by (market) (rate(fastrelay_upstream_events_total{{{SEL}}}[$__rate_interval]))",
                "{{market}}",
            ),
        ),
        graph(
            "Upstream reconnects / min",
            "Upstream connections lost or refused per minute, by market and reason: drop (socket "
            "closed), stall (no data nor pong within the ping timeout), auth_failed (API key "
            "rejected), max_connections (the key is used by another process).",
            units.CountsPerMinute,
            q(
                "sum by (market, reason) "
                f"(rate(fastrelay_upstream_reconnects_total{{{SEL}}}[$__rate_interval])) * 60",
                "{{market}} {{reason}}",
            ),
        ),
        graph(
            "Feed latency by market",
            "Exchange/Massive event timestamp (ms) to arrival at the relay, sampled on the first "
            "event of each frame: network plus Massive delay, before the relay. Rises with a "
            "delayed feed or a congested link; includes clock skew between Massive and this host.",
            units.Seconds,
            q(
                "histogram_quantile(0.5, sum by (market, le) "
                f"(rate(fastrelay_feed_latency_seconds_bucket{{{SEL}}}[$__rate_interval])))",
                "p50 {{market}}",
            ),
            q(
                "histogram_quantile(0.99, sum by (market, le) "
                f"(rate(fastrelay_feed_latency_seconds_bucket{{{SEL}}}[$__rate_interval])))",
                "p99 {{market}}",
                "B",
            ),
        ),
        graph(
            "Upstream channels subscribed",
            "Channels the relay holds subscribed on each market's upstream (the union of all "
            "clients' channels, a wildcard covering its tickers, plus lingering ones).",
            units.Short,
            q(f"sum by (market) (fastrelay_upstream_channels{{{SEL}}})", "{{market}}"),
        ),
        graph(
            "Upstream ingress and decode errors",
            "Payload bytes received from Massive per second by market (left), and frames that "
            "failed to decode and were skipped, per minute (should stay at 0; see the logs).",
            units.BytesPerSecondSI,
            q(
                f"sum by (market) (rate(fastrelay_upstream_received_bytes_total{{{SEL}}}[$__rate_interval]))",
                "{{market}} bytes/s",
            ),
            q(
                "sum by (market) "
                f"(rate(fastrelay_upstream_decode_errors_total{{{SEL}}}[$__rate_interval])) * 60",
                "{{market}} decode errors/min",
                "B",
            ),
        ).override_by_regexp(
            ".*decode errors.*",
            [
                DynamicConfigValue(id_val="unit", value=units.CountsPerMinute),
                DynamicConfigValue(id_val="custom.axisPlacement", value="right"),
            ],
        ),
    ]


def clients() -> list[timeseries.Panel]:
    return [
        graph(
            "Clients by path",
            "Open client connections by path (/stocks, /options, ..., /api/socket).",
            units.Short,
            q(f"sum by (path) (fastrelay_clients{{{SEL}}})", "{{path}}"),
        ),
        graph(
            "Deliveries / s",
            "Events written to client sockets per second (events x recipients), and the WebSocket "
            "frames carrying them (several events share a frame within the flush window).",
            units.EventsPerSecond,
            q(f"sum(rate(fastrelay_client_events_sent_total{{{SEL}}}[$__rate_interval]))", "events"),
            q(
                f"sum(rate(fastrelay_client_frames_sent_total{{{SEL}}}[$__rate_interval]))",
                "frames",
                "B",
            ),
        ),
        graph(
            "Client egress",
            "Bytes written to client sockets per second.",
            units.BytesPerSecondSI,
            q(f"sum(rate(fastrelay_client_sent_bytes_total{{{SEL}}}[$__rate_interval]))", "sent"),
        ),
        graph(
            "Slow-consumer drops / min",
            "Clients closed (1013) for owing more than --max-client-buffer of unsent data, per "
            "minute. A few are normal (bad mobile links); many at once point at the relay's host "
            "or network, or at clients subscribing to more than they can read.",
            units.CountsPerMinute,
            q(
                f"sum(rate(fastrelay_client_slow_consumer_drops_total{{{SEL}}}[$__rate_interval])) * 60",
                "drops",
            ),
        ),
        graph(
            "Largest client backlog",
            "Largest unsent backlog of any one client at the last flush; a client is dropped when "
            "it exceeds --max-client-buffer (4 MiB by default).",
            units.BytesIEC,
            q(f"max(fastrelay_client_max_backlog_bytes{{{SEL}}})", "max backlog"),
        ),
        graph(
            "Client connects and disconnects / min",
            "Connections accepted per minute, and connections closed per minute by reason "
            "(normal, slow_consumer, auth_failed, policy, limit, idle, shutdown, error).",
            units.CountsPerMinute,
            q(
                f"sum(rate(fastrelay_client_connections_total{{{SEL}}}[$__rate_interval])) * 60",
                "accepted",
            ),
            q(
                "sum by (reason) "
                f"(rate(fastrelay_client_disconnections_total{{{SEL}}}[$__rate_interval])) * 60",
                "closed: {{reason}}",
                "B",
            ),
        ),
        graph(
            "Subscriptions and audiences",
            "Channels subscribed summed over clients, and audiences (groups of clients with the "
            "same channel set: one frame is built per audience).",
            units.Short,
            q(f"sum(fastrelay_client_subscriptions{{{SEL}}})", "subscriptions"),
            q(f"sum(fastrelay_audiences{{{SEL}}})", "audiences", "B"),
        ).span(24),
    ]


def performance() -> list[timeseries.Panel]:
    def relay_quantile(quantile: str, ref: str) -> prometheus.Dataquery:
        return q(
            f"histogram_quantile({quantile}, sum by (instance, le) "
            f"(rate(fastrelay_relay_latency_seconds_bucket{{{SEL}}}[$__rate_interval])))",
            f"p{float(quantile) * 100:g} {{{{instance}}}}",
            ref,
        )

    return [
        with_limit(
            graph(
                "Relay latency p50 / p99 / p99.9",
                "Upstream frame arrival to the write of its events to client sockets (buckets "
                "10 us to 1 s), including the --flush-interval coalescing window (5 ms by default). "
                f"The dashed line is the p99 budget of the FastrelayRelayLatencyHigh alert "
                f"({RELAY_P99_BUDGET_S * 1000:g} ms).",
                units.Seconds,
                relay_quantile("0.5", "A"),
                relay_quantile("0.99", "B"),
                relay_quantile("0.999", "C"),
            ),
            RELAY_P99_BUDGET_S,
        ),
        with_limit(
            graph(
                "CPU (1.0 = one core)",
                "CPU time of the relay process per second, from process_cpu_seconds_total: 1.0 "
                "(shown as 100 %) is one core fully busy. The relay runs one event loop, so it "
                "saturates near one core whatever the machine has; the dashed line is the "
                "FastrelayCpuSaturated threshold.",
                units.PercentUnit,
                q(
                    f"rate(process_cpu_seconds_total{{{SEL}}}[$__rate_interval])",
                    "{{instance}}",
                ),
            ).axis_soft_max(1),
            CPU_SATURATION,
        ),
        graph(
            "Event loop lag",
            "How late the event loop runs a 250 ms timer (p99 and p50 over the window): the time "
            "the loop was busy or blocked. Sustained tens of ms mean the loop is saturated, and "
            "relay latency rises with it.",
            units.Seconds,
            q(
                "histogram_quantile(0.99, sum by (instance, le) "
                f"(rate(fastrelay_event_loop_lag_seconds_bucket{{{SEL}}}[$__rate_interval])))",
                "p99 {{instance}}",
            ),
            q(
                "histogram_quantile(0.5, sum by (instance, le) "
                f"(rate(fastrelay_event_loop_lag_seconds_bucket{{{SEL}}}[$__rate_interval])))",
                "p50 {{instance}}",
                "B",
            ),
        ),
        graph(
            "Resident memory (RSS)",
            "Resident set size of the relay process. Grows with clients (socket buffers, "
            "backlogs of slow clients) and with the channels whose last value is kept.",
            units.BytesIEC,
            q(f"process_resident_memory_bytes{{{SEL}}}", "{{instance}}"),
        ).span(12),
        graph(
            "Open file descriptors",
            "Open file descriptors (about one per client plus one per upstream market) against "
            "the process limit: at the limit new clients are refused.",
            units.Short,
            q(f"process_open_fds{{{SEL}}}", "open {{instance}}"),
            q(f"process_max_fds{{{SEL}}}", "limit {{instance}}", "B"),
        ).span(12),
    ]


def build() -> dash.Dashboard:
    builder = (
        dash.Dashboard("fastrelay")
        .uid(UID)
        .description(
            "fastrelay, the Massive.com market-data relay: upstream connections per market, clients, "
            "deliveries, latency and the process. Generated by grafana/build_dashboard.py."
        )
        .tags(["fastrelay", "massive", "generated"])
        .refresh("30s")
        .time("now-3h", "now")
        .timezone("browser")
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .with_variable(
            dash.DatasourceVariable("datasource")
            .label("Data source")
            .type("prometheus")
            .hide(VariableHide.DONT_HIDE)
        )
        .with_variable(
            dash.QueryVariable("job")
            .label("Job")
            .description("The Prometheus job scraping fastrelay.")
            .datasource(DATASOURCE)
            .query("label_values(fastrelay_build_info, job)")
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(VariableSort.ALPHABETICAL_ASC)
        )
        .with_variable(
            dash.QueryVariable("instance")
            .label("Instance")
            .description("One or more relay processes (host:port of their /metrics).")
            .datasource(DATASOURCE)
            .query('label_values(fastrelay_build_info{job="$job"}, instance)')
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".*")
        )
    )
    builder = builder.with_row(dash.Row("Overview"))
    for panel in overview():
        builder = builder.with_panel(panel)
    builder = builder.with_row(dash.Row("Upstream (Massive)"))
    for up_panel in upstream():
        builder = builder.with_panel(up_panel)
    builder = builder.with_row(dash.Row("Clients"))
    for client_panel in clients():
        builder = builder.with_panel(client_panel)
    builder = builder.with_row(dash.Row("Relay and process"))
    for perf_panel in performance():
        builder = builder.with_panel(perf_panel)
    return builder


def render() -> str:
    """The dashboard JSON, stable across runs (sorted keys, panel ids in order)."""
    model = build().build()
    for number, panel in enumerate(model.panels or [], start=1):
        panel.id_val = number
    return JSONEncoder(sort_keys=True, indent=2).encode(model) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed JSON is not up to date")
    args = parser.parse_args()
    text = render()
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
