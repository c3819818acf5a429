"""The supervisor of a ``--workers`` tree: starts it, keeps it up, stops it as one relay.

Process tree (docs/workers.md):

    fastrelay serve --workers N          the supervisor: holds the client port's reservation,
    ├── nats-server                      serves --metrics-port, restarts what exits
    ├── python -m fastrelay.workers.worker ingest     the upstreams; a private loopback port
    ├── python -m fastrelay.workers.worker edge-1     clients on --port (SO_REUSEPORT)
    └── ...                                edge-N

* **The client port** is reserved first: a socket bound with ``SO_REUSEPORT`` but never
  listening, so the kernel gives it no connections while the port stays this tree's across
  edge restarts, and a port in use (or ``--port 0``, resolved here) is known before anything
  starts.
* **Restarts.** A worker that exits while the tree is up is started again (``policy.py``:
  a doubling delay; a log line names it and its exit status); one that keeps failing stops
  the tree, which exits 1.
* **Signals.** SIGTERM or SIGINT stops the tree as one relay: the edges first (each closes
  its clients with 1012 over the first part of ``--shutdown-timeout`` and says goodbye on
  NATS), then the ingest (its upstreams), then nats-server; anything still running at the
  deadline is killed and the exit status is 1. A second signal kills every worker at once.
* **No orphans.** Every child dies with the supervisor, even by kill -9 (``children.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import msgspec
import orjson
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

from fastrelay import __version__, roles
from fastrelay.config import ConfigError, RelayConfig
from fastrelay.metrics import CONTENT_TYPE, BootTimeProcessCollector
from fastrelay.restapi import Answer
from fastrelay.roles import SingleProcess
from fastrelay.scaleout.natsbin import nats_server_path
from fastrelay.workers import pages, plan, probes
from fastrelay.workers.children import Child, describe_status
from fastrelay.workers.natsd import MISSING, PrivateNats, make_credential
from fastrelay.workers.policy import RestartPolicy

log = logging.getLogger("fastrelay.workers")

WORKER_MODULE = "fastrelay.workers.worker"
# Environment the workers do not get: their whole configuration comes on stdin.
_PRIVATE_ENV = ("FASTRELAY_", "MASSIVE_API_KEY")


@dataclass
class Worker:
    """One place in the tree: what runs there, and its current process."""

    name: str
    config: RelayConfig | None  # None: nats-server
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    child: Child | None = None
    probe: int | None = None  # where its /metrics and /readyz answer (loopback), once it serves
    restarts: int = 0

    @property
    def serving(self) -> bool:
        return self.child is not None and self.child.running and self.probe is not None


def reserve_port(host: str, port: int) -> list[socket.socket]:
    """Sockets on ``host:port`` (each address it resolves to, as the edges' servers bind them)
    with ``SO_REUSEPORT``, bound and never listening: the port is this tree's (only sockets of
    this user with the option may join), and no connection lands on them. Port 0: the kernel's
    choice for the first address, the same for the others."""
    reserved: list[socket.socket] = []
    chosen = port
    try:
        for family, kind, proto, _, address in socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        ):
            sock = socket.socket(family, kind, proto)
            reserved.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # as asyncio's servers
            sock.bind((address[0], chosen, *address[2:]))
            chosen = int(sock.getsockname()[1])
    except OSError as exc:
        for sock in reserved:
            sock.close()
        raise ConfigError(f"--port {port} on {host or '*'}: {exc.strerror}") from None
    return reserved


def describe(config: RelayConfig) -> str:
    """One line for the start-up log and check-config, without secrets."""
    metrics = (
        f"metrics of the whole tree on {config.metrics_host or config.host}:{config.metrics_port}"
        if config.metrics_port is not None
        else "no --metrics-port: /metrics on the client port is the edge that answers"
    )
    return (
        f"{config.workers} edges sharing the port, 1 ingest, a private nats-server; "
        f"{SingleProcess.describe_config(config)}; {metrics}"
    )


def _environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(_PRIVATE_ENV)}


class Supervisor:
    def __init__(self, config: RelayConfig, nats_binary: str) -> None:
        self.config = config
        self.nats_binary = nats_binary
        self.stopping = asyncio.Event()  # a signal, or the tree could not be kept up
        self.failure: str | None = None
        self.workers: dict[str, Worker] = {}
        self.nats: PrivateNats | None = None
        self.probe_server: probes.ProbeServer | None = None
        self._keepers: list[asyncio.Task[None]] = []
        self._signals = 0
        # process_* of the supervisor and of nats-server (BootTime...: also where systemd hides
        # /proc/stat, as the shipped unit does).
        self._registry = CollectorRegistry(auto_describe=False)
        BootTimeProcessCollector(registry=self._registry)
        self._nats_registry = CollectorRegistry(auto_describe=False)
        BootTimeProcessCollector(pid=self._nats_pid, registry=self._nats_registry)

    # --- the tree ---------------------------------------------------------------------------
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._signalled)
        config = self.config
        reserved = reserve_port(config.host, config.port)
        try:
            self.config = replace(config, port=int(reserved[0].getsockname()[1]))
            with tempfile.TemporaryDirectory(prefix="fastrelay-workers-") as directory:
                await self._run(Path(directory))
        finally:
            for sock in reserved:
                sock.close()
        return 1 if self.failure else 0

    async def _run(self, directory: Path) -> None:
        config = self.config
        if config.metrics_port is not None:
            self.probe_server = probes.ProbeServer(self._answer)
            host = config.metrics_host or config.host
            metrics_port = await self.probe_server.start(host, config.metrics_port)
            log.info("metrics of the whole tree on port %d (/metrics, /readyz, /healthz)", metrics_port)
        else:
            log.warning(
                "--workers without --metrics-port: /metrics on the client port shows only the edge that "
                "takes the request; set --metrics-port to scrape the whole tree"
            )
        credential = make_credential(directory)
        # The workers' settings pass the checks their roles make, before anything starts (the
        # server's port is not known yet: any will do for the checks).
        placeholder = "nats://127.0.0.1:4222"
        for derived in (
            plan.ingest_config(config, placeholder, str(credential.seed_file)),
            plan.edge_config(config, 1, placeholder, str(credential.seed_file)),
        ):
            roles.validate(derived)
        self.nats = PrivateNats(self.nats_binary, directory, credential)
        nats = self.workers[plan.NATS] = Worker(plan.NATS, None)
        nats_up = asyncio.Event()
        self._keepers.append(asyncio.create_task(self._keep(nats, nats_up)))
        waits = {asyncio.create_task(nats_up.wait()), asyncio.create_task(self.stopping.wait())}
        _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        if nats_up.is_set() and not self.stopping.is_set():
            seed = str(credential.seed_file)
            url = self.nats.url
            ingest = Worker(plan.INGEST, plan.ingest_config(config, url, seed))
            edges = [
                Worker(name, plan.edge_config(config, index, url, seed))
                for index, name in enumerate(plan.edge_names(config), 1)
            ]
            for worker in (ingest, *edges):
                self.workers[worker.name] = worker
                self._keepers.append(asyncio.create_task(self._keep(worker)))
            log.info(
                "fastrelay workers (supervisor pid %d) on port %d: %s",
                os.getpid(),
                config.port,
                describe(config),
            )
        await self.stopping.wait()
        await self._stop_tree()
        if self.probe_server is not None:
            await self.probe_server.stop()

    def _signalled(self) -> None:
        """The first SIGTERM or SIGINT stops the tree in order; a second one, at once (as a
        second signal ends one process without its drain), and the exit status is then 1."""
        self._signals += 1
        if self._signals == 1:
            self.stopping.set()
            return
        if self._signals == 2:
            log.warning("a second signal: every worker killed now, without the drain")
            self.failure = self.failure or "stopped at once by a second signal"
            for worker in self.workers.values():
                if worker.child is not None:
                    worker.child.signal(signal.SIGKILL)

    async def _keep(self, worker: Worker, up: asyncio.Event | None = None) -> None:
        """Run ``worker``, and run it again whenever it exits while the tree is up."""
        while not self.stopping.is_set():
            try:
                child = await self._start(worker)
            except (OSError, RuntimeError) as exc:
                if self.stopping.is_set():
                    return
                log.error("worker %s could not start: %s", worker.name, exc)
                ran_for = 0.0
                status = str(exc)
            else:
                if up is not None:
                    up.set()
                # Shielded: the future is the child's, whoever else waits on it.
                returncode = await asyncio.shield(child.exited)
                if self.stopping.is_set():
                    return
                ran_for = child.ran_for
                status = describe_status(returncode)
            delay = worker.policy.exited(ran_for)
            pid = f" (pid {worker.child.pid})" if worker.child is not None else ""
            if delay is None:
                self.failure = (
                    f"worker {worker.name}{pid} exited ({status}) {worker.policy.failures} times in a row, "
                    f"each within {worker.policy.healthy_after:g} s of its start: the tree cannot be kept up"
                )
                log.error("%s; stopping it", self.failure)
                self.stopping.set()
                return
            log.error(
                "worker %s%s exited (%s) after %.1f s; starting it again in %.1f s",
                worker.name,
                pid,
                status,
                ran_for,
                delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)
            worker.restarts += 1

    async def _start(self, worker: Worker) -> Child:
        worker.probe = None
        if worker.config is None:
            assert self.nats is not None
            # Known at once: a stop while it comes up must find it.
            child = worker.child = self.nats.spawn()
            await self.nats.wait_listening(child)
            worker.probe = self.nats.port
            return child
        readable, writable = os.pipe()
        try:
            child = worker.child = Child(
                [sys.executable, "-m", WORKER_MODULE, worker.name, str(writable)],
                env=_environment(),
                stdin=subprocess.PIPE,
                pass_fds=(writable,),
            )
        finally:
            os.close(writable)
        await _hand_config(child, msgspec.json.encode(worker.config))
        _read_status(readable, worker, child)
        return child

    async def _stop_tree(self) -> None:
        """Edges, then the ingest, then nats-server, within --shutdown-timeout."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        timeout = self.config.shutdown_timeout
        drain, tail = plan.shutdown_budgets(timeout)
        log.info("stopping the tree: edges drain their clients, then the ingest, then nats-server")
        edges = [w for w in self.workers.values() if w.name not in (plan.INGEST, plan.NATS)]
        stages = (
            (edges, started + drain + tail / 2),
            ([w for w in self.workers.values() if w.name == plan.INGEST], started + timeout - tail / 4),
            ([w for w in self.workers.values() if w.name == plan.NATS], started + timeout),
        )
        for stage, deadline in stages:
            running = [w.child for w in stage if w.child is not None and w.child.running]
            for signalled in running:
                signalled.signal(signal.SIGTERM)
            for worker in stage:
                child = worker.child
                if child is None:
                    continue
                returncode = await child.wait(deadline - loop.time())
                if returncode is None:
                    log.error(
                        "worker %s (pid %d) still running at the deadline: killed", worker.name, child.pid
                    )
                    await child.kill()
                    self.failure = self.failure or f"worker {worker.name} did not stop in time"
                elif child in running and returncode not in (0, -signal.SIGTERM):
                    status = describe_status(returncode)
                    log.error("worker %s (pid %d) stopped with %s", worker.name, child.pid, status)
        # Every keeper returns once its worker has exited (or from its wait to restart it).
        if self._keepers:
            _, pending = await asyncio.wait(self._keepers, timeout=1.0)
            for task in pending:
                task.cancel()
        if self.nats is not None:
            await self.nats.stop_reading()
        log.info("tree stopped in %.1f s", loop.time() - started)

    # --- the supervisor's port ------------------------------------------------------------------
    def _nats_pid(self) -> int:
        """nats-server's pid; 0 (no /proc entry: no series) while it is not running."""
        worker = self.workers.get(plan.NATS)
        if worker is None or worker.child is None or not worker.child.running:
            return 0
        return worker.child.pid

    async def _answer(self, path: str) -> Answer:
        if path == "/healthz":
            return Answer(200, b"ok\n", probes.TEXT)
        if path == "/readyz":
            ready, text = await self.readiness()
            return Answer(200 if ready else 503, text.encode(), probes.TEXT)
        if path == "/metrics":
            return Answer(200, await self.metrics_page(), CONTENT_TYPE)
        return Answer(404, b"not found\n", probes.TEXT)

    def _serving(self) -> list[Worker]:
        return [w for w in self.workers.values() if w.config is not None]

    async def readiness(self) -> tuple[bool, str]:
        """The tree's /readyz: ready when its ingest and at least one edge are, with each one's word."""
        if self.stopping.is_set():
            return False, "not ready: shutting down\n"
        workers = self._serving()
        if not workers:
            return False, "not ready: starting\n"
        answers = await asyncio.gather(*(self._probe(w, "/readyz") for w in workers))
        ready: dict[str, bool] = {}
        lines = []
        for worker, answer in zip(workers, answers, strict=True):
            ready[worker.name] = answer is not None and answer[0] == 200
            text = answer[1].decode(errors="replace") if answer is not None else ""
            said = "; ".join(line for line in text.splitlines() if line.strip())
            lines.append(f"{worker.name}: {said or ('starting' if worker.child else 'restarting')}")
        if pages.tree_ready(ready):
            head = "ready"
        elif not ready.get(plan.INGEST):
            head = "not ready: ingest not ready"
        else:
            head = "not ready: no edge ready"
        return pages.tree_ready(ready), "\n".join([head, *lines]) + "\n"

    async def _probe(self, worker: Worker, path: str) -> tuple[int, bytes] | None:
        if not worker.serving or worker.probe is None:
            return None
        return await probes.get(worker.probe, path)

    async def metrics_page(self) -> bytes:
        workers = self._serving()
        answers = await asyncio.gather(*(self._probe(w, "/metrics") for w in workers))
        parsed = {
            worker.name: pages.parse(answer[1])
            for worker, answer in zip(workers, answers, strict=True)
            if answer is not None and answer[0] == 200
        }
        ready = {name: pages.worker_ready(families) for name, families in parsed.items()}
        # The supervisor's and nats-server's process_* series join the workers' families.
        parsed[plan.SUPERVISOR] = list(self._registry.collect())
        parsed[plan.NATS] = list(self._nats_registry.collect())
        return pages.render(pages.merge(parsed) + self._tree_families(pages.tree_ready(ready)))

    def _tree_families(self, ready: bool) -> list[Metric]:
        info = GaugeMetricFamily(
            pages.BUILD_INFO, "fastrelay build and role.", labels=["version", "python", "role"]
        )
        info.add_metric([__version__, platform.python_version(), "workers"], 1.0)
        edges = GaugeMetricFamily("fastrelay_workers_edges", "Edges the tree runs (--workers).")
        edges.add_metric([], self.config.workers)
        up = GaugeMetricFamily(
            "fastrelay_worker_up",
            "1 while the worker runs and serves (an edge: listens on the client port).",
            labels=[pages.WORKER_LABEL],
        )
        restarts = CounterMetricFamily(
            "fastrelay_worker_restarts",
            "Times the supervisor started a worker again after it exited.",
            labels=[pages.WORKER_LABEL],
        )
        for worker in self.workers.values():
            up.add_metric([worker.name], 1.0 if worker.serving else 0.0)
            restarts.add_metric([worker.name], worker.restarts)
        return [info, pages.ready_family(ready), edges, up, restarts]


