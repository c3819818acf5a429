"""What ``make bench`` runs: the scenarios, the servers under test, and the plan.

A *scenario* fixes the clients, their subscriptions and the simulator's feed;
a scenario with several rates is a ladder: one set of processes and
connections, the simulator's rate raised step by step (through its ``slow``
fault with a factor above 1, a plain rate multiplier), one measured window
per step. A *server* is fastrelay or one of the peer relays of bench/peers.
The *scale-out* servers are fastrelay split in its roles: one ingest (the
upstream), two edges (the clients, split evenly) and a nats-server between
them; the ``scaleout`` scenarios put them beside the single process. The *workers*
servers are ``fastrelay serve --workers N``: the same split on one port, run by fastrelay's
own supervisor (docs/workers.md); the ``workers`` scenario climbs a rate ladder with 1 and 2
and reports each one's saturation rate and CPU per delivery over its whole process tree
(bench/saturation.py). The
failover scenario runs two ingests (a leader and a hot standby) and stops the
leader in each window. The *charts* scenarios have no rate ladder either: a
crowd of clients opens a chart at once (``history`` of a minute-bar channel,
answered from Massive's REST aggregates through the relay's cache), on a fresh
relay (cold) and again once the cache holds the answer (warm). A *config* is
one scenario on one server; the plan
alternates configs (a b c a b c) so a drift of the shared machine spreads over
all of them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace

# The simulator's stocks frames carry a T or a Q event at random, and the
# servers subscribe upstream only what clients want (T), so the simulator
# generates twice the T rate.
TRADE_SHARE = 0.5
# Above this many decoded events/s in all, clients count events per frame and
# only every n-th client (a probe) decodes each event for latency and gaps.
PROBE_BUDGET = 120_000


# The scale-out servers' NATS granularities (``fastrelay ingest --nats-granularity``);
# the first is the one ``scaleout`` alone means.
GRANULARITIES = ("batch", "event")
# Edges behind one ingest in the scale-out servers; clients are split evenly over them.
SCALEOUT_EDGES = 2
# ``fastrelay serve --workers N`` for these N in the workers scenario (1: the one process).
WORKER_COUNTS = (1, 2)
# A step counts towards the saturation rate (bench/saturation.py) when it delivered this
# share of the events (100 %, within the rounding of the table) with its p99 under this.
FULL_DELIVERY = 0.9999
SATURATION_P99_MS = 50.0
# Runs per configuration when --repeats is not given (a scenario may ask for more or fewer).
DEFAULT_REPEATS = 3

# The failover scenario: how the leader ingest is stopped, one window each, in this order:
# kill -9 (the lease runs out on the server: a standby wins after --lease-ttl) and SIGTERM
# (the leader resigns and frees the lease: a standby wins at once).
FAILOVER_MODES = ("kill-9", "sigterm")
FAILOVER_AT = 1.0  # seconds into the window: the leader is stopped

# The charts scenarios: the crowd opens its charts on a fresh relay (cold: the cache is empty,
# the answer comes from the simulator's REST), then again once the cache holds the answer
# (warm), in this order.
CHART_PHASES = ("cold", "warm")
# How long the relay keeps the answer to a range that reaches now, as a bare history's does
# (fastrelay/bars.py, Bars' fresh_ttl; no flag). Serving a crowd of 1,000 can take about as
# long, so the warm crowd does not count on the cold answers: once they have expired (this
# long after the last of them, plus CHART_WARM_AFTER), one scout per chart asks and refills
# the cache, and the crowd asks CHART_WARM_AFTER s after the scouts' answers.
CHART_CACHE_TTL = 5.0
CHART_WARM_AFTER = 0.5

# The abuse scenario: one hostile client per class of bench/attacks.py, a window each,
# in this order. token-guessing comes last: it locks 127.0.0.1 out of new auths (1 s,
# doubling with each further failure), and every attacker after it (the normal clients
# too, were they to reconnect) would connect from there.
ATTACK_CLASSES = (
    "frame-flood-text", "frame-flood-binary", "frame-flood-ping", "byte-flood", "silent-pings",
    "history-amplification", "junk-subscriptions", "slow-readers", "nested-json", "token-guessing",
)  # fmt: skip
# The relay runs with this client token (16+ characters), which the normal clients and
# the attackers that authenticate use, so that token-guessing has something to guess.
ABUSE_TOKEN = "bench-abuse-token-0123456789"
# history-amplification asks for this ticker's A and AM, which the relay keeps
# (--keep-channels) from its start, so their history exists (the simulator's S0001..).
ABUSE_HISTORY_SYMBOL = "S0001"


def channel_key(ev: str, ticker: str) -> str:
    """What the clients count a channel's q range under: a trade's its ticker (every scenario
    but the watchlist has only trades), another ev's ``EV.ticker``."""
    return ticker if ev == "T" else f"{ev}.{ticker}"


