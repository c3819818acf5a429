"""``fastrelay serve --workers 2`` (issue #18): one supervisor, a private nats-server, an ingest
and two edges sharing the client port, as child processes against this process's simulator.

Massive's official clients (the Python ``massive`` package, and the npm one in tests/js)
connect to the one port; the tree's /metrics shows where the kernel put them. Every wait is
on an event (a log line, /readyz, a metric, a process gone), bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import websockets
from massive import WebSocketClient
from massive.websocket.models import EquityTrade

from fastrelay.sim import Simulator
from tests.utils import TIMEOUT, Client, http_get, sequence_gaps, wait_until
from tests.workertree import alive, running_tree

JS_DIR = Path(__file__).parent / "js"
SHUTDOWN_TIMEOUT = 3.0
CLIENTS = 16  # all on one edge of two: a chance of 2 in 65,536


def tree_args(sim: Simulator, *more: str) -> tuple[str, ...]:
    return (
        "--upstream", sim.base_url, "--api-key", "sim-key", "--markets", "stocks", "--rest-url", "",
        "--linger", "0.2", "--metrics-interval", "0.1", "--shutdown-timeout", str(SHUTDOWN_TIMEOUT),
        "--heartbeat-interval", "0.2", "--peer-timeout", "1", *more,
    )  # fmt: skip


def official_client(port: int, channels: list[str]) -> WebSocketClient:
    return WebSocketClient(
        api_key="any", feed=f"127.0.0.1:{port}", market="stocks", secure=False, subscriptions=channels
    )


def spread(clients: dict[str, float], total: int) -> bool:
    return sum(clients.values()) == total and clients.get("edge-1", 0) > 0 and clients.get("edge-2", 0) > 0


def identical_and_gap_free(streams: list[dict[str, list[int]]]) -> None:
    """Every client's sequence numbers of each ticker step by one, and over the range all of
    them received, they received the same ones."""
    for ticker in streams[0]:
        runs = [stream[ticker] for stream in streams]
        for run in runs:
            assert run == list(range(run[0], run[0] + len(run))), f"{ticker}: a gap or a repeat in {run}"
        first, last = max(run[0] for run in runs), min(run[-1] for run in runs)
        assert last - first >= 5, f"{ticker}: the clients' ranges barely overlap"
        common = [[q for q in run if first <= q <= last] for run in runs]
        assert all(c == common[0] for c in common)


async def test_official_python_clients_over_both_edges_get_identical_gap_free_streams(
    sim: Simulator, tmp_path: Path
) -> None:
    async with running_tree(tmp_path, *tree_args(sim)) as tree:
        await tree.wait_serving()
        streams: list[dict[str, list[int]]] = [{} for _ in range(CLIENTS)]

        def handler(index: int) -> Any:
            async def handle(messages: list[Any]) -> None:
                for message in messages:
                    if isinstance(message, EquityTrade) and message.sequence_number is not None:
                        streams[index].setdefault(message.symbol or "", []).append(message.sequence_number)

            return handle

        clients = [official_client(tree.port, ["T.AAPL", "T.MSFT"]) for _ in range(CLIENTS)]
        tasks = [asyncio.create_task(c.connect(handler(i))) for i, c in enumerate(clients)]
        try:
            await tree.wait_metric(
                "fastrelay_clients", lambda v: spread(v, CLIENTS), "clients on both edges", path="/stocks"
            )
            await wait_until(
                lambda: all(len(s.get(t, [])) >= 30 for s in streams for t in ("AAPL", "MSFT")),
                timeout=TIMEOUT * 3,
                what="30 trades of each ticker at every client",
            )
        finally:
            for client in clients:
                await client.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        identical_and_gap_free(streams)


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")
async def test_official_javascript_clients_over_both_edges_get_identical_gap_free_streams(
    sim: Simulator, tmp_path: Path
) -> None:
    if not (JS_DIR / "node_modules" / "@massive.com" / "client-js").is_dir():
        pytest.fail("run `make test` (it installs tests/js/node_modules from the npm registry)")
    async with running_tree(tmp_path, *tree_args(sim)) as tree:
        await tree.wait_serving()
        node = await asyncio.create_subprocess_exec(
            "node", str(JS_DIR / "massive_clients.mjs"), f"ws://127.0.0.1:{tree.port}", "key",
            "T.AAPL,T.MSFT", "40", str(CLIENTS),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert node.stdout is not None and node.stdin is not None
        try:
            line = await asyncio.wait_for(node.stdout.readline(), TIMEOUT * 6)
            result = json.loads(line)
            assert not result.get("timeout"), result
            # Still connected: the tree says where.
            await tree.wait_metric(
                "fastrelay_clients", lambda v: spread(v, CLIENTS), "clients on both edges", path="/stocks"
            )
            node.stdin.close()
            assert await asyncio.wait_for(node.wait(), TIMEOUT) == 0
        finally:
            if node.returncode is None:
                node.kill()
                await node.wait()
    streams = []
    for client in result["clients"]:
        assert client["statuses"][:2] == ["connected", "auth_success"]
        assert sequence_gaps(client["events"]) == []
        stream: dict[str, list[int]] = {}
        for event in client["events"]:
            stream.setdefault(event["sym"], []).append(event["q"])
        streams.append(stream)
    assert all(len(s) == 2 for s in streams)  # 40 events of two lively tickers: both in
    identical_and_gap_free(streams)


async def test_an_edge_killed_with_9_is_restarted_and_its_clients_reconnect(
    sim: Simulator, tmp_path: Path
) -> None:
    async with running_tree(tmp_path, *tree_args(sim)) as tree:
        await tree.wait_serving()
        trades = [0] * CLIENTS

        def handler(index: int) -> Any:
            async def handle(messages: list[Any]) -> None:
                trades[index] += sum(1 for m in messages if isinstance(m, EquityTrade))

            return handle

        clients = [official_client(tree.port, ["T.*"]) for _ in range(CLIENTS)]
        # As in test_compat: the client's documented pass-through to websockets.connect.
        tasks = [
            asyncio.create_task(c.connect(handler(i), reconnect_delays=lambda: itertools.repeat(0.2)))
            for i, c in enumerate(clients)
        ]
        try:
            before = await tree.wait_metric(
                "fastrelay_clients", lambda v: spread(v, CLIENTS), "clients on both edges", path="/stocks"
            )
            assert before["edge-1"] > 0
            await wait_until(lambda: min(trades) >= 5, what="trades at every client")
            victim = tree.workers()["edge-1"]
            os.kill(victim, signal.SIGKILL)
            seen = list(trades)
            await tree.wait_log(f"worker edge-1 (pid {victim}) exited (killed by SIGKILL)")
            await tree.wait_metric(
                "fastrelay_worker_restarts_total", lambda v: v.get("edge-1") == 1, "edge-1 restarted"
            )
            await tree.wait_metric("fastrelay_worker_up", lambda v: v.get("edge-1") == 1, "edge-1 serving")
            assert tree.workers()["edge-1"] != victim
            # Its clients reconnected (to edge-2, or the new edge-1): every client receives again.
            await wait_until(
                lambda: all(now >= then + 5 for now, then in zip(trades, seen, strict=True)),
                timeout=TIMEOUT * 3,
                what="trades at every client after the restart",
            )
            await tree.wait_metric(
                "fastrelay_clients", lambda v: sum(v.values()) == CLIENTS, "every client back", path="/stocks"
            )
            assert not [t for t in tasks if t.done()]
        finally:
            for client in clients:
                await client.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["nats", "ingest"])
async def test_nats_server_or_the_ingest_killed_with_9_comes_back_and_the_feed_is_restored(
    sim: Simulator, tmp_path: Path, victim: str
) -> None:
    """nats-server comes back on the same port with its JetStream store (the ingest's terms keep
    growing, so the edges follow the new term); a new ingest wins the lease once the dead one's
    runs out. Clients stay connected and see the outage as statuses, then data again."""
    async with running_tree(tmp_path, *tree_args(sim, "--lease-ttl", "1")) as tree:
        await tree.wait_serving()
        url = f"ws://127.0.0.1:{tree.port}/stocks"
        clients = await asyncio.gather(*(Client.connect(url) for _ in range(4)))
        for client in clients:
            await client.subscribe("T.*")
            await client.wait_events(5)
        pid = tree.workers()[victim]
        os.kill(pid, signal.SIGKILL)
        await tree.wait_log(f"worker {victim} (pid {pid}) exited (killed by SIGKILL)")
        reason = "nats" if victim == "nats" else "ingest"
        for client in clients:
            down = await client.wait_status("error", timeout=TIMEOUT * 2)
            assert down["message"].startswith(f"stocks feed interrupted ({reason})"), down
            up = await client.wait_status("success", timeout=TIMEOUT * 4)
            assert up["message"].startswith("stocks feed restored"), up
            seen = len(client.events)
            await client.wait_events(seen + 5, timeout=TIMEOUT * 2)
        await tree.wait_metric("fastrelay_worker_restarts_total", lambda v: v.get(victim) == 1, "restarted")
        await tree.wait_metric("fastrelay_worker_up", lambda v: v.get(victim) == 1, "serving again")
        for client in clients:
            await client.close()


async def test_kill_9_of_the_supervisor_leaves_no_process_behind(sim: Simulator, tmp_path: Path) -> None:
    async with running_tree(tmp_path, *tree_args(sim)) as tree:
        await tree.wait_serving()
        workers = tree.workers()
        assert sorted(workers) == ["edge-1", "edge-2", "ingest", "nats"]
        tree.proc.send_signal(signal.SIGKILL)
        await asyncio.wait_for(tree.proc.wait(), TIMEOUT)
        await wait_until(
            lambda: not any(alive(pid) for pid in workers.values()),
            timeout=TIMEOUT,
            what=f"every worker gone: {workers}",
        )
    # Nothing holds the client port any more: it can be bound and listened on again. The
    # kernel may take a moment to tear down the sockets of killed processes (CI once found
    # the port still taken right after the last worker was gone), so this waits for it;
    # a socket that a live process still listens on would keep it taken.
    try:
        await wait_until(lambda: listenable(tree.port), timeout=TIMEOUT, what="the client port")
    except AssertionError:
        sockets = subprocess.run(
            ["ss", "-tanpe", f"sport = :{tree.port}"], capture_output=True, text=True, check=False
        )
        raise AssertionError(f"port {tree.port} still taken:\n{sockets.stdout}{sockets.stderr}") from None


def listenable(port: int) -> bool:
    """A socket can bind ``port`` and listen on it (SO_REUSEADDR: connections the tree closed
    may sit in TIME_WAIT on it, which holds no process; a socket listening there fails it)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
        except OSError:
            return False
    return True


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_drains_the_tree_and_it_exits_0_within_the_shutdown_timeout(
    sim: Simulator, tmp_path: Path, sig: signal.Signals
) -> None:
    async with running_tree(tmp_path, *tree_args(sim, "--log-format", "json")) as tree:
        await tree.wait_serving()
        url = f"ws://127.0.0.1:{tree.port}/stocks"
        clients = await asyncio.gather(*(Client.connect(url) for _ in range(CLIENTS)))
        for client in clients:
            await client.subscribe("T.*")
        await tree.wait_metric("fastrelay_clients", lambda v: spread(v, CLIENTS), "spread", path="/stocks")
        workers = tree.workers()

        async def close_code(client: Client) -> int | None:
            try:
                while True:
                    await client.ws.recv()
            except websockets.ConnectionClosed as exc:
                return exc.rcvd.code if exc.rcvd is not None else None

        readers = [asyncio.create_task(close_code(c)) for c in clients]
        signalled = time.monotonic()
        tree.proc.send_signal(sig)
        codes = await asyncio.wait_for(asyncio.gather(*readers), SHUTDOWN_TIMEOUT + TIMEOUT)
        code = await asyncio.wait_for(tree.proc.wait(), SHUTDOWN_TIMEOUT + TIMEOUT)
        exited = time.monotonic()
        assert code == 0, tree.log_text()[-3000:]
        assert exited - signalled <= SHUTDOWN_TIMEOUT + 1.0  # + interpreter teardown
        assert set(codes) == {1012}
        assert not any(alive(pid) for pid in workers.values())
        lines = [json.loads(line) for line in tree.log_text().splitlines() if line.startswith("{")]
        order = [
            (line["worker"], line["message"])
            for line in lines
            if line["message"].startswith(("clients drained", "resigning as leader"))
        ]
        # The edges drain their clients before the ingest lets go of the upstream.
        drained = "clients drained; closing upstreams"
        assert sorted(order[:2]) == [("edge-1", drained), ("edge-2", drained)]
        assert order[-1][0] == "ingest" and order[-1][1].startswith("resigning as leader")
        assert not [line for line in lines if line["level"] in ("error", "critical")]


