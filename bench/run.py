"""``make bench``: fastrelay under synthetic load, end to end on 127.0.0.1.

Each run starts its own simulator (``fastrelay sim --stamp true``), the relay
under test (``fastrelay serve``) and a few load-generator processes
(``bench.loadclient``), lets the traffic warm up, measures a fixed window,
then stops everything. Configurations alternate across repeats (a b c a b c,
not a a b b c c) so a slow drift of the machine spreads over all of them, and
the report gives the median of each number.

The measured window is defined on the simulator's send stamps (``sim_ns``):
the clients count the events *sent* in [start, end) and their latency; the
bench samples /proc and the simulator's /sim/stats at start and end, so CPU
and the offered load cover the same interval. Offered = events the simulator
sent to the relay in the window x clients that want each of them; the
delivery ratio is taken against the clients' own per-channel sequence numbers
(``q``), which are exact where the HTTP-sampled simulator counters are only
good to a few events.

The simulator's stocks frames carry T or Q events at random, so ``T.*``
sees about half of ``--rate``: the table shows the rate actually sent.

Usage: ``python -m bench.run [--scenarios a,b] [--duration S] [--repeats N] [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import orjson

from bench import procs
from bench.procs import Child

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "results"
SIM_KEY = "sim-key"
MARKET = "stocks"


# --- what is measured ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    clients: int
    symbols: int
    rate: float  # simulator frames per second (each frame: events_per_frame random T or Q events)
    events_per_frame: int
    wildcard: bool  # every client on T.*, or each on one T.<ticker>, spread evenly

    def ticker(self, index: int) -> str:
        # The simulator's synthetic names: S0001.. (at least 4 digits).
        return f"S{index:0{max(4, len(str(self.symbols)))}d}"

    def subscriptions(self) -> list[str]:
        if self.wildcard:
            return ["T.*"] * self.clients
        return [f"T.{self.ticker(i % self.symbols + 1)}" for i in range(self.clients)]

    def fanout(self) -> dict[str, int]:
        """Clients that want each ticker's events."""
        if self.wildcard:
            return {self.ticker(i): self.clients for i in range(1, self.symbols + 1)}
        counts: dict[str, int] = {}
        for params in self.subscriptions():
            ticker = params.partition(".")[2]
            counts[ticker] = counts.get(ticker, 0) + 1
        return counts


SCENARIOS: dict[str, Scenario] = {
    # rate is the simulator's frames/s; half are trades, so 4,000 gives the
    # issue's 2,000 single-event T frames/s to the relay.
    "a": Scenario("a", "firehose", clients=100, symbols=100, rate=4000, events_per_frame=1, wildcard=True),
    "b": Scenario("b", "sparse", clients=1000, symbols=100, rate=4000, events_per_frame=1, wildcard=False),
}


@dataclass(frozen=True)
class Config:
    scenario: Scenario
    flush_interval: float | None  # ms; None = the relay's default (not passed)

    @property
    def label(self) -> str:
        flush = "default" if self.flush_interval is None else f"{self.flush_interval:g}ms"
        return f"{self.scenario.key}:{self.scenario.title} flush={flush}"


@dataclass(frozen=True)
class Options:
    warmup: float
    duration: float
    grace: float
    client_procs: int
    pin: bool
    verbose: bool


# --- one run -----------------------------------------------------------------------------------------


