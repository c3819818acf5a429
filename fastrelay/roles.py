"""What a fastrelay process is: one relay alone, a scale-out ingest, or an edge.

Each role is an object behind ``Role``: the server, the metrics, the command
line and the app ask it (readiness, whether new clients are admitted, its
metric collectors, its description) instead of testing ``config.role``.
``ROLES`` is the one lookup table from ``--role`` to the kind of role.

* ``single``: the relay and its Massive feeds in one process (``SingleProcess``).
* ``ingest``: the Massive feeds, everything received published to NATS; no
  clients of its own (``scaleout.ingest.Ingest``).
* ``edge``: clients served from an ingest's feed over NATS; never talks to
  Massive (``scaleout.edge.Edge``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from prometheus_client.registry import Collector

from fastrelay.config import RelayConfig, tokens_summary, upstreams_summary
from fastrelay.config import validate as config_validate
from fastrelay.relay import Relay
from fastrelay.scaleout.edge import Edge
from fastrelay.scaleout.ingest import Ingest
from fastrelay.scaleout.validation import validate_scaleout


class Role(Protocol):
    name: str
    relay: Relay
    serves_clients: bool  # an ingest's only clients are edges, over NATS

    def start(self) -> None:
        """Connect what this role needs (feeds, NATS); the server is already listening."""

    async def stop(self) -> None: ...

    def not_ready_reason(self) -> str | None:
        """Why ``/readyz`` answers 503, or None when ready."""

    def readiness_notes(self) -> list[str]:
        """What ``/readyz`` also reports, ready or not (markets Massive refuses)."""

    def refusal(self) -> str | None:
        """Why a new client is refused before the upgrade (503), or None."""

    def collectors(self) -> list[Collector]:
        """Metrics of this role beyond the relay's own."""

    def describe(self) -> str:
        """One line for the start-up log, without secrets."""


class SingleProcess:
    """The relay and its Massive feeds in one process."""

    name = "single"
    serves_clients = True

    def __init__(self, config: RelayConfig) -> None:
        self.relay = Relay(config)

    def start(self) -> None:
        self.relay.start()

    async def stop(self) -> None:
        await self.relay.stop()

    def not_ready_reason(self) -> str | None:
        return self.relay.market_readiness()[0]

    def readiness_notes(self) -> list[str]:
        return self.relay.market_readiness()[1]

    def refusal(self) -> str | None:
        # A Massive outage is no reason: clients connect and wait for `feed restored`.
        return None

    def collectors(self) -> list[Collector]:
        return []

    def describe(self) -> str:
        return self.describe_config(self.relay.config)

    @staticmethod
    def describe_config(config: RelayConfig) -> str:
        return (
            f"single: markets {upstreams_summary(config)}, {tokens_summary(config)}, "
            f"flush {config.flush_interval:g} ms"
        )


@dataclass(frozen=True)
class RoleKind:
    create: Callable[[RelayConfig], Role]
    validate: Callable[[RelayConfig], None]
    describe: Callable[[RelayConfig], str]  # as ``Role.describe``, before it runs (check-config)
    needs_api_key: bool  # talks to Massive


def _nothing_more(config: RelayConfig) -> None:
    pass


ROLES: dict[str, RoleKind] = {
    SingleProcess.name: RoleKind(SingleProcess, _nothing_more, SingleProcess.describe_config, True),
    Ingest.name: RoleKind(Ingest, validate_scaleout, Ingest.describe_config, True),
    Edge.name: RoleKind(Edge, validate_scaleout, Edge.describe_config, False),
}


def kind_of(config: RelayConfig) -> RoleKind:
    return ROLES[config.role]


def validate(config: RelayConfig) -> None:
    """Every check of ``config``: the relay's, then its role's (``ConfigError``)."""
    config_validate(config)
    kind_of(config).validate(config)


def create(config: RelayConfig) -> Role:
    return kind_of(config).create(config)


def describe(config: RelayConfig) -> str:
    return kind_of(config).describe(config)
