"""What a running relay tells its operator: where it listens, and how it is doing.

At start-up, after every port is bound: one line saying what this process is
(role, markets and where each comes from, tokens), then one line per listening
address with URLs a terminal makes clickable. While it runs: a summary every
``--summary-interval`` seconds (clients, events per second in and out); single
client connections are logged at debug only, by the server.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastrelay import __version__
from fastrelay.config import RelayConfig
from fastrelay.front import host_port
from fastrelay.roles import Role
from fastrelay.server import API_SOCKET_PATH, RelayServer

log = logging.getLogger("fastrelay")


def startup_lines(config: RelayConfig, role: Role, server: RelayServer) -> list[tuple[str, dict[str, Any]]]:
    """(message, structured fields) of each start-up line; never a secret."""
    lines: list[tuple[str, dict[str, Any]]] = [
        (
            f"fastrelay {__version__} {role.describe()}",
            {"role": role.name, "markets": list(config.markets), "simulated": config.simulated},
        )
    ]
    address = host_port(config.host, server.port)
    http, ws = f"http://{address}", f"ws://{address}"
    probes = [f"{http}/healthz"]
    if server.metrics_port is None:
        probes += [f"{http}/readyz", f"{http}/metrics"]
    if role.serves_clients:
        sockets = [f"{ws}/{market}" for market in config.markets] + [f"{ws}{API_SOCKET_PATH}"]
        dashboard = [f"{http}/"] if server.static.get("/") is not None else []
        parts = [f"dashboard {dashboard[0]}"] if dashboard else []
        parts += [f"WebSocket {' '.join(sockets)}", f"probes {' '.join(probes)}"]
        urls = dashboard + sockets + probes
    else:
        parts = [f"probes {' '.join(probes)} (an ingest serves no clients: they connect to edges)"]
        urls = probes
    lines.append((f"listening on {http}: {', '.join(parts)}", {"address": address, "urls": urls}))
    if server.metrics_port is not None:
        where = host_port(config.metrics_host or config.host, server.metrics_port)
        urls = [f"http://{where}/metrics", f"http://{where}/healthz", f"http://{where}/readyz"]
        lines.append((f"metrics on {urls[0]}, probes {urls[1]} {urls[2]}", {"address": where, "urls": urls}))
    return lines


def announce(config: RelayConfig, role: Role, server: RelayServer) -> None:
    for message, fields in startup_lines(config, role, server):
        log.info("%s", message, extra=fields)
    if role.serves_clients and server.tokens.open_mode:
        log.warning("no --client-tokens set: any client may connect and subscribe (open mode, for local use)")


class Summary:
    """An info line every ``interval`` seconds: clients, events per second in and out."""

    def __init__(self, role: Role, server: RelayServer, interval: float) -> None:
        self._role = role
        self._server = server
        self.interval = interval
        self._timer: asyncio.TimerHandle | None = None
        self._last = self._counts()

    def _counts(self) -> tuple[float, int, int]:
        relay = self._role.relay
        received = sum(feed.stats.events for feed in relay.feeds.values())
        return asyncio.get_running_loop().time(), received, relay.outbox.stats.deliveries

    def start(self) -> None:
        if self.interval > 0:
            self._timer = asyncio.get_running_loop().call_later(self.interval, self.report)

    def report(self) -> None:
        now, received, sent = self._counts()
        then, received_before, sent_before = self._last
        self._last = now, received, sent
        elapsed = max(now - then, 1e-9)
        rate_in, rate_out = (received - received_before) / elapsed, (sent - sent_before) / elapsed
        clients = len(self._server.connections)
        log.info(
            "%d clients, %.0f events/s in, %.0f events/s out (last %.0f s)",
            clients,
            rate_in,
            rate_out,
            elapsed,
            extra={
                "clients": clients,
                "events_in_per_second": round(rate_in, 1),
                "events_out_per_second": round(rate_out, 1),
                "interval": round(elapsed, 3),
            },
        )
        self.start()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