def _fastrelay() -> list[str]:
    script = Path(sys.executable).parent / "fastrelay"
    return [str(script)] if script.exists() else [sys.executable, "-m", "fastrelay"]


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Sample:
    """CPU, memory and simulator counters at one instant."""

    def __init__(self, relay: Child, sim: Child, clients: list[Child], sim_stats_url: str) -> None:
        self.wall = time.monotonic()
        # The simulator's counters first, nearest the window boundary: the
        # scan of /proc below takes milliseconds.
        stats = procs.http_json(sim_stats_url) or {}
        # How stale those counters may be: on a busy box the simulator's loop
        # answers late, which skews the sim-side offered load by a few events.
        self.sim_stats_ms = (time.monotonic() - self.wall) * 1000
        market = stats.get("markets", {}).get(MARKET, {})
        self.sim_events = int(market.get("events_sent", 0))
        self.sim_frames = int(market.get("frames_sent", 0))
        self.sim_generated = int(stats.get("events_generated", 0))
        self.relay_cpu = procs.cpu_seconds(relay.pid)
        self.sim_cpu = procs.cpu_seconds(sim.pid)
        self.client_cpu = sum(procs.cpu_seconds(c.pid) for c in clients)
        self.everyone = procs.all_cpu_seconds()
        self.machine_busy, self.machine_interrupts = procs.machine_cpu()
        self.relay_memory = procs.memory_kib(relay.pid)
        self.sim_ok = bool(market)


def _others(first: Sample, last: Sample, ours: set[int]) -> tuple[float, list[str]]:
    """CPU seconds that processes other than the bench's used in the window, and the busiest.

    The machine is shared (other engineers' tests, load runs): a number taken
    while something else burns a core is not comparable, so it is reported.
    The total comes from /proc/stat (machine busy - the bench's processes -
    interrupt time), so processes that came and went inside the window count
    too; the names come from the processes still alive at the end.
    """
    used: list[tuple[float, int, str]] = []
    ours_cpu = 0.0
    for pid, (name, cpu) in last.everyone.items():
        delta = cpu - first.everyone.get(pid, (name, 0.0))[1]
        if pid in ours:
            ours_cpu += delta
        elif delta > 0:
            used.append((delta, pid, name))
    used.sort(reverse=True)
    wall = max(1e-9, last.wall - first.wall)
    busiest = [
        f"{procs.command_line(pid) or name} ({delta:.1f} s)"
        for delta, pid, name in used[:3]
        if delta / wall >= 0.05
    ]
    busy = last.machine_busy - first.machine_busy
    interrupts = last.machine_interrupts - first.machine_interrupts
    return max(0.0, busy - interrupts - ours_cpu), busiest


async def _read_line(child: Child, timeout: float) -> dict[str, Any]:
    assert child.process.stdout is not None
    line = await asyncio.wait_for(child.process.stdout.readline(), timeout)
    if not line:
        code = await child.process.wait()
        raise RuntimeError(f"{child.name} exited ({code}) early:\n{child.log_tail()}")
    message: dict[str, Any] = orjson.loads(line)
    return message


async def _send_line(child: Child, message: dict[str, Any]) -> None:
    assert child.process.stdin is not None
    child.process.stdin.write(orjson.dumps(message) + b"\n")
    await child.process.stdin.drain()


def _clean_env() -> dict[str, str]:
    # The relay and simulator read FASTRELAY_* twins of every flag: a stray
    # one in the caller's shell (client tokens, a port) would change the run.
    return {k: v for k, v in os.environ.items() if not k.startswith("FASTRELAY_") and k != "MASSIVE_API_KEY"}


