"""Scale-out keeps secrets too: NATS credentials and the Massive key never show.

nats-server requires a user and password; an ingest and an edge run as child processes
at ``--log-level debug --log-format json`` with the credentials in their ``--nats`` URL,
and a second edge with a wrong password (so connection errors are logged). Their logs,
/metrics, /readyz and what a client receives must not contain any 8-character piece of
the password or of the Massive key (tests/test_secrets.py's rule).
"""

from __future__ import annotations

import re
from pathlib import Path

from fastrelay.sim import Simulator
from tests.conftest import sim_config
from tests.natsserver import running_nats
from tests.test_secrets import assert_secret_free
from tests.utils import Client, wait_until
from tests.webtools import RelayProcess, free_port, http_request, stopping

KEY = "SECRETKEY-7c1d9e2f4a6b8035"
PASSWORD = "NATSPASS-5e8a2c4f6b1d3907"


async def test_nats_credentials_and_key_never_appear(tmp_path: Path) -> None:
    async with (
        running_nats(tmp_path / "nats.log", "--user", "fastrelay", "--pass", PASSWORD) as nats,
        Simulator(sim_config(api_key=KEY)) as sim,
    ):
        url = f"nats://fastrelay:{PASSWORD}@127.0.0.1:{nats.port}"
        wrong = f"nats://fastrelay:{PASSWORD[::-1]}@127.0.0.1:{nats.port}"
        common = ["--log-level", "debug", "--log-format", "json", "--heartbeat-interval", "0.2"]
        ingest = RelayProcess(
            free_port(),
            sim.base_url,
            tmp_path / "ingest.log",
            *common,
            "--nats",
            url,
            "--api-key",
            KEY,
            command="ingest",
        )
        edge = RelayProcess(free_port(), "", tmp_path / "edge.log", *common, "--nats", url, command="edge")
        locked_out = RelayProcess(
            free_port(), "", tmp_path / "locked-out.log", *common, "--nats", wrong, command="edge"
        )
        with stopping(ingest, edge, locked_out):
            await ingest.start()
            await edge.start()
            client = await Client.connect(f"ws://127.0.0.1:{edge.port}/stocks")
            await client.subscribe("T.AAPL,Q.MSFT")
            await client.wait_events(10)
            await locked_out.start(ready=False)  # it never is: it cannot authenticate
            await wait_until(
                lambda: "Authorization" in (tmp_path / "locked-out.log").read_text(),
                what="the locked-out edge to log its authorization failure",
            )
            seen = [
                (f"{name} {path}", (await http_request(process.port, path)).body)
                for name, process in (("ingest", ingest), ("edge", edge), ("locked-out", locked_out))
                for path in ("/metrics", "/readyz", "/healthz")
            ]
            readyz = dict(seen)["locked-out /readyz"]
            assert b"NATS nats://***@127.0.0.1" in readyz, readyz
            await client.close()
        for log in ("ingest.log", "edge.log", "locked-out.log"):
            text = (tmp_path / log).read_bytes()
            assert re.search(rb"\*\*\*@127\.0\.0\.1", text), log  # the URL is logged, redacted
            seen.append((log, text))
        seen.append(("client frames", repr(client.events + client.statuses).encode()))
        for what, data in seen:
            assert_secret_free(what, data, PASSWORD, PASSWORD[::-1], KEY)
