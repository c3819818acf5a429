"""The bench's report: the table, peer ratios, per-scenario details and the targets block.

Everything here reads the summaries (medians over repeats, one per scenario,
step and server) that bench/run.py writes to results/*.json, so a stored
result can be printed again: ``python -m bench.report results/bench-....json``.
The targets are reported, never asserted: the machine is shared and small.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson

SCENARIO_ORDER = (
    "firehose", "batched", "sparse", "idle", "slow", "slow-base", "reconnect", "abuse",
    "scaleout-firehose", "scaleout-batched", "scaleout-sparse", "scaleout-sparse-batched",
    "scaleout-sharded", "scaleout-sharded-batched", "scaleout-failover", "charts", "charts-spread",
    "deflate-firehose", "deflate-sparse", "deflate-watchlist",
)  # fmt: skip
SERVER_ORDER = ("fastrelay", "scaleout", "websockets", "node-ws", "ceiling")
FASTRELAY = "fastrelay"  # the relay with its default settings: what the targets are about
PEERS = ("websockets", "node-ws")

# The issue's targets (ratios on this machine, the relay's default settings).
FIREHOSE_P99_MS = 20.0
FIREHOSE_CPU_RATIO = 1 / 5  # of the better peer's CPU per event
SPARSE_CPU_RATIO = 1 / 2
IDLE_KIB_PER_CONNECTION = 10.0
IDLE_CONNECTIONS = 10_000
SLOW_P99_RATIO = 2.0
# Failover: time from the leader's signal to the clients' first data through the next leader, p99.
FAILOVER_P99_MS = {"kill-9": 3000.0, "sigterm": 1000.0}
FAILOVER_NAMES = {"kill-9": "kill -9", "sigterm": "SIGTERM"}
# Charts: a crowd's whole chart (the history status), p99, from each client's request. A chart
# page aims at 300 candles within 2 s of navigation (docs/browser.md); the history is most of it.
CHART_P99_MS = 2000.0
# Compression, on the firehose: bytes on the wire per event at most a third of uncompressed
# fastrelay's, CPU per event at most 1.3x of it, and below both peers' with their compression.
DEFLATE_BYTES_RATIO = 1 / 3
DEFLATE_CPU_RATIO = 1.3
DEFLATE = "fastrelay+deflate"
DEFLATE_PEERS = ("websockets+deflate", "node-ws+deflate")


def _sort_key(summary: dict[str, Any]) -> tuple[int, float, int, str]:
    scenario = summary["scenario"]
    server = summary["server"]
    kind = server.split("@")[0].split("+")[0]
    return (
        SCENARIO_ORDER.index(scenario) if scenario in SCENARIO_ORDER else 99,
        summary["t_rate"],
        SERVER_ORDER.index(kind) if kind in SERVER_ORDER else 99,
        server,
    )


def ordered(summaries: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(summaries, key=_sort_key)


def _fmt(value: float | None, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def _pct(value: float) -> str:
    return _fmt(100 * value, ".0f") + "%"


Column = tuple[str, int, Callable[[dict[str, Any]], str]]


def _render_table(rows: list[dict[str, Any]], columns: list[Column]) -> str:
    header = "  ".join(name.rjust(w) if i > 2 else name.ljust(w) for i, (name, w, _) in enumerate(columns))
    lines = [header, "-" * len(header)]
    previous = None
    for row in rows:
        group = (row["scenario"], row["step"])
        if previous is not None and group[0] != previous[0]:
            lines.append("")
        previous = group
        cells = [(fn(row), w) for _, w, fn in columns]
        lines.append("  ".join(c.rjust(w) if i > 2 else c.ljust(w) for i, (c, w) in enumerate(cells)))
    return "\n".join(lines)


def _scenario_width(summaries: list[dict[str, Any]]) -> int:
    return max([9, *(len(s["scenario"]) for s in summaries)])


def _server_width(summaries: list[dict[str, Any]], least: int = 15) -> int:
    """Room for the longest server label and its saturation mark."""
    return max([least, *(len(s["server"]) + 1 for s in summaries)])


def _is_abuse(summary: dict[str, Any]) -> bool:
    """An abuse window (attack or baseline): printed in a table of its own, not the main one."""
    return "attack" in summary


def _is_failover(summary: dict[str, Any]) -> bool:
    """A failover window (the leader ingest stopped in it): printed in a table of its own."""
    return "failover" in summary


def _is_charts(summary: dict[str, Any]) -> bool:
    """A charts phase (a crowd opening its charts): printed in a block of its own."""
    return "charts" in summary


def table(summaries: list[dict[str, Any]]) -> str:
    """The main table: one line per scenario, rate step and server (the abuse windows apart)."""
    summaries = [s for s in summaries if not _is_abuse(s) and not _is_failover(s) and not _is_charts(s)]
    if not summaries:
        return ""
    columns: list[Column] = [
        ("scenario", _scenario_width(summaries), lambda s: s["scenario"]),
        ("T ev/s", 6, lambda s: s["step"]),
        ("server", _server_width(summaries), lambda s: s["server"] + ("*" if s.get("saturated") else "")),
        ("sim ev/s", 8, lambda s: _fmt(s["upstream_events_per_s"], ",.0f")),
        ("offered/s", 10, lambda s: _fmt(s["offered_per_s"], ",.0f")),
        ("deliv/s", 10, lambda s: _fmt(s["delivered_per_s"], ",.0f")),
        ("deliv %", 7, lambda s: _fmt(100 * s["delivery_ratio"], ".2f")),
        ("ev/frm", 6, lambda s: _fmt(s["events_per_client_frame"], ".1f")),
        ("p50 ms", 6, lambda s: _fmt(s["latency_ms"]["p50"], ".2f")),
        ("p99 ms", 6, lambda s: _fmt(s["latency_ms"]["p99"], ".2f")),
        ("p999", 6, lambda s: _fmt(s["latency_ms"]["p999"], ".1f")),
        ("gaps", 5, lambda s: str(s["gaps_total"])),
        ("cpu", 4, lambda s: _pct(s["server_cpu"])),
        ("us/ev", 6, lambda s: _fmt(s["server_us_per_event"], ".2f")),
        ("RSS MiB", 7, lambda s: _fmt(s["server_rss_mib"], ".1f")),
        ("KiB/conn", 8, lambda s: _fmt(s["server_kib_per_connection"], ".1f")),
        ("load", 4, lambda s: _pct(s["loadgen_cpu"])),
        ("sim", 4, lambda s: _pct(s["sim_cpu"])),
        ("others", 6, lambda s: _pct(s["others_cpu"])),
        (
            "drops",
            5,
            lambda s: str(s["disconnects_total"] + s["slow_consumer_total"] + s["slow_dropped_total"]),
        ),
    ]
    return _render_table(ordered(summaries), columns)


LEGEND = """\
T ev/s: trades/s offered to the server (the step of a rate ladder; idle: nothing flows); server: the
relay under test (@N ms: its flush window; * = saturated: the ladder stopped there); sim ev/s: events/s
the simulator sent the server; offered/s: that x clients wanting each event; deliv %: events received /
expected from the per-channel q (window on send stamps, sim_ns); ev/frm: events per frame at the
clients; latency: now - sim_ns per event (one clock), from the probe clients; gaps: events missing by
per-channel q, all repeats; cpu: the server's utime+stime in the window, share of one core; us/ev: that
CPU per delivered event; KiB/conn: (RSS - RSS before clients) / clients; load, sim: CPU of the load
generators and the simulator; others: CPU of every other process on the machine (shared: compare runs
only when it is low); drops: disconnects + slow_consumer statuses + slow clients dropped, all repeats.
scaleout[@event]: nats-server + 1 ingest + 2 edges (NATS granularity batch or event), the clients split
over the edges; its cpu, us/ev and RSS are the sums over its four processes (per process below)."""


def _by(summaries: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, dict[str, Any]]]:
    """(scenario, step) -> server label -> summary."""
    found: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for summary in summaries:
        found.setdefault((summary["scenario"], summary["step"]), {})[summary["server"]] = summary
    return found


def ratios(summaries: list[dict[str, Any]]) -> str:
    """Every other server against fastrelay (default settings) on the same scenario and step."""
    width = _scenario_width(summaries)
    columns = "T ev/s  server           us/ev x  deliv %   p99 x  KiB/conn x  handshakes/s x"
    header = f"{'scenario':<{width}}  {columns}"
    lines = [header, "-" * len(header)]
    groups = _by(ordered(summaries))
    for (scenario, step), servers in groups.items():
        base = servers.get(FASTRELAY)
        if base is None or len(servers) < 2:
            continue
        for name, other in servers.items():
            if name == FASTRELAY:
                continue
            handshakes = (
                _ratio(other["handshakes_per_s"], base["handshakes_per_s"]) if scenario == "idle" else "-"
            )
            lines.append(
                f"{scenario:<{width}}  {step:>6}  {name + ('*' if other.get('saturated') else ''):<15}  "
                f"{_ratio(other['server_us_per_event'], base['server_us_per_event']):>7}  "
                f"{_fmt(100 * other['delivery_ratio'], '.2f'):>7}  "
                f"{_ratio(other['latency_ms']['p99'], base['latency_ms']['p99']):>6}  "
                f"{_ratio(other['server_kib_per_connection'], base['server_kib_per_connection']):>10}  "
                f"{handshakes:>14}"
            )
    if len(lines) == 2:
        return ""
    return (
        "Peers against fastrelay (other / fastrelay; above 1: fastrelay uses less CPU per event, has the\n"
        "lower p99, holds less memory per connection; handshakes/s above 1: the peer connects faster):\n"
        + "\n".join(lines)
    )


def compression(summaries: list[dict[str, Any]]) -> str:
    """The deflate scenarios: bytes on the wire per event and CPU per event, each server against
    fastrelay with clients offering no compression."""
    width = _scenario_width(summaries)
    header = (
        f"{'scenario':<{width}}  T ev/s  {'server':<19}  B/event  bytes x  compressed  us/ev  cpu x  p99 ms"
        "  deliv %"
    )
    lines = [header, "-" * len(header)]
    for (scenario, step), servers in _by(ordered(summaries)).items():
        base = servers.get(FASTRELAY)
        if not scenario.startswith("deflate-") or base is None:
            continue
        base_bytes = base.get("wire_bytes_per_event", math.nan)
        for name, s in servers.items():
            wire = s.get("wire_bytes_per_event", math.nan)
            lines.append(
                f"{scenario:<{width}}  {step:>6}  {name + ('*' if s.get('saturated') else ''):<19}  "
                f"{_fmt(wire, '.1f'):>7}  {_ratio(wire, base_bytes):>7}  "
                f"{_pct(s.get('deflated_frame_share', 0.0)):>10}  "
                f"{_fmt(s['server_us_per_event'], '.2f'):>5}  "
                f"{_ratio(s['server_us_per_event'], base['server_us_per_event']):>5}  "
                f"{_fmt(s['latency_ms']['p99'], '.2f'):>6}  {_fmt(100 * s['delivery_ratio'], '.2f'):>7}"
            )
    if len(lines) == 2:
        return ""
    return (
        "Compression (permessage-deflate; x: against fastrelay with clients offering none; B/event:\n"
        "bytes on the wire per delivered event, frame headers included; compressed: share of frames\n"
        "with RSV1):\n" + "\n".join(lines)
    )


def _deflate_targets(groups: dict[tuple[str, str], dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for (scenario, step), servers in groups.items():
        if scenario != "deflate-firehose" or FASTRELAY not in servers or DEFLATE not in servers:
            continue
        plain, ours = servers[FASTRELAY], servers[DEFLATE]
        ratio = ours["wire_bytes_per_event"] / plain["wire_bytes_per_event"]
        found.append(
            _target(
                f"{scenario} {step}: bytes/event <= 1/3 of uncompressed",
                ratio <= DEFLATE_BYTES_RATIO,
                f"{ours['wire_bytes_per_event']:.1f} against {plain['wire_bytes_per_event']:.1f} B/event "
                f"({1 / ratio:.2f}x fewer)",
                ratio,
                DEFLATE_BYTES_RATIO,
            )
        )
        cpu = ours["server_us_per_event"] / plain["server_us_per_event"]
        found.append(
            _target(
                f"{scenario} {step}: CPU/event <= {DEFLATE_CPU_RATIO:g} x uncompressed",
                cpu <= DEFLATE_CPU_RATIO,
                f"{cpu:.2f}x ({_margin(cpu, DEFLATE_CPU_RATIO)})",
                cpu,
                DEFLATE_CPU_RATIO,
            )
        )
        # A peer that saturated has no CPU per event at this step (its lower steps say it).
        peers = [
            servers[p]
            for p in DEFLATE_PEERS
            if p in servers and servers[p]["server_us_per_event"] == servers[p]["server_us_per_event"]
        ]
        if peers:
            best = min(p["server_us_per_event"] for p in peers)
            found.append(
                _target(
                    f"{scenario} {step}: CPU/event below both peers' with compression",
                    ours["server_us_per_event"] < best,
                    f"{ours['server_us_per_event']:.2f} us against the better peer's {best:.2f} us",
                    ours["server_us_per_event"],
                    best,
                )
            )
    return found


def _ratio(value: float, base: float) -> str:
    if not base or base != base or value != value:
        return "-"
    return f"{value / base:.2f}"


def _cores(value: float | None) -> str:
    return "-" if value is None or value != value else _pct(value)


def scaleout(summaries: list[dict[str, Any]]) -> str:
    """The scale-out beside the single process: each process's CPU, the NATS traffic, costs per unit.

    Every (scenario, step) that has a scale-out server, with every server run on it.
    """
    groups = _by(ordered(s for s in summaries if not _is_failover(s) and not _is_charts(s)))
    chosen = [
        s
        for servers in groups.values()
        if any(x.get("server_kind") == "scaleout" for x in servers.values())
        for s in servers.values()
    ]
    if not chosen:
        return ""
    width = _scenario_width(chosen)
    served = _server_width(chosen, 16)
    head = f"{'scenario':<{width}}  T ev/s  {'server':<{served}}"
    header = (
        f"{head}  deliv %  p50 ms  p99 ms  ingest  edge1  edge2  nats   total  us/ev  "
        "NATS in/s   out/s  out MB/s  lag ms"
    )
    lines = [header, "-" * len(header)]
    for s in chosen:
        parts = s.get("parts_cpu") or {}
        single = s.get("server_kind") != "scaleout"
        cells = [_cores(None if single else parts.get(k)) for k in ("ingest", "edge1", "edge2", "nats")]
        name = s["server"] + ("*" if s.get("saturated") else "")
        lines.append(
            f"{s['scenario']:<{width}}  {s['step']:>6}  {name:<{served}}  "
            f"{_fmt(100 * s['delivery_ratio'], '.2f'):>7}  {_fmt(s['latency_ms']['p50'], '.2f'):>6}  "
            f"{_fmt(s['latency_ms']['p99'], '.2f'):>6}  {cells[0]:>6}  {cells[1]:>5}  {cells[2]:>5}  "
            f"{cells[3]:>4}  {_cores(s['server_cpu']):>6}  {_fmt(s['server_us_per_event'], '.2f'):>5}  "
            f"{_fmt(s.get('nats_in_msgs_per_s'), ',.0f'):>9}  "
            f"{_fmt(s.get('nats_out_msgs_per_s'), ',.0f'):>6}  "
            f"{_fmt(s.get('nats_out_bytes_per_s', float('nan')) / 1e6, '.2f'):>8}  "
            f"{_fmt(s.get('nats_lag_ms_mean'), '.2f'):>6}"
        )
    lines += [
        "",
        f"{head}  deliv/s per edge core  ingest us/upstream ev  nats us/msg  nats ns/out byte",
        "-" * len(header),
    ]
    for s in chosen:
        if s.get("server_kind") != "scaleout":
            continue
        lines.append(
            f"{s['scenario']:<{width}}  {s['step']:>6}  {s['server']:<{served}}  "
            f"{_fmt(s.get('edge_deliveries_per_core_s'), ',.0f'):>21}  "
            f"{_fmt(s.get('ingest_us_per_upstream_event'), '.1f'):>21}  "
            f"{_fmt(s.get('nats_us_per_msg'), '.2f'):>11}  {_fmt(s.get('nats_ns_per_out_byte'), '.2f'):>16}"
        )
    return (
        "Scale-out (nats-server + 1 ingest + 2 edges) beside the single process: CPU per process (share\n"
        "of a core), total and per delivered event; NATS msgs/s in (published) and out (delivered to the\n"
        "edges), from nats-server's /varz over the window; lag: ingest publish -> edge receipt, mean\n"
        "(edges' /metrics).\n"
        "Below: client deliveries/s per core of edge CPU (both edges), ingest CPU per upstream event,\n"
        "nats-server CPU per message (in + out) and per byte it delivered.\n" + "\n".join(lines)
    )


def _bytes(value: Any) -> str:
    if not isinstance(value, int | float) or value != value:
        return "-"
    for unit, size in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value:.0f} B"


def _answers(attacker: dict[str, Any]) -> str:
    """The statuses an attacker read, short: handshake ones left out, messages cut at their first ':'."""
    parts = []
    for key, count in attacker.get("statuses", {}).items():
        status, _, message = key.partition(": ")
        if status in ("connected", "auth_success"):
            continue
        parts.append(f"{message.split(':')[0] if message else status} {count}")
    return "; ".join(parts) or "-"


def abuse(summaries: list[dict[str, Any]]) -> str:
    """The abuse scenario: the normal clients and the relay in each window, and what the attacker got."""
    rows = [s for s in ordered(summaries) if _is_abuse(s)]
    if not rows:
        return ""
    header = (
        f"{'class':<22}  deliv %  p50 ms  p99 ms  lost  cpu  peak RSS MiB  +MiB  | close  cut off s"
        "  ran s        sent    got back  answers"
    )
    lines = [header, "-" * len(header)]
    for s in rows:
        name = s["step"] + ("" if s["server"] == FASTRELAY else f" {s['server']}")
        relay = (
            f"{_fmt(100 * s['delivery_ratio'], '.2f'):>7}  {_fmt(s['latency_ms']['p50'], '.2f'):>6}  "
            f"{_fmt(s['latency_ms']['p99'], '.2f'):>6}  {s['disconnects_total'] + s['gaps_total']:>4}  "
            f"{_pct(s['server_cpu']):>4}  {_fmt(s['window_peak_rss_mib'], '.1f'):>12}  "
            f"{_fmt(s['window_peak_rss_mib'] - s['window_start_rss_mib'], '+.1f'):>5}"
        )
        a = s.get("attacker")
        if isinstance(a, dict):
            attacker = (
                f"{_fmt(a['close_code'], '.0f'):>5}  {_fmt(a['closed_after'], '.3f'):>9}  "
                f"{_fmt(s['attacker_wall_s'], '.1f'):>5}  {_bytes(a['bytes_sent']):>10}  "
                f"{_bytes(a['bytes_received']):>10}  {_answers(a)}"
            )
        elif isinstance(s.get("attack"), str):
            attacker = f"no report: {s.get('attacker_error', '')[-60:]!r}"
        else:
            attacker = "(no attack)"
        lines.append(f"{name:<22}  {relay}  | {attacker}")
    window = rows[0]["window_s"]
    return (
        f"Abuse ({window:g} s windows): fastrelay, 100 normal clients on T.* at 1k T/s; a window without\n"
        "attack, then one attacker per class (python -m bench.attacks CLASS, a process of its own, started\n"
        "at the window's start). Normal clients: deliv %, p50/p99 over the window, lost (disconnects +\n"
        "gaps). Relay: cpu over the window; peak RSS: VmHWM reset at the window start, read once the\n"
        "attacker exited; +MiB: that peak over the RSS at the window start. Attacker, from its report:\n"
        "close code it read (-: none, a reset or no close), cut off s (first byte sent to the close or\n"
        "reset), ran s (its process, start to exit), bytes sent and got back, statuses it read.\n"
        + "\n".join(lines)
    )


def _ms3(found: dict[str, Any]) -> str:
    """p50 / p99 / max of pooled times, ms."""
    return " / ".join(_fmt(found[k], ".0f") for k in ("p50", "p99", "max"))


def failover(summaries: list[dict[str, Any]]) -> str:
    """The failover scenario: per way of stopping the leader, the clients' times to the next
    leader's data and to `feed restored`, pooled over every client of every run, and the checks."""
    rows = [s for s in ordered(summaries) if _is_failover(s)]
    if not rows:
        return ""
    header = (
        f"{'stopped by':<10}  {'server':<9}  runs  {'time to data ms':>17}  {'to restored ms':>17}  "
        f"{'to interrupted ms':>17}  exit ms  no data  dup q  gaps in / out  new / old data in outage"
    )
    lines = [header, "-" * len(header)]
    runs_lines = []
    for s in rows:
        f = s["failover"]
        name = FAILOVER_NAMES.get(f["mode"], f["mode"])
        lines.append(
            f"{name:<10}  {s['server']:<9}  {f['runs']:>4}  {_ms3(f['time_to_data_ms']):>17}  "
            f"{_ms3(f['time_to_restored_ms']):>17}  {_ms3(f['time_to_interrupted_ms']):>17}  "
            f"{_fmt(f['exit_ms']['median'], '.0f'):>7}  {f['not_recovered']:>7}  {f['dup_q']:>5}  "
            f"{f['gaps_in_outage']:>6} / {f['gaps_unexplained']:<4}  "
            f"{f['data_in_outage']:>10} / {f['old_after_interrupted']:<4}"
        )
        slowest = " ".join(_fmt(v, ".0f") for v in f["time_to_data_ms"]["per_run_max"])
        edges = f["edges"]
        drops = ", ".join(
            f"{k.removeprefix('dropped_')} {v:.0f}"
            for k, v in sorted(edges.items())
            if k.startswith("dropped_")
        )
        runs_lines.append(
            f"  {name}: slowest client per run (ms) {slowest}; edges dropped {drops or '-'}; "
            f"leader changes the edges followed {edges.get('leader_changes', 0):.0f}; interrupted "
            f"statuses {f['interruptions']} for {f['clients']} clients"
        )
    first = rows[0]
    return (
        f"Failover ({first['server']}: nats-server + 2 ingests, a leader and its standby, + 2 edges;\n"
        f"{first['clients']:.0f} clients on T.* at {first['t_rate']:,.0f} T/s; the leader stopped 1 s into "
        f"each {first['window_s']:g} s window, by kill -9 or SIGTERM).\n"
        "Per client, from the signal, pooled over all runs (p50 / p99 / max): to data = the first event\n"
        "the simulator sent after the client's `feed interrupted` arrived (the old leader had stopped\n"
        "relaying before: that event came through the new one); to restored / interrupted = the first\n"
        "`feed restored` / `feed interrupted` status. exit ms: signal to the old leader's exit (median);\n"
        "no data: clients without data by the window's end; dup q: a q not above the highest of its\n"
        "channel (must be 0); gaps in / out: q missing across an outage / outside one (must be 0);\n"
        "new / old data in outage: events between interrupted and restored sent after / before the\n"
        "interrupted status (new must be 0; old: events the edge held in its flush window and wrote\n"
        "after the status).\n" + "\n".join(lines + runs_lines)
    )