async def run_once(
    config: Config, options: Options, workdir: Path, tag: str, profile: bool
) -> dict[str, Any]:
    scenario = config.scenario
    sim_port, relay_port = procs.free_port(), procs.free_port()
    while relay_port == sim_port:
        relay_port = procs.free_port()
    # With --pin the relay gets core 0 alone and everything else shares core 1.
    cpus = len(os.sched_getaffinity(0))
    relay_cpus = {0} if options.pin and cpus > 1 else None
    other_cpus = set(range(1, cpus)) if options.pin and cpus > 1 else None
    children: list[Child] = []
    clients: list[Child] = []
    profiler: Child | None = None
    sim_stats_url = f"http://127.0.0.1:{sim_port}/sim/stats"
    try:
        sim_argv = [
            *_fastrelay(), "sim", "--port", str(sim_port), "--sim-key", SIM_KEY,
            "--rate", f"{scenario.rate:g}", "--events-per-frame", str(scenario.events_per_frame),
            "--symbol-count", str(scenario.symbols), "--stamp", "true", "--markets", MARKET,
        ]  # fmt: skip
        sim = await _spawn(children, "simulator", sim_argv, workdir / f"{tag}-sim.log", other_cpus)
        await procs.wait_http_ok(f"http://127.0.0.1:{sim_port}/sim/health", sim, timeout=15)

        relay_argv = [
            *_fastrelay(), "serve", "--port", str(relay_port), "--upstream", f"ws://127.0.0.1:{sim_port}",
            "--api-key", SIM_KEY, "--markets", MARKET,
        ]  # fmt: skip
        if config.flush_interval is not None:
            relay_argv += ["--flush-interval", f"{config.flush_interval:g}"]
        relay = await _spawn(children, "relay", relay_argv, workdir / f"{tag}-relay.log", relay_cpus)
        await procs.wait_http_ok(f"http://127.0.0.1:{relay_port}/readyz", relay, timeout=15)
        baseline_memory = procs.memory_kib(relay.pid)

        # The clients, spread round-robin over the load-generator processes.
        subscriptions = scenario.subscriptions()
        shares = max(1, min(options.client_procs, len(subscriptions)))
        for index in range(shares):
            argv = [sys.executable, "-m", "bench.loadclient"]
            child = await procs.spawn(
                f"loadclient-{index}", argv, cwd=REPO, log_path=workdir / f"{tag}-load{index}.log",
                pipes=True, cpus=other_cpus, env=_clean_env(),
            )  # fmt: skip
            children.append(child)
            clients.append(child)
            spec = {
                "url": f"ws://127.0.0.1:{relay_port}/{MARKET}",
                "subscriptions": subscriptions[index::shares],
                "grace": options.grace,
            }
            await _send_line(child, spec)
        ready = [await _read_line(c, timeout=60) for c in clients]
        subscribed = sum(r["subscribed"] for r in ready)
        failures = [s for r in ready for s in r["failure_samples"]]
        if subscribed < len(subscriptions):
            _log(f"{config.label}: only {subscribed}/{len(subscriptions)} clients subscribed: {failures[:3]}")

        start_ns = time.time_ns() + int(options.warmup * 1e9)
        end_ns = start_ns + int(options.duration * 1e9)
        for child in clients:
            await _send_line(child, {"start_ns": start_ns, "end_ns": end_ns})
        await _sleep_until(start_ns)
        first = Sample(relay, sim, clients, sim_stats_url)
        if profile:
            profiler = await _start_profiler(relay, options.duration, workdir / f"{tag}-profile.txt")
        await _sleep_until(end_ns)
        last = Sample(relay, sim, clients, sim_stats_url)
        results = [await _read_line(c, timeout=options.grace + 30) for c in clients]
        profile_text = None
        if profiler is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(profiler.process.wait(), 15)
            profile_text = workdir / f"{tag}-profile.txt"
        relay_alive = relay.running
        ours = {os.getpid(), *(c.pid for c in children)} | ({profiler.pid} if profiler else set())
        metrics = _metrics(config, options, first, last, baseline_memory, ready, results, relay_alive, ours)
        metrics["relay_log"] = _log_findings(relay)
        metrics["sim_log"] = _log_findings(sim)
        if profile_text is not None and profile_text.exists():
            metrics["profile"] = summarize_profile(profile_text)
        return metrics
    finally:
        if profiler is not None:
            children.append(profiler)
        await procs.stop_all(children)


async def _spawn(
    children: list[Child], name: str, argv: list[str], log: Path, cpus: set[int] | None
) -> Child:
    child = await procs.spawn(name, argv, cwd=REPO, log_path=log, cpus=cpus, env=_clean_env())
    children.append(child)
    return child


async def _sleep_until(wall_ns: int) -> None:
    await asyncio.sleep(max(0.0, (wall_ns - time.time_ns()) / 1e9))


