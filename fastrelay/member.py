"""One client connection as the relay's core sees it; pure.

The core (hub, outbox, sessions, fills) never touches a socket: a member is
given the socket's ``write`` and ``buffered`` callables, and ``owner`` is the
connection it stands for, reached only through ``Connection``. Tests use a
recording sink in its place.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from fastrelay.addresses import AddressState
from fastrelay.closes import CloseReason
from fastrelay.protocol import Channel


class Connection(Protocol):
    """What the core may ask of a client connection."""

    def describe(self) -> str:
        """Who this is, for logs: address, path, channel count (never a token)."""

    def close(self, reason: CloseReason, message: str) -> None:
        """End the connection with ``reason``'s close code."""

    def charge_loop_time(self, seconds: float) -> bool:
        """Charge loop time spent for this client beyond its messages (its conflated stream)
        to its budget; False once it is over (the caller drops it)."""


class Member:
    """The core's view of one client connection."""

    # Thousands at once: slots keep each small.
    __slots__ = (
        "address", "buffered", "channels", "closed", "conflates", "deflate", "owner", "tags_markets", "write",
    )  # fmt: skip

    def __init__(
        self,
        write: Callable[[bytes], object],
        buffered: Callable[[], int],
        owner: Connection,
        tags_markets: bool = False,
        address: AddressState | None = None,
        deflate: bool = False,
        conflates: bool = False,
    ) -> None:
        self.owner = owner
        # The budgets it shares with every connection from its address (None: none).
        self.address = address
        self.write = write  # writes bytes to the client's socket, never blocks
        self.buffered = buffered  # bytes written but not yet sent
        # /api/socket clients mix markets on one socket: events of ambiguous
        # markets (futures) reach them with a "market" key.
        self.tags_markets = tags_markets
        # Negotiated permessage-deflate (deflate.py): frames the outbox compressed reach it
        # compressed (RSV1), the rest plain.
        self.deflate = deflate
        self.channels: set[Channel] = set()
        self.closed = False  # detached from the hub: nothing more is written to it
        # Behind by more than --conflate-above, it is sent the conflated stream instead of
        # being dropped (conflation.py); off: dropped past --max-client-buffer only.
        self.conflates = conflates