@dataclass(frozen=True)
class Server:
    """A relay under test: ``kind``, a flush window (ms) and, for the scale-out, the NATS granularity."""

    kind: str  # fastrelay, websockets, node, ceiling, scaleout, workers
    flush: float | None = None  # None: the server's default (fastrelay 5 ms, ceiling 0: as is)
    granularity: str | None = None  # scaleout only: batch or event
    nats_window: float | None = None  # scaleout only: the ingest's --nats-window, ms (None: its default)
    # Clients offer permessage-deflate and the server compresses (fastrelay by default, the
    # peers with their own default settings); without it clients offer nothing.
    deflate: bool = False
    workers: int | None = None  # workers only: fastrelay serve --workers N

    @property
    def label(self) -> str:
        name = {"node": "node-ws"}.get(self.kind, self.kind) + ("+deflate" if self.deflate else "")
        if self.kind == "workers":
            name += str(self.workers)
        if self.kind == "scaleout" and self.granularity not in (None, GRANULARITIES[0]):
            name += f"@{self.granularity}"
        if self.nats_window is not None:
            name += f"@w{self.nats_window:g}"
        return name if self.flush is None else f"{name}@{self.flush:g}ms"

    @property
    def routes(self) -> bool:
        """Whether it routes per channel (the ceiling sends everything to everyone)."""
        return self.kind != "ceiling"

    @property
    def is_peer(self) -> bool:
        return self.kind not in ("fastrelay", "scaleout", "workers")

    @property
    def edges(self) -> int:
        """Processes the clients connect to (split evenly over them)."""
        return SCALEOUT_EDGES if self.kind == "scaleout" else 1


def parse_server(text: str) -> Server:
    """``fastrelay``, ``fastrelay@0`` (flush ms), ``websockets``, ``node``, ``ceiling``, ``ceiling@5``,
    ``scaleout`` (= ``scaleout@batch``), ``scaleout@event``, ``scaleout@event@w0@0`` (granularity,
    the ingest's NATS window ``wMS``, the flush window in ms; each optional, in that order),
    ``workers2`` (``fastrelay serve --workers 2``; ``workers2@0``: with its flush window)."""
    kind, _, rest = text.strip().partition("@")
    kind, plus, extension = kind.partition("+")
    if plus and (extension != "deflate" or kind in ("ceiling", "scaleout")):
        raise ValueError(f"unknown server {text!r}: +deflate is for fastrelay, websockets and node")
    kind = {"node-ws": "node", "ws": "websockets"}.get(kind, kind)
    known = (
        "fastrelay[+deflate][@MS], websockets[+deflate], node[+deflate], ceiling[@MS], "
        "scaleout[@batch|@event][@wMS][@MS], workersN[@MS]"
    )
    workers = None
    if kind.startswith("workers"):
        try:
            workers = int(kind.removeprefix("workers"))
        except ValueError:
            raise ValueError(f"unknown server {text!r}: {known}") from None
        if workers < 1:
            raise ValueError(f"unknown server {text!r}: {known}")
        kind = "workers"
    if kind not in ("fastrelay", "websockets", "node", "ceiling", "scaleout", "workers"):
        raise ValueError(f"unknown server {text!r}: {known}")
    granularity = window = None
    if kind == "scaleout":
        granularity = GRANULARITIES[0]
        word, _, after = rest.partition("@")
        if word in GRANULARITIES:
            granularity, rest = word, after
        word, _, after = rest.partition("@")
        if word.startswith("w"):
            rest = after
            try:
                window = float(word[1:].removesuffix("ms"))
            except ValueError:
                raise ValueError(f"unknown server {text!r}: {known}") from None
    if rest and kind not in ("fastrelay", "ceiling", "scaleout", "workers"):
        raise ValueError(f"{kind} has no flush window")
    try:
        flush = float(rest.removesuffix("ms")) if rest else None
    except ValueError:
        raise ValueError(f"unknown server {text!r}: {known}") from None
    return Server(kind, flush, granularity, window, deflate=bool(plus), workers=workers)