async def _start_profiler(relay: Child, duration: float, output: Path) -> Child | None:
    py_spy = Path(sys.executable).parent / "py-spy"
    if not py_spy.exists():
        _log("--profile: py-spy is not installed in this virtualenv (pip install py-spy); skipping")
        return None
    argv = [
        str(py_spy), "record", "--pid", str(relay.pid), "--duration", str(max(1, int(duration))),
        "--rate", "200", "--format", "raw", "--nonblocking", "--output", str(output),
    ]  # fmt: skip
    return await procs.spawn("py-spy", argv, cwd=REPO, log_path=output.with_suffix(".log"))


def summarize_profile(path: Path, top: int = 15) -> dict[str, Any]:
    """Self time per function from py-spy's collapsed stacks ("a;b;c count" lines)."""
    self_time: dict[str, int] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        leaf = stack.rsplit(";", 1)[-1]
        self_time[leaf] = self_time.get(leaf, 0) + count
    ranked = sorted(self_time.items(), key=lambda item: -item[1])[:top]
    return {
        "samples": total,
        "self": [{"function": name, "share": round(count / total, 4)} for name, count in ranked]
        if total
        else [],
    }


def _log_findings(child: Child, keep: int = 5) -> dict[str, Any]:
    """Warnings and errors a process logged during the run (a relay that complains is news)."""
    if child.log_path is None or not child.log_path.exists():
        return {"warnings": 0, "samples": []}
    lines = [
        line
        for line in child.log_path.read_text(errors="replace").splitlines()
        if any(word in line for word in ("WARNING", "ERROR", "Traceback", "Exception"))
        and "open mode" not in line  # expected: the bench runs the relay without client tokens
    ]
    return {"warnings": len(lines), "samples": lines[:keep]}


# --- numbers ---------------------------------------------------------------------------------------


def percentile(hist: dict[int, int], fraction: float) -> float:
    """The latency (us) under which ``fraction`` of the events fall."""
    total = sum(hist.values())
    if not total:
        return float("nan")
    rank = fraction * total
    seen = 0
    for key in sorted(hist):
        seen += hist[key]
        if seen >= rank:
            return float(key)
    return float(max(hist))


