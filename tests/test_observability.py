"""The Grafana dashboard and the Prometheus rules against a real Prometheus and a real relay.

One stack per module, all on 127.0.0.1: ``fastrelay sim`` (the simulated Massive feed),
``fastrelay serve`` on it with a --metrics-port, clients reading ``T.*``/``Q.*`` so data
flows, and Debian's ``prometheus`` (installed by ``make test``) scraping the metrics port
every second with the rules of grafana/alerts.yml loaded. Every PromQL expression of the
dashboard is evaluated through Prometheus' HTTP API with Grafana's variables substituted,
and the upstream-down and slow-consumer alerts are provoked until they go pending.
Every wait polls the condition it needs, bounded by a timeout; every process started is
stopped at the end.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from base64 import b64encode
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

import orjson
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from bench.procs import free_port
from tests.utils import TIMEOUT

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
GRAFANA = ROOT / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "fastrelay.json"
ALERTS = GRAFANA / "alerts.yml"
ALERT_TESTS = GRAFANA / "alerts.test.yml"
SCRAPE_CONFIG = GRAFANA / "prometheus.yml"

SCRAPE_SECONDS = 1
# Grafana's $__rate_interval is max($__interval + scrape interval, 4 x scrape interval);
# 4 x the scrape interval is the shortest it gets: the hardest case for rate().
RATE_INTERVAL = f"{4 * SCRAPE_SECONDS}s"
MAX_CLIENT_BUFFER = 64 * 1024
T = TypeVar("T")


# --- processes and polling ---------------------------------------------------------------


def reader_flows(reader: Reader) -> bool:
    return reader.error is None and reader.events >= 20


class ProcessDied(Exception):
    """A child process of the stack exited: no point in waiting any longer."""


def eventually(check: Callable[[], T | None], what: str, timeout: float = TIMEOUT * 2) -> T:
    """Poll ``check`` until it returns a truthy value; its exceptions but ProcessDied mean 'not yet'."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            result = check()
            if result:
                return result
            last = result
        except (OSError, AssertionError, KeyError, ValueError) as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}")
        time.sleep(0.1)


@dataclass
class Proc:
    """A child process whose output goes to a log file, stopped by its own pid."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, name: str, cmd: list[str], workdir: Path) -> Proc:
        log = workdir / f"{name}.log"
        env = {
            k: v for k, v in os.environ.items() if not k.startswith("FASTRELAY_") and k != "MASSIVE_API_KEY"
        }
        with log.open("wb") as out:
            popen = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
        return cls(name, popen, log)

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def assert_running(self) -> None:
        if self.popen.poll() is not None:
            raise ProcessDied(f"{self.name} exited with {self.popen.returncode}:\n{self.tail()}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(TIMEOUT)


def http_get(url: str, timeout: float = TIMEOUT) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


# --- clients -------------------------------------------------------------------------------


class Reader(threading.Thread):
    """A Massive-protocol client in a thread, reading everything until stopped."""

    def __init__(self, url: str, channels: str) -> None:
        super().__init__(daemon=True, name=f"reader {url} {channels}")
        self.url = url
        self.channels = channels
        self.events = 0
        self.error: BaseException | None = None
        self._stop_event = threading.Event()

    def run(self) -> None:
        try:
            with connect(self.url, open_timeout=TIMEOUT, max_size=None) as ws:
                ws.send(orjson.dumps({"action": "auth", "params": "token"}).decode())
                ws.send(orjson.dumps({"action": "subscribe", "params": self.channels}).decode())
                while not self._stop_event.is_set():
                    try:
                        frame = ws.recv(timeout=0.2)
                    except TimeoutError:
                        continue
                    self.events += sum(1 for m in orjson.loads(frame) if m.get("ev") != "status")
        except (OSError, ConnectionClosed, TimeoutError) as exc:
            self.error = exc

    def stop(self) -> None:
        self._stop_event.set()
        self.join(TIMEOUT)


class ChartOpener(threading.Thread):
    """A REST client of the relay opening charts, as dashboards do: a new range every 0.3 s (a
    miss), and the same one again (a hit), so the chart-history panels have data."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True, name="chart opener")
        self.port = port
        self.answers = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        end = int(time.time() * 1000)
        while not self._stop_event.wait(0.3):
            end += 1
            path = f"/v2/aggs/ticker/AAPL/range/1/minute/{end - 3_600_000}/{end}"
            for _ in range(2):
                status, _ = http_get(f"http://127.0.0.1:{self.port}{path}")
                self.answers += status == 200

    def stop(self) -> None:
        self._stop_event.set()
        self.join(TIMEOUT)


