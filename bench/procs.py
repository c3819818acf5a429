"""Child processes of the bench and what /proc says about them.

Every child runs in its own session (process group), so stopping it also stops
anything it started, and a Ctrl-C in the terminal reaches only the bench,
which then stops the children in order. Each child also gets
``PR_SET_PDEATHSIG``: if the bench itself is killed (SIGKILL, OOM), the
kernel ends the children rather than leaving a relay holding a port.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import resource
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PR_SET_PDEATHSIG = 1
# Looked up once here: the child, between fork and exec, only calls it (no
# dlopen there, and the bench starts no threads, so the fork is safe).
_prctl: Any = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    name: str
    process: asyncio.subprocess.Process
    log_path: Path | None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.returncode is None

    def log_tail(self, lines: int = 15) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


async def spawn(
    name: str,
    argv: list[str],
    *,
    cwd: Path,
    log_path: Path | None,
    pipes: bool = False,
    cpus: set[int] | None = None,
    env: dict[str, str] | None = None,
) -> Child:
    """Start ``argv`` in a new session; stderr (and stdout unless ``pipes``) go to ``log_path``."""
    log: IO[bytes] | int = asyncio.subprocess.DEVNULL
    if log_path is not None:
        log = log_path.open("wb")

    def prepare() -> None:
        _die_with_parent()
        # A server with 10,000 clients needs a descriptor each: the soft limit
        # up to the hard one (raising the hard limit needs privileges).
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        if cpus:
            os.sched_setaffinity(0, cpus)

    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env=env,
            stdin=asyncio.subprocess.PIPE if pipes else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE if pipes else log,
            stderr=log,
            start_new_session=True,
            preexec_fn=prepare,
            # Large result lines (histograms, per-channel ranges) come back on stdout.
            limit=64 * 1024 * 1024,
        )
    finally:
        if not isinstance(log, int):
            log.close()  # the child holds its own descriptor
    return Child(name, process, log_path)


async def stop_all(children: list[Child], timeout: float = 3.0) -> None:
    """SIGTERM every process group, wait at most ``timeout``, then SIGKILL what is left."""
    for child in children:
        if child.running:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for child in children:
        remaining = max(0.05, deadline - time.monotonic())
        try:
            await asyncio.wait_for(child.process.wait(), remaining)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(child.process.wait(), 2.0)
        # A group may outlive its leader (grandchildren): make sure it is gone.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)


_handed_out: set[int] = set()


def free_port() -> int:
    """A port the kernel just considered free and this process has not handed out before.

    The kernel may return the same ephemeral port to two binds in a row once the
    first socket is closed, so a caller asking for a client port and a metrics
    port could get one number twice (CI saw it: "--metrics-port is --port's").
    Remembering what was handed out rules that out; the remaining race (another
    program binding the port before the child does) is fine on a quiet loopback.
    """
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def http_get(url: str, timeout: float = 1.0) -> tuple[int, bytes]:
    """Status and body of a plain GET; (0, b"") when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()
    except (OSError, ValueError):
        return 0, b""


def http_json(url: str, timeout: float = 1.0) -> dict[str, Any] | None:
    status, body = http_get(url, timeout)
    if status != 200:
        return None
    with contextlib.suppress(orjson.JSONDecodeError):
        data = orjson.loads(body)
        if isinstance(data, dict):
            return data
    return None


async def wait_http_ok(url: str, child: Child, timeout: float) -> None:
    """Poll ``url`` until it answers 200; fail early if ``child`` exits."""
    deadline = time.monotonic() + timeout
    while True:
        # A blocking GET on loopback: the bench has nothing else to do meanwhile.
        status, _ = http_get(url, 0.5)
        if status == 200:
            return
        if not child.running:
            raise RuntimeError(f"{child.name} exited ({child.process.returncode}):\n{child.log_tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{child.name}: {url} not ready after {timeout:.0f} s:\n{child.log_tail()}")
        await asyncio.sleep(0.05)


# --- /proc -------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), in seconds; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return 0.0
    # The command name (field 2) may contain spaces: split after its closing paren.
    fields = data[data.rindex(b")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / _CLOCK_TICKS


def _stats() -> Iterator[tuple[int, bytes]]:
    """(pid, /proc/PID/stat) of every process still there while it is read."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue  # exited meanwhile
        yield int(entry), data


def descendants(pid: int) -> list[int]:
    """The processes under ``pid``: its children, theirs, and so on (from /proc's parent pids)."""
    children: dict[int, list[int]] = {}
    for entry, data in _stats():
        parent = int(data[data.rindex(b")") + 2 :].split()[1])
        children.setdefault(parent, []).append(entry)
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and every process under it (a --workers tree: the supervisor,
    nats-server, the ingest and the edges)."""
    return sum(cpu_seconds(p) for p in (pid, *descendants(pid)))


def tree_cpu_by_worker(pid: int) -> dict[str, float]:
    """CPU seconds of a ``--workers`` tree by process: ``supervisor`` (``pid``), ``nats``,
    ``ingest``, ``edge-1``... (named from their command lines); ``--workers 1``: ``relay``."""
    children = descendants(pid)
    found = {"supervisor" if children else "relay": cpu_seconds(pid)}
    for child in children:
        try:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except OSError:
            continue
        if "fastrelay.workers.worker" in argv[:-1]:
            name = argv[argv.index("fastrelay.workers.worker") + 1]
        elif argv and argv[0].endswith("nats-server"):
            name = "nats"
        else:
            name = "other"
        found[name] = found.get(name, 0.0) + cpu_seconds(child)
    return found


def tree_memory_kib(pid: int) -> dict[str, int]:
    """``memory_kib`` summed over ``pid`` and every process under it."""
    total: dict[str, int] = {}
    for p in (pid, *descendants(pid)):
        for key, value in memory_kib(p).items():
            total[key] = total.get(key, 0) + value
    return total


def all_cpu_seconds() -> dict[int, tuple[str, float]]:
    """Every process's (command name, CPU seconds): to see what else loaded the machine."""
    found: dict[int, tuple[str, float]] = {}
    for entry, data in _stats():
        name = data[data.index(b"(") + 1 : data.rindex(b")")].decode(errors="replace")
        fields = data[data.rindex(b")") + 2 :].split()
        found[entry] = (name, (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS)
    return found


def command_line(pid: int, limit: int = 80) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:limit]
    except OSError:
        return ""


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process in KiB; empty if it is gone."""
    found: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    found[key] = int(value.split()[0])
    except OSError:
        pass
    return found


def reset_peak_rss(pid: int) -> bool:
    """Set a process's VmHWM back to its VmRSS (Linux 4.0+, ``clear_refs``); False where not allowed.

    A peak over an interval: reset at its start, read VmHWM at its end.
    """
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def machine_cpu() -> tuple[float, float]:
    """(busy, interrupt) CPU seconds of the whole machine since boot, from /proc/stat.

    Interrupt time (irq + softirq) is where the kernel's loopback TCP work may
    land without being charged to any process (with IRQ time accounting).
    """
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is inside user)
    busy = values[0] + values[1] + values[2] + values[5] + values[6]
    return busy / _CLOCK_TICKS, (values[5] + values[6]) / _CLOCK_TICKS


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    uname = os.uname()
    mem_kib = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "kernel": f"{uname.sysname} {uname.release}",
        "machine": uname.machine,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
    }