def _metrics(
    config: Config,
    options: Options,
    first: Sample,
    last: Sample,
    baseline_memory: dict[str, int],
    ready: list[dict[str, Any]],
    results: list[dict[str, Any]],
    relay_alive: bool,
    ours: set[int],
) -> dict[str, Any]:
    scenario = config.scenario
    window = options.duration
    wall = last.wall - first.wall  # the CPU sampling interval, close to the window
    fanout = scenario.fanout()
    mean_fanout = sum(fanout.values()) / len(fanout)

    hist: dict[int, int] = {}
    ranges: dict[str, list[int]] = {}
    for result in results:
        for key, count in result["hist"].items():
            hist[int(key)] = hist.get(int(key), 0) + count
        for ticker, (low, high) in result["ranges"].items():
            span = ranges.get(ticker)
            if span is None:
                ranges[ticker] = [low, high]
            else:
                span[0] = min(span[0], low)
                span[1] = max(span[1], high)

    def total(key: str) -> int:
        return sum(int(r[key]) for r in results)

    received = total("received")
    frames = total("frames")
    upstream_events = last.sim_events - first.sim_events
    offered = upstream_events * mean_fanout
    # What the clients' own sequence numbers say was sent in the window (the
    # union over all clients of the first and last q seen per channel).
    offered_q = sum((high - low + 1) * fanout.get(ticker, 0) for ticker, (low, high) in ranges.items())
    relay_cpu = last.relay_cpu - first.relay_cpu
    close_codes: dict[str, int] = {}
    for result in results:
        for code, count in result["close_codes"].items():
            close_codes[code] = close_codes.get(code, 0) + count
    end_memory = last.relay_memory.get("VmRSS", 0)
    base_memory = baseline_memory.get("VmRSS", 0)
    others, busiest = _others(first, last, ours)
    clients_subscribed = sum(r["subscribed"] for r in ready)
    errors = [e for r in results for e in r["errors"]][:5]
    return {
        "config": config.label,
        "scenario": config.scenario.key,
        "flush_interval_ms": config.flush_interval,
        "clients": scenario.clients,
        "clients_subscribed": clients_subscribed,
        "window_s": window,
        "upstream_events_per_s": upstream_events / window,
        "upstream_frames_per_s": (last.sim_frames - first.sim_frames) / window,
        "offered_per_s": offered / window,
        "offered_q_per_s": offered_q / window,
        "delivered_per_s": received / window,
        # Against the clients' own sequence numbers: exact, except that an
        # event no client got at the very start or end of the window is not
        # seen (the simulator-side ratio below covers that, within the
        # few-event skew of sampling /sim/stats over HTTP).
        "delivery_ratio": received / offered_q if offered_q else float("nan"),
        "delivery_ratio_sim": received / offered if offered else float("nan"),
        "missing_by_q": offered_q - received,
        "gaps": total("gaps"),
        "reordered": total("reordered"),
        "after_window_events": total("late"),
        "unstamped": total("unstamped"),
        "events_per_client_frame": received / frames if frames else float("nan"),
        "per_client_min": min((r["per_client_min"] for r in results), default=0),
        "per_client_max": max((r["per_client_max"] for r in results), default=0),
        "latency_ms": {
            name: percentile(hist, fraction) / 1000
            for name, fraction in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999), ("max", 1.0))
        },
        "relay_cpu": relay_cpu / wall,
        "relay_us_per_event": relay_cpu * 1e6 / received if received else float("nan"),
        "relay_rss_mib": end_memory / 1024,
        "relay_peak_rss_mib": last.relay_memory.get("VmHWM", 0) / 1024,
        "relay_baseline_rss_mib": base_memory / 1024,
        "relay_kib_per_connection": (end_memory - base_memory) / max(1, clients_subscribed),
        "loadgen_cpu": (last.client_cpu - first.client_cpu) / wall,
        "loadgen_procs": len(results),
        "sim_cpu": (last.sim_cpu - first.sim_cpu) / wall,
        "sim_events_generated_per_s": (last.sim_generated - first.sim_generated) / window,
        "machine_busy_cores": (last.machine_busy - first.machine_busy) / wall,
        "machine_interrupt_cores": (last.machine_interrupts - first.machine_interrupts) / wall,
        "others_cpu": others / wall,
        "others_busiest": busiest,
        "disconnects": total("disconnects"),
        "slow_consumer": total("slow_consumer"),
        "close_codes": close_codes,
        "client_errors": errors,
        "connect_failures": sum(r["failures"] for r in ready),
        "relay_alive": relay_alive,
        "sim_stats_ok": first.sim_ok and last.sim_ok,
        "sim_stats_ms": max(first.sim_stats_ms, last.sim_stats_ms),
    }


