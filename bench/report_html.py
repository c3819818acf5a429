"""The bench's HTML reports: one page per run (``make bench``), one per comparison (``make bench-compare``).

    python -m bench.report_html results/bench-....json [-o report.html]

A run's page plots, per scenario, the latency percentiles and the CPU per delivered event of
every server, fastrelay first and each peer beside it; a scenario with a rate ladder gets a
line per server over the rate. The idle, abuse, failover and charts scenarios plot their own
numbers (memory per connection and handshakes; each attack window; time to the next leader's
data; time to a whole chart). Below each plot, the numbers in a table; at the end the text
report of bench/report.py. A comparison's page plots B beside A for the same configurations
and flags the regressions bench/compare.py counts, in the plots and in its table.

Self-contained: the plots are matplotlib SVG written into the page, which has no script and
fetches nothing. matplotlib is the ``bench`` extra of pyproject.toml (``make bench`` installs it).
"""

from __future__ import annotations

import argparse
import html
import io
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, NullFormatter

from bench import compare, report

# Stable SVG: text stays text (small, searchable), ids do not change from run to run.
plt.rcParams.update(
    {
        "svg.fonttype": "none",
        "svg.hashsalt": "fastrelay-bench",
        "font.size": 9,
        # Short font lists in every <text> (DejaVu Sans ships with matplotlib: its metrics lay out).
        "font.sans-serif": ["DejaVu Sans", "Arial", "Helvetica"],
        "axes.titlesize": 10,
        "axes.grid": True,
        "grid.alpha": 0.3,
    }
)

# One color per server across every plot and page; fastrelay's line is the thick one.
SERVER_COLORS = {
    "fastrelay": "#1f77b4",
    "fastrelay@0ms": "#17becf",
    "websockets": "#ff7f0e",
    "node-ws": "#2ca02c",
    "ceiling": "#7f7f7f",
    "ceiling@5ms": "#bcbd22",
    "scaleout": "#9467bd",
    "scaleout@event": "#8c564b",
}
OTHER_COLORS = ("#e377c2", "#aec7e8", "#98df8a", "#c49c94")
# Red marks only what is wrong: a saturated server, a regression.
REGRESSION_COLOR = "#d62728"
# A latency axis goes logarithmic when its values span more than this (a saturated peer's
# seconds beside milliseconds); below it a linear axis reads better.
LOG_SPAN = 30.0
PERCENTILES = (("p50", "p50"), ("p99", "p99"), ("p999", "p99.9"))

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 1180px; color: #222;
       padding: 0 1em }
