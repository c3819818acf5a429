"""One client's conversation with the relay: auth, subscribe, unsubscribe; pure.

Behaves like a Massive cluster (PROTOCOL.md, "Messages"): a ``connected``
status on open, ``auth`` answered with ``auth_success`` or ``auth_failed``,
every subscribe and unsubscribe acknowledged per channel in Massive's
wording. Returns what to send rather than sending it, so the rules are tested
without sockets; ``server.py`` is the thin picows shell around it.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass, field

from fastrelay import markets, protocol
from fastrelay.hub import Hub, Member
from fastrelay.protocol import Channel, ChannelError, ClientMessageError
from fastrelay.ratelimit import TokenBucket

# Close codes (RFC 6455 7.4.1): 1008 tells Massive's clients not to retry.
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TRY_AGAIN_LATER = 1013
# Beyond this many bad channels in one message, report the count, not each one.
MAX_ERRORS_LISTED = 10


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


@dataclass
class Reply:
    """Payloads (JSON arrays) to send in order, then an optional close."""

    frames: list[bytes] = field(default_factory=list)
    close: tuple[int, str, str] | None = None  # code, reason sent, reason label for metrics


class ClientSession:
    # One per connection, thousands at once: slots keep each small.
    __slots__ = (
        "_limiter",
        "_make_limiter",
        "_on_interest_changed",
        "authenticated",
        "hub",
        "market",
        "member",
        "tokens",
    )

    def __init__(
        self,
        hub: Hub,
        member: Member,
        market: str | None,
        tokens: TokenCheck,
        on_interest_changed: Callable[[], None] = lambda: None,
        limiter: Callable[[], TokenBucket] | None = None,
    ) -> None:
        """``market`` is the cluster path (``stocks``...) or None for /api/socket.

        ``limiter`` makes the control-message rate limit of this client; it is
        called at the first message only, so idle connections carry none.
        """
        self.hub = hub
        self.member = member
        self.market = market
        self.tokens = tokens
        self.authenticated = False
        self._on_interest_changed = on_interest_changed
        self._make_limiter = limiter
        self._limiter: TokenBucket | None = None

    def opened(self) -> bytes:
        return protocol.status_frame(protocol.CONNECTED, "Connected Successfully")

    def _over_rate(self) -> Reply | None:
        """The rate-limit reply when this client sends faster than allowed, else None."""
        if self._make_limiter is None:
            return None
        if self._limiter is None:
            self._limiter = self._make_limiter()
        if self._limiter.take():
            return None
        rate = self._limiter.rate
        return Reply([protocol.status_frame(protocol.ERROR, f"rate limit: at most {rate:g} messages/s")])

    def receive(self, payload: bytes) -> Reply:
        limited = self._over_rate()
        if limited is not None:
            return limited
        try:
            message = protocol.decode_client_message(payload)
        except ClientMessageError as exc:
            return Reply([protocol.status_frame(protocol.ERROR, str(exc))])
        action = message.action
        if action == "auth":
            return self._auth(message.params)
        if action in ("subscribe", "unsubscribe", "history"):
            if not self.authenticated:
                return Reply([protocol.status_frame(protocol.AUTH_REQUIRED, "please authenticate first")])
            if action == "subscribe":
                return self._subscribe(message.params)
            if action == "history":
                return self._history(message.params)
            return self._unsubscribe(message.params)
        return Reply([protocol.status_frame(protocol.ERROR, f"unknown action {action[:40]!r}")])

    def binary_received(self) -> Reply:
        return self._over_rate() or Reply(
            [protocol.status_frame(protocol.ERROR, "binary frames are not supported: send JSON text")]
        )

    def _auth(self, token: str) -> Reply:
        if self.authenticated:
            return Reply([protocol.status_frame(protocol.ERROR, "already authenticated")])
        if not self.tokens.accepts(token):
            return Reply(
                [protocol.status_frame(protocol.AUTH_FAILED, "authentication failed")],
                close=(CLOSE_POLICY_VIOLATION, "authentication failed", "auth_failed"),
            )
        self.authenticated = True
        return Reply([protocol.status_frame(protocol.AUTH_SUCCESS, "authenticated")])

    def _parse(self, params: str) -> tuple[list[Channel], list[str]]:
        names = protocol.split_params(params)
        limit = self.hub.max_channels_per_client
        if len(names) > limit:
            return [], [f"too many channels in one message: {len(names)} (at most {limit} per connection)"]
        channels: list[Channel] = []
        errors: list[str] = []
        for name in names:
            try:
                if self.market is None:
                    channels.append(protocol.parse_api_channel(name))
                else:
                    channels.append(protocol.parse_channel(name, self.market))
            except ChannelError as exc:
                errors.append(str(exc))
        if not names:
            errors.append("no channel given: params must list channels, e.g. T.AAPL,Q.MSFT")
        return channels, errors

    def _subscribe(self, params: str) -> Reply:
        channels, errors = self._parse(params)
        result = self.hub.subscribe(self.member, channels)
        errors.extend(result.errors)
        statuses = [
            protocol.status(protocol.SUCCESS, protocol.subscribed_message(self._label(c)))
            for c in result.accepted
        ]
        statuses.extend(self._error_statuses(errors))
        reply = Reply([protocol.statuses_frame(statuses)])
        for market in sorted({c.market for c in result.accepted} & self.hub.outages.keys()):
            reply.frames.append(protocol.feed_interrupted_frame(market, self.hub.outages[market]))
        last = self.hub.last_values(self.member, result.accepted)
        if last:
            reply.frames.append(b"[" + b",".join(last) + b"]")
        if self.hub.dirty_markets:
            self._on_interest_changed()
        return reply

    def _unsubscribe(self, params: str) -> Reply:
        channels, errors = self._parse(params)
        self.hub.unsubscribe(self.member, channels)
        statuses = [
            protocol.status(protocol.SUCCESS, protocol.unsubscribed_message(self._label(c))) for c in channels
        ]
        statuses.extend(self._error_statuses(errors))
        if self.hub.dirty_markets:
            self._on_interest_changed()
        return Reply([protocol.statuses_frame(statuses)])

    def _history(self, params: str) -> Reply:
        """fastrelay's extension: the recent aggregates of exact channels (README, "history").

        For each channel, its kept events (oldest first, the same event shapes
        as live data) and then a ``success`` status saying how many, so the
        client knows the history of that channel is complete.
        """
        channels, errors = self._parse(params)
        fills = self.hub.fills
        pending = [c for c in channels if fills.filling(c)] if fills is not None else []
        if fills is not None and pending:
            # A scale-out edge is fetching these channels' history from the ingest
            # (scaleout/fills.py): answer when it is in, rather than with a part of it.
            fills.when_filled(pending, lambda: self._send_later(self._history_reply(channels, errors)))
            return Reply()
        return self._history_reply(channels, errors)

    def _send_later(self, reply: Reply) -> None:
        if not self.member.closed:
            for payload in reply.frames:
                self.member.write(protocol.text_frame(payload))

    def _history_reply(self, channels: list[Channel], errors: list[str]) -> Reply:
        reply = Reply()
        for channel in channels:
            events = self.hub.history(self.member, channel)
            if events:
                reply.frames.extend(protocol.event_array_payloads(events, self.hub.max_frame_payload))
            message = f"history: {self._label(channel)} ({len(events)} events)"
            reply.frames.append(protocol.status_frame(protocol.SUCCESS, message))
        if errors:
            reply.frames.append(protocol.statuses_frame(self._error_statuses(errors)))
        return reply

    def _label(self, channel: Channel) -> str:
        # On /api/socket an explicitly prefixed channel is acknowledged with
        # its prefix, so the client can match the ack to what it sent.
        if self.market is None and markets.infer_market(channel.ev, channel.ticker) != channel.market:
            return channel.label(tagged=True)
        return channel.name

    @staticmethod
    def _error_statuses(errors: list[str]) -> list[dict[str, str]]:
        statuses = [protocol.status(protocol.ERROR, e) for e in errors[:MAX_ERRORS_LISTED]]
        if len(errors) > MAX_ERRORS_LISTED:
            statuses.append(
                protocol.status(protocol.ERROR, f"{len(errors) - MAX_ERRORS_LISTED} more invalid channels")
            )
        return statuses

    def closed(self) -> None:
        self.hub.detach(self.member)
        if self.hub.dirty_markets:
            self._on_interest_changed()
