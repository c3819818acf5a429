"""Every setting of the relay in one place: defaults, flags, environment twins.

Each flag ``--some-flag`` has an environment twin ``FASTRELAY_SOME_FLAG``; a
flag given on the command line wins. The Massive key also reads
``MASSIVE_API_KEY``, the name Massive's own clients use.
"""

from __future__ import annotations

import argparse
import difflib
import os
import platform
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastrelay import markets, protocol
from fastrelay.markets import OPTIONS_CONTRACT_CAP

KIB = 1024
MIB = 1024 * KIB
# Flags whose values are never echoed, not even in an error about them.
SECRET_FLAGS = frozenset({"api-key", "api-key-for", "client-tokens"})
# Client tokens shorter than this are refused: with a per-address lockout a
# 16-character random token is out of reach of guessing.
MIN_TOKEN_LENGTH = 16


@dataclass
class UpstreamTimers:
    """Every timer of the upstream policy (upstream_core.py); tests shrink them to run in seconds."""

    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    healthy_after: float = 10.0  # connected this long -> backoff resets
    auth_retry: float = 60.0  # after auth_failed: a wrong key will not fix itself
    max_connections_cooldown: float = 60.0  # another process holds the key's slot
    ping_interval: float = 20.0  # ping after this long without incoming data
    ping_timeout: float = 10.0  # no data nor pong this long after a ping = stalled
    handshake_timeout: float = 10.0  # open to authenticated