h1 { font-size: 1.5em; margin-bottom: .2em } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd }
.meta { color: #555 } .about { color: #444; margin: .3em 0 .6em }
nav a { margin-right: .8em } figure { margin: .5em 0 } svg { max-width: 100%; height: auto }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: 12.5px }
th, td { border: 1px solid #ddd; padding: 2px 7px; text-align: right } th { background: #f4f4f4 }
td:first-child, th:first-child, table.text td, table.text th { text-align: left }
table.measures td:nth-child(2), table.measures th:nth-child(2) { text-align: left }
details { margin: .3em 0 1em } summary { cursor: pointer; color: #333 }
tr.regression td { background: #fde2e1 } tr.better td { background: #e3f4e1 }
.regression-flag { color: #b3261e; font-weight: 600 } .better-flag { color: #1b6e1f }
.met { color: #1b6e1f; font-weight: 600 } .missed { color: #b3261e; font-weight: 600 }
.summary { padding: .6em 1em; border-radius: 4px; margin: 1em 0; font-weight: 600 }
.summary.bad { background: #fde2e1; color: #8c1d18 } .summary.good { background: #e3f4e1; color: #1b5e20 }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; font-size: 11.5px }
"""


# --- reading the summaries ----------------------------------------------------------------------


def number(value: Any) -> float:
    """A finite number, or NaN for what was not measured (None, NaN, anything else)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    return float(value)


def latency(summary: dict[str, Any], key: str) -> float:
    return number((summary.get("latency_ms") or {}).get(key))


def nested(summary: dict[str, Any], *path: str) -> float:
    found: Any = summary
    for key in path:
        found = found.get(key) if isinstance(found, dict) else None
    return number(found)


def color(server: str, index: int) -> str:
    return SERVER_COLORS.get(server, OTHER_COLORS[index % len(OTHER_COLORS)])


def by_scenario(summaries: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Scenario -> its summaries, both in the text report's order (fastrelay first)."""
    found: dict[str, list[dict[str, Any]]] = {}
    for summary in report.ordered(summaries):
        found.setdefault(summary["scenario"], []).append(summary)
    return found


def servers_of(rows: Sequence[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(row["server"] for row in rows))


def kind(rows: Sequence[dict[str, Any]]) -> str:
    """How a scenario is plotted: ladder (several rates), servers (one rate), idle, abuse,
    failover or charts (windows that are not rates)."""
    first = rows[0]
    if "attack" in first:
        return "abuse"
    if "failover" in first:
        return "failover"
    if "charts" in first:
        return "charts"
    if first["scenario"] == "idle":
        return "idle"
    rates = {number(row.get("t_rate")) for row in rows}
    return "ladder" if len(rates) > 1 else "servers"


# --- plots ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    """One number of a summary, as a plot shows it."""

    title: str
    read: Callable[[dict[str, Any]], float]
    log: bool = False  # latencies of saturated peers are 100x the others'


P50 = Metric("latency p50 (ms)", lambda s: latency(s, "p50"), log=True)
P99 = Metric("latency p99 (ms)", lambda s: latency(s, "p99"), log=True)
US_PER_EVENT = Metric("CPU per delivered event (µs)", lambda s: number(s.get("server_us_per_event")))
KIB_PER_CONNECTION = Metric(
    "memory per connection (KiB)", lambda s: number(s.get("server_kib_per_connection"))
)
HANDSHAKES = Metric("handshakes / s", lambda s: number(s.get("handshakes_per_s")))
PEAK_RSS = Metric("relay peak RSS (MiB)", lambda s: number(s.get("window_peak_rss_mib")))
CHART_CPU = Metric("relay CPU over the opening (s)", lambda s: number(s.get("server_cpu_s")))
WIRE_BYTES = Metric("bytes on the wire per event", lambda s: number(s.get("wire_bytes_per_event")))


def figure(columns: int, height: float = 3.0, legend: bool = False) -> tuple[Figure, list[Axes]]:
    width = 3.9 * columns + (1.3 if legend else 0)
    fig, axes = plt.subplots(1, columns, figsize=(width, height), squeeze=False, layout="constrained")
    return fig, list(axes[0])


def scale(ax: Axes, values: Sequence[float], log: bool) -> None:
    """A log axis (plain numbers on it) when ``log`` is allowed and the values span LOG_SPAN."""
    positive = [v for v in values if v > 0 and not math.isnan(v)]
    if log and positive and max(positive) / min(positive) > LOG_SPAN:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())


def svg(fig: Figure) -> str:
    """The figure as an ``<svg>`` element to put in a page (no XML prolog, no date)."""
    out = io.StringIO()
    fig.savefig(out, format="svg", metadata={"Date": None})
    plt.close(fig)
    text = out.getvalue()
    return text[text.index("<svg") :]


def _rate_axis(ax: Axes, rates: list[float]) -> None:
    ax.set_xscale("log")
    ax.set_xticks(rates, [f"{r / 1000:g}k" for r in rates])
    ax.minorticks_off()
    ax.set_xlabel("T events / s offered")


def plot_ladder(rows: Sequence[dict[str, Any]]) -> str:
    """A line per server over the rate: p50, p99, CPU per delivered event (and, for the compression
    scenarios, bytes on the wire per event); x = saturated."""
    metrics: tuple[Metric, ...] = (P50, P99, US_PER_EVENT)
    if rows[0]["scenario"].startswith("deflate-"):
        metrics += (WIRE_BYTES,)
    fig, axes = figure(len(metrics), legend=True)
    rates = sorted({number(r["t_rate"]) for r in rows})
    for index, server in enumerate(servers_of(rows)):
        mine = sorted((r for r in rows if r["server"] == server), key=lambda r: number(r["t_rate"]))
        for ax, metric in zip(axes, metrics, strict=True):
            xs = [number(r["t_rate"]) for r in mine]
            ys = [metric.read(r) for r in mine]
            ax.plot(
                xs,
                ys,
                marker="o",
                markersize=3.5,
                color=color(server, index),
                linewidth=2.4 if server == report.FASTRELAY else 1.2,
                label=server,
            )
            for x, y, r in zip(xs, ys, mine, strict=True):
                if r.get("saturated") and not math.isnan(y):
                    ax.plot([x], [y], marker="x", markersize=9, color=REGRESSION_COLOR, linestyle="none")
    for ax, metric in zip(axes, metrics, strict=True):
        ax.set_title(metric.title)
        scale(ax, [metric.read(r) for r in rows], metric.log)
        _rate_axis(ax, rates)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(
        handles, labels, loc="outside right upper", fontsize=7.5, title="x: saturated", title_fontsize=7.5
    )
    return svg(fig)


def _bars(
    ax: Axes,
    categories: list[str],
    series: list[tuple[str, list[float], str]],
    title: str,
    log: bool = False,
    marked: set[tuple[int, int]] | None = None,
) -> list[Patch]:
    """Grouped bars: ``series`` of (label, one value per category, color); ``marked`` (series,
    category) pairs get a red outline and a triangle (a regression). Returns the legend's
    handles (plain, whatever is marked)."""
    width = 0.8 / max(1, len(series))
    for number_of, (_, values, fill) in enumerate(series):
        offset = (number_of - (len(series) - 1) / 2) * width
        xs = [i + offset for i in range(len(categories))]
        heights = [0.0 if math.isnan(v) else v for v in values]
        bars = ax.bar(xs, heights, width * 0.92, color=fill)
        for index, (bar, value) in enumerate(zip(bars, values, strict=True)):
            if marked and (number_of, index) in marked:
                bar.set_edgecolor(REGRESSION_COLOR)
                bar.set_linewidth(2)
                ax.annotate(
                    "▲",
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center",
                    va="bottom",
                    color=REGRESSION_COLOR,
                    fontsize=9,
                )
            elif math.isnan(value):
                ax.annotate(
                    "n/a",
                    (bar.get_x() + bar.get_width() / 2, 0),
                    ha="center",
                    va="bottom",
                    fontsize=6.5,
                    color="#888",
                )
    ax.set_xticks(
        range(len(categories)),
        categories,
        rotation=30 if len(categories) > 4 else 0,
        ha="right" if len(categories) > 4 else "center",
    )
    ax.set_title(title)
    scale(ax, [v for _, values, _ in series for v in values], log)
    ax.grid(axis="x", visible=False)
    return [Patch(facecolor=fill, label=label) for label, _, fill in series]


def plot_servers(rows: Sequence[dict[str, Any]]) -> str:
    """One rate: the latency percentiles of each server side by side, and its CPU per event."""
    servers = servers_of(rows)
    fig, axes = figure(2, legend=True)
    shades = ("#9ecae1", "#3182bd", "#08519c")
    handles = _bars(
        axes[0],
        servers,
        [
            (name, [latency(r, key) for r in rows], shade)
            for (key, name), shade in zip(PERCENTILES, shades, strict=True)
        ],
        "latency (ms)",
        log=True,
    )
    fig.legend(handles=handles, loc="outside right upper", fontsize=7.5)
    _bars(
        axes[1],
        servers,
        [("µs / event", [US_PER_EVENT.read(r) for r in rows], "#6a51a3")],
        US_PER_EVENT.title,
    )
    for ax in axes:
        for tick, server in zip(ax.get_xticklabels(), servers, strict=True):
            tick.set_color(color(server, servers.index(server)))
    return svg(fig)


def plot_metrics(categories: list[str], rows: Sequence[dict[str, Any]], metrics: Sequence[Metric]) -> str:
    """One bar per category (server, attack window, way of stopping, phase) for each metric."""
    fig, axes = figure(len(metrics), height=3.6 if len(categories) > 4 else 3.0)
    for ax, metric in zip(axes, metrics, strict=True):
        _bars(
            ax,
            categories,
            [(metric.title, [metric.read(r) for r in rows], "#3182bd")],
            metric.title,
            metric.log,
        )
    return svg(fig)


def _windows(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Category labels of windows that are not rates: the step, with the server if several."""
    several = len(servers_of(rows)) > 1
    return [f"{r['step']} {r['server']}" if several else str(r["step"]) for r in rows]


FAILOVER_METRICS = (
    Metric(
        "time to the new leader's data p50 (ms)", lambda s: nested(s, "failover", "time_to_data_ms", "p50")
    ),
    Metric(
        "time to the new leader's data p99 (ms)", lambda s: nested(s, "failover", "time_to_data_ms", "p99")
    ),
)
CHART_METRICS = (
    Metric("whole chart p50 (ms)", lambda s: nested(s, "charts", "time_to_history_ms", "p50")),
    Metric("whole chart p99 (ms)", lambda s: nested(s, "charts", "time_to_history_ms", "p99")),
    CHART_CPU,
)


def plot_scenario(rows: Sequence[dict[str, Any]]) -> str:
    found = kind(rows)
    if found == "ladder":
        return plot_ladder(rows)
    if found == "servers":
        return plot_servers(rows)
    if found == "idle":
        return plot_metrics(servers_of(rows), rows, (KIB_PER_CONNECTION, HANDSHAKES))
    if found == "abuse":
        return plot_metrics(_windows(rows), rows, (P99, US_PER_EVENT, PEAK_RSS))
    if found == "failover":
        return plot_metrics(_windows(rows), rows, FAILOVER_METRICS)
    return plot_metrics(_windows(rows), rows, CHART_METRICS)


# --- tables ---------------------------------------------------------------------------------------


def cell(value: float, spec: str, unit: str = "") -> str:
    return "-" if math.isnan(value) else format(value, spec) + unit


def table(
    head: Sequence[str], body: Sequence[Sequence[str]], classes: Sequence[str] = (), css: str = ""
) -> str:
    """An HTML table (cells are HTML already); ``classes``: one per row (regression, better)."""
    rows = [f"<tr>{''.join(f'<th>{html.escape(h)}</th>' for h in head)}</tr>"]
    for index, row in enumerate(body):
        row_class = f' class="{classes[index]}"' if index < len(classes) and classes[index] else ""
        rows.append(f"<tr{row_class}>{''.join(f'<td>{c}</td>' for c in row)}</tr>")
    return f"<table{f' class={css}' if css else ''}>{''.join(rows)}</table>"


def numbers_table(rows: Sequence[dict[str, Any]]) -> str:
    head = [
        "server",
        "step",
        "delivered",
        "ev/frame",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "CPU",
        "µs/event",
        "KiB/conn",
        "handshakes/s",
        "note",
    ]
    body = []
    for r in rows:
        saturated = r.get("saturated")
        body.append(
            [
                html.escape(r["server"]),
                html.escape(str(r["step"])),
                cell(100 * number(r.get("delivery_ratio")), ".1f", " %"),
                cell(number(r.get("events_per_client_frame")), ".1f"),
                cell(latency(r, "p50"), ".2f"),
                cell(latency(r, "p99"), ".2f"),
                cell(latency(r, "p999"), ".1f"),
                cell(100 * number(r.get("server_cpu")), ".0f", " %"),
                cell(US_PER_EVENT.read(r), ".2f"),
                cell(KIB_PER_CONNECTION.read(r), ".2f"),
                cell(HANDSHAKES.read(r), ",.0f"),
                f'<span class="missed">saturated: {html.escape(str(saturated))}</span>' if saturated else "",
            ]
        )
    return table(head, body)


def targets_table(found: Sequence[dict[str, Any]]) -> str:
    body = [
        [
            html.escape(t["target"]),
            f'<span class="{"met" if t["status"] == "met" else "missed"}">'
            f"{html.escape(t['status'].upper())}</span>",
            html.escape(t["detail"]),
        ]
        for t in found
    ]
    return table(["target", "status", "measured"], body, css="text")


# --- pages ----------------------------------------------------------------------------------------


def page(title: str, body: list[str]) -> str:
    return (
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
        f"<meta name=viewport content='width=device-width'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def describe(result: dict[str, Any]) -> str:
    machine = result["machine"]
    dirty = " (dirty tree)" if result["git"]["dirty"] else ""
    return html.escape(
        f"{result['date']} · commit {result['git']['commit'][:10]}{dirty} · {machine['nproc']} CPUs "
        f"{machine['cpu_model']} · {machine['kernel']} · Python {result['python']} · Node.js "
        f"{result.get('node') or '-'} · {result.get('command', '')}"
    )


def anchor(scenario: str) -> str:
    return "scenario-" + "".join(c if c.isalnum() else "-" for c in scenario)


def render_run(result: dict[str, Any], source: str) -> str:
    """A run's page: per scenario its plot and numbers, the targets, the text report."""
    groups = by_scenario(result["summary"])
    about = {key: s.get("about", "") for key, s in result.get("scenarios", {}).items()}
    body = [
        f"<h1>fastrelay bench: {html.escape(result['date'])}</h1>",
        f'<p class="meta">{describe(result)}<br>from {html.escape(source)}; medians over repeats; '
        "latency from the simulator's send stamp to the client, CPU of the server process(es) "
        "over the measured window</p>",
        "<nav>" + "".join(f'<a href="#{anchor(s)}">{html.escape(s)}</a>' for s in groups) + "</nav>",
    ]
    if result.get("targets"):
        body += ["<h2 id=targets>Targets</h2>", targets_table(result["targets"])]
    for scenario, rows in groups.items():
        body += [
            f'<h2 id="{anchor(scenario)}">{html.escape(scenario)}</h2>',
            f'<p class="about">{html.escape(about.get(scenario, ""))}</p>' if about.get(scenario) else "",
            f'<figure class="plot" data-scenario="{html.escape(scenario)}" data-kind="{kind(rows)}" '
            f'data-servers="{html.escape(" ".join(servers_of(rows)))}">{plot_scenario(rows)}</figure>',
            numbers_table(rows),
        ]
    text = report.render(result, source)
    body.append(f"<details><summary>The text report</summary><pre>{html.escape(text)}</pre></details>")
    return page(f"fastrelay bench {result['date']}", body)


def compare_plot(scenario_rows: Sequence[compare.Row], names: Sequence[str]) -> str:
    """For each measure named: A and B bars per configuration; a counted regression outlined."""
    chosen = [n for n in names if any(r.measure.name == n for r in scenario_rows)]
    fig, axes = figure(max(1, len(chosen)))
    for ax, name in zip(axes, chosen, strict=False):
        rows = [r for r in scenario_rows if r.measure.name == name]
        categories = [configuration(r.summary_b) for r in rows]
        marked = {(1, index) for index, r in enumerate(rows) if r.regression}
        handles = _bars(
            ax,
            categories,
            [("A", [r.a for r in rows], "#bdbdbd"), ("B", [r.b for r in rows], "#3182bd")],
            name,
            log=name.endswith("ms") and len(rows) > 1,
            marked=marked,
        )
        ax.legend(handles=handles, fontsize=7.5)
    return svg(fig)


def configuration(summary: dict[str, Any]) -> str:
    """A configuration within its scenario: ``2k fastrelay``, or ``fastrelay`` without a step."""
    step = str(summary["step"])
    return summary["server"] if step == "-" else f"{step} {summary['server']}"


# The measures of bench/compare.py each kind of scenario plots (the table shows all).
COMPARE_PLOTS = {
    "ladder": ("p99 ms", "us/event"),
    "servers": ("p99 ms", "us/event"),
    "idle": ("KiB/conn", "handshakes/s"),
    "abuse": ("p99 ms", "peak RSS MiB"),
    "failover": ("failover ms p50", "failover ms p99"),
    "charts": ("chart ms p99", "chart cpu s"),
}


def render_compare(a: dict[str, Any], b: dict[str, Any], source_a: str, source_b: str) -> str:
    """B against A: the regressions first, then per scenario A and B side by side and every measure."""
    found, only = compare.rows(a, b)
    regressions = [r for r in found if r.regression]
    verdict = (
        f'<p class="summary bad">{len(regressions)} regression(s) past tolerance</p>'
        if regressions
        else '<p class="summary good">no regression past tolerance</p>'
    )
    body = [
        "<h1>fastrelay bench: B against A</h1>",
        f'<p class="meta">A = {html.escape(source_a)}: {describe(a)}<br>'
        f"B = {html.escape(source_b)}: {describe(b)}</p>",
        *(f'<p class="summary bad">{html.escape(line)}</p>' for line in compare.header_lines(a, b)[2:]),
        verdict,
    ]
    if regressions:
        body.append(measures_table(regressions))
    scenarios: dict[str, list[compare.Row]] = {}
    for row in found:
        scenarios.setdefault(row.scenario, []).append(row)
    order = {s: i for i, s in enumerate(report.SCENARIO_ORDER)}
    for scenario in sorted(scenarios, key=lambda s: order.get(s, 99)):
        rows = scenarios[scenario]
        flagged = sum(r.regression for r in rows)
        summaries = [r.summary_b for r in rows]
        better = sum(r.flag == "better" for r in rows)
        body += [
            f'<h2 id="{anchor(scenario)}">{html.escape(scenario)}'
            + (f' <span class="regression-flag">({flagged} regression(s))</span>' if flagged else "")
            + "</h2>",
            f'<figure class="plot" data-scenario="{html.escape(scenario)}" data-regressions="{flagged}">'
            f"{compare_plot(rows, COMPARE_PLOTS[kind(summaries)])}</figure>",
            f"<details><summary>every measure: {len(rows)}, {flagged} regression(s), {better} better"
            f"</summary>{measures_table(rows)}</details>",
        ]
    if only:
        body.append(f"<p>In one result only: {html.escape(', '.join(only))}</p>")
    body.append(f'<p class="meta">Tolerances (run-to-run noise): {html.escape(compare.tolerances())}</p>')
    return page("fastrelay bench: B against A", body)


def measures_table(rows: Sequence[compare.Row]) -> str:
    """Measures of both results, a counted regression's row red, a better one's green."""
    return table(
        ["scenario step server", "measure", "A", "B", "B/A", "flag"],
        [
            [
                html.escape(r.key),
                html.escape(r.measure.name),
                f"{r.a:.4g}",
                f"{r.b:.4g}",
                f"{r.ratio:.2f}",
                _flag(r),
            ]
            for r in rows
        ],
        ["regression" if r.regression else "better" if r.flag == "better" else "" for r in rows],
        css="measures",
    )


def _flag(row: compare.Row) -> str:
    if row.regression:
        return f'<span class="regression-flag">{html.escape(row.flag)}</span>'
    if row.flag == "better":
        return '<span class="better-flag">better</span>'
    return html.escape(row.flag)


def beside(json_path: Path) -> Path:
    """Where a run's page goes: next to its JSON, same name."""
    return json_path.with_suffix(".html")


def write_run(result: dict[str, Any], json_path: Path, output: Path | None = None) -> Path:
    output = output or beside(json_path)
    output.write_text(render_run(result, json_path.name))
    return output


def compare_output(path_a: Path, path_b: Path) -> Path:
    """Where a comparison's page goes: beside B, named after both."""
    return path_b.with_name(f"compare-{path_a.stem}-{path_b.stem}.html")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report_html", description=__doc__.splitlines()[0])
    parser.add_argument("result", type=Path, help="a results/bench-*.json")
    parser.add_argument("-o", "--output", type=Path, help="the page (default: beside the JSON, .html)")
    args = parser.parse_args(argv)
    result = report.load(args.result)
    result["targets"] = report.targets(result["summary"])
    print(f"HTML report: {write_run(result, args.result, args.output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