FASTRELAY = Server("fastrelay")
PEERS = (Server("websockets"), Server("node"))
CEILING = Server("ceiling")
SCALEOUT = tuple(Server("scaleout", granularity=g) for g in GRANULARITIES)
# Compression: fastrelay's clients offering nothing (the uncompressed reference) and offering
# permessage-deflate, beside the peers with theirs on.
DEFLATE = (FASTRELAY, Server("fastrelay", deflate=True), Server("websockets", deflate=True),
           Server("node", deflate=True))  # fmt: skip
WORKERS = tuple(Server("workers", workers=n) for n in WORKER_COUNTS)


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    clients: int  # normal clients (measured)
    symbols: int  # the simulator's synthetic tickers S0001..
    t_rates: tuple[float, ...]  # T events/s the relay is offered, per step of the ladder
    events_per_frame: int = 1
    wildcard: bool = True  # every client on T.*, or each on one T.<ticker>, spread evenly
    slow_clients: int = 0  # clients that stop reading during the window
    # What the slow clients are: "slow" (stop reading in the window) or "link" (read at
    # link_rate bytes/s from the start: bench/loadclient.py), their channels (None: the
    # normal clients'), and what their URL adds (?conflate=1: conflation on a market path).
    slow_mode: str = "slow"
    slow_params: str | None = None
    slow_query: str = ""
    link_rate: float = 0.0
    trade_share: float = TRADE_SHARE  # of the simulator's stocks events (--trade-share)
    quiet: bool = False  # one channel nothing is published on (idle connections)
    quiet_channels: int = 1000
    drop_at: float | None = None  # seconds into the window: the simulator drops the upstream
    client_procs: int = 2
    window: float | None = None  # overrides --duration (a scenario that needs longer)
    warmup: float = 0.0  # at least this long before the first window (over --warmup)
    servers: tuple[Server, ...] = (FASTRELAY,)
    about: str = ""
    baseline_of: str | None = None  # this is the slow-consumer-free twin of that scenario
    max_repeats: int | None = None  # fewer repeats than --repeats (a slow or steady scenario)
    # Servers with several edges (the scale-out): all clients of a channel on one edge, the
    # channels dealt out in turn (disjoint interests), instead of every channel's clients split.
    edge_by_channel: bool = False
    # One window without attack, then one per attack class (bench/attacks.py), fastrelay only.
    attacks: tuple[str, ...] = ()
    client_token: str | None = None  # the relay's --client-tokens, sent by the clients' auth
    server_args: tuple[str, ...] = ()  # more arguments of fastrelay serve
    # Scale-out only: ingests started (one leads, the others are hot standbys), and, per window
    # in this order, how the leader is stopped FAILOVER_AT s into it (FAILOVER_MODES; bench/run.py,
    # Run._failover): a window per mode instead of the rate ladder.
    ingests: int = 1
    failovers: tuple[str, ...] = ()
    default_repeats: int | None = None  # runs without --repeats (None: DEFAULT_REPEATS)
    # Charts: every client subscribes A.X,AM.X and opens the chart (history of AM.X) with the
    # crowd, cold then warm (CHART_PHASES; bench/run.py, Run._charts); X dealt over this many
    # tickers (0: not a chart scenario).
    chart_tickers: int = 0
    # A browser watchlist: every client on this many tickers' trades and quotes (T.X,Q.X for
    # each), client i from ticker i on, so clients share tickers but not channel sets.
    watchlist: int = 0
    # Report each server's saturation rate and CPU per delivery (bench/saturation.py).
    saturation: bool = False

    def sim_rate(self, t_rate: float) -> float:
        """Simulator frames/s for ``t_rate`` T events/s to the relay."""
        return t_rate / self.trade_share / self.events_per_frame

    def ticker(self, index: int) -> str:
        # The simulator's synthetic names: S0001.. (at least 4 digits).
        return f"S{index:0{max(4, len(str(self.symbols)))}d}"

    def subscriptions(self) -> list[str]:
        """Normal clients' params, in client order."""
        if self.quiet:
            # Tickers the simulator never trades: connections that only wait.
            return [f"T.ZZ{i % self.quiet_channels:04d}" for i in range(self.clients)]
        if self.chart_tickers:
            # A chart: the live per-second bars and the minute bars (whose history it asks).
            tickers = [self.ticker(i % self.chart_tickers + 1) for i in range(self.clients)]
            return [f"A.{t},AM.{t}" for t in tickers]
        if self.watchlist:
            tickers = [
                [self.ticker((i + k) % self.symbols + 1) for k in range(self.watchlist)]
                for i in range(self.clients)
            ]
            return [",".join(f"{ev}.{t}" for t in mine for ev in "TQ") for mine in tickers]
        if self.wildcard:
            return ["T.*"] * self.clients
        return [f"T.{self.ticker(i % self.symbols + 1)}" for i in range(self.clients)]

    def fanout(self) -> dict[str, int]:
        """Normal clients that want each ticker's events."""
        if self.quiet:
            return {}
        if self.wildcard:
            return {self.ticker(i): self.clients for i in range(1, self.symbols + 1)}
        counts: dict[str, int] = {}
        for params in self.subscriptions():
            for channel in params.split(",") if self.watchlist else params.split(",")[:1]:
                key = channel_key(*channel.split(".", 1))
                counts[key] = counts.get(key, 0) + 1
        return counts

    def probe_stride(self) -> int:
        """Every n-th normal client decodes every event; the others count per frame."""
        if not self.wildcard or self.quiet:
            return 1  # probes' q ranges give the expected count per channel: all must probe
        peak = max(self.t_rates) * self.clients
        return max(1, math.ceil(peak / PROBE_BUDGET))

    def clients_spec(self, edges: int = 1) -> list[tuple[str, str, int]]:
        """(params, mode, edge) of every client: normal ones first, then the slow ones.

        ``edge``: which of the server's ``edges`` listeners the client connects
        to. Clients of the same channel and mode take the edges in turn, so every
        edge gets the same share of every channel's clients, probes included; with
        ``edge_by_channel`` the channels take the edges in turn instead, so each
        edge wants its own share of the channels.
        """
        stride = self.probe_stride()
        spec = [(p, "probe" if i % stride == 0 else "count") for i, p in enumerate(self.subscriptions())]
        if self.chart_tickers:
            spec = [(p, "chart") for p in self.subscriptions()]
        slow = self.slow_params or ("T.*" if self.wildcard else spec[0][0])
        spec += [(slow, self.slow_mode)] * self.slow_clients
        taken: dict[tuple[str, str], int] = {}
        channels: dict[str, int] = {}
        placed = []
        for params, mode in spec:
            if self.edge_by_channel:
                turn = channels.setdefault(params, len(channels))
            else:
                turn = taken.get((params, mode), 0)
                taken[(params, mode)] = turn + 1
            placed.append((params, mode, turn % edges))
        return placed

    def step_label(self, t_rate: float) -> str:
        if self.quiet or self.chart_tickers:
            return "-"
        return f"{t_rate / 1000:g}k" if t_rate >= 1000 else f"{t_rate:g}"


