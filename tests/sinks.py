"""A recording stand-in for a client socket, for hub and session tests."""

from __future__ import annotations

import orjson

from fastrelay.hub import Hub, Member
from fastrelay.interest import MarketInterest


class RecordingSink:
    """Records every write; ``backlog`` plays the socket's unsent bytes."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.backlog = 0

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def buffered(self) -> int:
        return self.backlog

    def events(self) -> list[dict[str, object]]:
        """Every event written, decoded from the WebSocket frames."""
        out: list[dict[str, object]] = []
        for frame in self.writes:
            length = frame[1] & 0x7F
            offset = {126: 4, 127: 10}.get(length, 2)
            out.extend(orjson.loads(frame[offset:]))
        return out


def make_hub(
    markets: tuple[str, ...] = ("stocks", "options", "futures"),
    max_client_buffer: int = 1 << 20,
    max_channels: int = 100,
    max_frame_payload: int = 64 * 1024,
) -> tuple[Hub, list[Member]]:
    """A hub over a fake clock, and the list its slow-consumer callback fills."""
    slow: list[Member] = []
    interests = {m: MarketInterest(m, linger=0.0, clock=lambda: 0.0) for m in markets}
    hub = Hub(interests, max_frame_payload, max_client_buffer, max_channels, slow.append)
    return hub, slow


def member(hub: Hub, tags_markets: bool = False) -> tuple[Member, RecordingSink]:
    sink = RecordingSink()
    m = Member(sink.write, sink.buffered, tags_markets=tags_markets, owner=sink)
    hub.attach(m)
    return m, sink
