"""One client's conversation with the relay: auth, subscribe, unsubscribe, history; pure.

Behaves like a Massive cluster (docs/protocol.md, "Control messages"): a
``connected`` status on open, ``auth`` answered with ``auth_success`` or
``auth_failed``, every subscribe and unsubscribe acknowledged per channel in
Massive's wording. Returns what to send (``Reply``) rather than sending it,
deferred answers included, so the rules are tested without sockets;
``server.py`` is the thin picows shell around it.
"""

from __future__ import annotations

import hmac
import math
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from fastrelay import aggs, markets, protocol
from fastrelay.aggs import BarQuery, BarsError
from fastrelay.cache import Cache
from fastrelay.closes import CloseReason
from fastrelay.framing import event_array_payloads
from fastrelay.hub import Hub
from fastrelay.member import Member
from fastrelay.protocol import (
    Auth,
    Channel,
    ChannelError,
    ClientMessageError,
    History,
    Subscribe,
    Unsubscribe,
)
from fastrelay.ratelimit import TokenBucket

# Beyond this many bad channels in one message, report the count, not each one.
MAX_ERRORS_LISTED = 10
# A client over its message rate gets one error status per this many seconds,
# and nothing for the messages in between: an answer per excess message would
# let it make the relay write as fast as it sends.
RATE_ERROR_INTERVAL = 1.0


class TokenCheck:
    """Client tokens, compared in constant time; no tokens = open mode."""

    def __init__(self, tokens: list[str]) -> None:
        self._tokens = [t.encode() for t in tokens if t]

    @property
    def open_mode(self) -> bool:
        return not self._tokens

    def accepts(self, token: str) -> bool:
        if not self._tokens:
            return True
        candidate = token.encode("utf-8", "surrogatepass")
        # Compare against every token so the time says nothing about which matched.
        matched = False
        for known in self._tokens:
            matched |= hmac.compare_digest(candidate, known)
        return matched


class FillSource(Protocol):
    """Last values and history this relay lacks, fetched from elsewhere (a scale-out ingest)."""

    def missing(self, member: Member, channels: list[Channel]) -> None:
        """A new subscriber's exact state channels with no last value (or, aggregates, no history)."""

    def filling(self, channel: Channel) -> bool:
        """A fetch for this channel is on its way."""

    def when_filled(self, channels: list[Channel], callback: Callable[[], None]) -> None:
        """Call back once every one of these channels' fetches is in (or failed)."""


@dataclass(frozen=True)
class HistoryLimits:
    """What one ``history`` request may cost (a request names channels; each reply can be
    hundreds of events): channels per request, reply bytes per request, requests per minute."""

    max_channels: int = 50
    max_bytes: int = 2 * 1024 * 1024
    per_minute: float = 30.0
    burst: int = 10


@dataclass
class SessionContext:
    """What every session of a relay shares: the core it talks to and the rules."""

    hub: Hub
    cache: Cache
    tokens: TokenCheck
    max_frame_payload: int
    # market -> reason, while its feed is down (the relay's, updated in place)
    outages: Mapping[str, str] = field(default_factory=dict)
    # Makes one client's control-message rate limit; None: unlimited.
    limiter: Callable[[], TokenBucket] | None = None
    fills: FillSource | None = None  # a scale-out edge's
    history: HistoryLimits = field(default_factory=HistoryLimits)
    clock: Callable[[], float] = time.monotonic
    bars: BarSource | None = None  # Massive's REST aggregates, when the relay has a key
    wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000


class BarSource(Protocol):
    """Bars from Massive's REST API, cached and coalesced (``bars.Bars``)."""

    async def fetch(self, market: str, query: BarQuery) -> list[dict[str, Any]]: ...


@dataclass
class Deferred:
    """An answer that can only be built once these channels' fetches are in (a scale-out
    edge's fills) and ``wait`` has run (REST bars); the shell awaits, the session builds."""

    channels: list[Channel]
    build: Callable[[], Reply]
    wait: Callable[[], Awaitable[None]] | None = None


