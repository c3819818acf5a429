"""Helpers for tests/test_nginx.py and tests/test_browser.py.

A real nginx runs the shipped nginx/nginx.conf and nginx/fastrelay.conf, linked unchanged
into a prefix of its own; only the two deployment files of fastrelay.d/ (listen address,
web root, log path; the relay's address) are written here, exactly as an operator does.
Everything listens on 127.0.0.1, on free high ports, and is stopped at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.procs import free_port
from fastrelay.static import PACKAGED_WEB_ROOT
from tests.utils import TIMEOUT

REPO = Path(__file__).resolve().parent.parent
NGINX_DIR = REPO / "nginx"
SITE_CONF = NGINX_DIR / "fastrelay.conf"
WEB_ROOT = PACKAGED_WEB_ROOT
ARTIFACTS = REPO / "test-artifacts"
# The dashboard's chart library, copied into the web root by `make` (web-vendor/, npm).
VENDOR_SCRIPT = "lightweight-charts.standalone.production.js"
CHROMIUM = "/usr/bin/chromium"
# Headless, and nothing that phones home or updates itself.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def site_setting(pattern: str) -> str:
    """A value from the shipped nginx/fastrelay.conf, so tests follow what is configured."""
    found = re.search(pattern, SITE_CONF.read_text(), re.MULTILINE)
    assert found is not None, f"{pattern!r} not found in {SITE_CONF}"
    return found.group(1)


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if found is None:
        pytest.fail("nginx is not installed: `make test` installs Debian's nginx package")
    return found


def vendor_installed() -> None:
    """Fail at once, saying what to run, when the chart library is not in the web root."""
    if not (WEB_ROOT / "vendor" / VENDOR_SCRIPT).is_file():
        pytest.fail(
            f"{WEB_ROOT}/vendor/{VENDOR_SCRIPT} is missing: `make web-vendor` (or `make test`) installs it"
        )


def chromium_binary() -> str:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium package")
    return CHROMIUM


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


async def wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Wait for ``port`` to accept connections; fail with the process's log if it exits first."""
    deadline = time.monotonic() + TIMEOUT
    while not _listening(port):
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args[0]} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"nothing listening on 127.0.0.1:{port} after {TIMEOUT:.1f} s")
        await asyncio.sleep(0.02)


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Nginx:
    """nginx with the shipped configuration, in ``prefix``, in front of relays on 127.0.0.1."""

    def __init__(self, prefix: Path, relay_ports: list[int]) -> None:
        self.prefix = prefix
        self.port = free_port()
        self.relay_ports = relay_ports
        self.conf = prefix / "conf" / "nginx.conf"
        self.access_log = prefix / "logs" / "access.log"
        self.stderr_log = prefix / "logs" / "stderr.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def write_config(self) -> None:
        conf = self.prefix / "conf"
        (conf / "fastrelay.d").mkdir(parents=True, exist_ok=True)
        (self.prefix / "logs").mkdir(exist_ok=True)
        (self.prefix / "temp").mkdir(exist_ok=True)
        # The shipped files themselves (links, not copies): what is tested is what is shipped.
        for name in ("nginx.conf", "fastrelay.conf"):
            (conf / name).symlink_to(NGINX_DIR / name)
        (conf / "fastrelay.d" / "server.conf").write_text(
            f"listen 127.0.0.1:{self.port};\nroot {WEB_ROOT};\naccess_log logs/access.log fastrelay;\n"
        )
        (conf / "fastrelay.d" / "relays.conf").write_text(
            "".join(f"server 127.0.0.1:{port};\n" for port in self.relay_ports)
        )

    @property
    def command(self) -> list[str]:
        # daemon off: the master stays this test's child; the pid file is logs/nginx.pid in the prefix.
        # As root, workers would drop to nobody, who may not be able to read a checkout under
        # /root: keep them root (production chooses its user the same way, with -g).
        settings = "daemon off;" + (" user root;" if os.geteuid() == 0 else "")
        prefix = f"{self.prefix}/"
        return [nginx_binary(), "-p", prefix, "-c", str(self.conf), "-e", "stderr", "-g", settings]

    async def start(self) -> None:
        self.write_config()
        with self.stderr_log.open("wb") as err:
            self.proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        await wait_listening(self.port, self.proc, self.stderr_log)

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)  # SIGTERM: fast shutdown, open WebSockets included

    def log_lines(self) -> list[str]:
        return self.access_log.read_text().splitlines() if self.access_log.exists() else []

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def running_nginx(prefix: Path, relay_ports: list[int]) -> AsyncIterator[Nginx]:
    nginx = Nginx(prefix, relay_ports)
    try:
        await nginx.start()
        yield nginx
    finally:
        nginx.stop()


class RelayProcess:
    """A fastrelay child process on a fixed port: killed and restarted on that port.

    ``command`` is ``serve`` (the default), ``ingest`` or ``edge``; an edge takes no
    upstream flags (it is fed over NATS, ``flags`` carry ``--nats``).
    """

    def __init__(self, port: int, upstream: str, log: Path, *flags: str, command: str = "serve") -> None:
        self.port = port
        self.upstream = upstream
        self.log = log
        self.flags = flags
        self.command = command
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self, ready: bool = True) -> None:
        """Start and wait until it listens and (unless ``ready`` is False) answers /readyz 200."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        upstream = [] if self.command == "edge" else ["--upstream", self.upstream]
        command = [
            sys.executable,
            "-m",
            "fastrelay",
            self.command,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *upstream,
            "--linger",
            "0.5",
            *self.flags,
        ]
        env = {**os.environ, "MASSIVE_API_KEY": "sim-key"}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        await wait_listening(self.port, self.proc, self.log)
        status = 0 if ready else 200
        deadline = time.monotonic() + TIMEOUT
        while status != 200:  # ready: every upstream authenticated (an edge: the ingest heard)
            assert time.monotonic() < deadline, f"never ready ({status}):\n{self.log.read_text()[-2000:]}"
            status = (await http_request(self.port, "/readyz")).status
            if status != 200:
                await asyncio.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: a crash, no close frames to anyone."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)


@contextlib.contextmanager
def stopping(*processes: RelayProcess | Nginx) -> Iterator[None]:
    try:
        yield
    finally:
        for process in processes:
            process.stop()


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


async def http_request(port: int, path: str, headers: dict[str, str] | None = None) -> Response:
    """One HTTP/1.1 GET to 127.0.0.1:``port``; a 101 returns at once (the socket is then closed)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT)
    try:
        fields = {"Host": f"127.0.0.1:{port}", "Connection": "close", **(headers or {})}
        head = f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n"
        writer.write(head.encode())
        raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        status_line, *lines = raw.decode("latin-1").split("\r\n")
        status = int(status_line.split()[1])
        parsed: dict[str, str] = {}
        for line in lines:
            if ":" in line:
                name, value = line.split(":", 1)
                parsed[name.strip().lower()] = value.strip()
        body = b""
        if status != 101:
            if "content-length" in parsed:
                body = await asyncio.wait_for(reader.readexactly(int(parsed["content-length"])), TIMEOUT)
            else:
                body = await asyncio.wait_for(reader.read(), TIMEOUT)
        return Response(status, parsed, body)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def upgrade_headers(**extra: str) -> dict[str, str]:
    """A browser's WebSocket handshake headers."""
    return {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        **extra,
    }
