"""Why a client connection ended: one vocabulary for close codes and metric labels; pure.

Every place that ends a client connection names a ``CloseReason``; the
reason carries the WebSocket close code sent (RFC 6455 7.4.1) and the label of
``fastrelay_client_disconnections_total``. The table, with what each code
asks of a client, is in docs/protocol.md ("Close codes").
"""

from __future__ import annotations

import enum


class CloseReason(enum.Enum):
    """``(code, label)``: the close code sent to the client and the metric label.

    ``code`` is 0 where the relay sends no close frame of its own: the peer
    closed first (its code is echoed), picows closed on a protocol error, or
    the connection was lost.
    """

    # The client closed; the relay echoes its code (RFC 6455 5.5.1).
    NORMAL = (1000, "normal")
    # More than --max-client-buffer unsent: `slow_consumer` status, then 1013
    # (try again later), as Massive does.
    SLOW_CONSUMER = (1013, "slow_consumer")
    # 1008 (policy violation): Massive's clients do not retry on it, which is
    # right for a wrong token.
    AUTH_FAILED = (1008, "auth_failed")
    AUTH_TIMEOUT = (1008, "auth_timeout")
    # picows closed it (a frame over --max-message-size: 1009, a protocol error: 1002).
    POLICY = (0, "policy")
    # The relay found a protocol error picows leaves to it (RSV bits, a bad
    # close code, a stray continuation) ...
    PROTOCOL_ERROR = (1002, "protocol")
    # ... or a fragmented message past --max-message-size.
    MESSAGE_TOO_BIG = (1009, "policy")
    # A market path this relay does not serve: connected, an error naming it, 1008.
    UNSERVED = (1008, "unserved")
    # Over its budget (frames or bytes per second, sent or answered): cut off, not answered.
    FLOOD = (1008, "flood")
    # Too many connections from the client's address: 1013, try again later.
    LIMIT = (1013, "limit")
    # No answer to a ping within --client-ping-timeout. Not 1001: Massive's
    # Python client ends for good on 1000, 1001 and 1005, and a client that
    # stalled for a while (a laptop asleep) should come back. 1013 (try again
    # later) makes every client retry, after a pause (fastrelay-client.js) or
    # its own backoff (the official clients).
    IDLE = (1013, "idle")
    # The relay is shutting down or restarting (SIGTERM/SIGINT): 1012, service
    # restart, which clients retry on (1001 would end Massive's Python client).
    SHUTDOWN = (1012, "shutdown")
    # The connection was lost without a close handshake.
    ERROR = (0, "error")

    def __init__(self, code: int, label: str) -> None:
        self.code = code
        self.label = label


# Every label, so each metric series exists from start-up.
CLOSE_LABELS: tuple[str, ...] = tuple(dict.fromkeys(reason.label for reason in CloseReason))
