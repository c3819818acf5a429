"""Scale-out under chaos: a real nats-server (JetStream), the simulator, two ingests and two
edges as processes; leaders killed, frozen, stopped, started twice; NATS restarted.

A checker client on each edge reads everything in order and holds the promises clients rely
on: no event twice, per-channel sequence gaps only between a `feed interrupted` and a
`feed restored`, no data between those two, and nothing older than --max-event-age after a
restore. The simulator plays Massive's one connection per market per key (the older one is
evicted), so two ingests connected at once would show.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import websockets

from fastrelay.sim import Simulator, SimulatorConfig
from tests.natsserver import NatsServer, running_nats
from tests.utils import TIMEOUT
from tests.webtools import RelayProcess, free_port, http_request, stopping

pytestmark = pytest.mark.slow

SYMBOLS = ("AAPL", "MSFT", "NVDA")
MAX_EVENT_AGE = 2.0  # the edges' default
INTERRUPTED = re.compile(r"^stocks feed interrupted \((?P<reason>[^)]*)\)")
RESTORED = re.compile(r"^stocks feed restored")


@dataclass
class Checker:
    """A client of one edge reading everything in order, and the promises it checks."""

    url: str
    log: list[tuple[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    interruptions: list[str] = field(default_factory=list)
    restores: int = 0
    events_after_restore: int = 0
    _last: dict[str, int] = field(default_factory=dict)
    _down = False
    _gap_allowed: set[str] = field(default_factory=set)
    _task: asyncio.Task[None] | None = None
    _ws: Any = None

    async def start(self) -> None:
        self._ws = await websockets.connect(self.url, max_size=None, max_queue=None, open_timeout=TIMEOUT)
        await self._ws.send(orjson.dumps({"action": "auth", "params": "t"}).decode())
        await self._ws.send(orjson.dumps({"action": "subscribe", "params": "T.*"}).decode())
        self._task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for frame in self._ws:
                now_ns = time.time_ns()
                for message in orjson.loads(frame):
                    self._take(message, now_ns)

    def _take(self, message: dict[str, Any], now_ns: int) -> None:
        if message.get("ev") == "status":
            text = str(message.get("message", ""))
            self.log.append(("status", text))
            if found := INTERRUPTED.match(text):
                self.interruptions.append(found.group("reason"))
                self._down = True
                self._gap_allowed = set(self._last)
            elif RESTORED.match(text):
                self.restores += 1
                self._down = False
                self.events_after_restore = 0
            return
        channel, q = f"T.{message['sym']}", message["q"]
        self.log.append(("event", (channel, q)))
        self.events_after_restore += 1
        if self._down:
            self.problems.append(f"{channel} q={q} between interrupted and restored")
        age = (now_ns - message["sim_ns"]) / 1e9
        if age > MAX_EVENT_AGE:
            self.problems.append(f"{channel} q={q} {age:.1f} s old")
        last = self._last.get(channel)
        if last is not None and q <= last:
            self.problems.append(f"{channel} q={q} after q={last}: a duplicate")
        elif last is not None and q != last + 1 and channel not in self._gap_allowed:
            self.problems.append(f"{channel} gap {last} -> {q} without an interruption")
        self._gap_allowed.discard(channel)
        self._last[channel] = q

    async def wait(self, what: str, condition: Any, timeout: float = 3 * TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"{self.url}: timed out waiting for {what}; {self.log[-6:]}"
            await asyncio.sleep(0.02)

    async def flowing(self, count: int = 20) -> None:
        """``count`` more events arrive."""
        start = sum(1 for kind, _ in self.log if kind == "event")
        await self.wait(
            f"{count} events", lambda: sum(1 for kind, _ in self.log if kind == "event") >= start + count
        )

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._task is not None:
            await asyncio.wait_for(self._task, TIMEOUT)


@dataclass
class Deployment:
    nats: NatsServer
    sim: Simulator
    ingests: list[RelayProcess]
    edges: list[RelayProcess]
    checkers: list[Checker] = field(default_factory=list)

    async def leaders(self) -> list[int]:
        """Indexes of the ingests whose /metrics say they lead (rendered once a second)."""
        found = []
        for i, ingest in enumerate(self.ingests):
            if ingest.proc is None or ingest.proc.poll() is not None:
                continue
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                text = (await asyncio.wait_for(http_request(ingest.port, "/metrics"), 1.0)).body.decode()
                if re.search(r"^fastrelay_ingest_leader 1(\.0)?$", text, re.MULTILINE):
                    found.append(i)
        return found

    async def the_leader(self, other_than: int | None = None) -> int:
        deadline = time.monotonic() + 3 * TIMEOUT
        while True:
            leaders = await self.leaders()
            if len(leaders) == 1 and leaders[0] != other_than:
                return leaders[0]
            assert time.monotonic() < deadline, f"leaders: {leaders}"
            await asyncio.sleep(0.1)

    def upstream_connections(self) -> int:
        return int(self.sim.stats()["markets"]["stocks"]["connections"])

    def check(self) -> None:
        for checker in self.checkers:
            assert checker.problems == [], (checker.url, checker.problems[:10])


def ingest_flags(nats: NatsServer, name: str) -> list[str]:
    return [
        "--nats", nats.url, "--markets", "stocks", "--instance-name", name,
        "--heartbeat-interval", "0.5", "--peer-timeout", "2", "--linger", "30",
    ]  # fmt: skip


@contextlib.asynccontextmanager
async def deployment(tmp_path: Path, ingests: int = 2, same_name: bool = False) -> AsyncIterator[Deployment]:
    config = SimulatorConfig(
        api_key="sim-key",
        markets=("stocks",),
        symbols={"stocks": SYMBOLS},
        rate=150.0,
        stamp_ns=True,
        one_connection_per_key=True,
    )
    async with running_nats(tmp_path / "nats.log") as nats, Simulator(config) as sim:
        names = ["ingest"] * ingests if same_name else [f"ingest-{i}" for i in range(ingests)]
        started = [
            RelayProcess(
                free_port(), sim.base_url, tmp_path / f"i{i}.log", *ingest_flags(nats, name), command="ingest"
            )
            for i, name in enumerate(names)
        ]
        edges = [
            RelayProcess(
                free_port(), "", tmp_path / f"edge-{i}.log",
                "--nats", nats.url, "--markets", "stocks", "--heartbeat-interval", "0.5", command="edge",
            )
            for i in range(2)
        ]  # fmt: skip
        with stopping(*started, *edges):
            await started[0].start()  # the first is the leader: the others wait as standbys
            for ingest in started[1:]:
                await ingest.start()
            for edge in edges:
                await edge.start()
            found = Deployment(nats, sim, started, edges)
            found.checkers = [Checker(f"ws://127.0.0.1:{edge.port}/stocks") for edge in edges]
            for checker in found.checkers:
                await checker.start()
            for checker in found.checkers:
                await checker.flowing()
            try:
                yield found
            finally:
                for checker in found.checkers:
                    await checker.close()


async def test_a_second_ingest_started_by_mistake_stands_by(tmp_path: Path) -> None:
    """Bug: two ingests with the shipped env file (one --instance-name) both connected and
    published: every event twice, or edges flapping on max_connections. Now one leads."""
    async with deployment(tmp_path, ingests=2, same_name=True) as d:
        assert await d.the_leader() in (0, 1)
        for checker in d.checkers:
            await checker.flowing(200)  # over a second of data
            assert checker.interruptions == []
        assert d.upstream_connections() == 1
        assert d.sim.stats()["markets"]["stocks"]["connects"] == 1  # nobody was evicted
        d.check()


async def test_kill_9_of_the_leader_fails_over_with_statuses_and_no_duplicates(tmp_path: Path) -> None:
    """Bug: a dead ingest went unnoticed for --peer-timeout (no status, /readyz 200). Now edges
    notice within --ingest-timeout, the standby takes over after the lease, clients get
    interrupted/restored around the gap and never an event twice."""
    async with deployment(tmp_path) as d:
        leader = await d.the_leader()
        edge = d.edges[0]
        d.ingests[leader].kill()
        for checker in d.checkers:
            await checker.wait("interrupted", lambda c=checker: c.interruptions)  # type: ignore[misc]
        assert (await http_request(edge.port, "/readyz")).status == 503 or d.checkers[0].restores
        for checker in d.checkers:
            await checker.wait("restored", lambda c=checker: c.restores)  # type: ignore[misc]
            await checker.flowing()
        assert await d.the_leader() == 1 - leader
        assert d.upstream_connections() == 1
        d.check()


async def test_a_frozen_leader_is_replaced_and_never_publishes_again(tmp_path: Path) -> None:
    """SIGSTOP beyond the lease and --peer-timeout, then SIGCONT. Bugs: the resumed ingest
    dropped every edge as silent, and clients got its seconds-old backlog after `restored`.
    Now the standby leads meanwhile; the resumed one finds its lease gone, publishes nothing,
    keeps its edges and stands by."""
    async with deployment(tmp_path) as d:
        leader = await d.the_leader()
        frozen = d.ingests[leader]
        assert frozen.proc is not None
        os.kill(frozen.proc.pid, signal.SIGSTOP)
        try:
            for checker in d.checkers:
                await checker.wait("restored", lambda c=checker: c.restores)  # type: ignore[misc]
            assert await d.the_leader(other_than=leader) == 1 - leader
            await asyncio.sleep(2.5)  # frozen past --peer-timeout (2 s): the bug's condition
        finally:
            os.kill(frozen.proc.pid, signal.SIGCONT)
        for checker in d.checkers:
            await checker.flowing(100)
        assert await d.leaders() == [1 - leader]
        metrics = (await http_request(frozen.port, "/metrics")).body.decode()
        assert re.search(r"^fastrelay_ingest_edges 2(\.0)?$", metrics, re.MULTILINE), "kept its edges"
        assert re.search(r"^fastrelay_ingest_edges_expired_total 0(\.0)?$", metrics, re.MULTILINE)
        assert d.upstream_connections() == 1
        d.check()


async def test_a_lone_ingest_frozen_and_resumed_sends_nothing_stale(tmp_path: Path) -> None:
    """One ingest, SIGSTOP for 3 s, SIGCONT: its lease ran out, so it reconnects upstream in a
    new term; clients see interrupted, restored, then fresh data only."""
    async with deployment(tmp_path, ingests=1) as d:
        frozen = d.ingests[0]
        assert frozen.proc is not None
        os.kill(frozen.proc.pid, signal.SIGSTOP)
        try:
            for checker in d.checkers:
                await checker.wait("interrupted", lambda c=checker: c.interruptions)  # type: ignore[misc]
            await asyncio.sleep(2.0)
        finally:
            os.kill(frozen.proc.pid, signal.SIGCONT)
        for checker in d.checkers:
            await checker.wait("restored", lambda c=checker: c.restores)  # type: ignore[misc]
            await checker.flowing(100)
        d.check()


async def test_sigterm_of_the_leader_hands_over(tmp_path: Path) -> None:
    """A graceful stop: goodbye (interrupted at once), the key freed, the standby leads."""
    async with deployment(tmp_path) as d:
        leader = await d.the_leader()
        d.ingests[leader].stop()
        for checker in d.checkers:
            await checker.wait("restored", lambda c=checker: c.restores)  # type: ignore[misc]
            await checker.flowing()
            assert checker.interruptions[0] == "ingest_stopped"
        assert await d.the_leader() == 1 - leader
        d.check()


async def test_a_nats_restart_restores_before_any_data(tmp_path: Path) -> None:
    """Bug: after a NATS restart, data reached clients before `feed restored`."""
    async with deployment(tmp_path) as d:
        for attempt in range(3):
            d.nats.stop()
            for checker in d.checkers:
                await checker.wait("interrupted", lambda c=checker, n=attempt: len(c.interruptions) > n)  # type: ignore[misc]
            await d.nats.start()
            for checker in d.checkers:
                await checker.wait("restored", lambda c=checker, n=attempt: c.restores > n)  # type: ignore[misc]
                await checker.flowing()
        assert len(await d.leaders()) == 1
        d.check()