async def _hand_config(child: Child, data: bytes) -> None:
    """Write the worker's configuration to its stdin and close it, without blocking the loop."""
    stdin = child.process.stdin
    assert stdin is not None
    transport, _ = await asyncio.get_running_loop().connect_write_pipe(asyncio.Protocol, stdin)
    transport.write(data)
    transport.close()


def _read_status(readable: int, worker: Worker, child: Child) -> None:
    """The worker's status line (its ports, once it serves), read off the loop's reader."""
    loop = asyncio.get_running_loop()
    os.set_blocking(readable, False)
    buffer = bytearray()

    def on_readable() -> None:
        try:
            data = os.read(readable, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(readable)
            os.close(readable)
            return
        buffer.extend(data)
        while b"\n" in buffer:
            line, _, rest = bytes(buffer).partition(b"\n")
            buffer[:] = rest
            with contextlib.suppress(orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                said = orjson.loads(line)
                if worker.child is child:
                    worker.probe = int(said["probe"])

    loop.add_reader(readable, on_readable)


async def supervise(config: RelayConfig, simulated: bool) -> int:
    """``fastrelay serve|run --workers N``: the tree until a signal; its exit status."""
    binary = nats_server_path()
    if binary is None:
        raise ConfigError(MISSING)
    if simulated:
        from fastrelay.app import simulated as with_simulator

        async with with_simulator(config) as on_simulator:
            return await Supervisor(on_simulator, binary).run()
    return await Supervisor(config, binary).run()


def main(config: RelayConfig, simulated: bool) -> int:
    """The command line's entry (cli.py): the exit status, or 2 with one line on a bad setting."""
    from fastrelay import loops

    try:
        return loops.run(supervise(config, simulated))
    except ConfigError as exc:
        print(f"fastrelay: configuration error: {exc}", file=sys.stderr)
        return 2