def _masked_text(payload: bytes) -> bytes:
    """A client-to-server text frame (masked with a zero key, RFC 6455 5.3)."""
    assert len(payload) < 126
    return bytes((0x81, 0x80 | len(payload))) + b"\0\0\0\0" + payload


def stuck_client(port: int, channels: str) -> socket.socket:
    """A WebSocket client with a tiny receive window that never reads: a slow consumer."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(TIMEOUT)
    sock.connect(("127.0.0.1", port))
    key = b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /stocks HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        + _masked_text(b'{"action":"auth","params":"token"}')
        + _masked_text(f'{{"action":"subscribe","params":"{channels}"}}'.encode())
    )
    return sock


# --- the stack -----------------------------------------------------------------------------


class PrometheusApi:
    """Prometheus' HTTP API on 127.0.0.1:``prom_port`` (also used by test_scaleout_observability)."""

    prom_port: int

    @property
    def prom(self) -> str:
        return f"http://127.0.0.1:{self.prom_port}"

    def assert_running(self) -> None:
        """Raise ProcessDied when a process of the stack has exited."""

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.prom}{path}" + (f"?{urlencode(params)}" if params else "")
        status, body = http_get(url)
        payload = json.loads(body)
        assert status == 200 and payload["status"] == "success", f"{path} {params}: {status} {payload}"
        return payload["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", data
        return list(data["result"])

    def alerts(self, name: str) -> list[dict[str, Any]]:
        self.assert_running()
        return [a for a in self.api("/api/v1/alerts")["alerts"] if a["labels"]["alertname"] == name]


@dataclass
class Stack(PrometheusApi):
    workdir: Path
    sim_port: int
    relay_port: int
    metrics_port: int
    prom_port: int
    procs: dict[str, Proc] = field(default_factory=dict)
    readers: list[Reader] = field(default_factory=list)
    openers: list[ChartOpener] = field(default_factory=list)

    @property
    def instance(self) -> str:
        return f"127.0.0.1:{self.metrics_port}"

    def assert_running(self) -> None:
        for proc in self.procs.values():
            proc.assert_running()

    def sim_fault(self, name: str, market: str) -> None:
        status, body = http_get(f"http://127.0.0.1:{self.sim_port}/sim/fault/{name}?market={market}")
        assert status == 200, body

    def metrics_text(self) -> str:
        status, body = http_get(f"http://127.0.0.1:{self.metrics_port}/metrics")
        assert status == 200, body
        return body.decode()

    def metric(self, name: str, **labels: str) -> float:
        for family in text_string_to_metric_families(self.metrics_text()):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return float(sample.value)
        raise KeyError(name)


def prometheus_config(targets: list[str], rules: Path) -> dict[str, Any]:
    """grafana/prometheus.yml with these targets, 1 s intervals, no Alertmanager."""
    config: dict[str, Any] = yaml.safe_load(SCRAPE_CONFIG.read_text())
    config["global"].update(
        scrape_interval=f"{SCRAPE_SECONDS}s",
        scrape_timeout=f"{SCRAPE_SECONDS}s",
        evaluation_interval=f"{SCRAPE_SECONDS}s",
    )
    config.pop("alerting", None)
    config["rule_files"] = [str(rules)]
    (job,) = [c for c in config["scrape_configs"] if c["job_name"] == "fastrelay"]
    job["static_configs"] = [{"targets": targets}]
    return config


def rules_for_test(workdir: Path) -> Path:
    """alerts.yml as is, except that every group evaluates at the test's 1 s interval."""
    rules = yaml.safe_load(ALERTS.read_text())
    for group in rules["groups"]:
        group.pop("interval", None)
    path = workdir / "alerts.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return path


def start_prometheus(workdir: Path, port: int, targets: list[str]) -> Proc:
    """Debian's prometheus on 127.0.0.1:``port`` scraping ``targets`` with the rules loaded."""
    config = workdir / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus_config(targets, rules_for_test(workdir)), sort_keys=False))
    return Proc.start(
        "prometheus",
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        workdir,
    )


