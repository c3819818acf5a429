"""The ingest's view of its edges: what each wants, and which are alive; pure.

Each edge's heartbeat carries its whole interest. The registry diffs it with
what that edge wanted before and returns the changes, which the ingest turns
into references on its hub (one reference per edge per channel), so the
ordinary reference counting and linger of ``interest.MarketInterest`` decide
the upstream subscriptions exactly as they do for clients in one process.

An edge not heard from for ``timeout`` seconds is presumed dead and all its
references go (``expire``): an upstream subscription never outlives every
edge that wanted it by more than the timeout plus the linger. While the
ingest's own NATS connection is down it hears nobody, which says nothing
about the edges: ``grace`` restarts every edge's clock on reconnection.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Change = tuple[str, str]  # (market, channel name)


@dataclass
class Diff:
    added: list[Change] = field(default_factory=list)
    removed: list[Change] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed)


@dataclass
class _Edge:
    channels: set[Change]
    heard_at: float
    seq: int = 0


class EdgeRegistry:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._edges: dict[str, _Edge] = {}
        self.expired_total = 0

    def __len__(self) -> int:
        return len(self._edges)

    def channel_counts(self) -> dict[str, int]:
        """Channels each live edge wants, by edge name (``NAME#INCARNATION`` keys summed by name)."""
        counts: dict[str, int] = {}
        for edge, known in self._edges.items():
            name = edge.partition("#")[0]
            counts[name] = counts.get(name, 0) + len(known.channels)
        return counts

    def wants(self, edge: str) -> frozenset[Change]:
        found = self._edges.get(edge)
        return frozenset(found.channels) if found else frozenset()

    def update(self, edge: str, channels: set[Change], now: float, seq: int = 0) -> Diff:
        """An edge's heartbeat: what changed since its last one (everything, if it is new)."""
        known = self._edges.get(edge)
        if known is None:
            self._edges[edge] = _Edge(set(channels), now, seq)
            return Diff(added=sorted(channels))
        known.heard_at = now
        known.seq = seq
        if known.channels == channels:
            return Diff()
        diff = Diff(added=sorted(channels - known.channels), removed=sorted(known.channels - channels))
        known.channels = set(channels)
        return diff

    def reject(self, edge: str, changes: list[Change]) -> None:
        """Forget channels the ingest could not take (the contract cap): the
        edge's next heartbeat offers them again, as new."""
        known = self._edges.get(edge)
        if known is not None:
            known.channels.difference_update(changes)

    def forget_channel(self, change: Change) -> None:
        """Massive refused this channel: no edge holds it any more (their next heartbeats
        offer it again, and the ingest refuses it while it remembers the refusal)."""
        for known in self._edges.values():
            known.channels.discard(change)

    def remove(self, edge: str) -> Diff:
        """An edge said goodbye (or timed out): all its references go."""
        known = self._edges.pop(edge, None)
        return Diff(removed=sorted(known.channels)) if known else Diff()

    def expire(self, now: float) -> dict[str, Diff]:
        """Edges silent for longer than the timeout, and what each one wanted."""
        silent = [e for e, known in self._edges.items() if now - known.heard_at > self.timeout]
        self.expired_total += len(silent)
        return {edge: self.remove(edge) for edge in silent}

    def next_expiry(self) -> float | None:
        """When the first edge times out if it stays silent."""
        return min((k.heard_at + self.timeout for k in self._edges.values()), default=None)

    def grace(self, now: float) -> None:
        """Our own link to the edges was down: do not hold their silence against them."""
        for known in self._edges.values():
            known.heard_at = now
