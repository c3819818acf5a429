"""Checks of the scale-out settings (``--nats`` and friends), for the ingest and edge roles."""

from __future__ import annotations

from fastrelay.config import ConfigError, RelayConfig, redact
from fastrelay.scaleout import natsauth
from fastrelay.scaleout.subjects import Subjects


def validate_scaleout(config: RelayConfig) -> None:
    for server in config.nats.split(","):
        if server.strip().split("://", 1)[0] not in ("nats", "tls") or "://" not in server:
            raise ConfigError(f"--nats={redact(config.nats)!r}: expected nats://HOST:PORT (comma-separated)")
    natsauth.check(config)  # TLS, NKey and creds files: read now, not at the first connection
    try:
        Subjects(config.nats_prefix)
    except ValueError as exc:
        raise ConfigError(f"--nats-prefix: {exc}") from None
    if config.heartbeat_interval <= 0 or config.peer_timeout < 2 * config.heartbeat_interval:
        raise ConfigError("--peer-timeout must be at least twice --heartbeat-interval (> 0)")
    if not config.instance_name.strip():
        raise ConfigError("--instance-name must not be empty")
