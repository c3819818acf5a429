"""What a ``--workers`` tree runs, derived from the tree's own settings; pure.

Every process of the tree gets the tree's ``RelayConfig`` with the few fields its part
changes (docs/workers.md, "Process tree"):

* the **ingest** holds the upstreams; it listens on a private loopback port (its probes and
  metrics), never on the client port (``SO_REUSEPORT`` would hand it clients);
* each **edge** listens on the client port with ``SO_REUSEPORT`` and serves clients exactly
  as ``serve`` does; its probes and metrics go to a private loopback port when the tree has
  a ``--metrics-port`` (which the supervisor then serves for the whole tree);
* all of them reach the private nats-server with the tree's generated NKey.

Limits that count per process (connections, per-address caps, channels per address) stay
per edge: an address may open up to N times ``--max-connections-per-address`` over the tree.
The account-wide REST budget and cache are split evenly over the edges, so the account's
total holds; the ingest serves no clients and makes no REST calls.
"""

from __future__ import annotations

from dataclasses import replace

from fastrelay.config import ConfigError, RelayConfig

INGEST = "ingest"
NATS = "nats"
SUPERVISOR = "supervisor"
LOOPBACK = "127.0.0.1"
# The share of --shutdown-timeout kept for the ingest and nats-server once the edges have
# drained their clients: the ingest closes its upstreams, then nats-server stops.
SHUTDOWN_TAIL_SHARE = 0.2
SHUTDOWN_TAIL_MAX = 2.0


def edge_name(index: int) -> str:
    return f"edge-{index}"


def edge_names(config: RelayConfig) -> list[str]:
    return [edge_name(i) for i in range(1, config.workers + 1)]


def validate(config: RelayConfig) -> None:
    """The tree's own checks, beside the relay's (``roles.validate``)."""
    if config.workers < 1:
        raise ConfigError("--workers must be at least 1 (or auto)")
    if config.workers == 1:
        return
    if config.role != "single":
        raise ConfigError(
            f"--workers={config.workers} runs its own ingest and edges: "
            f"use it with serve or run, not --role {config.role}"
        )
    if config.metrics_port is not None and config.metrics_port != 0 and config.metrics_port == config.port:
        raise ConfigError("--metrics-port must differ from --port")


def shutdown_budgets(timeout: float) -> tuple[float, float]:
    """(the edges' drain, what is left for the ingest and nats-server), in seconds."""
    tail = min(SHUTDOWN_TAIL_MAX, timeout * SHUTDOWN_TAIL_SHARE)
    return timeout - tail, tail


def _on_private_nats(config: RelayConfig, nats_url: str, seed_file: str) -> RelayConfig:
    """``config`` talking to the tree's nats-server, with the tree's NKey and nothing else."""
    return replace(
        config,
        workers=1,
        nats=nats_url,
        nats_nkey_seed=seed_file,
        nats_creds=None,
        nats_tls_ca=None,
        nats_tls_cert=None,
        nats_tls_key=None,
        lease_replicas=1,
    )


def ingest_config(tree: RelayConfig, nats_url: str, seed_file: str) -> RelayConfig:
    _, tail = shutdown_budgets(tree.shutdown_timeout)
    return replace(
        _on_private_nats(tree, nats_url, seed_file),
        role="ingest",
        host=LOOPBACK,
        port=0,
        reuse_port=False,
        metrics_port=None,
        metrics_host=None,
        instance_name=f"{tree.instance_name}-{INGEST}",
        shutdown_timeout=tail,
        rest_url="",  # no clients: the edges hold the account's REST budget
        web_root="",
    )


def edge_config(tree: RelayConfig, index: int, nats_url: str, seed_file: str) -> RelayConfig:
    drain, _ = shutdown_budgets(tree.shutdown_timeout)
    edges = tree.workers
    return replace(
        _on_private_nats(tree, nats_url, seed_file),
        role="edge",
        reuse_port=True,
        # The tree's --metrics-port is the supervisor's: an edge's probes go to a private port,
        # and its client port keeps /metrics and /readyz internal, as one process does.
        metrics_port=None if tree.metrics_port is None else 0,
        metrics_host=None if tree.metrics_port is None else LOOPBACK,
        instance_name=f"{tree.instance_name}-{edge_name(index)}",
        shutdown_timeout=drain,
        rest_per_minute=tree.rest_per_minute / edges,
        rest_cache_bytes=tree.rest_cache_bytes // edges,
    )
