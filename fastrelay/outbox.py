"""The one write path to clients: frames built once, counted, written, backlog checked.

Theory of operation
-------------------
Every byte the relay sends a client goes through ``Outbox``: the hub's
audience frames (``fan_out``), outage announcements (``broadcast``), session
replies (statuses, acknowledgements, last values, history: ``send`` and
``send_events``) and a scale-out edge's fills. One place therefore

* builds the WebSocket frames once per call, however many members get them
  (server-to-client frames are unmasked: the same bytes serve everyone);
* counts what was written (``DeliveryStatistics``, read by the metrics);
* checks each member's unsent backlog after writing, and drops a member past
  ``--max-client-buffer``: a ``slow_consumer`` status (if the socket still
  takes it), then a close with 1013, as Massive does. Nobody else waits.
  With conflation on, a member that may conflate and owes more than the soft
  limit (``--conflate-above``) but not the hard one is handed to
  ``on_behind`` instead (the hub: conflation.py); the loop compares with one
  limit either way.

Compression (RFC 7692, deflate.py) happens here too, once per call: the first
member that negotiated it has the payloads compressed by the relay's one
``SharedDeflater``, and every such member gets the same compressed frames (RSV1
set); the others get the plain ones. A call where no member negotiated it
compresses nothing.

The hot path is ``fan_out``: per member it costs the writes, one ``buffered()``
call and three comparisons. Members are reached only through
``Member.write``/``buffered``/``deflate`` and ``Member.owner``, so it is tested
with recording sinks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

from fastrelay import protocol
from fastrelay.closes import CloseReason
from fastrelay.deflate import SharedDeflater
from fastrelay.events import RawEvent
from fastrelay.framing import compressed_text_frame, event_arrays, pong_frame, text_frame
from fastrelay.member import Member
from fastrelay.ratelimit import LogThrottle

log = logging.getLogger("fastrelay.relay")

# The label of compression bytes written outside audiences (statuses, replies, history).
REPLIES = "replies"

_SLOW_CONSUMER_FRAME = text_frame(
    protocol.status_frame(protocol.SLOW_CONSUMER, "client too slow: unsent data over the limit")
)


@dataclass
class DeliveryStatistics:
    deliveries: int = 0  # events times the members they were written to
    frames: int = 0  # frames times members
    bytes: int = 0
    slow_consumers: int = 0
    max_backlog: int = 0  # largest member backlog seen since ``take_max_backlog``
    # Per market label (an audience's market, "mixed", or REPLIES): bytes the members that
    # negotiated compression would have been sent plain, and what they were sent.
    deflate_before: dict[str, int] = field(default_factory=dict)
    deflate_after: dict[str, int] = field(default_factory=dict)


class Outbox:
    def __init__(
        self, max_frame_payload: int, max_client_buffer: int, deflater: SharedDeflater | None = None
    ) -> None:
        self.max_frame_payload = max_frame_payload
        self.max_client_buffer = max_client_buffer
        self.deflater = deflater  # None: compression off, whatever clients offer
        # Conflation (conflation.py): a member owing more than soft_limit is checked by
        # _behind; unset, the soft limit is the hard one and nothing changes.
        self.soft_limit = max_client_buffer
        self.on_behind: Callable[[Member], None] | None = None
        self.stats = DeliveryStatistics()
        self._slow_log = LogThrottle(log, interval=10.0)

    # --- what to send ---------------------------------------------------------------
    def fan_out(self, members: Collection[Member], events: list[RawEvent], market: str = "") -> None:
        """An audience's events, in frames built once, to every member (the hot path).

        ``market`` labels the compression metrics. The hub's audiences never hold
        a closed member, so there is no check here.
        """
        self._write(members, event_arrays(events, self.max_frame_payload), len(events), market)

    def send_events(self, member: Member, events: list[RawEvent]) -> None:
        """Events (last values, history, fills) to one member, split under the frame cap."""
        if events and not member.closed:
            self._write((member,), event_arrays(events, self.max_frame_payload), len(events), REPLIES)

    def send(self, member: Member, payloads: Sequence[bytes]) -> None:
        """JSON payloads (statuses, replies), one frame each, in order."""
        if payloads and not member.closed:
            self._write((member,), payloads, 0, REPLIES)

    def pong(self, member: Member, payload: bytes) -> None:
        """The answer to a client's ping (a control frame: never compressed)."""
        if not member.closed:
            self._write((member,), (), 0, REPLIES, [pong_frame(payload)])

    def broadcast(self, members: Collection[Member], payload: bytes) -> None:
        """One JSON payload to many members (an outage status), framed once."""
        if members:
            self._write(members, (payload,), 0, REPLIES)

    # --- how it is sent -----------------------------------------------------------------
    def _write(
        self,
        members: Collection[Member],
        payloads: Sequence[bytes],
        events: int,
        label: str,
        frames: list[bytes] | None = None,
    ) -> None:
        """``payloads`` as text frames, built once, to every member; or ``frames`` as given
        (a control frame: no payloads, never compressed)."""
        if frames is None:
            frames = [text_frame(p) for p in payloads]
        count = len(members)
        stats = self.stats
        stats.deliveries += events * count
        stats.frames += len(frames) * count
        limit = self.soft_limit
        max_backlog = stats.max_backlog
        slow: list[Member] | None = None
        packed: list[bytes] | None = None  # the compressed frames, built for the first taker
        deflated = 0  # members that got them
        for member in members:
            write = member.write
            if member.deflate and payloads:
                if packed is None:
                    packed = self._compressed(payloads, frames)
                deflated += 1
                for frame in packed:
                    write(frame)
            else:
                for frame in frames:
                    write(frame)
            backlog = member.buffered()
            if backlog > max_backlog:
                max_backlog = backlog
            if backlog > limit:
                if slow is None:
                    slow = []
                slow.append(member)
        stats.max_backlog = max_backlog
        plain_size = sum(map(len, frames))
        if packed is None:
            stats.bytes += plain_size * count
        else:
            packed_size = plain_size if packed is frames else sum(map(len, packed))
            stats.bytes += plain_size * (count - deflated) + packed_size * deflated
            before, after = stats.deflate_before, stats.deflate_after
            before[label] = before.get(label, 0) + plain_size * deflated
            after[label] = after.get(label, 0) + packed_size * deflated
        if slow:
            # After the loop: closing detaches members, which changes audiences.
            for member in slow:
                self._behind(member)

    def _compressed(self, payloads: Sequence[bytes], frames: list[bytes]) -> list[bytes]:
        """Each payload compressed (an RSV1 frame) where it pays, else its plain frame;
        ``frames`` itself when none was (a frame of one small event, the common case)."""
        deflater = self.deflater
        if deflater is None:  # no member can have negotiated it
            return frames
        packed: list[bytes] | None = None
        for index, payload in enumerate(payloads):
            compressed = deflater.compress(payload)
            if compressed is not None:
                if packed is None:
                    packed = frames.copy()
                packed[index] = compressed_text_frame(compressed)
        return frames if packed is None else packed

    def _behind(self, member: Member) -> None:
        """Over the soft limit: dropped past the hard one (without conflation the two are
        one), else conflated if it may be; a member that may not waits, as it always did."""
        if member.closed:
            return
        if member.buffered() > self.max_client_buffer:
            self.drop_slow_consumer(member)
        elif self.on_behind is not None and member.conflates:
            self.on_behind(member)

    def drop_slow_consumer(self, member: Member, why: str = "") -> None:
        """Close ``member`` with slow_consumer (1013); ``why``: what it outran (default: the
        buffer limit)."""
        if member.closed:
            return
        self.stats.slow_consumers += 1
        self._slow_log.log(
            logging.WARNING,
            "dropped a slow consumer (%s): %s (total dropped: %d)",
            member.owner.describe(),
            why or f"more than {self.max_client_buffer} bytes unsent",
            self.stats.slow_consumers,
            extra={
                "client": member.address.address if member.address is not None else None,
                "channels": len(member.channels),
                "reason": "slow_consumer",
                "count": self.stats.slow_consumers,
            },
        )
        # The status goes out only if the socket can still take it; its bytes
        # are counted, its backlog no longer matters.
        member.write(_SLOW_CONSUMER_FRAME)
        self.stats.frames += 1
        self.stats.bytes += len(_SLOW_CONSUMER_FRAME)
        member.owner.close(CloseReason.SLOW_CONSUMER, "slow consumer")

    def take_max_backlog(self) -> int:
        """The largest backlog seen since the last call (the metrics read it once per rendering)."""
        peak, self.stats.max_backlog = self.stats.max_backlog, 0
        return peak