def wait_scraped(prometheus: PrometheusApi, instances: list[str]) -> None:
    """Prometheus ready, with enough scrapes of each instance that every window of
    $__rate_interval holds several samples."""

    def ready() -> bool:
        prometheus.assert_running()
        return http_get(f"{prometheus.prom}/-/ready")[0] == 200

    def scraped() -> bool:
        prometheus.assert_running()
        found = prometheus.query(
            f'count_over_time(fastrelay_build_info{{job="fastrelay"}}[{RATE_INTERVAL}]) >= 3'
        )
        return {sample["metric"]["instance"] for sample in found} >= set(instances)

    eventually(ready, "prometheus ready", timeout=TIMEOUT * 3)
    eventually(scraped, f"Prometheus scraping {', '.join(instances)}", timeout=TIMEOUT * 3)


def require_prometheus() -> None:
    for tool in ("prometheus", "promtool"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not found: `make test` installs Debian's prometheus package")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_prometheus()
    workdir = tmp_path_factory.mktemp("observability")
    stack = Stack(workdir, free_port(), free_port(), free_port(), free_port())
    fastrelay = [sys.executable, "-m", "fastrelay"]

    def stop_processes() -> None:
        for proc in reversed(stack.procs.values()):
            proc.stop()

    def stop_readers() -> None:
        for reader in stack.readers:
            reader.stop()
        for opener in stack.openers:
            opener.stop()

    def start(name: str, cmd: list[str]) -> None:
        stack.procs[name] = Proc.start(name, cmd, workdir)

    def answers(url: str) -> bool:
        stack.assert_running()
        return http_get(url)[0] == 200

    with contextlib.ExitStack() as cleanup:
        # Last registered runs first: the readers, then the processes, newest first.
        cleanup.callback(stop_processes)
        cleanup.callback(stop_readers)

        start(
            "sim",
            [
                *(*fastrelay, "sim", "--host", "127.0.0.1", "--port", str(stack.sim_port)),
                *("--rate", "200", "--events-per-frame", "5", "--log-level", "warning"),
            ],
        )
        eventually(lambda: answers(f"http://127.0.0.1:{stack.sim_port}/sim/health"), "the simulator")
        start(
            "relay",
            [
                *(*fastrelay, "serve", "--host", "127.0.0.1", "--port", str(stack.relay_port)),
                *("--metrics-port", str(stack.metrics_port), "--metrics-interval", "0.25"),
                *("--upstream", f"ws://127.0.0.1:{stack.sim_port}", "--api-key", "sim-key"),
                *("--rest-url", f"http://127.0.0.1:{stack.sim_port}", "--history-per-minute", "600"),
                *("--markets", "stocks,options", "--max-client-buffer", str(MAX_CLIENT_BUFFER)),
                *("--auth-retry", "0.5", "--max-connections-cooldown", "0.5", "--linger", "0.2"),
                *("--backoff-base", "0.05", "--backoff-cap", "0.2", "--log-level", "warning"),
            ],
        )
        eventually(lambda: answers(f"http://127.0.0.1:{stack.metrics_port}/readyz"), "the relay ready")
        for path, channels in (("stocks", "T.*,Q.*"), ("options", "T.*,Q.*")):
            reader = Reader(f"ws://127.0.0.1:{stack.relay_port}/{path}", channels)
            stack.readers.append(reader)
            reader.start()
        for reader in stack.readers:
            eventually(partial(reader_flows, reader), f"events at {reader.url}")
        opener = ChartOpener(stack.relay_port)
        stack.openers.append(opener)
        opener.start()
        eventually(lambda: opener.answers >= 2 or None, "REST answers from the relay")

        stack.procs["prometheus"] = start_prometheus(workdir, stack.prom_port, [stack.instance])
        wait_scraped(stack, [stack.instance])
        yield stack


# --- the dashboard -------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


# The row of the NATS metrics, which only an ingest and its edges export (test_scaleout_observability).
SCALEOUT_ROW = "Scale-out (NATS)"
# History from Massive's REST API is a single relay's (edges hold no key): not in a scale-out.
HISTORY_ROW = "Chart history (Massive REST)"


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def panel_rows() -> dict[int, str]:
    """Panel id -> the title of the row it sits under."""
    rows, row = {}, ""
    for panel in dashboard()["panels"]:
        if panel["type"] == "row":
            row = panel["title"]
        else:
            rows[panel["id"]] = row
    return rows


def targets(rows: Callable[[str], bool] = lambda row: True) -> list[tuple[str, str]]:
    """(panel title, expr) of every query of the dashboard, in the rows ``rows`` accepts."""
    row_of = panel_rows()
    return [(p["title"], t["expr"]) for p in panels() if rows(row_of[p["id"]]) for t in p["targets"]]


def single_relay_row(row: str) -> bool:
    return row != SCALEOUT_ROW


def scaleout_row(row: str) -> bool:
    return row != HISTORY_ROW


def variables() -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard()["templating"]["list"]}