def _medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of every number over the repeats of one configuration."""

    def median_of(values: list[Any]) -> Any:
        numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        return statistics.median(numbers) if len(numbers) == len(values) and numbers else values[-1]

    summary: dict[str, Any] = {"repeats": len(runs)}
    for key, value in runs[0].items():
        if isinstance(value, dict) and key == "latency_ms":
            summary[key] = {k: median_of([r[key][k] for r in runs]) for k in value}
        elif isinstance(value, int | float) and not isinstance(value, bool):
            summary[key] = median_of([r[key] for r in runs])
        else:
            summary[key] = value
    # Faults count over all repeats, not as a median.
    for key in ("disconnects", "slow_consumer", "gaps", "reordered", "connect_failures", "unstamped"):
        summary[f"{key}_total"] = sum(r[key] for r in runs)
    summary["relay_warnings_total"] = sum(r["relay_log"]["warnings"] for r in runs)
    return summary


# --- report ------------------------------------------------------------------------------------------


def _fmt(value: float, spec: str) -> str:
    return "-" if value != value else format(value, spec)  # NaN -> "-"


def table(summaries: list[dict[str, Any]]) -> str:
    columns: list[tuple[str, int, Callable[[dict[str, Any]], str]]] = [
        ("config", 30, lambda s: s["config"]),
        ("sim ev/s", 8, lambda s: _fmt(s["upstream_events_per_s"], ",.0f")),
        ("offered/s", 10, lambda s: _fmt(s["offered_per_s"], ",.0f")),
        ("delivered/s", 11, lambda s: _fmt(s["delivered_per_s"], ",.0f")),
        ("deliv %", 7, lambda s: _fmt(100 * s["delivery_ratio"], ".2f")),
        ("ev/frame", 8, lambda s: _fmt(s["events_per_client_frame"], ".1f")),
        ("p50 ms", 7, lambda s: _fmt(s["latency_ms"]["p50"], ".2f")),
        ("p99 ms", 7, lambda s: _fmt(s["latency_ms"]["p99"], ".2f")),
        ("p999 ms", 7, lambda s: _fmt(s["latency_ms"]["p999"], ".2f")),
        ("gaps", 6, lambda s: str(s["gaps_total"])),
        ("relay cpu", 9, lambda s: _fmt(100 * s["relay_cpu"], ".0f") + "%"),
        ("us/ev", 6, lambda s: _fmt(s["relay_us_per_event"], ".2f")),
        ("RSS MiB", 7, lambda s: _fmt(s["relay_rss_mib"], ".1f")),
        ("KiB/conn", 8, lambda s: _fmt(s["relay_kib_per_connection"], ".1f")),
        ("load cpu", 8, lambda s: _fmt(100 * s["loadgen_cpu"], ".0f") + "%"),
        ("sim cpu", 7, lambda s: _fmt(100 * s["sim_cpu"], ".0f") + "%"),
        ("others", 6, lambda s: _fmt(100 * s["others_cpu"], ".0f") + "%"),
        ("drops", 5, lambda s: str(s["disconnects_total"] + s["slow_consumer_total"])),
    ]
    header = "  ".join(
        name.rjust(width) if i else name.ljust(width) for i, (name, width, _) in enumerate(columns)
    )
    lines = [header, "-" * len(header)]
    for summary in summaries:
        cells = [(fn(summary), width) for _, width, fn in columns]
        lines.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(cells)))
    return "\n".join(lines)


LEGEND = """\
sim ev/s: events/s the simulator sent the relay; offered/s: that x clients wanting each event;
deliv %: events received / expected from the per-channel q (window on send stamps, sim_ns);
ev/frame: events per frame at the clients; latency: now - sim_ns per event (one clock);
gaps: events missing by per-channel q, all repeats; relay cpu: utime+stime, share of one core;
us/ev: relay CPU per delivered event; KiB/conn: (RSS - RSS before clients) / clients;
load, sim: CPU of the load generators and the simulator; others: CPU of every other process on
the machine (shared: compare runs only when it is low); drops: disconnects + slow_consumer."""


def _notes(summary: dict[str, Any]) -> str:
    """Anything in a configuration's runs that makes its numbers suspect or is a fault."""
    notes = []
    if summary["relay_warnings_total"]:
        samples = summary["relay_log"]["samples"][:2]
        notes.append(f"relay logged {summary['relay_warnings_total']} warnings, e.g. {samples}")
    if summary["client_errors"]:
        notes.append(f"client errors: {summary['client_errors'][:3]}")
    if summary["clients_subscribed"] < summary["clients"]:
        notes.append(f"only {summary['clients_subscribed']}/{summary['clients']} clients subscribed")
    if summary["delivery_ratio_sim"] < summary["delivery_ratio"] - 0.01:
        notes.append(
            f"the simulator sent {100 * (1 - summary['delivery_ratio_sim']):.1f}% more than was received: "
            "events lost at the edges of the window, where q cannot see them"
        )
    if summary["others_cpu"] > 0.1:
        notes.append(
            f"other processes used {100 * summary['others_cpu']:.0f}% of a core: {summary['others_busiest']}"
        )
    if not summary["relay_alive"]:
        notes.append("the relay died during the run")
    return f"\n{summary['config']}: " + "; ".join(notes) + "\n" if notes else ""


