"""The life of one Massive upstream connection, without I/O; pure.

Theory of operation
-------------------
The shell (``upstream.py``) owns the socket and the timers; this core owns
every decision, so each rule is tested with a fake clock and no network. The
shell tells the core what happened and does what it answers:

* ``opened()`` when the WebSocket is up; ``status()`` for each status object
  Massive sends, answered from the handshake table below (send the key, go
  live, give up on auth, cool down); ``received()`` for any incoming frame;
* ``check_liveness()`` on the core's own schedule: silence alone is not a
  fault (markets close, quiet channels are normal), so after
  ``ping_interval`` without data the shell pings, and a ping left unanswered
  for ``ping_timeout`` means the line is dead;
* ``handshake_expired()`` when ``handshake_timeout`` has passed since the
  attempt began: abort unless live;
* ``closed()`` when the connection is gone, then ``next_delay()`` before the
  next attempt: capped exponential backoff with full jitter, reset only after
  a connection stayed up ``healthy_after``; at least ``auth_retry`` after
  ``auth_failed`` (a wrong key will not fix itself) and
  ``max_connections_cooldown`` after ``max_connections`` (another process
  holds the key's one slot, docs/protocol.md "Endpoints").

Handshake (docs/protocol.md, "Control messages"), older servers' ``success``
accepted in both places::

    phase            status                      -> phase            action
    AWAIT_CONNECTED  connected | success         -> AWAIT_AUTH       SEND_AUTH
    AWAIT_AUTH       auth_success | success      -> LIVE             GO_LIVE
    any              auth_failed                 -> CLOSED           AUTH_FAILED
    before LIVE      error "authentication failed" (older servers) -> CLOSED  AUTH_FAILED
    any              max_connections             -> CLOSED           MAX_CONNECTIONS
    anything else                                   (unchanged)      NOTHING

``max_connections`` can come at any time, even after ``auth_success``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Final

from fastrelay import protocol
from fastrelay.backoff import Backoff
from fastrelay.config import UpstreamTimers
from fastrelay.feed import DisconnectReason


class Phase(enum.Enum):
    CLOSED = "closed"
    AWAIT_CONNECTED = "await_connected"
    AWAIT_AUTH = "await_auth"
    LIVE = "live"


class Action(enum.Enum):
    """What the core asks the shell to do."""

    NOTHING = "nothing"
    SEND_AUTH = "send_auth"
    GO_LIVE = "go_live"
    AUTH_FAILED = "auth_failed"  # log, abort, retry after auth_retry
    MAX_CONNECTIONS = "max_connections"  # log, abort, cool down
    PING = "ping"
    STALL = "stall"  # abort: the line is dead


HANDSHAKE: Final[dict[tuple[Phase, str], tuple[Phase, Action]]] = {
    (Phase.AWAIT_CONNECTED, protocol.CONNECTED): (Phase.AWAIT_AUTH, Action.SEND_AUTH),
    (Phase.AWAIT_CONNECTED, protocol.SUCCESS): (Phase.AWAIT_AUTH, Action.SEND_AUTH),
    (Phase.AWAIT_AUTH, protocol.AUTH_SUCCESS): (Phase.LIVE, Action.GO_LIVE),
    (Phase.AWAIT_AUTH, protocol.SUCCESS): (Phase.LIVE, Action.GO_LIVE),
}
IN_ANY_PHASE: Final[dict[str, tuple[Phase, Action]]] = {
    protocol.AUTH_FAILED: (Phase.CLOSED, Action.AUTH_FAILED),
    protocol.MAX_CONNECTIONS: (Phase.CLOSED, Action.MAX_CONNECTIONS),
}
_REASON_OF: Final = {
    Action.AUTH_FAILED: DisconnectReason.AUTH_FAILED,
    Action.MAX_CONNECTIONS: DisconnectReason.MAX_CONNECTIONS,
    Action.STALL: DisconnectReason.STALL,
}


class UpstreamCore:
    def __init__(self, timers: UpstreamTimers, backoff: Backoff, clock: Callable[[], float]) -> None:
        self.timers = timers
        self.backoff = backoff
        self._clock = clock
        self.phase = Phase.CLOSED
        # Why the current (or last) connection ends; None until something says.
        self.reason: DisconnectReason | None = None
        self._live_since: float | None = None
        self._last_rx = 0.0
        self._ping_sent_at = 0.0
        self._awaiting_pong = False

    @property
    def live(self) -> bool:
        return self.phase is Phase.LIVE

    # --- what happened ----------------------------------------------------------------
    def attempt(self) -> None:
        """A new connection attempt begins."""
        self.phase = Phase.CLOSED
        self.reason = None
        self._live_since = None
        self._awaiting_pong = False

    def opened(self) -> None:
        self.phase = Phase.AWAIT_CONNECTED
        self._last_rx = self._clock()

    def status(self, status: str, message: str = "") -> Action:
        found = IN_ANY_PHASE.get(status) or HANDSHAKE.get((self.phase, status))
        # Older servers refused a key with an `error` status, not `auth_failed`.
        old_refusal = status == protocol.ERROR and "authentication failed" in message.lower()
        if found is None and old_refusal and self.phase is not Phase.LIVE:
            found = IN_ANY_PHASE[protocol.AUTH_FAILED]
        if found is None:
            return Action.NOTHING
        phase, action = found
        self.phase = phase
        if action is Action.GO_LIVE:
            self._live_since = self._clock()
        reason = _REASON_OF.get(action)
        if reason is not None:
            self.reason = reason
        return action

    def received(self) -> None:
        """Any frame came in: the line is alive."""
        self._last_rx = self._clock()

    def failed(self) -> None:
        """The attempt failed before the WebSocket was up (refused, TLS, timeout)."""
        self.reason = DisconnectReason.DROP

    def handshake_expired(self) -> bool:
        """``handshake_timeout`` since the attempt began: True if the shell must abort."""
        if self.phase is Phase.LIVE:
            return False
        self.reason = self.reason or DisconnectReason.DROP
        return True

    def closed(self) -> tuple[DisconnectReason, bool]:
        """The connection is gone: why, and whether it had been live."""
        live_since = self._live_since
        if live_since is not None and self._clock() - live_since >= self.timers.healthy_after:
            self.backoff.reset()
        self.reason = self.reason or DisconnectReason.DROP
        self.phase = Phase.CLOSED
        self._live_since = None
        return self.reason, live_since is not None

    # --- what to do ---------------------------------------------------------------------
    def check_liveness(self) -> tuple[Action, float]:
        """PING, STALL or NOTHING now, and the delay until the next check."""
        timers = self.timers
        now = self._clock()
        if self._awaiting_pong and self._last_rx >= self._ping_sent_at:
            self._awaiting_pong = False  # any data proves the line alive, not only a pong
        if self._awaiting_pong:
            waited = now - self._ping_sent_at
            if waited >= timers.ping_timeout:
                self.reason = DisconnectReason.STALL
                return Action.STALL, 0.0
            return Action.NOTHING, timers.ping_timeout - waited
        idle = now - self._last_rx
        if idle >= timers.ping_interval:
            self._awaiting_pong = True
            self._ping_sent_at = now
            return Action.PING, timers.ping_timeout
        return Action.NOTHING, timers.ping_interval - idle

    def next_delay(self) -> float:
        """How long to wait before the next attempt."""
        delay = self.backoff.next_delay()
        if self.reason is DisconnectReason.AUTH_FAILED:
            return max(self.timers.auth_retry, delay)
        if self.reason is DisconnectReason.MAX_CONNECTIONS:
            return max(self.timers.max_connections_cooldown, delay)
        return delay
