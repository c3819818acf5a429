"""The Grafana dashboard and the alert rules, unchanged, on a ``--workers 2`` tree: one scrape
target (the supervisor's --metrics-port) for its supervisor, nats-server, ingest and edges.

One stack per module, all on 127.0.0.1: ``fastrelay sim``, ``fastrelay serve --workers 2`` on it
(REST history from the simulator too), readers on both markets and a chart opener so every row
has data, and Debian's prometheus scraping the metrics port every second with
grafana/alerts.yml loaded. The helpers are test_observability's.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest
import yaml

from tests.test_observability import (
    ALERTS,
    ChartOpener,
    Proc,
    Reader,
    Stack,
    eventually,
    free_port,
    grafana_regex_escape,
    http_get,
    label_values,
    promtool,
    reader_flows,
    require_prometheus,
    run_queries,
    start_prometheus,
    targets,
    variables,
    wait_scraped,
)

pytestmark = pytest.mark.slow


class Tree(Stack):
    """The Prometheus stack of test_observability.py, with a --workers tree as its relay."""


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tree]:
    require_prometheus()
    workdir = tmp_path_factory.mktemp("workers-observability")
    tree = Tree(workdir, free_port(), free_port(), free_port(), free_port())
    fastrelay = [sys.executable, "-m", "fastrelay"]

    def answers(url: str) -> bool:
        tree.assert_running()
        return http_get(url)[0] == 200

    def all_serving() -> bool:
        tree.assert_running()
        text = tree.metrics_text()
        return all(f'fastrelay_worker_up{{worker="{name}"}} 1.0' in text for name in ("edge-1", "edge-2"))

    with contextlib.ExitStack() as cleanup:
        cleanup.callback(lambda: [proc.stop() for proc in reversed(tree.procs.values())])
        cleanup.callback(lambda: [r.stop() for r in (*tree.readers, *tree.openers)])
        tree.procs["sim"] = Proc.start(
            "sim",
            [*fastrelay, "sim", "--host", "127.0.0.1", "--port", str(tree.sim_port), "--rate", "200",
             "--events-per-frame", "5", "--log-level", "warning"],
            workdir,
        )  # fmt: skip
        eventually(lambda: answers(f"http://127.0.0.1:{tree.sim_port}/sim/health"), "the simulator")
        tree.procs["tree"] = Proc.start(
            "tree",
            [*fastrelay, "serve", "--workers", "2", "--host", "127.0.0.1", "--port", str(tree.relay_port),
             "--metrics-port", str(tree.metrics_port), "--metrics-interval", "0.25",
             "--upstream", f"ws://127.0.0.1:{tree.sim_port}", "--api-key", "sim-key",
             "--rest-url", f"http://127.0.0.1:{tree.sim_port}", "--history-per-minute", "600",
             "--markets", "stocks,options", "--linger", "0.2", "--log-level", "warning"],
            workdir,
        )  # fmt: skip
        eventually(lambda: answers(f"http://127.0.0.1:{tree.metrics_port}/readyz"), "the tree ready", 30)
        eventually(all_serving, "both edges serving")
        for path in ("stocks", "options"):
            for _ in range(4):  # over both edges, most likely
                reader = Reader(f"ws://127.0.0.1:{tree.relay_port}/{path}", "T.*,Q.*")
                tree.readers.append(reader)
                reader.start()
        for reader in tree.readers:
            eventually(partial(reader_flows, reader), f"events at {reader.url}")
        opener = ChartOpener(tree.relay_port)
        tree.openers.append(opener)
        opener.start()
        eventually(lambda: opener.answers >= 2 or None, "REST answers from the edges")
        tree.procs["prometheus"] = start_prometheus(workdir, tree.prom_port, [tree.instance])
        wait_scraped(tree, [tree.instance])
        yield tree


def test_the_tree_is_one_instance_of_role_workers(tree: Tree) -> None:
    found = variables()
    (job,) = label_values(tree, found["job"]["query"], {})
    assert label_values(tree, found["role"]["query"], {"job": job}) == ["workers"]
    all_roles = found["role"]["allValue"]
    assert label_values(tree, found["instance"]["query"], {"job": job, "role": all_roles}) == [tree.instance]


def test_every_dashboard_query_returns_data_for_the_tree(tree: Tree) -> None:
    """Every row, the scale-out one and the REST history one included, unchanged: no query
    error (the joins on (job, instance) stay one series per instance) and finite data."""
    found = variables()
    selections = {
        "All": {
            "job": "fastrelay",
            "role": found["role"]["allValue"],
            "instance": found["instance"]["allValue"],
        },
        "the tree": {
            "job": "fastrelay",
            "role": grafana_regex_escape("workers"),
            "instance": grafana_regex_escape(tree.instance),
        },
    }
    problems: list[str] = []
    for name, values in selections.items():
        _, found_problems = run_queries(tree, targets(), values)
        problems += [f"({name}) {problem}" for problem in found_problems]
    assert not problems, "\n".join(problems)


def test_sums_by_instance_add_up_every_worker(tree: Tree) -> None:
    """The tree's clients are the edges' (8 readers), its CPU every process's (5 of them)."""
    clients = tree.query(f'sum by (instance) (fastrelay_clients{{instance="{tree.instance}"}})')
    assert [float(s["value"][1]) for s in clients] == [8.0]
    cpu = tree.query(f'count by (instance) (process_cpu_seconds_total{{instance="{tree.instance}"}})')
    assert [float(s["value"][1]) for s in cpu] == [5.0]


def test_every_rule_evaluates_and_none_fires_on_a_healthy_tree(tree: Tree) -> None:
    expected = {
        rule.get("alert") or rule.get("record")
        for group in yaml.safe_load(ALERTS.read_text())["groups"]
        for rule in group["rules"]
    }

    def evaluated() -> list[dict[str, Any]] | None:
        rules = [rule for group in tree.api("/api/v1/rules")["groups"] for rule in group["rules"]]
        return rules if all(rule["health"] != "unknown" for rule in rules) else None

    loaded = eventually(evaluated, "every rule evaluated once")
    assert {rule["name"] for rule in loaded} == expected
    assert not [f"{r['name']}: {r.get('lastError')}" for r in loaded if r["health"] != "ok"]
    assert not [r["name"] for r in loaded if r.get("state") in ("pending", "firing")]


def test_promtool_accepts_the_tree_page(tree: Tree) -> None:
    result = promtool("check", "metrics", stdin=tree.metrics_text().encode())
    assert result.returncode == 0, (result.stdout + result.stderr).decode()