@dataclass
class RelayConfig:
    host: str = "127.0.0.1"
    port: int = 3001  # the original dashboard's port
    markets: tuple[str, ...] = markets.DEFAULT_MARKETS
    upstream: str = "wss://socket.massive.com"
    api_key: str = field(default="", repr=False)  # never printed
    # Per-market overrides: Massive serves plans on different hosts (real-time,
    # delayed, Business, Launchpad...), and a Business or Launchpad feed may be on
    # another account (docs/protocol.md, "Endpoints").
    upstream_for: dict[str, str] = field(default_factory=dict)  # market -> base URL
    api_key_for: dict[str, str] = field(default_factory=dict, repr=False)  # market -> key
    # Markets /readyz waits for (empty: every configured market, except one Massive
    # refuses for the account's plan or key, which is reported but not waited for).
    required_markets: tuple[str, ...] = ()
    upstream_ca: str | None = None
    # Massive's REST API, for chart history (bars.py): '' turns it off; the key is the
    # market's (--api-key-for, else --api-key), sent in a header, never shown.
    rest_url: str = "https://api.massive.com"
    rest_ca: str | None = None
    rest_per_minute: float = 300.0  # REST calls per minute for the whole account
    rest_cache_bytes: int = 64 * 1024 * 1024
    client_tokens: list[str] = field(default_factory=list, repr=False)
    # Coalescing window in ms. Browsers paint at 60 Hz (16.7 ms), so a few ms
    # are invisible on a chart, and they multiply the events per write under a
    # firehose (README, Performance); 0 = flush at the end of each read.
    flush_interval: float = 5.0
    # Massive's official clients reject frames over 1 MiB by default; stay
    # well under it so a client behind a proxy with small buffers copes too.
    max_frame_size: int = 256 * KIB
    # Unsent bytes a client may owe before it is dropped as a slow consumer:
    # a few seconds of a busy wildcard feed for a browser on a poor link.
    max_client_buffer: int = 4 * MIB
    # Conflation (README, "Conflation"): on these paths a client owing more than
    # conflate_above is sent every trade and only the latest quote/aggregate/value
    # of each channel until it catches up, instead of being dropped at
    # max_client_buffer; a client may ask otherwise (?conflate=0 or 1).
    conflate_paths: list[str] = field(default_factory=lambda: ["/api/socket"])
    conflate_above: int = 0  # 0: an eighth of max_client_buffer (512 KiB of 4 MiB)
    max_channels: int = 2000  # per client connection
    # permessage-deflate with clients that offer it (fastrelay/deflate.py): "shared" compresses
    # each frame once for every client of an audience; "off" never negotiates it. Frames
    # under the threshold go plain: one event (~120 bytes) shrinks 1.2x for ~9 us, a 5 ms
    # firehose frame (1-2 KB) 3x (docs/performance.md, "Compression"). The CPU budget is
    # seconds of compression per second of the loop; past it frames go plain.
    compression: str = "shared"
    compression_level: int = 6
    compression_threshold: int = 256
    compression_cpu: float = 0.25
    # Channels over every connection of one client address (behind nginx without
    # --trusted-proxies that is everyone: set it with that in mind), and channels
    # held upstream over all markets: junk subscriptions must stay bounded.
    max_channels_per_address: int = 10_000
    max_upstream_channels: int = 20_000
    # A client's share of Massive's 1,000-contract cap on options quotes and FMV,
    # which the relay's one upstream connection shares among all clients.
    max_contracts_per_client: int = 100
    max_message_size: int = 256 * KIB  # incoming client frames (1,000 contracts fit)
    # Connection limits. Load tests, and nginx in front, connect from one
    # address: the defaults let 10,000 connections come from one address, and
    # operators tighten them per client IP in nginx (nginx/fastrelay.conf).
    max_connections: int = 50_000
    max_connections_per_address: int = 20_000
    # X-Forwarded-For is believed only from these peers (e.g. 127.0.0.1 for a local nginx).
    trusted_proxies: list[str] = field(default_factory=list)
    # Control messages (auth, subscribe, ...) per second per client, and the
    # burst allowed: a page subscribes a handful, a service may send hundreds at start.
    max_messages_per_second: float = 50.0
    message_burst: int = 200
    # The client budget (fastrelay/budget.py): past it a client is cut off (1008),
    # not answered. Every frame counts, pings included; official clients ping
    # every 20-25 s and send a few control messages.
    max_frames_per_second: float = 50.0
    frame_burst: int = 200
    max_bytes_per_second: int = 256 * KIB
    byte_burst: int = MIB
    # Loop time its messages may take (a 10,000-channel subscribe at start: ~0.1 s).
    max_cpu_ms_per_second: float = 50.0
    cpu_burst_ms: float = 500.0
    client_handshake_timeout: float = 5.0  # TCP accepted to WebSocket upgraded
    # Connections the kernel queues before the relay accepts them: a reconnect
    # storm brings thousands at once (the kernel caps it at net.core.somaxconn).
    listen_backlog: int = 4096
    # WebSocket upgraded to `auth` received; then auth_timeout status and close 1008.
    # Massive's clients auth at once; 0 turns the deadline off.
    client_auth_timeout: float = 10.0
    # Browsers' Origin values allowed to connect (fastrelay/origins.py): unset,
    # the relay's own origin and localhost; "*": any. A request without Origin
    # is a service, not a browser, and is not refused by it.
    allowed_origins: list[str] = field(default_factory=list)
    linger: float = 5.0  # seconds an unwanted channel stays subscribed upstream
    client_ping_interval: float = 20.0  # Massive's clients ping every 20-25 s
    client_ping_timeout: float = 20.0
    upstream_timers: UpstreamTimers = field(default_factory=UpstreamTimers)
    # Aggregates kept per exactly subscribed ticker and ev for the history
    # extension: 500 per-second candles are 8 minutes, 500 per-minute ones 8 hours.
    history_size: int = 500
    # What one client's history requests may cost (fastrelay/session.py, HistoryLimits).
    history_max_channels: int = 50
    history_max_bytes: int = 2 * MIB
    history_per_minute: float = 30.0
    # Channels held upstream with no client (/api/socket names, e.g. AM.AAPL): their
    # last values and history are ready for the first page that opens.
    keep_channels: list[str] = field(default_factory=list)
    # Static files served on GET (the dashboard); None: the packaged ones, "": none.
    web_root: str | None = None
    metrics_host: str | None = None  # default: --host
    metrics_port: int | None = None  # /metrics, /healthz, /readyz also here (keep it internal)
    # /metrics serves a rendering at most this old: rendering takes ms, and
    # picows answers HTTP synchronously on the loop, so it runs on a timer.
    metrics_interval: float = 1.0
    # SIGTERM/SIGINT to exit: clients closed with 1012 (service restart) over the first third
    # (at most 5 s) so they do not all reconnect at once, then the upstreams.
    shutdown_timeout: float = 10.0
    log_format: str = "text"
    log_level: str = "info"
    summary_interval: float = 60.0  # an info line: clients, events/s (0: none)
    # Scale-out (README, "Scale-out"): "single" is the one-process relay; an
    # "ingest" holds the upstreams and publishes to NATS, "edge"s serve clients.
    role: str = "single"
    nats: str = "nats://127.0.0.1:4222"  # comma-separated servers; may carry credentials
    nats_prefix: str = "fastrelay"  # subjects' first tokens: one deployment per prefix
    # How the NATS connection is secured (fastrelay/scaleout/natsauth.py): files, read at
    # start-up; their paths are shown, their contents never.
    nats_tls_ca: str | None = None  # trust this CA for tls:// servers (default: system store)
    nats_tls_cert: str | None = None  # a client certificate, with nats_tls_key
    nats_tls_key: str | None = None
    nats_nkey_seed: str | None = None  # an NKey user seed (SU...)
    nats_creds: str | None = None  # a .creds file: user JWT + NKey seed (operator mode)
    nats_granularity: str = "batch"  # ingest: "batch" (per frame and ev) or "event" (README)
    # ingest: what arrives within this many ms goes out as one message per subject
    # (0: per pass of the loop); edges add their own --flush-interval after it.
    nats_window: float = 1.0
    heartbeat_interval: float = 1.0  # ingest state and edge interest, seconds
    peer_timeout: float = 5.0  # an edge silent this long is gone (at the ingests)
    # The leader ingest silent this long is gone (at the edges); it sends its state
    # four times as often, so a dead leader is noticed within this bound.
    ingest_timeout: float = 1.0
    # The leader's lease on NATS (docs/scaleout.md, "High availability"): a dead
    # leader is replaced within about this long; all ingests follow the bucket's.
    lease_ttl: float = 1.5
    lease_replicas: int = 1  # JetStream replicas of the lease bucket: 3 on a NATS cluster
    # Edges drop data older than this, counted from the ingest's receipt of it
    # (clocks of ingest and edges must agree to well within it: NTP).
    max_event_age: float = 2.0
    instance_name: str = field(default_factory=lambda: f"{platform.node()}-{os.getpid()}")
    # Not a flag: `fastrelay run` without a key points the upstreams at its built-in simulator.
    simulated: bool = False
    # Processes serving clients on this machine (docs/workers.md): 1 is the one process; N > 1
    # a supervisor with a private nats-server, an ingest and N edges sharing --port.
    workers: int = 1
    # Set by that supervisor for its edges (never a flag): the client port is shared
    # (SO_REUSEPORT), the kernel spreads new connections over the edges.
    reuse_port: bool = False


def usable_cores() -> int:
    """The cores this process may run on (its affinity, e.g. a container's cpuset)."""
    return len(os.sched_getaffinity(0))


def _workers(text: str) -> int:
    value = text.strip().lower()
    if value == "auto":
        return usable_cores()
    try:
        count = int(value)
    except ValueError:
        raise ValueError(f"{text!r} is not a number of workers (1, 2, ... or auto)") from None
    if count < 1:
        raise ValueError(f"must be at least 1 (or auto): {text}")
    return count


@dataclass
class SimConfigFlags:
    """Flags of ``fastrelay sim`` (mapped onto SimulatorConfig)."""

    host: str = "127.0.0.1"
    port: int = 8765
    sim_key: str = "sim-key"
    rate: float = 20.0
    events_per_frame: int = 1
    trade_share: float | None = None
    symbol_count: int = 0
    stamp: bool = False
    markets: tuple[str, ...] = markets.MARKETS  # markets that generate data (all paths answer)
    feed: str = "socket"
    plan: dict[str, frozenset[str]] | None = None
    contract_cap: int = OPTIONS_CONTRACT_CAP
    one_connection_per_key: bool = False
    log_format: str = "text"
    log_level: str = "info"


class ConfigError(ValueError):
    """A bad setting; the message names the flag and what is wrong."""