def _git(*args: str) -> str:
    try:
        out = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=False
        )
    except OSError:
        return ""
    return out.stdout.strip()


# --- main --------------------------------------------------------------------------------------------


def _plan(
    scenarios: list[Scenario], flushes: list[float | None], flush_keys: set[str], repeats: int
) -> Iterator[tuple[int, Config]]:
    configs: list[Config] = []
    for scenario in scenarios:
        for flush in flushes if scenario.key in flush_keys else [None]:
            configs.append(Config(scenario, flush))
    for repeat in range(repeats):
        for config in configs:
            yield repeat, config


def _parse_flushes(text: str) -> list[float | None]:
    values: list[float | None] = []
    for part in text.split(","):
        part = part.strip()
        if part:
            values.append(None if part == "default" else float(part))
    return values


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default="a,b", help="comma-separated: a (firehose), b (sparse)")
    parser.add_argument("--duration", type=float, default=10.0, help="measured window per run, s")
    parser.add_argument("--warmup", type=float, default=3.0, help="traffic before the window, s")
    parser.add_argument("--repeats", type=int, default=3, help="runs per configuration (medians reported)")
    parser.add_argument(
        "--flush",
        default="default,0",
        help="relay flush intervals (ms) to compare; 'default' = the flag not given",
    )
    # The comparison is about the firehose, where coalescing has events to merge.
    parser.add_argument(
        "--flush-scenarios", default="a", help="scenarios run at every --flush (others: default only)"
    )
    parser.add_argument(
        "--rate", type=float, default=None, help="override the simulator's frames/s of every scenario"
    )
    parser.add_argument("--client-procs", type=int, default=2, help="load-generator processes")
    parser.add_argument("--pin", action="store_true", help="relay alone on CPU 0, the rest on the others")
    parser.add_argument("--profile", action="store_true", help="one extra run per config under py-spy")
    parser.add_argument("--quick", action="store_true", help="1 repeat, 1 s warm-up, 3 s window")
    parser.add_argument("--keep-logs", action="store_true", help="keep every process's log in results/logs-*")
    parser.add_argument("--output", type=Path, default=None, help="JSON path (default results/bench-*.json)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print each run as it ends")
    return parser