async def test_a_second_signal_kills_the_tree_at_once(sim: Simulator, tmp_path: Path) -> None:
    async with running_tree(tmp_path, *tree_args(sim)) as tree:
        await tree.wait_serving()
        url = f"ws://127.0.0.1:{tree.port}/stocks"
        clients = await asyncio.gather(*(Client.connect(url) for _ in range(CLIENTS)))
        workers = tree.workers()
        tree.proc.send_signal(signal.SIGTERM)
        await tree.wait_log("stopping the tree")
        tree.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(tree.proc.wait(), TIMEOUT) == 1
        assert "a second signal: every worker killed now" in tree.log_text()
        await wait_until(lambda: not any(alive(pid) for pid in workers.values()), what="every worker gone")
        for client in clients:
            await client.ws.close()


async def test_probes_tokens_and_one_scrape_target_for_the_whole_tree(sim: Simulator, tmp_path: Path) -> None:
    token = "a-client-token-for-the-tree"
    async with running_tree(tmp_path, *tree_args(sim, "--client-tokens", token)) as tree:
        await tree.wait_serving()
        assert tree.metrics_port is not None
        # The tree's tokens, on every edge: a wrong one is refused as by one process (1008).
        url = f"ws://127.0.0.1:{tree.port}/stocks"
        for _ in range(4):
            wrong = await Client.connect(url, auth=None)
            await wrong.send({"action": "auth", "params": "not-the-token-at-all"})
            await wrong.wait_status("auth_failed")
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await wrong.ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
            right = await Client.connect(url, auth=token)
            await right.close()
        status, body = await http_get(tree.metrics_port, "/readyz")
        assert status == 200 and body.startswith(b"ready\n")
        assert {line.split(b":")[0] for line in body.splitlines()[1:]} == {b"ingest", b"edge-1", b"edge-2"}
        assert (await http_get(tree.metrics_port, "/healthz"))[0] == 200
        # On the client port as in one process with --metrics-port: /healthz, not /readyz nor /metrics.
        assert (await http_get(tree.port, "/healthz"))[0] == 200
        assert (await http_get(tree.port, "/readyz"))[0] == 404
        assert (await http_get(tree.port, "/metrics"))[0] == 404
        # Each worker renders its page on a timer: its fastrelay_ready follows within one.
        await tree.wait_metric("fastrelay_ready", lambda v: v == {"": 1.0}, "the tree ready")
        samples = await tree.samples()
        info = [labels for name, labels, _ in samples if name == "fastrelay_build_info"]
        assert info == [{"version": info[0]["version"], "python": info[0]["python"], "role": "workers"}]
        cpu = {labels["worker"] for name, labels, _ in samples if name == "process_cpu_seconds_total"}
        assert cpu == {"supervisor", "nats", "ingest", "edge-1", "edge-2"}
        # Upstream series are the ingest's (from Massive), as in one process.
        upstream = {labels["worker"] for name, labels, _ in samples if name == "fastrelay_upstream_connected"}
        assert upstream == {"ingest"}
        assert {labels["worker"] for name, labels, _ in samples if name == "fastrelay_edge_ingest_heard"} == {
            "edge-1",
            "edge-2",
        }


