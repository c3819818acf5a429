"""What a client may cause, and how the relay takes what it sends; pure.

Every byte and every frame a client sends costs the relay CPU before any rule
looks at it, and every answer it provokes costs bytes on the wire, so each
connection has a budget (``ClientBudget``: frames and bytes per second, with
a burst): the frames it sends, control frames included, and the bytes it sends
and is answered with (acknowledgements, errors, last values; its data and its
history replies have their own limits), and the loop time spent on it: on its
messages, and on its conflated stream while it is behind (conflation.py). A
connection over budget is closed (``CloseReason.FLOOD``; a conflating one
``SLOW_CONSUMER``), not answered: an answer per excess message is what turns a
flood into a denial of service for everyone else.

The rest is RFC 6455 as picows leaves it to the application: fragmented
messages are reassembled under the message cap (``Reassembly``), and a close
frame is answered with a code that may be sent (``close_reply``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from fastrelay.closes import CloseReason


@dataclass(frozen=True)
class BudgetLimits:
    """Per connection. The defaults leave a browser or an official client far inside them:
    they send a handful of control messages and a ping every 20-25 s."""

    frames_per_second: float = 50.0
    frame_burst: float = 200.0
    bytes_per_second: float = 256 * 1024
    byte_burst: float = 1024 * 1024  # four full-size (256 KiB) messages at once
    # Seconds of the relay's loop spent on this client's messages: a service that
    # subscribes 10,000 channels at start takes about 0.1 s once.
    cpu_per_second: float = 0.05
    cpu_burst: float = 0.5


class ClientBudget:
    """Token buckets (frames, bytes, loop time) refilled at their rates; one object per connection."""

    __slots__ = ("_bytes", "_cpu", "_frames", "_limits", "_updated")

    def __init__(self, limits: BudgetLimits, now: float) -> None:
        self._limits = limits
        self._frames = limits.frame_burst
        self._bytes = limits.byte_burst
        self._cpu = limits.cpu_burst
        self._updated = now

    def _refill(self, now: float) -> None:
        limits = self._limits
        elapsed = now - self._updated
        if elapsed > 0:
            self._updated = now
            self._frames = min(limits.frame_burst, self._frames + elapsed * limits.frames_per_second)
            self._bytes = min(limits.byte_burst, self._bytes + elapsed * limits.bytes_per_second)
            self._cpu = min(limits.cpu_burst, self._cpu + elapsed * limits.cpu_per_second)

    def take(self, size: int, now: float) -> bool:
        """Charge one frame of ``size`` bytes; False once the connection is over budget."""
        self._refill(now)
        self._frames -= 1
        self._bytes -= size
        return self._frames >= 0 and self._bytes >= 0

    def charge(self, size: int) -> bool:
        """Charge bytes the relay sends because of this client (its replies); False when over.

        Charged after a ``take`` in the same pass, so no refill is due.
        """
        self._bytes -= size
        return self._bytes >= 0

    def charge_cpu(self, seconds: float) -> bool:
        """Charge loop time spent on this client's messages; False when over."""
        self._cpu -= seconds
        return self._cpu >= 0

    def spend_cpu(self, seconds: float, now: float) -> bool:
        """Charge loop time spent for this client outside its own messages (its conflated
        stream: conflation.py), refilled first since no frame of it came; False when over."""
        self._refill(now)
        self._cpu -= seconds
        return self._cpu >= 0


class Reassembly:
    """One fragmented message being put back together (RFC 6455 5.4), under ``limit`` bytes."""

    __slots__ = ("binary", "compressed", "limit", "parts", "size")

    def __init__(self, binary: bool, first: bytes, limit: int, compressed: bool = False) -> None:
        self.binary = binary
        self.compressed = compressed  # RSV1 on its first frame: permessage-deflate
        self.limit = limit
        self.parts = [first]
        self.size = len(first)

    def add(self, part: bytes) -> bool:
        """Append a continuation; False when the message would pass the limit."""
        self.size += len(part)
        if self.size > self.limit:
            return False
        self.parts.append(part)
        return True

    def message(self) -> bytes:
        return b"".join(self.parts)


# Codes an endpoint may send in a close frame (RFC 6455 7.4.1, 7.4.2): 1005,
# 1006 and 1015 are for reporting only, 1004 is reserved, 1016-2999 are for
# future revisions of the RFC and extensions, 3000-4999 for libraries and applications.
_SENDABLE: Final = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})
NO_CODE: Final = 0  # what picows reports for a close frame without a payload


def close_reply(code: int) -> int | None:
    """The code to answer a client's close with; None: answer with an empty close.

    An empty close is answered with an empty close; a valid code is echoed
    (RFC 6455 5.5.1); a code that may not be sent is a protocol error (1002).
    """
    if code == NO_CODE:
        return None
    if code in _SENDABLE or 3000 <= code <= 4999:
        return code
    return CloseReason.PROTOCOL_ERROR.code