# Conflation (fastrelay/conflation.py): 10 clients on T.* and Q.* whose links carry a
# tenth of that feed (10,000 events/s, about 1.6 MB/s with the bench's stamps), trades
# 5 % of it (about half the link): with conflation they stay, get every trade and fresh
# quotes; without (slow-link-off, ?conflate=0) they are dropped; slow-link-base: the
# 100 normal clients alone, on the same feed (the relay holds Q.* for nobody). The
# warm-up lets the links read what they owed before conflation started (the first
# --conflate-above, 512 KiB: about 3 s at their 160 KB/s) and the others be dropped.
SLOW_LINK = Scenario(
    "slow-link", "slow links, conflated", clients=100, symbols=100, t_rates=(500,),
    trade_share=0.05, slow_clients=10, slow_mode="link", slow_params="T.*,Q.*",
    slow_query="?conflate=1", link_rate=160_000, window=8.0, warmup=6.0, max_repeats=2,
    server_args=("--keep-channels", "Q.*"),
    about="100 clients on T.* plus 10 on T.*,Q.* whose links carry a tenth of it (conflated)",
)  # fmt: skip

SCENARIOS: dict[str, Scenario] = {
    s.key: s
    for s in (
        Scenario(
            "firehose", "firehose", clients=100, symbols=100, t_rates=(1000, 2000, 5000, 10000),
            # The ceiling as is, and with fastrelay's write timing (its default 5 ms window);
            # fastrelay@0, ceiling@0 (flush at the end of each read) on request.
            servers=(FASTRELAY, *PEERS, CEILING, Server("ceiling", 5)),
            about="100 clients on T.*; single-event upstream frames at a rising rate (T frames/s)",
        ),
        Scenario(
            "batched", "batched", clients=100, symbols=100, t_rates=(5000, 20000), events_per_frame=20,
            servers=(FASTRELAY, *PEERS),
            about="100 clients on T.*; 20-event upstream frames (about 10 of them T)",
        ),
        Scenario(
            "sparse", "sparse", clients=1000, symbols=100, t_rates=(2000,), wildcard=False,
            servers=(FASTRELAY, *PEERS),
            about="1,000 clients, each on one T.<ticker> of 100 (10 clients per ticker)",
        ),
        Scenario(
            "idle", "idle", clients=10_000, symbols=100, t_rates=(100,), quiet=True, client_procs=4,
            window=3.0, servers=(FASTRELAY, *PEERS, CEILING), max_repeats=1,
            about="10,000 connections with one quiet channel each (1,000 channels nothing trades on)",
        ),
        Scenario(
            "slow", "slow consumers", clients=100, symbols=100, t_rates=(10000,), slow_clients=10,
            window=8.0, max_repeats=2,
            about="100 clients on T.* plus 10 that stop reading during the window",
        ),
        Scenario(
            "slow-base", "slow consumers: baseline", clients=100, symbols=100, t_rates=(10000,),
            window=8.0, max_repeats=2, baseline_of="slow",
            about="the same 100 clients without the slow ones",
        ),
        # Conflation: SLOW_LINK above; -off without it, -base without the slow links.
        SLOW_LINK,
        replace(
            SLOW_LINK, key="slow-link-off", title="slow links, not conflated", slow_query="?conflate=0",
            about="the same with ?conflate=0: the slow links are dropped (1013), as before",
        ),
        Scenario(
            "slow-link-base", "slow links: baseline", clients=100, symbols=100, t_rates=(500,),
            trade_share=0.05, window=8.0, warmup=6.0, max_repeats=2, baseline_of="slow-link",
            server_args=("--keep-channels", "Q.*"),
            about="the same 100 clients and feed without the slow links",
        ),
        Scenario(
            "reconnect", "upstream reconnect", clients=100, symbols=100, t_rates=(1000,), drop_at=2.0,
            window=6.0, max_repeats=2,
            about="100 clients on T.*; the simulator drops the upstream 2 s into the window",
        ),
        # One hostile client at a time (bench/attacks.py) against fastrelay under a moderate load:
        # a window without attack, then a window per attack class, on one relay (bench/run.py, Run._abuse).
        Scenario(
            "abuse", "abuse", clients=100, symbols=100, t_rates=(1000,), max_repeats=1,
            attacks=ATTACK_CLASSES, client_token=ABUSE_TOKEN,
            server_args=("--keep-channels", f"A.{ABUSE_HISTORY_SYMBOL},AM.{ABUSE_HISTORY_SYMBOL}"),
            about="100 clients on T.* at 1k T/s; a window without attack, then one per attack class",
        ),
        # The scale-out (1 ingest + 2 edges over a nats-server) beside the single process, both NATS
        # granularities, on the firehose, batched and sparse loads. Batch merges a NATS window's
        # trades into one message, event only one ticker's; 20-event frames and edges with disjoint
        # interests (sharded) are where the two differ most, and least.
        # Not in the default set (about 10 minutes with 3 repeats): ``--scenarios scaleout``.
        Scenario(
            "scaleout-firehose", "scale-out: firehose", clients=100, symbols=100,
            t_rates=(2000, 5000, 10000), servers=(FASTRELAY, *SCALEOUT),
            about="firehose (100 clients on T.*, single-event frames) on 1 process vs ingest + 2 edges",
        ),
        Scenario(
            "scaleout-batched", "scale-out: batched", clients=100, symbols=100, t_rates=(5000, 20000),
            events_per_frame=20, servers=(FASTRELAY, *SCALEOUT),
            about="batched (100 clients on T.*, 20-event frames) on 1 process vs ingest + 2 edges",
        ),
        Scenario(
            "scaleout-sparse", "scale-out: sparse", clients=1000, symbols=100, t_rates=(2000,),
            wildcard=False, servers=(FASTRELAY, *SCALEOUT),
            about="sparse (1,000 clients, one T.<ticker> of 100 each) on 1 process vs ingest + 2 edges",
        ),
        Scenario(
            "scaleout-sparse-batched", "scale-out: sparse, batched", clients=1000, symbols=100,
            t_rates=(2000,), events_per_frame=20, wildcard=False, servers=(FASTRELAY, *SCALEOUT),
            about="sparse with 20-event upstream frames (about 10 T each) on 1 process vs ingest + 2 edges",
        ),
        # Sparse again, but each ticker's clients all on one edge (odd tickers on one, even on the
        # other): each edge wants half the channels, where event granularity sends it only those.
        Scenario(
            "scaleout-sharded", "scale-out: sparse, sharded", clients=1000, symbols=100, t_rates=(2000,),
            wildcard=False, edge_by_channel=True, servers=(FASTRELAY, *SCALEOUT),
            about="sparse, each ticker's clients on one edge (50 tickers each); single-event frames",
        ),
        Scenario(
            "scaleout-sharded-batched", "scale-out: sparse, sharded, batched", clients=1000, symbols=100,
            t_rates=(2000,), events_per_frame=20, wildcard=False, edge_by_channel=True,
            servers=(FASTRELAY, *SCALEOUT),
            about="sparse, each ticker's clients on one edge (50 tickers each); 20-event frames",
        ),
        # High availability: two ingests (a leader and its hot standby) and 2 edges; in each window
        # the leader is stopped, kill -9 then SIGTERM, and the clients time the new leader's data.
        # Cheap (two 8 s windows per run): 5 runs unless --repeats says otherwise.
        Scenario(
            "scaleout-failover", "scale-out: failover", clients=20, symbols=100, t_rates=(1000,),
            window=8.0, servers=(SCALEOUT[0],), ingests=2, failovers=FAILOVER_MODES, default_repeats=5,
            about="20 clients on T.* at 1k T/s, 2 ingests + 2 edges; the leader killed (-9), then TERM",
        ),
        # Chart history: 1,000 browsers open the same chart at once (history of AM.S0001, a day
        # of minute bars from the simulator's REST through the relay's cache, then live A and
        # AM), on a fresh relay and again once the cache holds the answer; and the same crowd
        # spread over 20 tickers. A quiet feed (each ticker's A once a second).
        # Compression (permessage-deflate): bytes on the wire per delivered event and CPU per
        # event, clients offering nothing and offering it, beside the peers' per-connection
        # compression; the firehose, the sparse load, and browsers' watchlists.
        Scenario(
            "deflate-firehose", "compression: firehose", clients=100, symbols=100, t_rates=(250, 2000),
            servers=DEFLATE, about="100 clients on T.*, single-event frames at 2k T/s; with and without it",
        ),
        Scenario(
            "deflate-sparse", "compression: sparse", clients=1000, symbols=100, t_rates=(500, 2000),
            wildcard=False, servers=DEFLATE,
            about="1,000 clients each on one T.<ticker> of 100; with and without deflate",
        ),
        Scenario(
            "deflate-watchlist", "compression: watchlist", clients=200, symbols=100, t_rates=(250, 1000),
            wildcard=False, watchlist=20, servers=DEFLATE,
            about="200 browsers, each on trades and quotes of 20 tickers; with and without deflate",
        ),
        Scenario(
            "charts", "charts: one ticker", clients=1000, symbols=20, t_rates=(200,), wildcard=False,
            chart_tickers=1, window=4.0,
            about="1,000 clients open the chart of one ticker at once (history AM.X), cold then warm",
        ),
        # Every core of one machine (docs/workers.md): the sparse load, where each delivery is a
        # write of its own (20 clients on each of 200 tickers, each ticker's trades 5 to 40 a
        # second: rarely two in one 5 ms flush window), climbing until the one process and the
        # tree of 2 edges (+ ingest, nats-server, supervisor) saturate. Not in the default set.
        Scenario(
            "workers", "workers: sparse ladder", clients=4000, symbols=200, wildcard=False,
            t_rates=(1000, 2000, 3000, 4000, 6000, 8000), client_procs=4, servers=WORKERS,
            saturation=True,
            about="4,000 clients, one T.<ticker> of 200 each (one write per delivery), 20k to 160k "
            "deliveries/s, on serve --workers 1 and --workers 2",
        ),
        Scenario(
            "charts-spread", "charts: 20 tickers", clients=1000, symbols=20, t_rates=(200,),
            wildcard=False, chart_tickers=20, window=4.0,
            about="1,000 clients open charts at once, 50 each on 20 tickers, cold then warm",
        ),
    )
}  # fmt: skip

