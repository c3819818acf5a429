"""``make soak``: a bounded soak of the relay (10 minutes by default; not part of CI).

Runs on 127.0.0.1, all as child processes (``bench.procs``: own sessions,
``PR_SET_PDEATHSIG``, stopped in order even on Ctrl-C):

1. the simulator: ``fastrelay sim --rate R --symbol-count N``;
2. the relay under test: ``fastrelay serve`` on both markets, default settings
   (the production backoff, linger and limits), JSON logs, ``--metrics-port``;
3. one client process (``python -m bench.soak --client``, driven over
   stdin/stdout with JSON lines) holding a few long-lived *watchers* (fixed
   subscriptions, reading all the time: clients that keep up) and a pool of
   *churners* that connect, auth, subscribe, change their subscriptions, and
   disconnect (some with a close handshake, some abruptly), over and over.

Meanwhile the soak drops the relay's upstream now and then over the
simulator's HTTP fault endpoint (``/sim/fault/drop?market=...``, alternating
markets) and samples the relay from /proc and /metrics.

Checks. Per-channel sequence numbers ``q`` of the watchers may jump only at
the first event of a channel after a ``MARKET feed restored`` status (Massive
does not replay what was sent during an outage); any other gap, repeat or
reorder is an error. Churners are held to the same rule for channels they
keep while changing others (``--allow-churn-gaps`` reports those without
failing); a jump from the last value sent on subscribe to the first live event
(a value from before an outage) is reported apart, not as an error.

Memory. A warm-up (fast churn for ``--warmup-connections`` cycles, then
``--warmup-mix`` seconds of the soak's own mix) first brings the relay's RSS
to its high-water mark (about 5 MiB above the idle relay); then start and end
are measured in the same quiet state (churners paused, only watchers
connected, linger expired): relay RSS must stay within ``--rss-tolerance``
(10 %), open descriptors, audiences and upstream channels must come back. The
duration includes the warm-up. asyncio tasks:
the relay exposes no count of them (neither /metrics nor a debug endpoint),
so the soak reports the OS threads of /proc/PID/status instead.

Exit status: 0 when every check passed, 1 otherwise; the report goes to stdout
and, with every sample, to ``results/soak-YYYYmmdd-HHMMSS.json``.

Usage: ``python -m bench.soak [--minutes M] [--churners N] [--drop-every S] [-v]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import orjson
from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from fastrelay.markets import infer_market, state_evs

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "results"
SIM_KEY = "sim-key"
LINGER = 5.0  # the relay's default --linger: what must pass before the quiet state


# =====================================================================================================
# The client process: watchers and churners on one uvloop loop (picows, as bench.loadclient).
# =====================================================================================================


class _Message(msgspec.Struct, gc=False):
    """The fields the soak reads; msgspec skips the rest."""

    ev: Any = None
    sym: Any = None
    q: Any = None
    status: Any = None
    message: Any = None


_decode = msgspec.json.Decoder(list[_Message]).decode


@dataclass
class RoleStats:
    connects: int = 0
    connect_failures: int = 0
    cycles: int = 0  # churn cycles completed
    subscribe_messages: int = 0
    events: int = 0
    interrupted: int = 0  # "feed interrupted" statuses
    restored: int = 0  # "feed restored" statuses
    outage_gaps: int = 0  # q jumps right after a restore: legitimate
    missing_in_outages: int = 0  # events those jumps skipped
    # A jump from the last value sent on subscribe to the first live event: the relay kept a
    # value from before an outage (it had not seen a newer one); reported, not an error.
    stale_fill_gaps: int = 0
    unexpected_gaps: int = 0
    missing_unexpected: int = 0
    repeats: int = 0  # a q not above the previous one of its channel
    server_closes: dict[str, int] = field(default_factory=dict)  # close codes the relay sent
    error_statuses: int = 0  # error statuses other than the outage ones
    examples: list[str] = field(default_factory=list)  # the first few problems, for the report

    def note(self, text: str) -> None:
        if len(self.examples) < 12:
            self.examples.append(text)


class _Conn:
    """One Massive-protocol client connection; a picows listener is made around it."""

    def __init__(self, role: str, path: str, stats: RoleStats) -> None:
        self.role = role
        self.path = path
        self.stats = stats
        self.transport: Any = None
        self.acks = 0
        self.authenticated = False
        # channel key -> (q, restores of its market then, first event after a subscribe ack)
        self.last: dict[str, tuple[int, int, bool]] = {}
        self.fresh: set[str] = set()  # exact channels acknowledged, no event seen since
        self.restores: dict[str, int] = {}  # market -> restores seen
        self.last_event = time.monotonic()
        self.closing = False
        # The last few things seen, to show the context of a problem in the report.
        self.recent: deque[str] = deque(maxlen=24)
        self.gone = asyncio.Event()
        self._wake = asyncio.Event()

    def market_of(self, ev: str, ticker: str) -> str:
        if self.path != "api/socket":
            return self.path
        return infer_market(ev, ticker)

    def text(self, payload: bytes) -> None:
        try:
            messages = _decode(payload)
        except msgspec.DecodeError:
            self.stats.error_statuses += 1
            self.stats.note(f"{self.role} {self.path}: undecodable frame {payload[:80]!r}")
            return
        stats = self.stats
        for m in messages:
            if m.ev == "status":
                self.recent.append(f"{m.status}: {m.message}")
                self._status(str(m.status), str(m.message))
                continue
            stats.events += 1
            self.last_event = time.monotonic()
            if not isinstance(m.q, int) or not isinstance(m.sym, str) or not isinstance(m.ev, str):
                continue
            market = self.market_of(m.ev, m.sym)
            key = f"{market}:{m.ev}.{m.sym}"
            self.recent.append(f"{m.ev}.{m.sym} q={m.q}")
            epoch = self.restores.get(market, 0)
            previous = self.last.get(key)
            first = key in self.fresh
            if first:
                self.fresh.discard(key)
            self.last[key] = (m.q, epoch, first)
            if previous is None or m.q == previous[0] + 1:
                continue
            if m.q <= previous[0]:
                stats.repeats += 1
                stats.note(f"{self.role} {self.path}: {key} q {previous[0]} then {m.q}")
            elif epoch != previous[1]:
                stats.outage_gaps += 1
                stats.missing_in_outages += m.q - previous[0] - 1
            elif previous[2] and m.ev in state_evs(market):
                stats.stale_fill_gaps += 1
            else:
                stats.unexpected_gaps += 1
                stats.missing_unexpected += m.q - previous[0] - 1
                stats.note(
                    f"{self.role} {self.path}: {key} q {previous[0]} -> {m.q} (no outage); "
                    f"last seen: {' | '.join(self.recent)}"
                )
        self._wake.set()

    def _status(self, status: str, message: str) -> None:
        stats = self.stats
        if status == "auth_success":
            self.authenticated = True
        elif status == "success":
            if " feed restored" in message:
                market = message.split(" feed restored", 1)[0]
                self.restores[market] = self.restores.get(market, 0) + 1
                stats.restored += 1
            else:
                self.acks += 1
                # A channel (re)subscribed or unsubscribed starts a new sequence.
                _, _, label = message.partition(": ")
                self._forget(label)
        elif status == "error" and " feed interrupted" in message:
            stats.interrupted += 1
        elif status != "connected":
            stats.error_statuses += 1
            stats.note(f"{self.role} {self.path}: status {status}: {message[:120]}")

    def _forget(self, label: str) -> None:
        ev, _, ticker = label.partition(".")
        if ticker == "*":
            market = self.market_of(ev, "")
            prefix = f"{market}:{ev}."
            for key in [k for k in self.last if k.startswith(prefix)]:
                del self.last[key]
            # An exact channel acknowledged in the same message keeps its "fresh" mark: its
            # last value (sent after all the acknowledgements) is still to come.
        elif ticker:
            key = f"{self.market_of(ev, ticker)}:{label}"
            self.last.pop(key, None)
            self.fresh.add(key)

    async def until(self, condition: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.gone.is_set():
                return condition()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), remaining)
        return True

    async def acked(self, target: int, timeout: float = 5.0) -> bool:
        """Until ``target`` subscribe/unsubscribe acknowledgements have arrived in all."""
        return await self.until(lambda: self.acks >= target, timeout)

    def send(self, action: str, params: str) -> None:
        if action != "auth":
            self.recent.append(f"> {action} {params}")
        if self.transport is not None and not self.gone.is_set():
            self.transport.send(WSMsgType.TEXT, orjson.dumps({"action": action, "params": params}))

    async def close(self, graceful: bool) -> None:
        self.closing = True
        if self.transport is None or self.gone.is_set():
            return
        if graceful:
            self.transport.send_close(WSCloseCode.OK)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.gone.wait(), 2.0)
        if not self.gone.is_set():
            self.transport.disconnect(graceful=False)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.gone.wait(), 2.0)


class _Listener(WSListener):
    def __init__(self, conn: _Conn) -> None:
        self.conn = conn

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.conn.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        conn = self.conn
        if frame.msg_type is WSMsgType.TEXT:
            conn.text(frame.get_payload_as_bytes())
        elif frame.msg_type is WSMsgType.CLOSE:
            if not conn.closing:  # the relay closed us: count why
                try:
                    code = str(int(frame.get_close_code()))
                except ValueError:
                    code = "other"
                conn.stats.server_closes[code] = conn.stats.server_closes.get(code, 0) + 1
                transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.conn.gone.set()
        self.conn._wake.set()


async def _open(url: str, conn: _Conn, timeout: float = 5.0) -> bool:
    """Connect, wait for ``connected``, auth; False (counted) on any failure."""
    try:
        await asyncio.wait_for(
            ws_connect(lambda: _Listener(conn), url, use_aiofastnet=False, max_frame_size=64 * 2**20), timeout
        )
    except Exception as exc:  # refused, timed out, handshake error: all count the same
        conn.stats.connect_failures += 1
        conn.stats.note(f"{conn.role} {conn.path}: connect failed: {type(exc).__name__}: {exc}")
        return False
    conn.stats.connects += 1
    conn.send("auth", "soak")
    if not await conn.until(lambda: conn.authenticated, timeout):
        conn.stats.connect_failures += 1
        conn.stats.note(f"{conn.role} {conn.path}: no auth_success")
        await conn.close(graceful=False)
        return False
    return True


class ClientProcess:
    """Watchers and churners; commands on stdin, reports on stdout (one JSON object a line)."""

    def __init__(self, reader: asyncio.StreamReader, spec: dict[str, Any]) -> None:
        self.reader = reader
        self.spec = spec
        self.base = spec["url"]
        self.rng = random.Random(spec.get("seed", 1))
        self.watcher_stats = RoleStats()
        self.churner_stats = RoleStats()
        self.watchers: list[_Conn] = []
        self.churning = asyncio.Event()
        self.churning.set()
        self.stopping = False
        self.active_churners = 0
        self.lifetime = (1.0, 8.0)  # seconds a churner stays connected; "tempo" changes it
        self.watcher_stalls = 0  # a watcher without any event for over 15 s

    def emit(self, message: dict[str, Any]) -> None:
        sys.stdout.write(orjson.dumps(message).decode() + "\n")
        sys.stdout.flush()

    def report(self) -> dict[str, Any]:
        return {
            "type": "report",
            "watchers": asdict(self.watcher_stats),
            "churners": asdict(self.churner_stats),
            "watchers_connected": sum(1 for w in self.watchers if not w.gone.is_set()),
            "active_churners": self.active_churners,
            "watcher_stalls": self.watcher_stalls,
        }

    async def start_watchers(self) -> None:
        for path, channels in self.spec["watchers"]:
            conn = _Conn("watcher", path, self.watcher_stats)
            if not await _open(f"{self.base}/{path}", conn):
                raise RuntimeError(f"watcher {path} could not connect")
            conn.send("subscribe", channels)
            if not await conn.acked(len(channels.split(","))):
                raise RuntimeError(f"watcher {path} not acknowledged: {channels}")
            self.watchers.append(conn)
        for conn in self.watchers:
            if not await conn.until(lambda c=conn: c.stats.events > 0 and c.last != {}, 15.0):
                raise RuntimeError(f"watcher {conn.path} receives nothing")

    def _channels(self, path: str, count: int) -> list[str]:
        stocks, options = self.spec["stocks"], self.spec["options"]
        rng = self.rng
        out: list[str] = []
        for _ in range(count):
            if path == "options" or (path == "api/socket" and rng.random() < 0.4):
                contract = rng.choice(options)
                out.append(rng.choice([f"T.{contract}", f"Q.{contract}"]) if rng.random() > 0.05 else "T.*")
            else:
                if rng.random() < 0.05:
                    out.append(rng.choice(["T.*", "Q.*", "A.*"]))
                else:
                    out.append(f"{rng.choice(['T', 'Q', 'A', 'AM'])}.{rng.choice(stocks)}")
        return list(dict.fromkeys(out))

    async def churner(self, index: int) -> None:
        rng = random.Random(self.rng.random())
        await asyncio.sleep(rng.uniform(0, 2))  # start spread out
        while not self.stopping:
            await self.churning.wait()
            if self.stopping:
                return
            path = rng.choice(["stocks", "stocks", "options", "api/socket"])
            conn = _Conn("churner", path, self.churner_stats)
            self.active_churners += 1
            try:
                if not await _open(f"{self.base}/{path}", conn):
                    await asyncio.sleep(1.0)
                    continue
                held = self._channels(path, rng.randint(1, 8))
                conn.send("subscribe", ",".join(held))
                self.churner_stats.subscribe_messages += 1
                await conn.acked(len(held))
                ends = time.monotonic() + rng.uniform(*self.lifetime)
                while self.churning.is_set() and not conn.gone.is_set():
                    # Pacing, well under the relay's message rate limit.
                    await asyncio.sleep(min(rng.uniform(0.2, 1.5), max(0.0, ends - time.monotonic())))
                    if time.monotonic() >= ends:
                        break
                    acks = conn.acks
                    if held and rng.random() < 0.4:
                        dropped = rng.sample(held, rng.randint(1, len(held)))
                        held = [c for c in held if c not in dropped]
                        conn.send("unsubscribe", ",".join(dropped))
                        await conn.acked(acks + len(dropped))
                    else:
                        added = [c for c in self._channels(path, rng.randint(1, 3)) if c not in held]
                        if added:
                            held += added
                            conn.send("subscribe", ",".join(added))
                            await conn.acked(acks + len(added))
                    self.churner_stats.subscribe_messages += 1
                await conn.close(graceful=rng.random() < 0.7)
                self.churner_stats.cycles += 1
            finally:
                self.active_churners -= 1
            await asyncio.sleep(rng.uniform(0, self.lifetime[1] / 16))  # 0.5 s at the normal tempo

    async def watch_stalls(self) -> None:
        while not self.stopping:
            await asyncio.sleep(5.0)
            now = time.monotonic()
            for conn in self.watchers:
                if now - conn.last_event > 15.0:
                    self.watcher_stalls += 1
                    self.watcher_stats.note(
                        f"watcher {conn.path}: no event for {now - conn.last_event:.0f} s"
                    )
                    conn.last_event = now

    async def commands(self) -> None:
        while True:
            line = await self.reader.readline()
            if not line:
                return  # the parent is gone
            command = orjson.loads(line).get("cmd")
            if command == "pause":
                self.churning.clear()
                while self.active_churners:
                    await asyncio.sleep(0.05)
                self.emit({"type": "paused"})
            elif command == "resume":
                self.churning.set()
                self.emit({"type": "resumed"})
            elif command == "tempo":
                self.lifetime = tuple(orjson.loads(line)["lifetime"])
                self.emit({"type": "tempo"})
            elif command == "report":
                self.emit(self.report())
            elif command == "stop":
                return

    async def run(self) -> None:
        await self.start_watchers()
        self.emit({"type": "ready"})
        tasks = [asyncio.create_task(self.churner(i)) for i in range(self.spec["churners"])]
        tasks.append(asyncio.create_task(self.watch_stalls()))
        try:
            await self.commands()
        finally:
            self.stopping = True
            report = self.report()  # before the watchers are closed by us
            self.churning.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for conn in self.watchers:
                # A watcher the relay closed is a finding, not ours to close.
                if not conn.gone.is_set():
                    await conn.close(graceful=True)
            report["type"] = "final"
            self.emit(report)


async def _client() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    spec = orjson.loads(await reader.readline())
    await ClientProcess(reader, spec).run()


def client_main() -> int:
    from fastrelay import loops

    loops.run(_client())
    return 0


# =====================================================================================================
# The parent: processes, faults, samples, verdict.
# =====================================================================================================


@dataclass
class Sample:
    at: float  # seconds since the start of the soak
    rss_kib: int
    fds: int
    threads: int
    cpu_s: float
    clients: float = 0.0
    audiences: float = 0.0
    upstream_channels: float = 0.0
    ready: bool = False


def _proc_sample(pid: int, at: float) -> Sample:
    from bench import procs

    threads = 0
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                threads = int(line.split()[1])
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        fds = -1
    return Sample(at, procs.memory_kib(pid).get("VmRSS", 0), fds, threads, procs.cpu_seconds(pid))


def _metrics(text: bytes) -> dict[str, float]:
    """Sums of the relay's samples by name (labels summed over): enough for the report."""
    from prometheus_client.parser import text_string_to_metric_families

    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
            if sample.labels.get("reason") and sample.name.endswith("_total"):
                key = f"{sample.name}{{{sample.labels.get('market', '')}{sample.labels['reason']}}}"
                totals[key] = totals.get(key, 0.0) + sample.value
    return totals


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.started = time.monotonic()
        self.samples: list[Sample] = []
        self.errors: list[str] = []
        self.drops: list[dict[str, Any]] = []
        self.children: list[Any] = []
        self.relay: Any = None
        self.client: Any = None
        self.metrics_port = 0
        self.sim_port = 0
        self.reports: list[dict[str, Any]] = []

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def log(self, text: str) -> None:
        print(f"[{self.elapsed():7.1f} s] {text}", flush=True)

    # --- the client process's pipe ---
    async def command(
        self, cmd: str, answer: str | None, timeout: float = 30.0, **fields: Any
    ) -> dict[str, Any]:
        assert self.client is not None
        self.client.process.stdin.write(orjson.dumps({"cmd": cmd, **fields}) + b"\n")
        await self.client.process.stdin.drain()
        if answer is None:
            return {}
        return await self.expect(answer, timeout)

    async def expect(self, kind: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"client process: no {kind!r} within {timeout:.0f} s")
            line = await asyncio.wait_for(self.client.process.stdout.readline(), remaining)
            if not line:
                raise RuntimeError(f"client process exited:\n{self.client.log_tail()}")
            message: dict[str, Any] = orjson.loads(line)
            if message.get("type") == kind:
                return message

    # --- samples ---
    def sample(self) -> Sample:
        from bench import procs

        sample = _proc_sample(self.relay.pid, self.elapsed())
        status, body = procs.http_get(f"http://127.0.0.1:{self.metrics_port}/metrics", 2.0)
        if status == 200:
            values = _metrics(body)
            sample.clients = values.get("fastrelay_clients", 0.0)
            sample.audiences = values.get("fastrelay_audiences", 0.0)
            sample.upstream_channels = values.get("fastrelay_upstream_channels", 0.0)
        sample.ready = procs.http_get(f"http://127.0.0.1:{self.metrics_port}/readyz", 2.0)[0] == 200
        self.samples.append(sample)
        return sample

    async def quiet_sample(self, label: str) -> Sample:
        """Churners paused, only watchers connected, every linger expired: then measure."""
        from bench import procs

        await self.command("pause", "paused", timeout=60.0)
        watchers = len(self.args.watcher_specs)
        deadline = time.monotonic() + 30.0
        while True:
            status, body = procs.http_get(f"http://127.0.0.1:{self.metrics_port}/metrics", 2.0)
            if status == 200 and _metrics(body).get("fastrelay_clients", -1) == watchers:
                break
            if time.monotonic() > deadline:
                self.errors.append(f"{label}: relay still counts clients other than the watchers after 30 s")
                break
            await asyncio.sleep(0.2)
        # Lingering channels are given up after --linger; the metrics text is rendered each second.
        await asyncio.sleep(LINGER + 2.0)
        sample = self.sample()
        await self.command("resume", "resumed")
        self.log(
            f"{label}: RSS {sample.rss_kib / 1024:.1f} MiB, fds {sample.fds}, threads {sample.threads}, "
            f"clients {sample.clients:.0f}, audiences {sample.audiences:.0f}, "
            f"upstream channels {sample.upstream_channels:.0f}"
        )
        return sample

    # --- the run ---
    async def start(self, logs: Path) -> None:
        from bench import procs

        args = self.args
        py = sys.executable
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FASTRELAY_", "MASSIVE_"))}
        self.sim_port = procs.free_port()
        sim = await procs.spawn(
            "simulator",
            [py, "-m", "fastrelay", "sim", "--port", str(self.sim_port), "--rate", str(args.rate),
             "--symbol-count", str(args.symbols), "--sim-key", SIM_KEY, "--log-level", "warning"],
            cwd=REPO, log_path=logs / "simulator.log", env=env,
        )  # fmt: skip
        self.children.append(sim)
        await procs.wait_http_ok(f"http://127.0.0.1:{self.sim_port}/sim/health", sim, 15.0)
        port, self.metrics_port = procs.free_port(), procs.free_port()
        self.relay = await procs.spawn(
            "relay",
            [py, "-m", "fastrelay", "serve", "--port", str(port), "--metrics-port", str(self.metrics_port),
             "--upstream", f"ws://127.0.0.1:{self.sim_port}", "--api-key", SIM_KEY,
             "--markets", "stocks,options", "--log-format", "json", *args.relay_arg],
            cwd=REPO, log_path=logs / "relay.log", env=env,
        )  # fmt: skip
        self.children.append(self.relay)
        await procs.wait_http_ok(f"http://127.0.0.1:{self.metrics_port}/readyz", self.relay, 15.0)
        self.client = await procs.spawn(
            "clients", [py, "-m", "bench.soak", "--client"], cwd=REPO, log_path=logs / "clients.log",
            pipes=True, env=env,
        )  # fmt: skip
        self.children.append(self.client)
        from fastrelay.sim import Simulator, SimulatorConfig

        names = Simulator(SimulatorConfig(symbol_count=args.symbols))
        options = names.symbols("options")
        args.watcher_specs = [*WATCHERS, ["api/socket", f"T.S0004,Q.S0005,T.{options[0]},Q.{options[1]}"]]
        spec = {
            "url": f"ws://127.0.0.1:{port}",
            "watchers": args.watcher_specs,
            "churners": args.churners,
            "stocks": list(names.symbols("stocks")),
            "options": list(names.symbols("options")),
            "seed": args.seed,
        }
        self.client.process.stdin.write(orjson.dumps(spec) + b"\n")
        await self.client.process.stdin.drain()
        await self.expect("ready", 30.0)

    async def drop(self, market: str) -> None:
        from bench import procs

        at = self.elapsed()
        status, _ = procs.http_get(f"http://127.0.0.1:{self.sim_port}/sim/fault/drop?market={market}", 2.0)
        if status != 200:
            self.errors.append(f"fault drop {market}: HTTP {status}")
            return
        # Ready again: the upstream reconnected and authenticated (backoff 0.5 s doubling to 30 s).
        deadline = time.monotonic() + 45.0
        while procs.http_get(f"http://127.0.0.1:{self.metrics_port}/readyz", 2.0)[0] != 200:
            if time.monotonic() > deadline:
                self.errors.append(f"drop {market} at {at:.0f} s: not ready again after 45 s")
                break
            await asyncio.sleep(0.05)
        recovery = self.elapsed() - at
        self.drops.append({"at": round(at, 1), "market": market, "recovery_s": round(recovery, 3)})
        if self.args.verbose:
            self.log(f"dropped the {market} upstream: ready again after {recovery:.2f} s")

    async def warm_up(self) -> None:
        """Bring the relay's RSS to its plateau before the baseline.

        Fast churn until --warmup-connections, then --warmup-mix seconds of the soak's own
        load. The relay's memory rises to a high-water mark and stays there (measured:
        after ~5,000 connect/disconnect cycles the next 6,000 add under 0.1 MiB; under the
        soak's mix RSS rises about 3 MiB more within ~3 minutes, then stays flat, with or
        without upstream drops, while Python's own allocations do not grow), so a baseline
        taken earlier would read the plateau as growth.
        """
        args = self.args
        first = self.sample()
        await self.command("tempo", "tempo", lifetime=[0.05, 0.3])
        deadline = self.elapsed() + args.warmup
        cycles = 0
        while cycles < args.warmup_connections and self.elapsed() < deadline:
            await asyncio.sleep(2.0)
            cycles = (await self.command("report", "report"))["churners"]["cycles"]
            self.sample()
        await self.command("tempo", "tempo", lifetime=[1.0, 8.0])
        fast = self.samples[-1].rss_kib
        # Then the mix of the soak itself, with its drops: clients holding more channels for
        # longer raise the high-water mark further (about 3 MiB more, reached within ~3 min).
        await self._loop(self.elapsed() + args.warmup_mix, self.elapsed, ["stocks", "options"])
        self.warmup_rss = (first.rss_kib, fast, self.samples[-1].rss_kib, cycles)
        self.log(
            f"warm-up: {cycles} fast churn cycles, relay RSS {first.rss_kib / 1024:.1f} -> "
            f"{fast / 1024:.1f} MiB; then {args.warmup_mix:.0f} s of the soak's mix -> "
            f"{self.samples[-1].rss_kib / 1024:.1f} MiB"
        )

    async def run(self) -> int:
        from bench import procs

        args = self.args
        duration = args.minutes * 60.0
        with contextlib.ExitStack() as stack:
            if args.keep_logs:
                logs = RESULTS / f"soak-logs-{datetime.datetime.now():%Y%m%d-%H%M%S}"
                logs.mkdir(parents=True, exist_ok=True)
            else:
                logs = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="soak-")))
            try:
                await self.start(logs)
                self.log(
                    f"running {args.minutes:g} min: {len(args.watcher_specs)} watchers, {args.churners} "
                    f"churners, upstream drop every ~{args.drop_every:g} s, sim {args.rate:g} frames/s, "
                    f"{args.symbols} symbols"
                )
                await self.warm_up()
                start = await self.quiet_sample("start")
                markets = ["stocks", "options"]
                await self._loop(duration - 2 * (LINGER + 3.0), self.elapsed, markets)
                end = await self.quiet_sample("end")
                final = await self.finish()
            except (RuntimeError, TimeoutError, OSError) as exc:
                self.errors.append(f"soak aborted: {exc}")
                await procs.stop_all(list(reversed(self.children)))
                for child in self.children:
                    if child.log_tail():
                        print(f"--- {child.name} log tail ---\n{child.log_tail()}", file=sys.stderr)
                self.print_report(None, None, None)
                return 1
            finally:
                await procs.stop_all(list(reversed(self.children)))
        return self.verdict(start, end, final)

    async def _loop(self, until: float, clock: Callable[[], float], drops: list[str] | None) -> None:
        """Sample every 5 s and drop an upstream every ~drop_every s until ``until`` (soak seconds)."""
        rng = random.Random(self.args.seed)
        next_sample = clock()
        next_drop = clock() + self.args.drop_every * rng.uniform(0.5, 1.0)
        next_report = clock() + 60.0
        turn = 0
        while clock() < until:
            for child in self.children:
                if not child.running:
                    raise RuntimeError(
                        f"{child.name} exited ({child.process.returncode}):\n{child.log_tail()}"
                    )
            now = clock()
            if now >= next_sample:
                self.sample()
                next_sample = now + 5.0
            if drops and now >= next_drop:
                await self.drop(drops[turn % len(drops)])
                turn += 1
                next_drop = clock() + self.args.drop_every * rng.uniform(0.8, 1.2)
            if now >= next_report:
                report = await self.command("report", "report")
                self.reports.append(report)
                s = self.samples[-1]
                self.log(
                    f"RSS {s.rss_kib / 1024:.1f} MiB, fds {s.fds}, clients {s.clients:.0f}, "
                    f"churn cycles {report['churners']['cycles']}, watcher events "
                    f"{report['watchers']['events']}, drops {len(self.drops)}, "
                    f"unexpected gaps {report['watchers']['unexpected_gaps']}/"
                    f"{report['churners']['unexpected_gaps']} (watchers/churners)"
                )
                next_report = now + 60.0
            await asyncio.sleep(0.2)

    async def finish(self) -> dict[str, Any]:
        """Final client report, then SIGTERM to the relay: it must exit 0 in its shutdown timeout."""
        from bench import procs

        status, body = procs.http_get(f"http://127.0.0.1:{self.metrics_port}/metrics", 2.0)
        self.final_metrics = _metrics(body) if status == 200 else {}
        await self.command("stop", None)
        final = await self.expect("final", 30.0)
        signalled = time.monotonic()
        self.relay.process.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.relay.process.wait(), 15.0)
        except TimeoutError:
            code = None
        self.relay_exit = (code, round(time.monotonic() - signalled, 2))
        if code != 0:
            self.errors.append(f"relay exit on SIGTERM: {code}")
        return final

    def verdict(self, start: Sample, end: Sample, final: dict[str, Any]) -> int:
        args = self.args
        growth = (end.rss_kib - start.rss_kib) / start.rss_kib
        if growth > args.rss_tolerance:
            self.errors.append(f"relay RSS grew {growth:+.1%} (limit {args.rss_tolerance:.0%})")
        if end.fds > start.fds + 2:
            self.errors.append(f"relay file descriptors grew from {start.fds} to {end.fds}")
        if end.audiences > start.audiences or end.upstream_channels > start.upstream_channels:
            self.errors.append(
                f"state left behind: audiences {start.audiences:.0f} -> {end.audiences:.0f}, "
                f"upstream channels {start.upstream_channels:.0f} -> {end.upstream_channels:.0f}"
            )
        watchers, churners = final["watchers"], final["churners"]
        for name, stats in (("watchers", watchers), ("churners", churners)):
            if stats["repeats"]:
                self.errors.append(f"{name}: {stats['repeats']} repeated or reordered q")
            if stats["error_statuses"]:
                self.errors.append(f"{name}: {stats['error_statuses']} unexpected statuses")
            if stats["connect_failures"]:
                self.errors.append(f"{name}: {stats['connect_failures']} failed connections")
            if stats["server_closes"]:
                self.errors.append(f"{name}: closed by the relay {stats['server_closes']}")
        if watchers["unexpected_gaps"]:
            self.errors.append(f"watchers: {watchers['unexpected_gaps']} q gaps outside outages")
        if churners["unexpected_gaps"] and not args.allow_churn_gaps:
            self.errors.append(
                f"churners: {churners['unexpected_gaps']} q gaps outside outages "
                "(channels kept while changing others; --allow-churn-gaps to report only)"
            )
        if final["watcher_stalls"]:
            self.errors.append(f"watchers went {final['watcher_stalls']} times 15 s without an event")
        if final["watchers_connected"] != len(args.watcher_specs):
            self.errors.append("a watcher was disconnected")
        self.print_report(start, end, final)
        return 1 if self.errors else 0

    def print_report(self, start: Sample | None, end: Sample | None, final: dict[str, Any] | None) -> None:
        args = self.args
        result: dict[str, Any] = {
            "options": {k: v for k, v in vars(args).items() if k != "client"},
            "duration_s": round(self.elapsed(), 1),
            "start": asdict(start) if start else None,
            "end": asdict(end) if end else None,
            "drops": self.drops,
            "final": final,
            "metrics": getattr(self, "final_metrics", {}),
            "relay_exit": getattr(self, "relay_exit", None),
            "warmup_rss_kib": getattr(self, "warmup_rss", None),
            "samples": [asdict(s) for s in self.samples],
            "errors": self.errors,
        }
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"soak-{datetime.datetime.now():%Y%m%d-%H%M%S}.json"
        path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
        print()
        print(f"soak: {self.elapsed() / 60:.1f} min")
        warm = getattr(self, "warmup_rss", None)
        if warm:
            print(
                f"  warm-up        relay RSS {warm[0] / 1024:.1f} MiB idle, {warm[1] / 1024:.1f} after "
                f"{warm[3]} fast churn cycles, {warm[2] / 1024:.1f} after {self.args.warmup_mix:.0f} s "
                "of the mix (the baseline follows)"
            )
        if start and end:
            rss = [s.rss_kib for s in self.samples]
            print(
                f"  relay RSS      start {start.rss_kib / 1024:.1f} MiB, end {end.rss_kib / 1024:.1f} MiB "
                f"({(end.rss_kib - start.rss_kib) / start.rss_kib:+.1%}); "
                f"max under churn {max(rss) / 1024:.1f} MiB, median {statistics.median(rss) / 1024:.1f} MiB"
            )
            print(f"  relay fds      start {start.fds}, end {end.fds}")
            print(
                f"  relay threads  start {start.threads}, end {end.threads} "
                "(asyncio tasks: not exposed by the relay)"
            )
            print(f"  relay CPU      {end.cpu_s - start.cpu_s:.1f} s between the two samples")
        if self.drops:
            recoveries = [d["recovery_s"] for d in self.drops]
            print(
                f"  upstream drops {len(self.drops)}: ready again after median "
                f"{statistics.median(recoveries):.2f} s, max {max(recoveries):.2f} s"
            )
        if final:
            for name in ("watchers", "churners"):
                stats = final[name]
                print(
                    f"  {name:<9}      connects {stats['connects']}, events {stats['events']}, "
                    f"outage statuses {stats['interrupted']}/{stats['restored']} (interrupted/restored), "
                    f"gaps across outages {stats['outage_gaps']} ({stats['missing_in_outages']} events), "
                    f"after a stale last value {stats['stale_fill_gaps']}, "
                    f"other gaps {stats['unexpected_gaps']} ({stats['missing_unexpected']} events), "
                    f"repeats {stats['repeats']}"
                )
                for example in stats["examples"][:5]:
                    print(f"      e.g. {example}")
            print(f"  churn cycles   {final['churners']['cycles']}")
        metrics = getattr(self, "final_metrics", {})
        if metrics:
            print(
                f"  relay counters reconnects {metrics.get('fastrelay_upstream_reconnects_total', 0):.0f}, "
                f"client connections {metrics.get('fastrelay_client_connections_total', 0):.0f}, "
                f"slow-consumer drops {metrics.get('fastrelay_client_slow_consumer_drops_total', 0):.0f}, "
                f"decode errors {metrics.get('fastrelay_upstream_decode_errors_total', 0):.0f}"
            )
        if getattr(self, "relay_exit", None):
            print(f"  relay exit     code {self.relay_exit[0]} {self.relay_exit[1]} s after SIGTERM")
        print(f"  errors         {len(self.errors)}")
        for error in self.errors:
            print(f"    - {error}")
        print(f"  details        {path.relative_to(REPO)}")