PROMQL_WORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right"}
PROMQL_WORDS |= {"bool", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords or labels."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][\w:]*", text):
        if text[match.end() :].lstrip().startswith("(") or match.group().lower() in PROMQL_WORDS:
            continue
        names.add(match.group())
    return names


def range_functions(expr: str) -> list[str]:
    """The argument of every rate(, irate( and increase( call."""
    calls = []
    for match in re.finditer(r"\b(?:rate|irate|increase)\s*\(", expr):
        depth, start = 1, match.end()
        for index in range(start, len(expr)):
            depth += {"(": 1, ")": -1}.get(expr[index], 0)
            if depth == 0:
                calls.append(expr[start:index])
                break
    return calls


def grafana_regex_escape(value: str) -> str:
    """What Grafana's Prometheus datasource puts in a regex matcher for one selected value."""
    return re.sub(r"([\\^$*+?.()|{}\[\]])", r"\\\\\1", value)


def substitute(expr: str, values: dict[str, str]) -> str:
    """Grafana's interpolation of the dashboard's variables (as $name and ${name})."""
    text = expr.replace("$__rate_interval", RATE_INTERVAL).replace("${__rate_interval}", RATE_INTERVAL)
    for name, value in values.items():
        text = text.replace(f"${{{name}}}", value)
        text = re.sub(rf"\${name}\b", value.replace("\\", "\\\\"), text)
    assert "$" not in text, f"unsubstituted variable in {text}"
    return text


def label_values(stack: Stack, query: str, values: dict[str, str]) -> list[str]:
    """A Grafana label_values(selector, label) variable, resolved through Prometheus."""
    match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", substitute(query, values))
    assert match, query
    selector, label = match.groups()
    return list(stack.api(f"/api/v1/label/{label}/values", **{"match[]": selector}))