def _counts(found: dict[str, Any], limit: int = 3) -> str:
    """``{"1440": 999, "1439": 1}`` as ``1440 x999, 1439 x1``."""
    items = sorted(found.items(), key=lambda item: -item[1])
    text = ", ".join(f"{k} x{v}" for k, v in items[:limit])
    return text + (f", {len(items) - limit} more" if len(items) > limit else "") if items else "-"


def _runs(values: list[Any]) -> str:
    return " ".join("-" if v is None else f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def charts(summaries: list[dict[str, Any]]) -> str:
    """The charts scenarios: per phase (cold, warm), each client's time to its first candle and
    to its whole chart, the relay over the opening, the REST calls and the checks."""
    rows = [s for s in ordered(summaries) if _is_charts(s)]
    if not rows:
        return ""
    width = _scenario_width(rows)
    header = (
        f"{'scenario':<{width}}  phase  runs  {'first candle ms':>20}  {'whole chart ms':>20}  opening ms"
        f"  cpu   cpu s  RSS MiB  peak  {'live during ms':>17}"
    )
    lines = [header, "-" * len(header)]
    checks_header = (
        f"{'scenario':<{width}}  phase  REST calls/run  queries/run  relay hit/miss/coalesced/error  "
        "N (clients)        no answer  errors  N != counted  no live after  live after min"
    )
    checks = [checks_header, "-" * len(checks_header)]
    notes = []
    for s in rows:
        c = s["charts"]
        relay = c["relay"]
        opening = c["opening_ms"]["median"] if c["opening_ms"] else float("nan")
        live = c["live_latency_ms"]
        lines.append(
            f"{s['scenario']:<{width}}  {c['phase']:<5}  {c['runs']:>4}  "
            f"{_ms3(c['time_to_first_candle_ms']):>20}  {_ms3(c['time_to_history_ms']):>20}  "
            f"{_fmt(opening, '.0f'):>10}  {_pct(s['server_cpu']):>4}  "
            f"{_fmt(s['server_cpu_s'], '.2f'):>6}  {_fmt(s['server_rss_mib'], '.1f'):>7}  "
            f"{_fmt(s['server_peak_rss_mib'], '.1f'):>4}  {_ms3(live):>17}"
        )
        hits = "/".join(
            _fmt(relay.get(k, float("nan")), ".0f") for k in ("hit", "miss", "coalesced", "error")
        )
        checks.append(
            f"{s['scenario']:<{width}}  {c['phase']:<5}  {_runs(c['rest_calls']):>14}  "
            f"{_runs(c['rest_distinct_queries']):>11}  {hits:>30}  {_counts(c['n_values']):<17}  "
            f"{c['not_answered']:>9}  {c['with_errors']:>6}  {c['n_mismatch']:>12}  "
            f"{c['no_live_after']:>13}  {c['live_after_min']:>14}"
        )
        if c["errors"]:
            notes.append(f"  {s['scenario']} {c['phase']}: errors {_counts(c['errors'])}")
        if any(len(n) > 1 for n in c.get("n_per_run", [])):
            notes.append(
                f"  {s['scenario']} {c['phase']}: clients of one run got different N: {c['n_per_run']}"
            )
        scouts = c.get("scouts")
        if scouts:
            before = _fmt((c.get("after_scouts_ms") or {}).get("median"), ".0f")
            notes.append(
                f"  {s['scenario']} {c['phase']}: the cache filled by {_runs(scouts['clients'])} scout(s) "
                f"per run (REST calls {_runs(scouts['rest_calls'])}, answered in "
                f"{scouts['opening_ms']:.0f} ms), {before} ms before the crowd"
            )
    first = rows[0]
    return (
        f"Charts ({first['server']}; {first['clients']:,.0f} clients on A.X,AM.X send history AM.X at one\n"
        "instant: a day of minute bars, Massive's REST aggregates (the simulator's) through the relay's\n"
        "cache, joined with the live bars it kept; charts: all on one ticker, charts-spread: 50 each on\n"
        "20). cold: a fresh relay, the cache empty; warm: the same clients again once the cache holds the\n"
        "answer (once the cold answers expired, the relay keeping a range reaching now 5 s, a scout per\n"
        "chart refills it just before the crowd).\n"
        "Per client, from its own request, pooled over all runs (p50 / p99 / max): first candle = the\n"
        "first history event; whole chart = the `history: AM.X (N events)` status. opening: the crowd's\n"
        "instant to the last answer (median of runs); cpu, cpu s: the relay over the opening (share of a\n"
        "core, seconds); RSS at its end, peak: VmHWM over it; live during: latency of the live events the\n"
        "simulator sent during the opening (the relay answers a crowd on its one loop: live data waits).\n"
        + "\n".join(lines)
        + "\n\nREST calls: requests the simulator's REST counted in the phase, per run (single flight: one\n"
        "per distinct query, i.e. one per ticker, two if the crowd straddled a minute's end; queries:\n"
        "distinct paths among them); relay: its bars requests by result, all runs\n"
        "(fastrelay_rest_requests_total); N: the status's count, clients per value (every client of a run\n"
        "must get the same); no answer: no status within 60 s; errors: clients with an error status;\n"
        "N != counted: events counted differ from N; no live after: clients that got their history but\n"
        "no live event after it, through the live tail.\n" + "\n".join(checks + notes)
    )


def details(summaries: list[dict[str, Any]]) -> str:
    """What the idle, slow-consumer and reconnect scenarios are about, beyond the main table."""
    parts = []
    idle = [s for s in ordered(summaries) if s["scenario"] == "idle"]
    if idle:
        lines = [
            "idle        server           conns  connect s  handshakes/s  RSS MiB  KiB/conn  cpu",
            "-" * 80,
        ]
        for s in idle:
            lines.append(
                f"idle        {s['server']:<15}  {s['clients_subscribed']:>5.0f}  {s['connect_s']:>9.2f}  "
                f"{_fmt(s['handshakes_per_s'], ',.0f'):>12}  {s['server_rss_mib']:>7.1f}  "
                f"{s['server_kib_per_connection']:>8.2f}  {_pct(s['server_cpu']):>4}"
            )
        parts.append("\n".join(lines))
    slow = [s for s in ordered(summaries) if s["scenario"] in ("slow", "slow-base")]
    if slow:
        lines = [
            "slow        server           slow  normal p50  p99 ms  p999 ms  dropped (clients/server)  "
            "normal lost  peak RSS MiB",
            "-" * 112,
        ]
        for s in slow:
            lines.append(
                f"{s['scenario']:<10}  {s['server']:<15}  {s['slow_clients']:>4}  "
                f"{_fmt(s['latency_ms']['p50'], '.2f'):>10}  {_fmt(s['latency_ms']['p99'], '.2f'):>6}  "
                f"{_fmt(s['latency_ms']['p999'], '.2f'):>7}  "
                f"{_fmt(s['slow_dropped'], '.0f'):>13}/{_fmt(s['server_slow_consumer_drops'], '.0f'):<10}  "
                f"{s['disconnects_total'] + s['gaps_total']:>11}  {s['server_peak_rss_mib']:>12.1f}"
            )
        parts.append("\n".join(lines))
    reconnect = [s for s in ordered(summaries) if s["scenario"] == "reconnect"]
    if reconnect:
        lines = [
            "reconnect   server           recovery ms first/median/last  not recovered  outage gaps  "
            "gaps outside  deliv % (sim)",
            "-" * 113,
        ]
        for s in reconnect:
            r = s["recovery_ms"]
            lines.append(
                f"reconnect   {s['server']:<15}  "
                f"{_fmt(r['first'], '.0f'):>12}/{_fmt(r['median'], '.0f')}/{_fmt(r['last'], '.0f'):<10}  "
                f"{s['not_recovered_total']:>13}  {s['outage_gaps_total']:>11}  "
                f"{s['gaps_outside_outage_total']:>12}  {_fmt(100 * s['delivery_ratio_sim'], '.2f'):>13}"
            )
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


# --- targets -----------------------------------------------------------------------------------------


def _target(
    name: str, met: bool | None, detail: str, value: float | None, limit: float | None
) -> dict[str, Any]:
    return {
        "target": name,
        "status": "n/a" if met is None else "met" if met else "missed",
        "detail": detail,
        "value": value,
        "limit": limit,
    }


def _margin(value: float, limit: float, lower_is_better: bool = True) -> str:
    """How far from the limit, in words: '3.1x under the limit' or 'over by 35%'."""
    if value != value or limit != limit:
        return "-"
    if lower_is_better:
        if value <= 0:
            return "at zero"
        if value <= limit:
            if limit / value < 1.5:
                under = 100 * (1 - value / limit)
                return f"{under:.1f}% under the limit" if under < 10 else f"{under:.0f}% under the limit"
            return f"{limit / value:.1f}x under the limit"
        return f"over by {100 * (value / limit - 1):.0f}%"
    if value >= limit:
        return f"{value / limit:.1f}x the minimum"
    return f"short by {100 * (1 - value / limit):.0f}%"


def _better_peer(servers: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The peer with the lower CPU per event among those that kept up (delivered >= 95%)."""
    candidates = [
        servers[p]
        for p in PEERS
        if p in servers and servers[p]["server_us_per_event"] == servers[p]["server_us_per_event"]
    ]
    kept_up = [c for c in candidates if not c.get("saturated")]
    pool = kept_up or candidates
    return min(pool, key=lambda s: s["server_us_per_event"]) if pool else None


def targets(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    groups = _by(ordered(summaries))
    found += _deflate_targets(groups)
    # 1. firehose: everything delivered, p99 under 20 ms, at every step.
    for (scenario, step), servers in groups.items():
        if scenario != "firehose" or FASTRELAY not in servers:
            continue
        s = servers[FASTRELAY]
        p99 = s["latency_ms"]["p99"]
        missing = max(0.0, s["missing_by_q_max"]) + s["gaps_total"] + s["disconnects_total"]
        everything = missing == 0 and s["delivery_ratio"] >= 1.0
        ok = everything and p99 < FIREHOSE_P99_MS
        what = "every event delivered" if everything else f"{missing:.0f} events missing (by q), worst repeat"
        found.append(
            _target(
                f"firehose {step}: all delivered, p99 < {FIREHOSE_P99_MS:g} ms",
                ok,
                f"{what}; p99 {p99:.2f} ms ({_margin(p99, FIREHOSE_P99_MS)})",
                p99,
                FIREHOSE_P99_MS,
            )
        )
    # 2, 3. CPU per event against the better of the websockets and Node ws peers.
    for scenario, limit in (("firehose", FIREHOSE_CPU_RATIO), ("sparse", SPARSE_CPU_RATIO)):
        for (key, step), servers in groups.items():
            if key != scenario or FASTRELAY not in servers:
                continue
            peer = _better_peer(servers)
            if peer is None:
                continue
            ours = servers[FASTRELAY]["server_us_per_event"]
            ratio = ours / peer["server_us_per_event"]
            note = " (every peer saturated: compared at its own delivery)" if peer.get("saturated") else ""
            found.append(
                _target(
                    f"{scenario} {step}: CPU/event <= {limit:g} x better peer",
                    ratio <= limit,
                    f"fastrelay {ours:.2f} us/ev vs {peer['server']} {peer['server_us_per_event']:.2f}: "
                    f"ratio {ratio:.3f} ({_margin(ratio, limit)}){note}",
                    ratio,
                    limit,
                )
            )
    # 4. idle memory.
    for (scenario, _step), servers in groups.items():
        if scenario != "idle" or FASTRELAY not in servers:
            continue
        s = servers[FASTRELAY]
        kib = s["server_kib_per_connection"]
        conns = s["clients_subscribed"]
        complete = conns >= IDLE_CONNECTIONS
        found.append(
            _target(
                f"idle: <= {IDLE_KIB_PER_CONNECTION:g} KiB RSS per connection at {IDLE_CONNECTIONS:,}",
                (kib <= IDLE_KIB_PER_CONNECTION) if complete else False,
                f"{kib:.2f} KiB/conn at {conns:,.0f} connections ({_margin(kib, IDLE_KIB_PER_CONNECTION)})",
                kib,
                IDLE_KIB_PER_CONNECTION,
            )
        )
    # 5. slow consumers: normal clients' p99 within 2x of the run without slow ones.
    slow = {s["server"]: s for s in summaries if s["scenario"] == "slow"}
    base = {s["server"]: s for s in summaries if s["scenario"] == "slow-base"}
    if FASTRELAY in slow and FASTRELAY in base:
        with_slow, without = slow[FASTRELAY], base[FASTRELAY]
        p99, p99_base = with_slow["latency_ms"]["p99"], without["latency_ms"]["p99"]
        ratio = p99 / p99_base if p99_base else float("nan")
        dropped = with_slow["slow_dropped"]
        expected = int(with_slow["slow_clients"])
        normal_lost = with_slow["disconnects_total"] + with_slow["gaps_total"]
        ok = ratio <= SLOW_P99_RATIO and dropped >= expected and normal_lost == 0
        found.append(
            _target(
                f"slow consumers: normal p99 <= {SLOW_P99_RATIO:g} x without them",
                ok,
                f"p99 {p99:.2f} vs {p99_base:.2f} ms: {ratio:.2f}x ({_margin(ratio, SLOW_P99_RATIO)}); "
                f"slow clients dropped {dropped:.0f}/{expected} (server counted "
                f"{with_slow['server_slow_consumer_drops']:.0f}); normal clients lost {normal_lost}; "
                f"peak RSS {with_slow['server_peak_rss_mib']:.1f} vs "
                f"{without['server_peak_rss_mib']:.1f} MiB",
                ratio,
                SLOW_P99_RATIO,
            )
        )
    # 6. failover: time to the next leader's data, p99 over every client of every run.
    for s in summaries:
        if not _is_failover(s):
            continue
        f = s["failover"]
        limit = FAILOVER_P99_MS.get(f["mode"])
        if limit is None:
            continue
        p99 = f["time_to_data_ms"]["p99"]
        how = FAILOVER_NAMES.get(f["mode"], f["mode"])
        clean = f["not_recovered"] == 0 and f["dup_q"] == 0 and f["gaps_unexplained"] == 0
        clean = clean and f["data_in_outage"] == 0
        found.append(
            _target(
                f"failover, {how}: time to data p99 < {limit / 1000:g} s",
                p99 < limit and clean,
                f"p99 {p99:.0f} ms ({_margin(p99, limit)}), max {f['time_to_data_ms']['max']:.0f} ms over "
                f"{f['time_to_data_ms']['samples']} clients x runs; {f['not_recovered']} without data, "
                f"{f['dup_q']} duplicate q, {f['gaps_unexplained']} q missing outside an outage",
                p99,
                limit,
            )
        )
    # 7. charts: one REST call per distinct query; every chart whole within 2 s, alike, live after.
    for s in ordered(summaries):
        if not _is_charts(s):
            continue
        c = s["charts"]
        name = f"{s['scenario']} {c['phase']}"
        calls, queries = c["rest_calls"], c["rest_distinct_queries"]
        per_ticker, windows = c["rest_max_per_ticker"], c["minute_windows"]
        single = all(
            (n == q) if q is not None else (t <= w)
            for n, q, t, w in zip(calls, queries, per_ticker, windows, strict=True)
        )
        relay = c["relay"]
        found.append(
            _target(
                f"{name}: one REST call per distinct query (single flight)",
                single,
                f"REST calls per run {_runs(calls)} for {_runs(queries)} distinct queries ({c['tickers']} "
                f"ticker(s)); relay {relay.get('miss', 0):.0f} miss, {relay.get('coalesced', 0):.0f} "
                f"coalesced, {relay.get('hit', 0):.0f} hit, {relay.get('error', 0):.0f} error",
                float(max(calls, default=0)),
                float(max((q or 0 for q in queries), default=0)),
            )
        )
        p99 = c["time_to_history_ms"]["p99"]
        faults = c["not_answered"] + c["with_errors"] + c["n_mismatch"] + c["no_live_after"] + c["no_candle"]
        alike = all(len(n) <= 1 for n in c.get("n_per_run", []))
        found.append(
            _target(
                f"{name}: whole chart p99 < {CHART_P99_MS / 1000:g} s, all alike, live after",
                p99 < CHART_P99_MS and faults == 0 and alike,
                f"p99 {p99:.0f} ms ({_margin(p99, CHART_P99_MS)}), max "
                f"{c['time_to_history_ms']['max']:.0f} ms over {c['time_to_history_ms']['samples']} clients "
                f"x runs; N {_counts(c['n_values'])}; {c['not_answered']} unanswered, "
                f"{c['with_errors']} with errors, {c['no_live_after']} without live data after",
                p99,
                CHART_P99_MS,
            )
        )
    return found


def targets_block(found: list[dict[str, Any]]) -> str:
    if not found:
        return ""
    width = max(len(t["target"]) for t in found)
    lines = ["targets (reported, not asserted; ratios on this machine, relay defaults):"]
    for t in found:
        lines.append(f"  {t['status'].upper():<6}  {t['target']:<{width}}  {t['detail']}")
    return "\n".join(lines)


# --- notes, profiles ---------------------------------------------------------------------------------


def notes(summary: dict[str, Any]) -> str:
    """Anything in a configuration's runs that makes its numbers suspect or is a fault."""
    found = []
    if summary["server_warnings_total"]:
        samples = summary["server_log"]["samples"][:2]
        found.append(f"the server logged {summary['server_warnings_total']} warnings, e.g. {samples}")
    errors = [e for e in summary["client_errors"] if "feed interrupted" not in e and "restored" not in e]
    if errors:
        found.append(f"client errors: {errors[:3]}")
    wanted = summary["clients"] + summary["slow_clients"]
    if summary["clients_subscribed"] < wanted:
        found.append(f"only {summary['clients_subscribed']}/{wanted} clients subscribed")
    if summary.get("saturated"):
        found.append(f"saturated: {summary['saturated']}")
    if summary["others_cpu_max"] > 0.15:
        found.append(
            f"other processes used up to {100 * summary['others_cpu_max']:.0f}% of a core: "
            f"{summary['others_busiest']}"
        )
    if not summary["server_alive"]:
        found.append("the server died during the run")
    return f"{summary['label']}: " + "; ".join(found) if found else ""


def summarize_profile(path: Path, top: int = 15) -> dict[str, Any]:
    """Self and inclusive time per function from py-spy's collapsed stacks ("a;b;c count" lines)."""
    self_time: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        self_time[frames[-1]] = self_time.get(frames[-1], 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count

    def ranked(table: dict[str, int]) -> list[dict[str, Any]]:
        # Frames on (nearly) every stack (the loop, main) say nothing.
        rows = sorted(((k, v) for k, v in table.items() if v < 0.98 * total), key=lambda item: -item[1])[:top]
        return [{"function": name, "share": round(count / total, 4)} for name, count in rows] if total else []

    return {"samples": total, "self": ranked(self_time), "inclusive": ranked(inclusive)}


def render(result: dict[str, Any], output: Path | str) -> str:
    machine = result["machine"]
    summaries = result["summary"]
    options = result["options"]
    # --repeats, or each scenario's own number (bench/scenarios.py, repeats_of).
    counts = sorted({int(s["repeats"]) for s in summaries if "repeats" in s})
    if options["repeats"]:
        repeats = str(options["repeats"])
    elif counts:
        repeats = str(counts[0]) if len(counts) == 1 else f"{counts[0]} to {counts[-1]}"
    else:
        repeats = "-"
    out = [
        f"\nfastrelay bench {result['date']}  commit {result['git']['commit'][:10]}"
        f"{' (dirty tree)' if result['git']['dirty'] else ''}  {machine['nproc']} CPUs {machine['cpu_model']}"
        f"  {machine['kernel']}  python {result['python']}  node {result.get('node') or '-'}",
        f"command: {result.get('command', '')}",
        f"windows of {options['duration']:g} s ({options['warmup']:g} s warm-up, "
        f"{options['settle']:g} s after a rate change), medians of {repeats} run(s)\n",
    ]
    main_table = table(summaries)
    if main_table:  # empty when only the abuse scenario ran
        out += [main_table, "", LEGEND]
    blocks = (
        ratios(summaries),
        compression(summaries),
        scaleout(summaries),
        failover(summaries),
        charts(summaries),
        details(summaries),
        abuse(summaries),
        targets_block(result.get("targets", [])),
    )
    for block in blocks:
        if block:
            out += ["", block]
    found = [n for n in (notes(s) for s in ordered(summaries)) if n]
    if found:
        out += ["", "notes:", *(f"  {n}" for n in found)]
    for line in result.get("skipped", []):
        out.append(f"\nSKIPPED {line}")
    for line in result.get("warnings", []):
        out.append(f"\nWARNING {line}")
    for failure in result.get("failed_runs", []):
        out.append(f"\nFAILED {failure['config']} (repeat {failure['repeat']}): {failure['error'][-500:]}")
    for label, profile in result.get("profiles", {}).items():
        if profile and profile["self"]:
            out.append(
                f"\nserver profile under {label} (py-spy --native, {profile['samples']} samples; self time,"
                " then inclusive):"
            )
            for row in profile["self"][:10]:
                out.append(f"  {100 * row['share']:5.1f}%  {row['function']}")
            out.append("  --")
            for row in profile["inclusive"][:12]:
                out.append(f"  {100 * row['share']:5.1f}%  {row['function']}")
    out.append(f"\nJSON: {output}  ({result['elapsed_s']:.0f} s)")
    return "\n".join(out)


def restore_nan(value: Any) -> Any:
    """JSON has no NaN (orjson writes null): the numbers nobody measured come back as NaN."""
    if isinstance(value, dict):
        return {k: restore_nan(v) if k != "saturated" else v for k, v in value.items()}
    if isinstance(value, list):
        return [restore_nan(v) for v in value]
    return float("nan") if value is None else value


def load(path: Path) -> dict[str, Any]:
    """A stored result, its summaries ready for the functions here."""
    result: dict[str, Any] = orjson.loads(path.read_bytes())
    result["summary"] = restore_nan(result["summary"])
    return result


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: python -m bench.report results/bench-....json", file=sys.stderr)
        return 2
    path = Path(sys.argv[1])
    result = load(path)
    result["targets"] = targets(result["summary"])
    print(render(result, path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
