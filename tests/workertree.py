"""A ``fastrelay serve --workers N`` tree as a child process, for tests/test_workers.py.

The supervisor is started with ``python -m fastrelay`` (the tests' PYTHONPATH reaches its
workers), its stderr (every worker's log lines too) goes to a file, and what runs under it
is read from /proc: its children, their names (``edge-1``...) from their command lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.utils import TIMEOUT, http_get
from tests.webtools import free_port

# Four processes start on a shared machine: imports alone take a while.
START_TIMEOUT = TIMEOUT * 6


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("FASTRELAY_", "MASSIVE_"))}


def children_of(pid: int) -> dict[int, str]:
    """The live (not zombie) children of ``pid``: pid -> worker name (``nats`` for nats-server)."""
    found: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_bytes()
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        state, ppid = stat[stat.rindex(b")") + 2 :].split()[:2]
        if int(ppid) != pid or state == b"Z":
            continue
        words = [a.decode(errors="replace") for a in argv if a]
        if "fastrelay.workers.worker" in words:
            found[int(entry)] = words[words.index("fastrelay.workers.worker") + 1]
        elif words and words[0].endswith("nats-server"):
            found[int(entry)] = "nats"
    return found


def alive(pid: int) -> bool:
    """Running: not gone, not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rindex(b")") + 2 :].split()[0] != b"Z"


@dataclass
class Tree:
    proc: asyncio.subprocess.Process
    port: int
    metrics_port: int | None
    log: Path
    seen: set[int] = field(default_factory=set)  # every worker pid seen: stopped at the end

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def workers(self) -> dict[str, int]:
        """Worker name -> pid."""
        found = {name: pid for pid, name in children_of(self.proc.pid).items()}
        self.seen.update(found.values())
        return found

    async def wait_log(self, text: str, timeout: float = TIMEOUT * 2) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log_text():
            assert self.proc.returncode is None, f"the supervisor exited:\n{self.log_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no {text!r} in the log:\n{self.log_text()[-3000:]}"
            await asyncio.sleep(0.05)

    async def wait_ready(self, port: int | None = None, timeout: float = START_TIMEOUT) -> None:
        """``/readyz`` 200 on ``port`` (default: the metrics port, else the client port)."""
        port = port or self.metrics_port or self.port
        deadline = time.monotonic() + timeout
        while (await http_get(port, "/readyz"))[0] != 200:
            assert self.proc.returncode is None, f"the supervisor exited:\n{self.log_text()[-3000:]}"
            assert time.monotonic() < deadline, f"never ready:\n{self.log_text()[-3000:]}"
            await asyncio.sleep(0.05)

    async def wait_serving(self) -> None:
        """Ready, and every worker serving: both edges listen on the client port (the tree is
        ready with one, and clients that connect before the second would all land on the first)."""
        await self.wait_ready()
        await self.wait_metric(
            "fastrelay_worker_up", lambda v: len(v) > 2 and all(v.values()), "every worker serving"
        )
        self.workers()

    async def samples(self) -> list[tuple[str, dict[str, str], float]]:
        """Every sample of the tree's /metrics (on the metrics port)."""
        assert self.metrics_port is not None
        status, body = await http_get(self.metrics_port, "/metrics")
        assert status == 200, status
        return [
            (sample.name, sample.labels, sample.value)
            for family in text_string_to_metric_families(body.decode())
            for sample in family.samples
        ]

    async def by_worker(self, name: str, **labels: str) -> dict[str, float]:
        """``name``'s values summed by worker (over the samples matching ``labels``)."""
        found: dict[str, float] = {}
        for sample, sample_labels, value in await self.samples():
            if sample == name and all(sample_labels.get(k) == v for k, v in labels.items()):
                worker = sample_labels.get("worker", "")
                found[worker] = found.get(worker, 0.0) + value
        return found

    async def wait_metric(self, name: str, check: object, what: str, **labels: str) -> dict[str, float]:
        """Wait until ``check(by_worker(name))`` holds; the values then."""
        assert callable(check)
        deadline = time.monotonic() + TIMEOUT * 3
        while True:
            values = await self.by_worker(name, **labels)
            if check(values):
                return values
            assert self.proc.returncode is None, f"the supervisor exited:\n{self.log_text()[-3000:]}"
            assert time.monotonic() < deadline, f"{what}: {name} {values}"
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running_tree(
    tmp_path: Path, *args: str, workers: int = 2, metrics: bool = True, command: str = "serve"
) -> AsyncIterator[Tree]:
    """``python -m fastrelay COMMAND --workers N --port P [--metrics-port M] ARGS``; stopped at the end
    (SIGTERM, then SIGKILL), and every process it started checked gone."""
    port = free_port()
    metrics_port = free_port() if metrics else None
    log = tmp_path / f"tree-{port}.log"
    flags = ["--metrics-port", str(metrics_port)] if metrics_port is not None else []
    with log.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fastrelay", command, "--workers", str(workers),
            "--host", "127.0.0.1", "--port", str(port), *flags, *args,
            # Its private directory in the test's: one killed with -9 leaves it behind.
            env={**_clean_env(), "TMPDIR": str(tmp_path)},
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
    tree = Tree(proc, port, metrics_port, log)
    try:
        yield tree
    finally:
        # Those seen during the test too: a dead supervisor's children are no longer its own.
        started = tree.seen | set(children_of(proc.pid))
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), TIMEOUT * 3)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        for pid in started:  # dead with the supervisor (PR_SET_PDEATHSIG), if not before
            with contextlib.suppress(ProcessLookupError):
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
