"""``make bench-compare A B``: two bench results side by side, regressions flagged.

For every scenario, rate step and server present in both files, the ratio
B / A of each key number, flagged when B is worse than A by more than that
number's tolerance (run-to-run noise on this 2-core shared machine: CPU and
memory move a few percent, tail latencies much more). Without arguments, the
two newest results/bench-*.json (A the older).

``python -m bench.compare [A.json B.json] [--strict] [--html PAGE]`` (``--strict``: exit 1 on a
regression). Beside the text, an HTML page with B and A plotted side by side and the regressions
highlighted (bench/report_html.py), by default next to B: ``compare-A-B.html``.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.report import load

RESULTS = Path(__file__).resolve().parent.parent / "results"


@dataclass(frozen=True)
class Measure:
    name: str
    read: Callable[[dict[str, Any]], float]
    higher_is_better: bool
    tolerance: float  # relative change within noise
    scenarios: tuple[str, ...] = ()  # only these (empty: all)


def _latency(key: str) -> Callable[[dict[str, Any]], float]:
    return lambda s: float(s["latency_ms"][key])


CHARTS = ("charts", "charts-spread")

MEASURES = (
    Measure("delivered/s", lambda s: float(s["delivered_per_s"]), True, 0.02),
    Measure("delivery %", lambda s: 100 * float(s["delivery_ratio"]), True, 0.001),
    Measure("p50 ms", _latency("p50"), False, 0.25),
    Measure("p99 ms", _latency("p99"), False, 0.30),
    Measure("p999 ms", _latency("p999"), False, 0.50),
    Measure("server cpu", lambda s: float(s["server_cpu"]), False, 0.10),
    Measure("us/event", lambda s: float(s["server_us_per_event"]), False, 0.10),
    Measure("RSS MiB", lambda s: float(s["server_rss_mib"]), False, 0.05),
    Measure("KiB/conn", lambda s: float(s["server_kib_per_connection"]), False, 0.05, ("idle",)),
    Measure("handshakes/s", lambda s: float(s["handshakes_per_s"]), True, 0.15, ("idle",)),
    Measure("recovery ms", lambda s: float(s["recovery_ms"]["median"]), False, 1.0, ("reconnect",)),
    Measure("slow dropped", lambda s: float(s["slow_dropped"]), True, 0.0, ("slow",)),
    Measure("peak RSS MiB", lambda s: float(s["window_peak_rss_mib"]), False, 0.05, ("abuse",)),
    Measure(
        "failover ms p50",
        lambda s: float(s["failover"]["time_to_data_ms"]["p50"]),
        False,
        0.25,
        ("scaleout-failover",),
    ),
    Measure(
        "failover ms p99",
        lambda s: float(s["failover"]["time_to_data_ms"]["p99"]),
        False,
        0.5,
        ("scaleout-failover",),
    ),
    Measure("chart ms p50", lambda s: float(s["charts"]["time_to_history_ms"]["p50"]), False, 0.25, CHARTS),
    Measure("chart ms p99", lambda s: float(s["charts"]["time_to_history_ms"]["p99"]), False, 0.3, CHARTS),
    Measure("chart cpu s", lambda s: float(s["server_cpu_s"]), False, 0.15, CHARTS),
    Measure("chart peak MiB", lambda s: float(s["server_peak_rss_mib"]), False, 0.05, CHARTS),
    Measure("REST calls", lambda s: float(max(s["charts"]["rest_calls"])), False, 0.0, CHARTS),
)


def _key(summary: dict[str, Any]) -> str:
    return f"{summary['scenario']} {summary['step']} {summary['server']}"


@dataclass(frozen=True)
class Row:
    """One measure of one scenario, step and server in both results."""

    key: str
    summary_a: dict[str, Any]
    summary_b: dict[str, Any]
    measure: Measure
    a: float
    b: float
    ratio: float  # B / A
    flag: str  # "", "better", "REGRESSION", either with " (saturated: not counted)"
    regression: bool  # a regression that counts

    @property
    def scenario(self) -> str:
        return str(self.summary_a["scenario"])


def rows(a: dict[str, Any], b: dict[str, Any]) -> tuple[list[Row], list[str]]:
    """Every comparable measure of the configurations in both results, in B's order, and the
    configurations found in one result only."""
    first = {_key(s): s for s in a["summary"]}
    second = {_key(s): s for s in b["summary"]}
    found: list[Row] = []
    for key in (k for k in second if k in first):
        old, new = first[key], second[key]
        # A server past saturation delivers whatever it manages: its numbers are not comparable.
        saturated = bool(old.get("saturated") or new.get("saturated"))
        for measure in MEASURES:
            if measure.scenarios and old["scenario"] not in measure.scenarios:
                continue
            if ("failover" in old or "charts" in old) and not measure.scenarios:
                continue  # a failover window's rates and CPU follow its outage: only its own measures
            try:
                x, y = measure.read(old), measure.read(new)
            except (KeyError, TypeError, ValueError):
                continue
            if math.isnan(x) or math.isnan(y):
                continue
            ratio = y / x if x else (1.0 if y == x else math.inf)
            worse = (y < x) if measure.higher_is_better else (y > x)
            change = abs(ratio - 1) if x else (0.0 if y == x else math.inf)
            flag, regression = "", False
            if change > measure.tolerance:
                flag = "REGRESSION" if worse else "better"
                if saturated:
                    flag += " (saturated: not counted)"
                else:
                    regression = worse
            found.append(Row(key, old, new, measure, x, y, ratio, flag, regression))
    return found, sorted(set(first) ^ set(second))


def noisy(row: Row) -> float:
    """The most other processes took of a core in either run of this configuration."""
    return float(max(row.summary_a.get("others_cpu_max", 0.0), row.summary_b.get("others_cpu_max", 0.0)))


def header_lines(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    lines = []
    for side, result in (("A", a), ("B", b)):
        machine = result["machine"]
        lines.append(
            f"{side}: {result['date']}  commit {result['git']['commit'][:10]}"
            f"{' (dirty)' if result['git']['dirty'] else ''}  {machine['nproc']} CPUs {machine['cpu_model']}"
            f"  {result.get('command', '')}"
        )
    if a["machine"].get("cpu_model") != b["machine"].get("cpu_model"):
        lines.append("WARNING: different machines: ratios compare the machines as much as the code")
    return lines


def tolerances() -> str:
    return ", ".join(f"{m.name} {100 * m.tolerance:g}%" for m in MEASURES)


def compare(a: dict[str, Any], b: dict[str, Any]) -> tuple[list[str], int]:
    """The comparison's lines and how many regressions it flags."""
    lines = header_lines(a, b)
    found, only = rows(a, b)
    lines.append("")
    keys = list(dict.fromkeys(row.key for row in found))
    width = max([34, *(len(k) + 2 for k in keys)])  # abuse's steps are attack classes: long
    header = f"{'scenario step server':<{width}}{'measure':<14}{'A':>12}{'B':>12}{'B/A':>8}  flag"
    lines += [header, "-" * len(header)]
    for key in keys:
        of_key = [row for row in found if row.key == key]
        for row in of_key:
            numbers = f"{row.a:>12.4g}{row.b:>12.4g}{row.ratio:>8.2f}"
            lines.append(f"{key:<{width}}{row.measure.name:<14}{numbers}  {row.flag}")
        busy = noisy(of_key[0])
        if busy > 0.15:
            lines.append(f"{'':<{width}}(other processes used up to {100 * busy:.0f}% of a core: noisy)")
    if only:
        lines.append(f"\nin one file only: {', '.join(only)}")
    regressions = sum(row.regression for row in found)
    lines.append(f"\n{regressions} regression(s) past tolerance (tolerances: {tolerances()})")
    return lines, regressions