# ``--scenarios slow`` runs its baseline too: the target compares the two; ``charts`` its
# spread twin.
COMPANIONS = {
    "slow": ("slow-base",),
    "slow-link": ("slow-link-off", "slow-link-base"),
    "charts": ("charts-spread",),
}
# Names for a set of scenarios.
GROUPS = {
    "deflate": ("deflate-firehose", "deflate-sparse", "deflate-watchlist"),
    "scaleout": (
        "scaleout-firehose", "scaleout-batched", "scaleout-sparse", "scaleout-sparse-batched",
        "scaleout-sharded", "scaleout-sharded-batched", "scaleout-failover",
    )
}  # fmt: skip
# Not in the default set: the scale-out scenarios (``--scenarios scaleout``, about 10 minutes).
DEFAULT_SCENARIOS = (
    "firehose", "batched", "sparse", "idle", "slow", "slow-link", "reconnect", "abuse", "deflate",
)  # fmt: skip


@dataclass(frozen=True)
class Config:
    scenario: Scenario
    server: Server

    @property
    def label(self) -> str:
        return f"{self.scenario.key} {self.server.label}"


def repeats_of(scenario: Scenario, repeats: int | None) -> int:
    """Runs of each of the scenario's configs: ``repeats`` (--repeats) if given, else the
    scenario's default, never more than its ``max_repeats``."""
    count = repeats if repeats is not None else scenario.default_repeats or DEFAULT_REPEATS
    return count if scenario.max_repeats is None else min(count, scenario.max_repeats)


def plan(
    scenarios: list[Scenario], servers: list[Server] | None, repeats: int | None
) -> Iterator[tuple[int, Config]]:
    """(repeat, config) in run order: every config once per repeat, alternating.

    ``repeats``: --repeats (None: each scenario's default, see ``repeats_of``)."""
    configs: list[Config] = []
    for scenario in scenarios:
        chosen = scenario.servers if servers is None else tuple(servers)
        for server in chosen:
            if not server.routes and not (scenario.wildcard or scenario.quiet):
                continue  # the ceiling cannot serve per-client channels
            if scenario.attacks and server.kind != "fastrelay":
                continue  # the attacks probe fastrelay's limits (tokens, history): the peers have none
            if scenario.failovers and server.kind != "scaleout":
                continue  # a failover needs several ingests
            if scenario.chart_tickers and server.kind != "fastrelay":
                continue  # chart history is fastrelay's (the peers and the edges have no REST source)
            configs.append(Config(scenario, server))
    counts = [repeats_of(config.scenario, repeats) for config in configs]
    for repeat in range(max(counts, default=0)):
        for config, count in zip(configs, counts, strict=True):
            if repeat < count:
                yield repeat, config