async def test_without_a_metrics_port_the_client_port_answers_the_probes(
    sim: Simulator, tmp_path: Path
) -> None:
    async with running_tree(tmp_path, *tree_args(sim), metrics=False) as tree:
        await tree.wait_ready()
        assert (await http_get(tree.port, "/healthz"))[0] == 200
        assert "--workers without --metrics-port" in tree.log_text()


async def test_run_without_a_key_serves_the_simulator_with_workers(tmp_path: Path) -> None:
    async with running_tree(tmp_path, "--markets", "stocks", "--rest-url", "", command="run") as tree:
        await tree.wait_ready()
        client = await Client.connect(f"ws://127.0.0.1:{tree.port}/stocks")
        await client.subscribe("T.*")
        events = await client.wait_events(5, timeout=TIMEOUT * 2)
        assert {e["ev"] for e in events} == {"T"}
        await client.close()
        assert "from the built-in simulated feed" in tree.log_text()


@pytest.mark.slow
async def test_a_worker_that_keeps_dying_stops_the_tree_with_exit_1(sim: Simulator, tmp_path: Path) -> None:
    """Each time edge-1 comes back it is killed again: the fifth exit in a row, each soon after its
    start, is one too many (fastrelay/workers/policy.py)."""
    async with running_tree(tmp_path, *tree_args(sim)) as tree:
        await tree.wait_serving()
        killed: list[int] = []
        deadline = time.monotonic() + TIMEOUT * 8
        while tree.proc.returncode is None:
            assert time.monotonic() < deadline, tree.log_text()[-3000:]
            pid = tree.workers().get("edge-1")
            if pid is not None and pid not in killed:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            await asyncio.sleep(0.02)
        assert tree.proc.returncode == 1
        assert len(killed) == 5
        assert "the tree cannot be kept up" in tree.log_text()
