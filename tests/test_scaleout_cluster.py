"""The scale-out on a three-server NATS cluster: docs/scaleout.md, "A three-machine deployment".

Three nats-servers on 127.0.0.1 run the documented config itself (JetStream, routes, TLS for
clients and routes, the per-role NKey users and permissions), only addresses, ports and file
paths substituted. Two ingests (a leader and a standby) and an edge run as child processes on
the simulator with every server in ``--nats`` and the lease on three replicas; a client of the
edge receives data. Then the server the leader is connected to (nats-server's /connz says which)
stops: the roles move to the other two, data reaches the client again (after a
``feed interrupted``/``feed restored`` pair if the leader lost its lease meanwhile), and exactly
one ingest leads.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from pathlib import Path

import orjson

from fastrelay.sim import Simulator
from tests.conftest import sim_config
from tests.natskeys import NKey
from tests.natsserver import NatsServer, documented_cluster_config
from tests.test_scaleout_security import COMMON, Certificates, edge_process, metric, wait_metric
from tests.utils import TIMEOUT, Client
from tests.webtools import RelayProcess, free_port, stopping

# Forming the cluster and electing JetStream's meta leader takes a few seconds before the
# lease bucket (three replicas) can be made.
CLUSTER_READY = TIMEOUT * 6
LEASE_TTL = 1.5  # --lease-ttl's default


async def connection_names(monitor_port: int) -> set[str]:
    """The names of the clients connected to one nats-server (its monitoring /connz)."""
    url = f"http://127.0.0.1:{monitor_port}/connz"

    def get() -> bytes:  # a chunked answer, which tests.webtools.http_request does not decode
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            return bytes(response.read())

    return {c.get("name", "") for c in orjson.loads(await asyncio.to_thread(get))["connections"]}


async def leaders(*ingests: RelayProcess) -> list[RelayProcess]:
    return [ingest for ingest in ingests if await metric(ingest, "fastrelay_ingest_leader") == 1]


async def one_leader(*ingests: RelayProcess, timeout: float) -> RelayProcess:
    """Wait (bounded) until exactly one of ``ingests`` leads; returns it."""
    deadline = asyncio.get_running_loop().time() + timeout
    while len(found := await leaders(*ingests)) != 1:
        assert asyncio.get_running_loop().time() < deadline, f"leaders: {[i.log.name for i in found]}"
        await asyncio.sleep(0.05)
    return found[0]


async def test_data_keeps_flowing_when_the_leaders_nats_server_stops(tmp_path: Path) -> None:
    certs = Certificates(tmp_path / "tls")
    ingest_key, edge_key = NKey.new(), NKey.new()
    route_ports = [free_port() for _ in range(3)]
    monitor_ports = [free_port() for _ in range(3)]
    servers = []
    for number, monitor in enumerate(monitor_ports, 1):
        server = NatsServer(tmp_path / f"nats-{number}.log", "-m", str(monitor), scheme="tls")
        server.config = documented_cluster_config(
            number, route_ports, certs.ca.parent, server.store_dir, ingest_key.public, edge_key.public
        )
        servers.append(server)
    tls = ["--nats-tls-ca", str(certs.ca), *certs.client_flags]
    common = [
        *COMMON,
        "--nats",
        ",".join(server.url for server in servers),
        *tls,
        "--metrics-interval",
        "0.1",
    ]
    ingest_flags = [
        *common,
        "--nats-nkey-seed",
        str(ingest_key.write_seed(tmp_path / "ingest.nk")),
        "--lease-replicas",
        "3",
    ]
    edge_seed = str(edge_key.write_seed(tmp_path / "edge.nk"))
    try:
        for server in servers:
            await server.start()
        async with Simulator(sim_config()) as sim:
            a, b = (
                RelayProcess(
                    free_port(),
                    sim.base_url,
                    tmp_path / f"ingest-{name}.log",
                    *ingest_flags,
                    "--instance-name",
                    f"ingest-{name}",
                    command="ingest",
                )
                for name in "ab"
            )
            edge = edge_process(tmp_path, "edge", *common, "--nats-nkey-seed", edge_seed)
            with stopping(a, b, edge):
                await a.start()  # ready as soon as it is on NATS: the lease comes when JetStream is
                await b.start()
                leader = await one_leader(a, b, timeout=CLUSTER_READY)
                standby = b if leader is a else a
                await edge.start()
                client = await Client.connect(f"ws://127.0.0.1:{edge.port}/stocks")
                await client.subscribe("T.AAPL,Q.MSFT")
                await client.wait_events(10)

                name = f"fastrelay-ingest-ingest-{'a' if leader is a else 'b'}"
                hosting = [
                    server
                    for server, monitor in zip(servers, monitor_ports, strict=True)
                    if name in await connection_names(monitor)
                ]
                assert len(hosting) == 1, f"{name} is on {len(hosting)} servers"
                statuses_before = len(client.statuses)
                hosting[0].stop()
                stopped_ms = time.time() * 1000

                # Data reaches the client again, after the outage if there was one, and goes on
                # for two lease periods: the lease is renewed on the two servers left.
                await client.wait_for(
                    lambda: any(
                        e.get("t", 0) > stopped_ms + 2 * LEASE_TTL * 1000 for e in client.events[-5:]
                    ),
                    timeout=TIMEOUT * 6,
                    what="events sent two lease periods after the server stopped",
                )
                after = [s["message"] for s in client.statuses[statuses_before:]]
                interrupted = [m for m in after if "feed interrupted" in m]
                restored = [m for m in after if "feed restored" in m]
                assert len(restored) == len(interrupted), after  # every outage ended
                for role in (a, b, edge):
                    await wait_metric(role, "fastrelay_nats_connected", lambda v: v == 1)
                survivor = await one_leader(a, b, timeout=TIMEOUT)
                assert await metric(standby if survivor is leader else leader, "fastrelay_ingest_leader") == 0
                await client.close()
    finally:
        for server in servers:
            server.stop()
    for server in servers:
        violations = [line for line in server.log_text().splitlines() if " Violation - " in line]
        assert violations == [], violations[:5]