def load_generator() -> Any:
    spec = importlib.util.spec_from_file_location("build_dashboard", GRAFANA / "build_dashboard.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dashboard_json_is_generated_and_current() -> None:
    """The committed JSON is exactly what build_dashboard.py writes (edit the generator, not the JSON)."""
    assert load_generator().render() == DASHBOARD.read_text(), (
        "run: .venv/bin/python grafana/build_dashboard.py"
    )


def test_dashboard_static_checks(stack: Stack) -> None:
    """Variables, datasource/unit/title/description on each panel, $__rate_interval, known metrics."""
    board = dashboard()
    assert board["uid"] == "fastrelay" and board["title"] and board["schemaVersion"] >= 39
    found = variables()
    assert found["datasource"]["type"] == "datasource" and found["datasource"]["query"] == "prometheus"
    for name in ("job", "role", "instance"):
        assert found[name]["type"] == "query"
        assert found[name]["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    assert load_generator().SCALEOUT_ROW == SCALEOUT_ROW
    assert SCALEOUT_ROW in panel_rows().values()
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"

    on_metrics = {s.name for f in text_string_to_metric_families(stack.metrics_text()) for s in f.samples}
    row_of = panel_rows()
    problems = []
    for panel in panels():
        title = panel.get("title")
        if not title or not panel.get("description"):
            problems.append(f"panel {panel['id']}: title and description required")
        if panel.get("datasource") != {"type": "prometheus", "uid": "${datasource}"}:
            problems.append(f"{title}: datasource must be the $datasource variable")
        if not panel.get("fieldConfig", {}).get("defaults", {}).get("unit"):
            problems.append(f"{title}: no unit")
        grid = panel["gridPos"]
        if grid["x"] + grid["w"] > 24:
            problems.append(f"{title}: wider than the grid")
        if not panel.get("targets"):
            problems.append(f"{title}: no query")
        for target in panel.get("targets", []):
            expr = target["expr"]
            if target.get("datasource") != panel.get("datasource"):
                problems.append(f"{title}: target {target['refId']} has another datasource")
            for argument in range_functions(expr):
                if not argument.rstrip().endswith("[$__rate_interval]"):
                    problems.append(f"{title}: range not $__rate_interval in {argument!r}")
            if 'job="$job"' not in expr or 'instance=~"$instance"' not in expr:
                problems.append(f"{title}: not filtered by $job and $instance: {expr}")
            names = metric_names(expr)
            if not names:
                problems.append(f"{title}: no metric found in {expr}")
            if single_relay_row(row_of[panel["id"]]):  # NATS metrics: test_scaleout_observability
                problems += [f"{title}: {name} is not on /metrics" for name in sorted(names - on_metrics)]
    for name in ("job", "role", "instance"):
        selector = re.fullmatch(r"label_values\((.+),\s*\w+\)", found[name]["query"])
        assert selector, found[name]["query"]
        problems += [
            f"variable {name}: {n} is not on /metrics" for n in metric_names(selector[1]) - on_metrics
        ]
    assert not problems, "\n".join(problems)


def github_anchor(heading: str) -> str:
    """The anchor GitHub (and most Markdown renderers) give a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def doc_anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)  # no headings in code
    return {github_anchor(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, re.M)}


def docs_link_problem(url: str, docs_url: str) -> str | None:
    """Why ``url`` (under ``docs_url``) does not name a file of docs/ and one of its headings."""
    if not url.startswith(docs_url + "/"):
        return f"{url}: not under {docs_url}/"
    page, _, anchor = url.removeprefix(docs_url + "/").partition("#")
    path = ROOT / "docs" / page
    if not path.is_file():
        return f"{url}: no docs/{page}"
    if anchor and anchor not in doc_anchors(path):
        return f"{url}: no heading #{anchor} in docs/{page}"
    return None


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_github_anchors_and_link_checks_can_fail() -> None:
    """The link check's own parts: anchors as GitHub makes them, and links that must not pass."""
    assert github_anchor("Scale-out (ingest and edges)") == "scale-out-ingest-and-edges"
    assert github_anchor("FastrelayTargetDown") == "fastrelaytargetdown"
    base = load_generator().DOCS_URL
    assert docs_link_problem(f"{base}/sre.md#fastrelaytargetdown", base) is None
    assert docs_link_problem(f"{base}/sre.md#no-such-heading", base)
    assert docs_link_problem(f"{base}/nowhere.md", base)
    assert docs_link_problem("https://example.com/sre.md", base)


def test_every_alert_has_a_runbook_url_to_its_heading() -> None:
    """runbook_url on every alert, under the dashboard's docs base, naming a heading of docs/."""
    base = load_generator().DOCS_URL
    problems = []
    for rule in alert_rules():
        url = rule.get("annotations", {}).get("runbook_url")
        if not url:
            problems.append(f"{rule['alert']}: no runbook_url")
            continue
        if not url.endswith("#" + rule["alert"].lower()):
            problems.append(f"{rule['alert']}: {url} is not its own runbook")
        problems += [p for p in [docs_link_problem(url, base)] if p]
    assert not problems, "\n".join(problems)


def test_dashboard_links_to_every_runbook() -> None:
    """Dashboard and panel links resolve in docs/; every alert's runbook is linked from a panel."""
    base = load_generator().DOCS_URL
    board = dashboard()
    links = [link["url"] for link in board["links"]]
    linked_from_panels = set()
    for panel in panels():
        for link in panel.get("links", []):
            links.append(link["url"])
            linked_from_panels.add(link["url"].partition("#")[2])
    assert board["links"], "no dashboard links to the docs"
    problems = [p for p in (docs_link_problem(url, base) for url in links) if p]
    assert not problems, "\n".join(problems)
    alerts = {rule["alert"].lower() for rule in alert_rules()}
    assert alerts - linked_from_panels == set(), "alerts without a panel linking their runbook"


def test_graph_legends_are_tables_with_min_max_mean() -> None:
    """Every graph's legend is a table with min, max and mean, so series compare."""
    graphs = [p for p in panels() if p["type"] == "timeseries"]
    assert graphs
    problems = []
    for panel in graphs:
        legend = panel["options"]["legend"]
        if legend["displayMode"] != "table" or not {"min", "max", "mean"} <= set(legend["calcs"]):
            problems.append(f"{panel['title']}: legend {legend}")
    assert not problems, "\n".join(problems)


def panel(title: str) -> dict[str, Any]:
    (found,) = [p for p in panels() if p["title"] == title]
    return found


def dashed_line_at(found: dict[str, Any]) -> float:
    """The value of a panel's one dashed threshold line."""
    defaults = found["fieldConfig"]["defaults"]
    assert defaults["custom"]["thresholdsStyle"]["mode"] == "dashed", found["title"]
    steps = [step["value"] for step in defaults["thresholds"]["steps"] if step["value"] is not None]
    assert len(steps) == 1, steps
    return float(steps[0])


def limit_query(found: dict[str, Any]) -> str:
    """The expr of a panel's query drawn as a dashed red limit line (``limit_line``)."""
    styled = []
    for override in found["fieldConfig"]["overrides"]:
        props = {prop["id"]: prop["value"] for prop in override["properties"]}
        if props.get("custom.lineStyle", {}).get("fill") == "dash" and props["color"]["fixedColor"] == "red":
            styled.append(override["matcher"]["options"])
    (ref,) = styled
    (expr,) = [t["expr"] for t in found["targets"] if t["refId"] == ref]
    return str(expr)


def test_backlog_limit_is_the_relays_own_and_cpu_lines_match_the_alert() -> None:
    """The backlog panel's dashed line is the limit the relays export (so a relay run with another
    --max-client-buffer draws its own); the CPU panel's title, unit and line agree with each other
    and with FastrelayCpuSaturated."""
    assert metric_names(limit_query(panel("Largest client backlog"))) == {
        "fastrelay_client_buffer_limit_bytes",
        "fastrelay_build_info",
    }
    cpu = [p for p in panels() if p["title"].startswith("CPU")]
    assert [p["title"] for p in cpu] == ["CPU (% of one core)"]
    assert cpu[0]["fieldConfig"]["defaults"]["unit"] == "percentunit"  # 1.0 shown as 100 %
    (saturated,) = [r for r in alert_rules() if r["alert"] == "FastrelayCpuSaturated"]
    threshold = re.search(r"rate\(process_cpu_seconds_total\[5m\]\) > ([\d.]+)", saturated["expr"])
    assert threshold and dashed_line_at(cpu[0]) == float(threshold[1])


def test_version_and_uptime_stat_shows_the_relay(stack: Stack) -> None:
    """The Version and uptime stat names the relay's version and counts from its start."""
    from fastrelay import __version__

    found = panel("Version and uptime")
    assert found["type"] == "stat" and found["fieldConfig"]["defaults"]["unit"] == "dtdurations"
    (target,) = found["targets"]
    assert "{{version}}" in target["legendFormat"]
    values = {"job": "fastrelay", "role": ".*", "instance": ".*"}
    results, problems = run_queries(stack, [(found["title"], target["expr"])], values)
    assert not problems, problems
    (sample,) = results[found["title"], target["expr"]]
    assert sample["metric"]["version"] == __version__ and sample["metric"]["role"] == "single"
    assert 0 < float(sample["value"][1]) < 3600


def test_metric_names_and_range_arguments_are_parsed() -> None:
    """The static check's own parser finds metrics and rate() windows (so it can fail)."""
    expr = (
        'histogram_quantile(0.99, sum by (instance, le) (rate(a_bucket{job="$job"}[$__rate_interval])))'
        " / on (job) group_left () increase(b_total[5m]) and up offset 1m"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "up"}
    assert range_functions(expr) == ['a_bucket{job="$job"}[$__rate_interval]', "b_total[5m]"]


def run_queries(
    prometheus: PrometheusApi, queries: list[tuple[str, str]], values: dict[str, str]
) -> tuple[dict[tuple[str, str], list[dict[str, Any]]], list[str]]:
    """Each (title, expr) with Grafana's variables substituted: its finite samples, and problems
    (a query error, or no finite sample)."""
    results, problems = {}, []
    for title, expr in queries:
        query = substitute(expr, values)
        try:
            result = prometheus.query(query)
        except AssertionError as exc:
            problems.append(f"{title}: {query}: {exc}")
            continue
        finite = [s for s in result if math.isfinite(float(s["value"][1]))]
        if not finite:
            problems.append(f"{title}: no finite sample from {query}: {result}")
        results[title, expr] = finite
    return results, problems


def test_backlog_limit_line_is_the_configured_limit(stack: Stack) -> None:
    """With --max-client-buffer 64 KiB (not the default), the backlog panel's line is at 64 KiB."""
    found = variables()
    every = {"role": found["role"]["allValue"], "instance": found["instance"]["allValue"]}
    values = {"job": "fastrelay", **every}
    query = substitute(limit_query(panel("Largest client backlog")), values)
    (sample,) = stack.query(query)
    assert float(sample["value"][1]) == MAX_CLIENT_BUFFER


def test_every_dashboard_query_returns_data(stack: Stack) -> None:
    """Each query, with Grafana's variables resolved as Grafana does, returns finite samples."""
    found = variables()
    jobs = label_values(stack, found["job"]["query"], {})
    assert jobs == ["fastrelay"], jobs
    roles = label_values(stack, found["role"]["query"], {"job": jobs[0]})
    assert roles == ["single"], roles
    all_roles = found["role"]["allValue"]
    instances = label_values(stack, found["instance"]["query"], {"job": jobs[0], "role": all_roles})
    assert instances == [stack.instance], instances
    selections = {
        "All": {"job": jobs[0], "role": all_roles, "instance": found["instance"]["allValue"]},
        "one instance": {
            "job": jobs[0],
            "role": grafana_regex_escape(roles[0]),
            "instance": grafana_regex_escape(instances[0]),
        },
    }
    problems = []
    for selection, values in selections.items():
        _, found_problems = run_queries(stack, targets(single_relay_row), values)
        problems += [f"({selection}) {problem}" for problem in found_problems]
    assert not problems, "\n".join(problems)


# --- the rules -----------------------------------------------------------------------------


def promtool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["promtool", *args], input=stdin, capture_output=True, timeout=TIMEOUT * 6, check=False
    )


def test_promtool_check_and_unit_tests_pass() -> None:
    """promtool: the rules and the scrape config are valid, and the rule unit tests pass."""
    for args in (
        ("check", "rules", str(ALERTS)),
        ("check", "config", str(SCRAPE_CONFIG)),
        ("test", "rules", str(ALERT_TESTS)),
    ):
        result = promtool(*args)
        assert result.returncode == 0, (
            f"promtool {' '.join(args)}:\n{result.stdout.decode()}{result.stderr.decode()}"
        )


def test_promtool_check_metrics_passes_on_relay_metrics(stack: Stack) -> None:
    """The relay's /metrics passes promtool's exposition-format lint."""
    result = promtool("check", "metrics", stdin=stack.metrics_text().encode())
    assert result.returncode == 0, (result.stdout + result.stderr).decode()


def test_every_rule_loads_and_evaluates_in_prometheus(stack: Stack) -> None:
    """Prometheus loaded every group and rule of alerts.yml, and each evaluates without error."""
    expected = {
        (group["name"], rule.get("alert") or rule.get("record"))
        for group in yaml.safe_load(ALERTS.read_text())["groups"]
        for rule in group["rules"]
    }

    def evaluated() -> list[dict[str, Any]] | None:
        rules = [
            {**rule, "group": group["name"]}
            for group in stack.api("/api/v1/rules")["groups"]
            for rule in group["rules"]
        ]
        return rules if all(rule["health"] != "unknown" for rule in rules) else None

    loaded = eventually(evaluated, "every rule evaluated once")
    assert {(rule["group"], rule["name"]) for rule in loaded} == expected
    broken = [f"{rule['name']}: {rule.get('lastError')}" for rule in loaded if rule["health"] != "ok"]
    assert not broken, broken


def test_upstream_down_alert_goes_pending(stack: Stack) -> None:
    """Massive refusing the options key keeps that upstream down: the alert is pending for options only."""
    stack.sim_fault("auth_fail", "options")
    try:
        stack.sim_fault("drop", "options")
        alerts = eventually(
            lambda: [a for a in stack.alerts("FastrelayUpstreamDown") if a["state"] == "pending"],
            "FastrelayUpstreamDown pending",
            timeout=TIMEOUT * 3,
        )
        assert [a["labels"]["market"] for a in alerts] == ["options"], alerts
        assert alerts[0]["labels"]["instance"] == stack.instance
        assert "options" in alerts[0]["annotations"]["summary"]
        # The refusal itself has no `for`: it fires at once, naming the reason.
        refused = eventually(
            lambda: [a for a in stack.alerts("FastrelayUpstreamRefused") if a["state"] == "firing"],
            "FastrelayUpstreamRefused firing",
        )
        assert {(a["labels"]["market"], a["labels"]["reason"]) for a in refused} == {
            ("options", "auth_failed")
        }
    finally:
        stack.sim_fault("auth_ok", "options")
    eventually(
        lambda: http_get(f"http://127.0.0.1:{stack.metrics_port}/readyz")[0] == 200, "options upstream back"
    )


def test_slow_consumer_alert_goes_pending(stack: Stack) -> None:
    """More stuck clients than the alert's threshold are dropped: the alert goes pending."""
    (rule,) = [
        r
        for g in yaml.safe_load(ALERTS.read_text())["groups"]
        for r in g["rules"]
        if r.get("alert") == "FastrelaySlowConsumerDrops"
    ]
    limit = re.search(r">\s*(\d+)\s*$", rule["expr"].strip())
    assert limit, rule["expr"]
    threshold = int(limit[1])
    before = stack.metric("fastrelay_client_slow_consumer_drops_total")
    assert not stack.alerts("FastrelaySlowConsumerDrops"), "slow-consumer alert before any drop"
    stuck = []
    try:
        for _ in range(threshold + 3):
            stuck.append(stuck_client(stack.relay_port, "T.*,Q.*"))

        def dropped() -> bool:
            # Frames over 1 MiB fill the stuck clients' socket buffers and backlogs within a second.
            stack.sim_fault("huge", "stocks")
            return stack.metric("fastrelay_client_slow_consumer_drops_total") >= before + threshold + 3

        eventually(dropped, f"{threshold + 3} slow-consumer drops", timeout=TIMEOUT * 3)
        alerts = eventually(
            lambda: [a for a in stack.alerts("FastrelaySlowConsumerDrops") if a["state"] == "pending"],
            "FastrelaySlowConsumerDrops pending",
            timeout=TIMEOUT * 3,
        )
        assert alerts[0]["labels"]["instance"] == stack.instance
        assert float(alerts[0]["value"]) > threshold
    finally:
        for sock in stuck:
            sock.close()
    # The readers were never slow: they are still connected and receiving.
    for reader in stack.readers:
        assert reader.error is None and reader.is_alive(), reader.error
