"""``make observe`` (grafana/observe.py): the relay and Prometheus with the shipped config start,
Prometheus scrapes the relay with every rule group of grafana/alerts.yml loaded, and Ctrl-C
stops everything it started and removes its directory.

The script runs as ``make observe`` runs it, on free ports instead of 3001, 9101 and 9090.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.utils import TIMEOUT
from tests.webtools import free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
OBSERVE = REPO / "grafana" / "observe.py"
ALERTS = REPO / "grafana" / "alerts.yml"
# Prometheus' first scrape comes within the shipped scrape_interval (15 s).
FIRST_SCRAPE = 15.0 + TIMEOUT * 6


def get_json(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=TIMEOUT) as answer:
        return dict(json.loads(answer.read()))


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def read_lines(stream: object, lines: queue.Queue[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        lines.put(line)


def wait_line(lines: queue.Queue[str], seen: list[str], pattern: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no line matching {pattern!r} within {timeout:.0f} s:\n{''.join(seen)}")
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            continue
        seen.append(line)
        if re.search(pattern, line):
            return line


@pytest.mark.timeout(180)
def test_observe_starts_prometheus_on_the_shipped_config_and_stops_it_all() -> None:
    port, metrics_port, prometheus_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k != "MASSIVE_API_KEY"}
    proc = subprocess.Popen(
        [
            *(sys.executable, str(OBSERVE), "--port", str(port)),
            *("--metrics-port", str(metrics_port), "--prometheus-port", str(prometheus_port)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    lines: queue.Queue[str] = queue.Queue()
    seen: list[str] = []
    reader = threading.Thread(target=read_lines, args=(proc.stdout, lines), daemon=True)
    reader.start()
    started: list[int] = []
    try:
        workdir = Path(wait_line(lines, seen, r"logs and data in (\S+)\)", TIMEOUT * 12).split()[-1][:-1])
        assert workdir.is_dir()
        assert f"http://127.0.0.1:{port}/" in "".join(seen)
        wait_line(lines, seen, r"target up", FIRST_SCRAPE)
        started = children(proc.pid)
        assert len(started) == 2, started  # the relay and prometheus

        prometheus = f"http://127.0.0.1:{prometheus_port}"
        targets = get_json(f"{prometheus}/api/v1/targets")["data"]["activeTargets"]  # type: ignore[index]
        assert [(t["labels"]["job"], t["labels"]["instance"], t["health"]) for t in targets] == [
            ("fastrelay", f"127.0.0.1:{metrics_port}", "up")
        ]
        groups = get_json(f"{prometheus}/api/v1/rules")["data"]["groups"]  # type: ignore[index]
        shipped = yaml.safe_load(ALERTS.read_text())["groups"]
        assert sorted((g["name"], len(g["rules"])) for g in groups) == sorted(
            (g["name"], len(g["rules"])) for g in shipped
        )
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=TIMEOUT) as page:
            assert page.status == 200

        proc.send_signal(signal.SIGINT)
        assert proc.wait(TIMEOUT * 6) == 0, "".join(seen)
        wait_line(lines, seen, r"observe: stopped", TIMEOUT)
        assert not [pid for pid in started if alive(pid)], "processes left running"
        assert not workdir.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in started:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        reader.join(TIMEOUT)  # the pipe's end: every process holding it is gone
        assert proc.stdout is not None
        proc.stdout.close()