async def _main(args: argparse.Namespace) -> int:
    if args.quick:
        args.repeats, args.warmup, args.duration = 1, 1.0, 3.0
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        print(f"unknown scenario(s) {unknown}; known: {', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    chosen = {key: SCENARIOS[key] for key in scenarios}
    if args.rate is not None:
        chosen = {key: replace(scenario, rate=args.rate) for key, scenario in chosen.items()}
    options = Options(
        warmup=args.warmup, duration=args.duration, grace=1.0, client_procs=args.client_procs,
        pin=args.pin, verbose=args.verbose,
    )  # fmt: skip
    flushes = _parse_flushes(args.flush)
    flush_keys = {s.strip() for s in args.flush_scenarios.split(",")}
    plan = list(_plan(list(chosen.values()), flushes, flush_keys, args.repeats))
    started = datetime.datetime.now()
    RESULTS.mkdir(exist_ok=True)
    output = args.output or RESULTS / f"bench-{started:%Y%m%d-%H%M%S}.json"
    runs: dict[str, list[dict[str, Any]]] = {}
    profiles: dict[str, Any] = {}
    failures: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        if args.keep_logs:
            workdir = RESULTS / f"logs-{started:%Y%m%d-%H%M%S}"
            workdir.mkdir()
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fastrelay-bench-")))
        for number, (repeat, config) in enumerate(plan, 1):
            _log(f"run {number}/{len(plan)}: {config.label} (repeat {repeat + 1})")
            try:
                metrics = await run_once(config, options, workdir, f"run{number}", profile=False)
            except (RuntimeError, TimeoutError, OSError, KeyError, ValueError) as exc:
                # One broken run (a relay that would not start, a client that
                # died) is a result too: record it and go on with the others.
                _log(f"run {number} failed: {type(exc).__name__}: {exc}")
                failures.append({"config": config.label, "repeat": repeat + 1, "error": f"{exc}"[-2000:]})
                continue
            metrics["repeat"] = repeat + 1
            runs.setdefault(config.label, []).append(metrics)
            if options.verbose:
                print(table([_medians([metrics])]), file=sys.stderr)
        if args.profile:
            for label, config in {c.label: c for _, c in plan}.items():
                _log(f"profiling the relay: {label}")
                try:
                    metrics = await run_once(
                        config, options, workdir, f"profile-{len(profiles)}", profile=True
                    )
                except (RuntimeError, TimeoutError, OSError, KeyError, ValueError) as exc:
                    _log(f"profile run failed: {type(exc).__name__}: {exc}")
                    continue
                profiles[label] = metrics.get("profile")
    summaries = [_medians(group) for group in runs.values()]
    report: dict[str, Any] = {
        "date": started.isoformat(timespec="seconds"),
        "git": {"commit": _git("rev-parse", "HEAD"), "dirty": bool(_git("status", "--porcelain"))},
        "machine": procs.machine_info(),
        "python": sys.version.split()[0],
        "options": {**vars(args), "output": str(output)},
        "scenarios": {key: asdict(scenario) for key, scenario in chosen.items()},
        "summary": summaries,
        "runs": [run for group in runs.values() for run in group],
        "failed_runs": failures,
        "profiles": profiles,
        "elapsed_s": round((datetime.datetime.now() - started).total_seconds(), 1),
    }
    output.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    machine = report["machine"]
    print(
        f"\nfastrelay bench {report['date']}  commit {report['git']['commit'][:10]}"
        f"{' (dirty tree)' if report['git']['dirty'] else ''}  {machine['nproc']} CPUs {machine['cpu_model']}"
        f"  {machine['kernel']}\n"
        f"window {options.duration:g} s after {options.warmup:g} s warm-up, medians of {args.repeats} run(s),"
        f" {options.client_procs} load processes{', pinned' if options.pin else ''}\n"
    )
    print(table(summaries))
    print("\n" + LEGEND)
    for summary in summaries:
        print(_notes(summary), end="")
    for failure in failures:
        print(f"\nFAILED {failure['config']} (repeat {failure['repeat']}): {failure['error'][-500:]}")
    for label, profile in profiles.items():
        if profile and profile["self"]:
            print(
                f"\nrelay self time under {label} (py-spy, {profile['samples']} samples; C code, syscalls"
                " included, is charged to the Python line that called it, and Runner.run is the event loop's"
                " own work: reads, epoll, callbacks):"
            )
            for row in profile["self"][:12]:
                print(f"  {100 * row['share']:5.1f}%  {row['function']}")
    print(
        f"\nJSON: {output.relative_to(REPO) if output.is_relative_to(REPO) else output}"
        f"  ({report['elapsed_s']:.0f} s)"
    )
    return 1 if failures else 0


async def _main_until_signal(args: argparse.Namespace) -> int:
    # SIGTERM (a CI timeout, kill) unwinds like Ctrl-C: the task is cancelled
    # and the finally blocks stop every child process group.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await _main(args)


def main() -> int:
    args = _parser().parse_args()
    try:
        return asyncio.run(_main_until_signal(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("\nbench interrupted; every child process was stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