def _non_negative(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if value < 0:
            raise ValueError(f"must not be negative: {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if not value > 0:
            raise ValueError(f"must be positive: {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not a boolean (true/false)")


def _market_map(text: str, what: str) -> dict[str, str]:
    """``stocks=VALUE,crypto=VALUE`` as {market: value}."""
    found: dict[str, str] = {}
    for part in protocol.split_params(text):
        market, sep, value = part.partition("=")
        market = market.strip().lower()
        if not sep or not value.strip():
            raise ValueError(f"expected MARKET={what} (comma-separated), e.g. stocks={what}")
        if not markets.is_market(market):
            raise ValueError(f"unknown market {market[:20]!r}; known: {', '.join(markets.MARKETS)}")
        found[market] = value.strip()
    return found


def _one_of(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise ValueError(f"{text!r} is not one of {', '.join(choices)}")
        return value

    parse.__name__ = "choice"
    return parse


_log_format = _one_of("text", "json")
_log_level = _one_of("debug", "info", "warning", "error")


def _level(text: str) -> int:
    """A zlib compression level."""
    try:
        level = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a level (1 to 9)") from None
    if not 1 <= level <= 9:
        raise ValueError(f"level {level} out of range (1-9)")
    return level


def _port(allow_zero: bool) -> Callable[[str], int]:
    """A TCP port, 1-65535 (0: the kernel picks one, where ``allow_zero``)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a port number") from None
        low = 0 if allow_zero else 1
        if not low <= value <= 65535:
            raise ValueError(f"port {value} out of range ({low}-65535)")
        return value

    parse.__name__ = "port"
    return parse


_SIZE = re.compile(r"\s*(\d+)\s*([a-zA-Z]*)\s*")
# Byte units: SI (1000s) and IEC (1024s), as written on the command line.
SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": KIB,
    "mib": MIB,
    "gib": 1024 * MIB,
}
SIZE_HELP = "bytes, or with a unit: KiB, MiB, GiB (1024s) or KB, MB, GB (1000s), e.g. 4MiB"


def size(text: str) -> int:
    """A byte count: ``4194304``, ``4MiB``, ``4MB`` (4,000,000), ``256KiB``."""
    match = _SIZE.fullmatch(text)
    unit = match and SIZE_UNITS.get(match[2].lower())
    if match is None or unit is None:
        raise ValueError(f"{text!r} is not a size: {SIZE_HELP}")
    return int(match[1]) * unit


def format_size(value: int) -> str:
    """The shortest exact spelling of a byte count: 4194304 -> 4MiB, 1000 -> 1000."""
    for unit, factor in (("GiB", 1024 * MIB), ("MiB", MIB), ("KiB", KIB)):
        if value and value % factor == 0:
            return f"{value // factor}{unit}"
    return str(value)


# Where `--help` lists an option: one argparse group each, in this order.
class Group:
    LISTENING = "listening"
    UPSTREAM = "upstream"
    SIMULATOR = "simulator"
    CLIENTS = "clients and limits"
    TIMING = "timing"
    METRICS = "metrics"
    LOGGING = "logging"
    SCALE_OUT = "scale-out"


GROUPS = (
    Group.LISTENING,
    Group.UPSTREAM,
    Group.SIMULATOR,
    Group.CLIENTS,
    Group.TIMING,
    Group.METRICS,
    Group.LOGGING,
    Group.SCALE_OUT,
)

# The commands that use an option (Option.commands): their --help shows it. `serve` and
# `check-config` take --role, so they use every relay option; the others only what their
# role uses. Every relay command still accepts every relay flag and twin, and warns that
# one it does not use is ignored (scripts pass common flags to ingests and edges alike).
RELAY_COMMANDS = frozenset({"serve", "run", "ingest", "edge", "check-config"})
TO_MASSIVE = RELAY_COMMANDS - {"edge"}  # the process holds upstream connections
TO_CLIENTS = RELAY_COMMANDS - {"ingest"}  # the process serves browsers and services
SINGLE = RELAY_COMMANDS - {"ingest", "edge"}  # only the one-process relay (REST history)
SCALE_OUT = RELAY_COMMANDS - {"run"}  # NATS: ingest, edge, serve --role
INGEST_SIDE = SCALE_OUT - {"edge"}
EDGE_SIDE = SCALE_OUT - {"ingest"}
SIM_COMMANDS = frozenset({"sim"})


@dataclass(frozen=True)
class Option:
    """One setting: ``--flag``, its twin ``FASTRELAY_FLAG``, where it goes in the config.

    To add one, write it in the table below with its ``group`` (where --help lists it)
    and, unless every relay command uses it, ``commands`` (the commands that use it, e.g.
    TO_CLIENTS; the others hide it and warn that it is ignored).
    """

    flag: str
    parse: Callable[[str], Any]
    help: str
    target: str  # attribute path: "port" or "upstream_timers.backoff_base"
    group: str  # one of GROUPS
    commands: frozenset[str] = RELAY_COMMANDS


G = Group
# Flags of the relay (serve, run, ingest, edge, check-config). Timers are flags so tests run in seconds.
RELAY_OPTIONS: tuple[Option, ...] = (
    # --- listening
    Option("host", str, "address or name to listen on", "host", G.LISTENING),
    Option(
        "port", _port(True), "port to listen on (0: any free one, shown at start-up)", "port", G.LISTENING
    ),
    Option(
        "listen-backlog",
        _non_negative(int),
        "connections queued before accept",
        "listen_backlog",
        G.LISTENING,
    ),
    Option(
        "web-root",
        str,
        "directory of static files to serve ('' to serve none; default: the dashboard)",
        "web_root",
        G.LISTENING,
        TO_CLIENTS,
    ),
    # --- upstream
    Option(
        "markets",
        markets.parse_markets,
        f"comma-separated markets: {','.join(markets.MARKETS)}",
        "markets",
        G.UPSTREAM,
    ),
    Option(
        "upstream",
        str,
        "Massive base URL (wss://delayed.massive.com for delayed data)",
        "upstream",
        G.UPSTREAM,
        TO_MASSIVE,
    ),
    Option("api-key", str, "Massive API key (default: MASSIVE_API_KEY)", "api_key", G.UPSTREAM, TO_MASSIVE),
    Option(
        "upstream-for",
        lambda text: _market_map(text, "URL"),
        "per-market Massive base URL, e.g. stocks=wss://delayed.massive.com (comma-separated)",
        "upstream_for",
        G.UPSTREAM,
        TO_MASSIVE,
    ),
    Option(
        "api-key-for",
        lambda text: _market_map(text, "KEY"),
        "per-market API key for a feed on another account, e.g. crypto=KEY (comma-separated)",
        "api_key_for",
        G.UPSTREAM,
        TO_MASSIVE,
    ),
    Option(
        "required-markets",
        markets.parse_markets,
        "markets /readyz waits for (default: all, except one refused for the plan or key)",
        "required_markets",
        G.UPSTREAM,
    ),
    Option(
        "upstream-ca",
        str,
        "CA bundle to trust for the upstream TLS (default: system store)",
        "upstream_ca",
        G.UPSTREAM,
        TO_MASSIVE,
    ),
    Option(
        "max-upstream-channels",
        _non_negative(int),
        "channels held upstream over all markets",
        "max_upstream_channels",
        G.UPSTREAM,
    ),
    Option(
        "keep-channels",
        protocol.split_params,
        "channels kept subscribed without clients, history and last values ready (e.g. AM.AAPL)",
        "keep_channels",
        G.UPSTREAM,
    ),
    Option(
        "rest-url",
        str,
        "Massive's REST API for chart history ('' to turn it off)",
        "rest_url",
        G.UPSTREAM,
        SINGLE,
    ),
    Option(
        "rest-ca",
        str,
        "CA bundle to trust for the REST API's TLS (default: system store)",
        "rest_ca",
        G.UPSTREAM,
        SINGLE,
    ),
    Option(
        "rest-per-minute",
        _positive(float),
        "REST calls per minute for the whole account",
        "rest_per_minute",
        G.UPSTREAM,
        SINGLE,
    ),
    Option(
        "rest-cache-bytes",
        size,
        "REST answers kept in memory",
        "rest_cache_bytes",
        G.UPSTREAM,
        SINGLE,
    ),
    # --- clients and limits
    Option(
        "client-tokens",
        protocol.split_params,
        "comma-separated tokens clients must present (default: open mode)",
        "client_tokens",
        G.CLIENTS,
    ),
    Option(
        "trusted-proxies",
        protocol.split_params,
        "peers whose X-Forwarded-For is believed (e.g. 127.0.0.1)",
        "trusted_proxies",
        G.CLIENTS,
    ),
    Option(
        "allowed-origins",
        protocol.split_params,
        "browser Origins allowed (comma-separated; *: any; default: the relay's own and localhost)",
        "allowed_origins",
        G.CLIENTS,
        TO_CLIENTS,
    ),
    Option(
        "max-frame-size",
        size,
        "largest coalesced frame sent to clients",
        "max_frame_size",
        G.CLIENTS,
        TO_CLIENTS,
    ),
    Option(
        "max-client-buffer",
        size,
        "unsent bytes before a client is dropped as a slow consumer",
        "max_client_buffer",
        G.CLIENTS,
        TO_CLIENTS,
    ),
    Option(
        "conflate-paths",
        protocol.split_params,
        "client paths where conflation is on unless the client says ?conflate=0 (comma-separated, "
        "e.g. /api/socket,/stocks; '' for none)",
        "conflate_paths",
        G.CLIENTS,
        TO_CLIENTS,
    ),
    Option(
        "conflate-above",
        size,
        "unsent bytes past which a conflating client gets the latest quotes/aggregates/values and "
        f"every trade until it catches up (0: an eighth of --max-client-buffer; {SIZE_HELP})",
        "conflate_above",
        G.CLIENTS,
        TO_CLIENTS,
    ),
    Option(
        "max-message-size",
        size,
        "largest frame a client may send",
        "max_message_size",
        G.CLIENTS,
        TO_CLIENTS,
    ),
    Option(
        "max-channels",
        _non_negative(int),
        "channels per client connection",
        "max_channels",
        G.CLIENTS,
        TO_CLIENTS,
    ),
    Option(
        "compression",
        _one_of("shared", "off"),
        "permessage-deflate with clients that offer it: shared (each frame compressed once) or off",
        "compression",
        G.CLIENTS,
        TO_CLIENTS,
    ),
    Option(
        "compression-level",
        _level,
        "zlib level of compression, 1 (fast) to 9 (small)",
        "compression_level",
        G.CLIENTS,
        TO_CLIENTS,
    ),
    Option(
        "compression-threshold",
        size,
        f"frames smaller than this go uncompressed ({SIZE_HELP})",
        "compression_threshold",
        G.CLIENTS,
        TO_CLIENTS,
    ),
    Option(
        "compression-cpu",
        _positive(float),
        "CPU seconds per second compression may use; past it frames go uncompressed",
        "compression_cpu",
        G.CLIENTS,
        TO_CLIENTS,
    ),
    Option(
        "max-channels-per-address",
        _non_negative(int),
        "channels over every connection of one client address",
        "max_channels_per_address",
        G.CLIENTS,
        TO_CLIENTS,
    ),
    Option(
        "max-contracts-per-client",
        _non_negative(int),
        "options contracts one client may take of Massive's 1,000 (Q and FMV)",
        "max_contracts_per_client",
        G.CLIENTS,
        TO_CLIENTS,
    ),
    Option(
        "max-connections",
        _non_negative(int),
        "client connections in total",
        "max_connections",
        G.CLIENTS,
        TO_CLIENTS,
    ),
    Option(
        "max-connections-per-address",
        _non_negative(int),
        "client connections per client address",
        "max_connections_per_address",
        G.CLIENTS,
        TO_CLIENTS,
    ),
    Option(
        "max-messages-per-second",
        _non_negative(float),
        "control messages per second per client",
        "max_messages_per_second",
        G.CLIENTS,
        TO_CLIENTS,
    ),
    Option(
        "message-burst",
        _non_negative(int),
        "control messages a client may send at once",
        "message_burst",
        G.CLIENTS,
        TO_CLIENTS,
    ),
    Option(
        "max-frames-per-second",
        _non_negative(float),
        "frames per second per client, pings included; past it the client is closed (1008)",
        "max_frames_per_second",
        G.CLIENTS,
        TO_CLIENTS,
    ),
    Option(
        "frame-burst",
        _non_negative(int),
        "frames a client may send at once",
        "frame_burst",
        G.CLIENTS,
        TO_CLIENTS,
    ),
    Option(
        "max-bytes-per-second",
        size,
        "bytes per second a client sends or is answered with; past it the client is closed (1008)",
        "max_bytes_per_second",
        G.CLIENTS,
        TO_CLIENTS,
    ),
    Option("byte-burst", size, "bytes a client may send at once", "byte_burst", G.CLIENTS, TO_CLIENTS),
    Option(
        "max-cpu-ms-per-second",
        _non_negative(float),
        "ms of the relay's loop a client's messages may take per second; past it: closed (1008); "
        "its conflated stream is charged too (past it: slow_consumer, 1013)",
        "max_cpu_ms_per_second",
        G.CLIENTS,
        TO_CLIENTS,
    ),
    Option(
        "cpu-burst-ms",
        _non_negative(float),
        "ms of loop a client may use at once",
        "cpu_burst_ms",
        G.CLIENTS,
        TO_CLIENTS,
    ),
    Option(
        "history-size",
        _non_negative(int),
        "aggregates kept per ticker for the history action",
        "history_size",
        G.CLIENTS,
    ),
    Option(
        "history-max-channels",
        _non_negative(int),
        "channels one history request may name",
        "history_max_channels",
        G.CLIENTS,
        TO_CLIENTS,
    ),
    Option(
        "history-max-bytes",
        size,
        "bytes one history reply may take",
        "history_max_bytes",
        G.CLIENTS,
        TO_CLIENTS,
    ),
    Option(
        "history-per-minute",
        _non_negative(float),
        "history requests per client per minute",
        "history_per_minute",
        G.CLIENTS,
        TO_CLIENTS,
    ),
    # --- timing
    Option(
        "flush-interval",
        _non_negative(float),
        "coalescing window in ms (0: flush at the end of each read)",
        "flush_interval",
        G.TIMING,
        TO_CLIENTS,
    ),
    Option(
        "linger",
        _non_negative(float),
        "seconds before the last unsubscribe goes upstream",
        "linger",
        G.TIMING,
    ),
    Option(
        "client-handshake-timeout",
        _non_negative(float),
        "TCP accept to WebSocket upgrade, s",
        "client_handshake_timeout",
        G.TIMING,
    ),
    Option(
        "client-auth-timeout",
        _non_negative(float),
        "WebSocket open to auth received, s (0: no limit)",
        "client_auth_timeout",
        G.TIMING,
        TO_CLIENTS,
    ),
    Option(
        "client-ping-interval",
        _non_negative(float),
        "ping clients idle this long, s",
        "client_ping_interval",
        G.TIMING,
        TO_CLIENTS,
    ),
    Option(
        "client-ping-timeout",
        _non_negative(float),
        "drop clients not answering a ping, s",
        "client_ping_timeout",
        G.TIMING,
        TO_CLIENTS,
    ),
    Option(
        "backoff-base",
        _non_negative(float),
        "first reconnect delay ceiling, s",
        "upstream_timers.backoff_base",
        G.TIMING,
        TO_MASSIVE,
    ),
    Option(
        "backoff-cap",
        _non_negative(float),
        "largest reconnect delay, s",
        "upstream_timers.backoff_cap",
        G.TIMING,
        TO_MASSIVE,
    ),
    Option(
        "healthy-after",
        _non_negative(float),
        "connected this long resets the backoff, s",
        "upstream_timers.healthy_after",
        G.TIMING,
        TO_MASSIVE,
    ),
    Option(
        "auth-retry",
        _non_negative(float),
        "delay before retrying after auth_failed, s",
        "upstream_timers.auth_retry",
        G.TIMING,
        TO_MASSIVE,
    ),
    Option(
        "max-connections-cooldown",
        _non_negative(float),
        "delay after max_connections, s",
        "upstream_timers.max_connections_cooldown",
        G.TIMING,
        TO_MASSIVE,
    ),
    Option(
        "upstream-ping-interval",
        _non_negative(float),
        "ping upstream idle this long, s",
        "upstream_timers.ping_interval",
        G.TIMING,
        TO_MASSIVE,
    ),
    Option(
        "upstream-ping-timeout",
        _non_negative(float),
        "reconnect if no pong this long, s",
        "upstream_timers.ping_timeout",
        G.TIMING,
        TO_MASSIVE,
    ),
    Option(
        "handshake-timeout",
        _non_negative(float),
        "upstream connect-to-authenticated limit, s",
        "upstream_timers.handshake_timeout",
        G.TIMING,
        TO_MASSIVE,
    ),
    Option(
        "shutdown-timeout", _non_negative(float), "seconds from SIGTERM to exit", "shutdown_timeout", G.TIMING
    ),
    # --- metrics
    Option(
        "metrics-port",
        _port(False),
        "also serve /metrics, /healthz, /readyz on this port (default: none)",
        "metrics_port",
        G.METRICS,
    ),
    Option("metrics-host", str, "address for --metrics-port (default: --host)", "metrics_host", G.METRICS),
    Option(
        "metrics-interval",
        _non_negative(float),
        "seconds between /metrics renderings",
        "metrics_interval",
        G.METRICS,
    ),
    # --- logging
    Option("log-format", _log_format, "text or json (one JSON object per line)", "log_format", G.LOGGING),
    Option("log-level", _log_level, "debug, info, warning or error", "log_level", G.LOGGING),
    Option(
        "summary-interval",
        _non_negative(float),
        "seconds between info lines of clients and events/s (0: none)",
        "summary_interval",
        G.LOGGING,
    ),
    # --- scale-out
    Option(
        "role",
        _one_of("single", "ingest", "edge"),
        "single, ingest or edge (scale-out over NATS)",
        "role",
        G.SCALE_OUT,
        SCALE_OUT,  # ingest and edge: to catch a FASTRELAY_ROLE that contradicts them
    ),
    Option(
        "nats", str, "NATS servers of the ingest and edges, comma-separated", "nats", G.SCALE_OUT, SCALE_OUT
    ),
    Option(
        "nats-prefix",
        str,
        "first tokens of every NATS subject of this deployment",
        "nats_prefix",
        G.SCALE_OUT,
        SCALE_OUT,
    ),
    Option(
        "nats-tls-ca",
        str,
        "CA file to trust for tls:// NATS servers (default: system store)",
        "nats_tls_ca",
        G.SCALE_OUT,
        SCALE_OUT,
    ),
    Option(
        "nats-tls-cert",
        str,
        "client certificate file for NATS (with --nats-tls-key)",
        "nats_tls_cert",
        G.SCALE_OUT,
        SCALE_OUT,
    ),
    Option(
        "nats-tls-key", str, "private key file of --nats-tls-cert", "nats_tls_key", G.SCALE_OUT, SCALE_OUT
    ),
    Option(
        "nats-nkey-seed",
        str,
        "NKey user seed file (SU...) to authenticate to NATS",
        "nats_nkey_seed",
        G.SCALE_OUT,
        SCALE_OUT,
    ),
    Option(
        "nats-creds",
        str,
        "NATS .creds file (user JWT + NKey seed) to authenticate with",
        "nats_creds",
        G.SCALE_OUT,
        SCALE_OUT,
    ),
    Option(
        "nats-granularity",
        _one_of("batch", "event"),
        "ingest: one NATS message per frame and ev (batch) or per event",
        "nats_granularity",
        G.SCALE_OUT,
        INGEST_SIDE,
    ),
    Option(
        "nats-window",
        _non_negative(float),
        "ingest: publish once per this many ms, one message per subject (0: per loop pass)",
        "nats_window",
        G.SCALE_OUT,
        INGEST_SIDE,
    ),
    Option(
        "heartbeat-interval",
        _non_negative(float),
        "ingest/edge heartbeats over NATS, s",
        "heartbeat_interval",
        G.SCALE_OUT,
        SCALE_OUT,
    ),
    Option(
        "peer-timeout",
        _non_negative(float),
        "ingest: an edge silent this long is gone, s",
        "peer_timeout",
        G.SCALE_OUT,
        SCALE_OUT,
    ),
    Option(
        "ingest-timeout",
        _positive(float),
        "edge: the leader ingest silent this long is gone, s (it reports 4 times as often)",
        "ingest_timeout",
        G.SCALE_OUT,
        SCALE_OUT,
    ),
    Option(
        "lease-ttl",
        _positive(float),
        "ingest: the leader's lease on NATS, s; a dead leader is replaced within about this",
        "lease_ttl",
        G.SCALE_OUT,
        INGEST_SIDE,
    ),
    Option(
        "lease-replicas",
        _positive(int),
        "ingest: JetStream replicas of the lease bucket",
        "lease_replicas",
        G.SCALE_OUT,
        INGEST_SIDE,
    ),
    Option(
        "max-event-age",
        _positive(float),
        "edge: drop data older than this (since the ingest read it), s",
        "max_event_age",
        G.SCALE_OUT,
        EDGE_SIDE,
    ),
    Option(
        "instance-name",
        str,
        "this process's name on NATS (default: HOST-PID)",
        "instance_name",
        G.SCALE_OUT,
        SCALE_OUT,
    ),
    Option(
        "workers",
        _workers,
        "processes serving clients on this machine (auto: one per usable core); over 1, a "
        "supervisor runs an ingest and that many edges on --port over a private nats-server",
        "workers",
        G.LISTENING,
        SINGLE,
    ),
)

SIM_OPTIONS: tuple[Option, ...] = (
    Option("host", str, "address or name to listen on", "host", G.LISTENING, SIM_COMMANDS),
    Option("port", _port(True), "port to listen on (0: any free one)", "port", G.LISTENING, SIM_COMMANDS),
    Option("sim-key", str, "API key the simulator accepts", "sim_key", G.SIMULATOR, SIM_COMMANDS),
    Option("rate", _non_negative(float), "frames per second per market", "rate", G.SIMULATOR, SIM_COMMANDS),
    Option(
        "events-per-frame",
        _non_negative(int),
        "events in each frame",
        "events_per_frame",
        G.SIMULATOR,
        SIM_COMMANDS,
    ),
    Option(
        "trade-share",
        _non_negative(float),
        "share of trades among trades and quotes, 0 to 1 (default: half)",
        "trade_share",
        G.SIMULATOR,
        SIM_COMMANDS,
    ),
    Option(
        "symbol-count",
        _non_negative(int),
        "synthetic tickers per market (0: the built-in list)",
        "symbol_count",
        G.SIMULATOR,
        SIM_COMMANDS,
    ),
    Option(
        "stamp",
        _bool,
        "add sim_ns, the send time in ns, to each event (load tests)",
        "stamp",
        G.SIMULATOR,
        SIM_COMMANDS,
    ),
    Option(
        "markets",
        markets.parse_markets,
        "markets that generate data (default: all)",
        "markets",
        G.SIMULATOR,
        SIM_COMMANDS,
    ),
    Option(
        "feed",
        markets.parse_feed,
        "the Massive feed to play: socket, delayed, launchpad, ...",
        "feed",
        G.SIMULATOR,
        SIM_COMMANDS,
    ),
    Option(
        "plan",
        markets.parse_plan,
        "the account's plan, as stocks=T,A,AM;crypto=*: a market left out is refused at auth, "
        "an ev left out per channel (default: everything)",
        "plan",
        G.SIMULATOR,
        SIM_COMMANDS,
    ),
    Option(
        "contract-cap",
        _non_negative(int),
        "capped options contracts per connection",
        "contract_cap",
        G.SIMULATOR,
        SIM_COMMANDS,
    ),
    Option(
        "one-connection-per-key",
        _bool,
        "as Massive: a second connection of a key on a market evicts the older (max_connections)",
        "one_connection_per_key",
        G.SIMULATOR,
        SIM_COMMANDS,
    ),
    Option(
        "log-format",
        _log_format,
        "text or json (one JSON object per line)",
        "log_format",
        G.LOGGING,
        SIM_COMMANDS,
    ),
    Option("log-level", _log_level, "debug, info, warning or error", "log_level", G.LOGGING, SIM_COMMANDS),
)


def env_name(flag: str) -> str:
    return "FASTRELAY_" + flag.upper().replace("-", "_")


def options_for(command: str) -> tuple[Option, ...]:
    """The options ``command`` uses (and --help shows), in table order."""
    return tuple(option for option in (*RELAY_OPTIONS, *SIM_OPTIONS) if command in option.commands)


def accepted_by(command: str) -> tuple[Option, ...]:
    """The options ``command`` reads: a relay command every relay option, ``sim`` its own."""
    return RELAY_OPTIONS if command in RELAY_COMMANDS else options_for(command)


def _get(target: Any, path: str) -> Any:
    for name in path.split("."):
        target = getattr(target, name)
    return target


def _set(target: Any, path: str, value: Any) -> None:
    *parents, name = path.split(".")
    for parent in parents:
        target = getattr(target, parent)
    setattr(target, name, value)


def default_text(option: Option, defaults: Any) -> str:
    """How ``--help`` shows the default of ``option`` (from a fresh config), '' for none."""
    if option.flag in SECRET_FLAGS or "default" in option.help:
        return ""  # a secret's default is never shown; the help text says it already
    value = _get(defaults, option.target)
    if value is None or value == "" or value == () or value == [] or value == {}:
        return "none"
    if option.parse is size:
        return format_size(value)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple | list):
        return ",".join(map(str, value))
    return str(value)


_METAVARS = {"int": "N", "float": "NUM", "size": "SIZE", "port": "PORT", "_bool": "BOOL", "choice": "WORD"}


def add_options(parser: argparse.ArgumentParser, command: str, defaults: Any) -> None:
    """The flags of ``command``: those it uses listed by group (argparse skips empty groups),
    each with its environment twin and its default; those it ignores accepted, unlisted."""
    groups = {title: parser.add_argument_group(title) for title in GROUPS}
    for option in accepted_by(command):
        used = command in option.commands
        default = default_text(option, defaults) if used else ""
        shown = f"; default {default}" if default else ""
        groups[option.group].add_argument(
            f"--{option.flag}",
            dest=option.flag.replace("-", "_"),
            default=None,
            metavar=_METAVARS.get(option.parse.__name__, "VALUE"),
            help=f"{option.help} [env {env_name(option.flag)}{shown}]" if used else argparse.SUPPRESS,
        )


def build(config: Any, options: Sequence[Option], args: argparse.Namespace, env: Mapping[str, str]) -> Any:
    """Fill ``config`` from flags, then environment twins; raise ConfigError on bad values."""
    for option in options:
        raw = getattr(args, option.flag.replace("-", "_"), None)
        source = f"--{option.flag}"
        if raw is None:
            raw = env.get(env_name(option.flag))
            source = env_name(option.flag)
        if not raw and option.flag == "api-key" and source != "--api-key":
            # An empty FASTRELAY_API_KEY (a blank line in an env file) must not
            # hide MASSIVE_API_KEY; an explicit empty --api-key still means none.
            raw = env.get("MASSIVE_API_KEY")
            source = "MASSIVE_API_KEY"
        if raw is None:
            continue
        try:
            value = option.parse(raw)
        except ValueError as exc:
            # Never echo a secret back, even a malformed one.
            shown = "<hidden>" if option.flag in SECRET_FLAGS else repr(raw)
            raise ConfigError(f"{source}={shown}: {exc}") from None
        if option.target in ("markets", "required_markets"):
            value = tuple(value)
        _set(config, option.target, value)
    return config


_USERINFO = re.compile(r"(?<=://)[^/@\s]*@")


def redact(text: str) -> str:
    """``nats://user:secret@host`` -> ``nats://***@host``, wherever a URL appears in ``text``."""
    return _USERINFO.sub("***@", text)


def upstream_of(config: RelayConfig, market: str) -> str:
    """The Massive base URL of ``market`` (its --upstream-for, else --upstream)."""
    return config.upstream_for.get(market, config.upstream)


def api_key_of(config: RelayConfig, market: str) -> str:
    """The key ``market``'s feed authenticates with (its --api-key-for, else --api-key)."""
    return config.api_key_for.get(market, config.api_key)


def upstreams_summary(config: RelayConfig) -> str:
    """Where each market comes from, keys counted and never shown."""
    if config.simulated:
        markets_ = ",".join(config.markets)
        return f"{markets_} from the built-in simulated feed ({config.upstream}; no MASSIVE_API_KEY)"
    hosts: dict[str, list[str]] = {}
    for market in config.markets:
        hosts.setdefault(upstream_of(config, market), []).append(market)
    where = "; ".join(f"{','.join(m)} from {url}" for url, m in hosts.items())
    own = [m for m in config.markets if m in config.api_key_for]
    keys = f"API key {'set' if config.api_key else 'missing'}"
    if own:
        keys += f" ({','.join(own)}: its own)"
    return f"{where}, {keys}"


def tokens_summary(config: RelayConfig) -> str:
    """The client tokens, counted, never shown."""
    if config.client_tokens:
        return f"{len(config.client_tokens)} client token(s)"
    return "open mode (no tokens)"


def conflate_above(config: RelayConfig) -> int:
    """The soft limit of conflation: --conflate-above, or an eighth of --max-client-buffer."""
    return config.conflate_above or config.max_client_buffer // 8


def validate(config: RelayConfig) -> None:
    """Checks across settings, with messages an operator can act on (roles add their own)."""
    for flag, host in (("--host", config.host), ("--metrics-host", config.metrics_host)):
        if host is not None and not host.strip():
            raise ConfigError(
                f"{flag} must not be empty (an address such as 127.0.0.1 or 0.0.0.0, or a name)"
            )
    if config.metrics_port is not None and config.metrics_port == config.port:
        raise ConfigError(
            f"--metrics-port={config.metrics_port} is --port's: give the metrics their own port"
        )
    for flag, url in (
        ("--upstream", config.upstream),
        *(("--upstream-for", u) for u in config.upstream_for.values()),
    ):
        scheme = url.split("://", 1)[0]
        if scheme not in ("ws", "wss") or "://" not in url:
            raise ConfigError(f"{flag}={url!r}: expected ws://HOST[:PORT] or wss://HOST[:PORT]")
    for flag, given in (
        ("--upstream-for", config.upstream_for),
        ("--api-key-for", config.api_key_for),
        ("--required-markets", dict.fromkeys(config.required_markets)),
    ):
        stray = [m for m in given if m not in config.markets]
        if stray:
            raise ConfigError(f"{flag}: {', '.join(stray)} not in --markets ({','.join(config.markets)})")
    timers = config.upstream_timers
    if timers.backoff_base <= 0 or timers.backoff_cap < timers.backoff_base:
        raise ConfigError("--backoff-base must be > 0 and no larger than --backoff-cap")
    short = [t for t in config.client_tokens if len(t) < MIN_TOKEN_LENGTH]
    if short:
        raise ConfigError(
            f"--client-tokens: {len(short)} token(s) shorter than {MIN_TOKEN_LENGTH} characters "
            "(a short token is guessed; e.g. python -c 'import secrets; print(secrets.token_urlsafe(24))')"
        )
    served = {"/api/socket", *(f"/{m}" for m in config.markets)}
    stray = [p for p in config.conflate_paths if p not in served]
    if stray:
        raise ConfigError(
            f"--conflate-paths: {', '.join(p[:40] for p in stray)} not a client path of this relay "
            f"({', '.join(sorted(served))})"
        )
    if config.conflate_above >= config.max_client_buffer > 0:
        raise ConfigError(
            f"--conflate-above ({config.conflate_above}) must be below --max-client-buffer "
            f"({config.max_client_buffer}): conflation starts before the drop"
        )
    if config.max_frame_size < 1024:
        raise ConfigError("--max-frame-size must be at least 1024 bytes")
    if config.upstream_ca and not os.path.isfile(config.upstream_ca):
        raise ConfigError(f"--upstream-ca={config.upstream_ca!r}: no such file")
    if config.rest_ca and not os.path.isfile(config.rest_ca):
        raise ConfigError(f"--rest-ca={config.rest_ca!r}: no such file")
    if config.rest_url and not config.rest_url.startswith(("https://", "http://")):
        raise ConfigError(f"--rest-url={config.rest_url!r}: expected an http(s):// URL")
    for name in config.keep_channels:
        try:
            channel = protocol.parse_api_channel(name)
        except protocol.ChannelError as exc:
            raise ConfigError(f"--keep-channels: {exc}") from None
        if channel.market not in config.markets:
            raise ConfigError(f"--keep-channels: {name!r} is on {channel.market}, not in --markets")


# Variables read beside the flags' twins, never reported as unknown.
OTHER_VARIABLES = frozenset({"FASTRELAY_TEST_TIMEOUT_SCALE"})
# What the example files (deploy/*.env.example) and tutorials put where a secret goes.
_PLACEHOLDER = re.compile(r"replace|change.?me|your[-_ ]|placeholder|example|^x{4,}$|^<.*>$|^\.\.\.$", re.I)


def closest(word: str, known: Sequence[str]) -> str | None:
    """The known name ``word`` most likely misspells, if one is close (difflib)."""
    found = difflib.get_close_matches(word, sorted(known), n=1, cutoff=0.6)
    return found[0] if found else None


def unknown_variables(env: Mapping[str, str]) -> list[str]:
    """FASTRELAY_* variables that are no setting of any command: a misspelling, with the
    closest real name. Values are never shown: they may be secrets."""
    everyone = {env_name(option.flag) for option in (*RELAY_OPTIONS, *SIM_OPTIONS)} | OTHER_VARIABLES
    warnings = []
    for name in sorted(env):
        if name.startswith("FASTRELAY_") and name not in everyone:
            close = closest(name.removeprefix("FASTRELAY_"), [n.removeprefix("FASTRELAY_") for n in everyone])
            hint = f" (did you mean FASTRELAY_{close}?)" if close else ""
            warnings.append(f"{name} is not a fastrelay setting: ignored{hint}")
    return warnings


def unused_settings(args: argparse.Namespace, env: Mapping[str, str], command: str) -> list[str]:
    """Flags given and FASTRELAY_* twins set that ``command`` accepts but does not use (a
    script passing common flags to ingests and edges alike): notes, not warnings."""
    used = {option.flag for option in options_for(command)}
    notes = []
    for option in accepted_by(command):
        if option.flag in used:
            continue
        if getattr(args, option.flag.replace("-", "_"), None) is not None:
            notes.append(f"--{option.flag} has no effect on `fastrelay {command}`")
        elif env_name(option.flag) in env:
            notes.append(f"{env_name(option.flag)} has no effect on `fastrelay {command}`")
    for option in (*RELAY_OPTIONS, *SIM_OPTIONS):
        # A twin of another command's option only (FASTRELAY_SIM_KEY under serve).
        name = env_name(option.flag)
        if name in env and option not in accepted_by(command) and option.flag not in used:
            notes.append(f"{name} has no effect on `fastrelay {command}`")
    return sorted(set(notes))


def placeholder_warnings(config: RelayConfig, command: str) -> list[str]:
    """Secrets still holding an example's placeholder (named, never shown)."""
    flags = {option.flag for option in options_for(command)}
    secrets = []
    if "api-key" in flags:
        secrets.append(("the API key (--api-key, MASSIVE_API_KEY)", [config.api_key]))
    if "api-key-for" in flags:
        secrets += [
            (f"the API key of {market} (--api-key-for)", [key]) for market, key in config.api_key_for.items()
        ]
    if "client-tokens" in flags:
        secrets.append(("a client token (--client-tokens)", config.client_tokens))
    return [
        f"{what} looks like a placeholder from an example file, not a real secret: replace it"
        for what, values in secrets
        if any(value and _PLACEHOLDER.search(value) for value in values)
    ]