WATCHERS = [
    ["stocks", "T.*"],
    ["stocks", "Q.S0001,Q.S0002,Q.S0003,A.S0001,AM.S0001"],
    ["options", "T.*"],
]  # and one on /api/socket mixing both markets (its contracts are named at run time)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the soak (default 10)")
    parser.add_argument("--churners", type=int, default=40, help="clients churning at once (default 40)")
    parser.add_argument("--drop-every", type=float, default=30.0, help="seconds between upstream drops")
    parser.add_argument("--rate", type=float, default=100.0, help="simulator frames/s per market")
    parser.add_argument("--symbols", type=int, default=50, help="simulator tickers per market")
    parser.add_argument(
        "--warmup-connections", type=int, default=6000, help="fast churn cycles before the start sample"
    )
    parser.add_argument("--warmup", type=float, default=120.0, help="at most this many seconds of fast churn")
    parser.add_argument(
        "--warmup-mix",
        type=float,
        default=None,
        help="then seconds of the normal mix (default: 30%% up to 180)",
    )
    parser.add_argument("--rss-tolerance", type=float, default=0.10, help="allowed RSS growth (0.10)")
    parser.add_argument("--allow-churn-gaps", action="store_true", help="churners' gaps: report only")
    parser.add_argument(
        "--relay-arg",
        action="append",
        default=[],
        help="extra flag for fastrelay serve (repeat): --relay-arg=--linger=1",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep-logs", action="store_true", help="keep every process's log in results/")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.client:
        return client_main()
    if args.minutes * 60 < 2 * (LINGER + 3.0) + 20:
        parser.error("--minutes too short: at least 0.6 (two quiet samples take ~16 s)")
    if args.warmup_mix is None:
        args.warmup_mix = min(180.0, args.minutes * 60 * 0.3)
    args.watcher_specs = list(WATCHERS)
    from fastrelay import loops

    return loops.run(Soak(args).run())


if __name__ == "__main__":
    sys.exit(main())
