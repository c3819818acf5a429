"""``make observe``: the relay and a Prometheus with the shipped config and alert rules, locally.

    .venv/bin/python grafana/observe.py [--port 3001] [--metrics-port 9101] [--prometheus-port 9090]

Starts ``fastrelay run`` (the built-in simulator unless MASSIVE_API_KEY is set) with its
``/metrics`` on ``--metrics-port``, then Debian's ``prometheus`` with grafana/prometheus.yml and
grafana/alerts.yml as shipped (copied beside its storage into a temporary directory; only the
scrape target changes, when ``--metrics-port`` is not the shipped 9101), and prints where to
look. Ctrl-C (or SIGTERM) stops both and removes the directory. Everything listens on
127.0.0.1. Grafana is not started (Debian does not package it): docs/sre.md, "Try it locally",
says how to point one at this Prometheus with grafana/provisioning/.

Only the standard library: ``make observe`` installs what ``make run`` does, no test packages.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

GRAFANA = Path(__file__).resolve().parent
SHIPPED_CONFIG = GRAFANA / "prometheus.yml"
SHIPPED_RULES = GRAFANA / "alerts.yml"
# The relay target of the shipped scrape config (deploy/fastrelay.env.example's metrics port).
SHIPPED_TARGET = '"127.0.0.1:9101"'
HOST = "127.0.0.1"
START_TIMEOUT = 60.0  # seconds for the relay to be ready, Prometheus to answer
SCRAPE_TIMEOUT = 60.0  # the first scrape comes within one scrape_interval (15 s)
STOP_TIMEOUT = 15.0  # the relay drains for up to --shutdown-timeout (10 s)

_prctl: Any = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child: SIGTERM when this script dies, even by SIGKILL, so nothing is left behind."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return int(answer.status), bytes(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, b""
    except OSError:
        return 0, b""


class Stack:
    """The processes started, each in a session of its own: the terminal's Ctrl-C reaches only
    this script, which stops them in order (Prometheus first, then the relay's drain)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}

    def start(self, name: str, cmd: list[str], log: Path | None = None) -> None:
        output = open(log, "wb") if log else None  # noqa: SIM115 - the child holds it
        try:
            self.procs[name] = subprocess.Popen(
                cmd, stdout=output, stderr=output, start_new_session=True, preexec_fn=_die_with_parent
            )
        finally:
            if output:
                output.close()
        if log:
            self.logs[name] = log

    def exited(self) -> str | None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                return f"{name} exited with {proc.returncode}{self.log_tail(name)}"
        return None

    def log_tail(self, name: str) -> str:
        log = self.logs.get(name)
        return f":\n{log.read_text(errors='replace')[-2000:]}" if log and log.exists() else ""

    def stop(self) -> None:
        for proc in reversed(self.procs.values()):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def wait_for(check: Callable[[], bool], what: str, stack: Stack, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        failed = stack.exited()
        if failed:
            raise SystemExit(f"observe: {failed}")
        if time.monotonic() > deadline:
            raise SystemExit(f"observe: no {what} after {timeout:.0f} s")
        time.sleep(0.2)


def prometheus_config(workdir: Path, metrics_port: int) -> Path:
    """The shipped config and rules side by side in ``workdir`` (rule_files is relative to the
    config), scraping the relay's metrics port."""
    text = SHIPPED_CONFIG.read_text()
    if text.count(SHIPPED_TARGET) != 1:
        raise SystemExit(f"observe: {SHIPPED_CONFIG} no longer has the one target {SHIPPED_TARGET}")
    text = text.replace(SHIPPED_TARGET, f'"{HOST}:{metrics_port}"')
    config = workdir / SHIPPED_CONFIG.name
    config.write_text(text)
    shutil.copy(SHIPPED_RULES, workdir / SHIPPED_RULES.name)
    return config


def target_up(prometheus: str, metrics_port: int) -> bool:
    status, body = _get(f"{prometheus}/api/v1/targets")
    if status != 200:
        return False
    targets = json.loads(body)["data"]["activeTargets"]
    return any(
        t["labels"].get("instance") == f"{HOST}:{metrics_port}" and t["health"] == "up" for t in targets
    )


def banner(args: argparse.Namespace, prometheus: str, workdir: Path) -> str:
    keyed = bool(os.environ.get("MASSIVE_API_KEY"))
    feed = "Massive (MASSIVE_API_KEY is set)" if keyed else "the built-in simulator"
    return f"""
fastrelay observe: the relay on {feed} and Prometheus, on {HOST}; Ctrl-C stops both.
  dashboard   http://{HOST}:{args.port}/
  metrics     http://{HOST}:{args.metrics_port}/metrics   (also /healthz, /readyz)
  Prometheus  {prometheus}/   alerts: {prometheus}/alerts   targets: {prometheus}/targets
              (grafana/prometheus.yml and grafana/alerts.yml as shipped, scrape every 15 s;
              no Alertmanager: firing alerts show on the alerts page; logs and data in {workdir})
  Grafana     not started: point yours at {prometheus} with grafana/provisioning/ and
              grafana/dashboards/fastrelay.json (docs/sre.md, "Try it locally")
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=3001, help="the relay's port (clients, dashboard)")
    parser.add_argument("--metrics-port", type=int, default=9101, help="the relay's /metrics port")
    parser.add_argument("--prometheus-port", type=int, default=9090, help="Prometheus' web port")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("prometheus") is None:
        print("observe: prometheus not found: `make observe` installs Debian's package", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    workdir = Path(tempfile.mkdtemp(prefix="fastrelay-observe-"))
    stack = Stack(workdir)
    try:
        stack.start(
            "relay",
            [
                *(sys.executable, "-m", "fastrelay", "run", "--host", HOST, "--port", str(args.port)),
                *("--metrics-port", str(args.metrics_port)),
            ],
        )
        metrics = f"http://{HOST}:{args.metrics_port}"
        wait_for(lambda: _get(f"{metrics}/readyz")[0] == 200, "ready relay", stack, START_TIMEOUT)
        prometheus = f"http://{HOST}:{args.prometheus_port}"
        stack.start(
            "prometheus",
            [
                "prometheus",
                f"--config.file={prometheus_config(workdir, args.metrics_port)}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address={HOST}:{args.prometheus_port}",
            ],
            log=workdir / "prometheus.log",
        )
        wait_for(lambda: _get(f"{prometheus}/-/ready")[0] == 200, "ready Prometheus", stack, START_TIMEOUT)
        print(banner(args, prometheus, workdir), flush=True)
        wait_for(
            lambda: stop.is_set() or target_up(prometheus, args.metrics_port),
            "scrape of the relay",
            stack,
            SCRAPE_TIMEOUT,
        )
        if not stop.is_set():
            print("observe: Prometheus scrapes the relay (target up); Ctrl-C to stop", flush=True)
        while not stop.wait(0.5):
            failed = stack.exited()
            if failed:
                print(f"observe: {failed}", file=sys.stderr)
                return 1
        return 0
    finally:
        # A second Ctrl-C while stopping must not leave processes behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stack.stop()
        with contextlib.suppress(OSError):
            shutil.rmtree(workdir)
        print("observe: stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