@dataclass
class Reply:
    """Payloads (JSON arrays) to send in order, then an optional close or a deferred answer.

    ``more`` are payloads built one at a time as they are sent: the shell stops
    taking them when the client is dropped for its backlog, so a large answer
    never sits in memory whole.
    """

    frames: list[bytes] = field(default_factory=list)
    close: tuple[CloseReason, str] | None = None  # reason, message sent with the close
    later: Deferred | None = None
    more: Iterator[bytes] | None = None


class ClientSession:
    # One per connection, thousands at once: slots keep each small.
    __slots__ = (
        "_context",
        "_history_limiter",
        "_limiter",
        "_quiet_until",
        "authenticated",
        "market",
        "member",
    )

    def __init__(self, context: SessionContext, member: Member, market: str | None) -> None:
        """``market`` is the cluster path (``stocks``...) or None for /api/socket."""
        self._context = context
        self.member = member
        self.market = market
        self.authenticated = False
        # Made at the first message only, so idle connections carry none.
        self._limiter: TokenBucket | None = None
        self._history_limiter: TokenBucket | None = None
        self._quiet_until = 0.0  # no rate-limit error before this (context clock)

    def opened(self) -> bytes:
        return protocol.status_frame(protocol.CONNECTED, "Connected Successfully")

    def _over_rate(self) -> Reply | None:
        """The rate-limit reply when this client sends faster than allowed, else None."""
        make = self._context.limiter
        if make is None:
            return None
        if self._limiter is None:
            self._limiter = make()
        if self._limiter.take():
            return None
        now = self._context.clock()
        if now < self._quiet_until:
            return Reply()
        self._quiet_until = now + RATE_ERROR_INTERVAL
        rate = self._limiter.rate
        return _error(f"rate limit: at most {rate:g} messages/s")

    def receive(self, payload: bytes) -> Reply:
        limited = self._over_rate()
        if limited is not None:
            return limited
        try:
            message = protocol.decode_client_message(payload)
        except ClientMessageError as exc:
            return _error(str(exc))
        match message:
            case Auth(params=token):
                return self._auth(token)
            case _ if not self.authenticated:
                return Reply([protocol.status_frame(protocol.AUTH_REQUIRED, "please authenticate first")])
            case Subscribe(params=params):
                return self._subscribe(params)
            case Unsubscribe(params=params):
                return self._unsubscribe(params)
            case History(params=params) as history:
                return self._history(params, history.options())
        raise AssertionError(f"unhandled action {message!r}")  # pragma: no cover - the union is closed

    def binary_received(self) -> Reply:
        return self._over_rate() or _error("binary frames are not supported: send JSON text")

    def _auth(self, token: str) -> Reply:
        if self.authenticated:
            return _error("already authenticated")
        address = self.member.address
        if address is not None:
            # Locked out after repeated failures (addresses.py): not even checked,
            # so guessing tokens from one address goes nowhere fast.
            wait = address.locked_for()
            if wait > 0:
                return _auth_failed(
                    f"too many failed attempts from your address: retry in {math.ceil(wait)} s"
                )
        if not self._context.tokens.accepts(token):
            if address is not None:
                address.auth_failed()
            return _auth_failed("authentication failed")
        if address is not None:
            address.auth_succeeded()
        self.authenticated = True
        return Reply([protocol.status_frame(protocol.AUTH_SUCCESS, "authenticated")])

    def _parse(self, params: str) -> tuple[dict[Channel, str], list[str]]:
        """The channels of ``params``, each with the name as the client wrote it (acknowledged
        in that spelling), and the errors of the names that are not channels."""
        # A channel named twice is one channel: its answer is not sent twice.
        names = list(dict.fromkeys(protocol.split_params(params)))
        limit = self._context.hub.max_channels_per_client
        channels: dict[Channel, str] = {}
        errors: list[str] = []
        if len(names) > limit:
            # No connection holds more: the rest is not even parsed (the work of one
            # message stays bounded), and is refused in one line.
            errors.append(
                f"too many channels in one message: {len(names)}; the {len(names) - limit} "
                f"after the first {limit} were not taken (at most {limit} per connection)"
            )
            names = names[:limit]
        for name in names:
            try:
                if self.market is None:
                    channel = protocol.parse_api_channel(name)
                else:
                    channel = protocol.parse_channel(name, self.market)
            except ChannelError as exc:
                errors.append(str(exc))
                continue
            channels.setdefault(channel, name)  # C.EUR-USD and C.EUR/USD are one channel
        if not names:
            errors.append("no channel given: params must list channels, e.g. T.AAPL,Q.MSFT")
        return channels, errors

    def _subscribe(self, params: str) -> Reply:
        context = self._context
        labels, errors = self._parse(params)
        result = context.hub.subscribe(self.member, labels)
        errors.extend(f"{labels[c]}: {why}" for c, why in result.refused)
        statuses = [
            protocol.status(protocol.SUCCESS, protocol.subscribed_message(labels[c])) for c in result.accepted
        ]
        statuses.extend(_error_statuses(errors))
        reply = Reply([protocol.statuses_frame(statuses)])
        for market in sorted({c.market for c in result.accepted} & context.outages.keys()):
            reply.frames.append(protocol.feed_interrupted_frame(market, context.outages[market]))
        last, missing = context.cache.last_values(result.accepted, self.member.tags_markets)
        if last:
            reply.frames.extend(event_array_payloads(last, context.max_frame_payload))
        if missing and context.fills is not None:
            context.fills.missing(self.member, missing)
        return reply

    def _unsubscribe(self, params: str) -> Reply:
        labels, errors = self._parse(params)
        self._context.hub.unsubscribe(self.member, labels)
        statuses = [
            protocol.status(protocol.SUCCESS, protocol.unsubscribed_message(name)) for name in labels.values()
        ]
        statuses.extend(_error_statuses(errors))
        return Reply([protocol.statuses_frame(statuses)])

    def _history(self, params: str, options: dict[str, Any]) -> Reply:
        """fastrelay's extension: the aggregates of exact channels (docs/protocol.md, "history").

        For each channel, its bars (oldest first, the same event shapes as live
        data) and then a ``success`` status saying how many, so the client knows
        the history of that channel is complete. With a REST source the bars are
        Massive's for the range asked (``options``: timespan, multiplier, from,
        to, limit; by default the last day of the channel's own bars) joined with
        the ones the relay saw live; without one, the ones it kept. A request may
        name ``HistoryLimits.max_channels`` channels, its reply may take
        ``max_bytes``, and a client may ask ``per_minute`` times a minute.
        """
        context = self._context
        limits = context.history
        if self._history_limiter is None:
            self._history_limiter = TokenBucket(limits.per_minute / 60.0, limits.burst, clock=context.clock)
        if not self._history_limiter.take():
            return _error(f"history: at most {limits.per_minute:g} requests a minute")
        labels, errors = self._parse(params)
        if len(labels) > limits.max_channels:
            return _error(
                f"history: at most {limits.max_channels} channels per request ({len(labels)} asked)"
            )
        queries: dict[Channel, BarQuery] = {}
        if options and context.bars is None:
            return _error("history: this relay has no REST source for ranges (no Massive key)")
        if context.bars is not None:
            now = context.wall_ms()
            for channel in list(labels):
                if channel.ticker == "*" or channel.ev not in aggs.NATIVE_SPAN:
                    if options:
                        errors.append(f"history: {labels.pop(channel)} has no bars to ask for")
                    continue
                try:
                    queries[channel] = aggs.history_query(
                        channel.market, channel.ev, channel.ticker, options, now
                    )
                except aggs.QueryError as exc:
                    return _error(str(exc))
        fetched: dict[Channel, list[dict[str, Any]] | str] = {}
        fills = context.fills
        pending = [c for c in labels if fills.filling(c)] if fills is not None else []
        wait = self._bars_fetcher(queries, fetched) if queries else None
        if pending or wait is not None:
            # A scale-out edge is fetching these channels' history from the ingest
            # (scaleout/fills.py), or Massive's REST bars are on their way: answer when
            # they are in, rather than with a part of them.
            return Reply(
                later=Deferred(
                    pending,
                    lambda: Reply(more=self._history_reply(labels, errors, queries, fetched)),
                    wait,
                )
            )
        return Reply(more=self._history_reply(labels, errors, queries, fetched))

    def _bars_fetcher(
        self, queries: dict[Channel, BarQuery], fetched: dict[Channel, list[dict[str, Any]] | str]
    ) -> Callable[[], Awaitable[None]]:
        bars = self._context.bars
        assert bars is not None

        async def fetch_all() -> None:
            for channel, query in queries.items():
                try:
                    fetched[channel] = await bars.fetch(channel.market, query)
                except BarsError as exc:
                    fetched[channel] = str(exc)

        return fetch_all

    def _history_reply(
        self,
        labels: dict[Channel, str],
        errors: list[str],
        queries: dict[Channel, BarQuery],
        fetched: dict[Channel, list[dict[str, Any]] | str],
    ) -> Iterator[bytes]:
        context = self._context
        budget = context.history.max_bytes
        for channel, label in labels.items():
            events, problem = self._bars_of(channel, queries.get(channel), fetched.get(channel))
            if problem is not None:
                yield protocol.status_frame(protocol.ERROR, f"{problem} ({label})")
            size = sum(map(len, events)) + len(events)
            if size > budget:
                yield protocol.status_frame(
                    protocol.ERROR,
                    f"history: {label} not sent: the reply would pass {context.history.max_bytes} bytes",
                )
                continue
            budget -= size
            if events:
                yield from event_array_payloads(events, context.max_frame_payload)
            yield protocol.status_frame(protocol.SUCCESS, f"history: {label} ({len(events)} events)")
        if errors:
            yield protocol.statuses_frame(_error_statuses(errors))

    def _bars_of(
        self, channel: Channel, query: BarQuery | None, fetched: list[dict[str, Any]] | str | None
    ) -> tuple[list[bytes], str | None]:
        """A channel's bars: REST's joined with the kept live ones; why REST gave none."""
        tags = self.member.tags_markets
        kept = self._context.cache.history(channel, tags)
        if query is None:
            return kept, None
        if isinstance(fetched, str) or fetched is None:
            return kept, fetched  # what the relay has, and why Massive's are missing
        native = aggs.NATIVE_SPAN[channel.ev]
        tag = channel.market if tags and markets.is_ambiguous(channel.market) else None
        rest = aggs.bar_events(channel.ev, channel.ticker, query, fetched, tag)
        if (query.multiplier, query.timespan) != native[:2]:
            return [event for _, event in rest], None  # other bars than the live ones
        return aggs.join(rest, aggs.starts(kept)), None

    def leave(self) -> None:
        """The connection ended: release everything this client held."""
        self._context.hub.detach(self.member)


def _auth_failed(message: str) -> Reply:
    return Reply(
        [protocol.status_frame(protocol.AUTH_FAILED, message)],
        close=(CloseReason.AUTH_FAILED, "authentication failed"),
    )


def _error(message: str) -> Reply:
    return Reply([protocol.status_frame(protocol.ERROR, message)])


def _error_statuses(errors: list[str]) -> list[dict[str, str]]:
    statuses = [protocol.status(protocol.ERROR, e) for e in errors[:MAX_ERRORS_LISTED]]
    if len(errors) > MAX_ERRORS_LISTED:
        statuses.append(
            protocol.status(protocol.ERROR, f"{len(errors) - MAX_ERRORS_LISTED} more invalid channels")
        )
    return statuses