def _newest_two() -> tuple[Path, Path]:
    found = sorted(RESULTS.glob("bench-*.json"))
    if len(found) < 2:
        raise SystemExit("bench-compare: need two results (results/bench-*.json) or two paths")
    return found[-2], found[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=Path, help="A.json B.json (default: the two newest)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a regression is flagged")
    parser.add_argument(
        "--html", type=Path, default=None, help="the HTML page (default: beside B, compare-A-B.html)"
    )
    args = parser.parse_args(argv)
    if len(args.files) not in (0, 2):
        parser.error("give two result files, or none")
    path_a, path_b = args.files if args.files else _newest_two()
    a, b = load(path_a), load(path_b)
    print(f"A = {path_a}\nB = {path_b}")
    lines, regressions = compare(a, b)
    print("\n".join(lines))
    write_html(a, b, path_a, path_b, args.html)
    return 1 if regressions and args.strict else 0


def write_html(a: dict[str, Any], b: dict[str, Any], path_a: Path, path_b: Path, output: Path | None) -> None:
    """The same comparison as a page with plots (bench/report_html.py), when matplotlib is there."""
    try:
        from bench import report_html
    except ImportError as exc:  # the venv of `make run`: no bench extra
        print(f"\nno HTML page ({exc.name} missing: `make bench-compare` installs the bench extra)")
        return
    output = output or report_html.compare_output(path_a, path_b)
    output.write_text(report_html.render_compare(a, b, str(path_a), str(path_b)))
    print(f"\nHTML: {output}")


if __name__ == "__main__":
    sys.exit(main())
