"""WebSocket frames for clients, built once and shared by every recipient; pure.

Server-to-client frames are not masked (RFC 6455, 5.1), so one complete
frame (header and JSON array) can be built once and written as the same bytes
to every client that should receive exactly those events. Events are kept as
the upstream sent them; only /api/socket events of ambiguous markets get a
leading ``"market"`` key (``tag_market``).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Final

import orjson

from fastrelay.events import RawEvent

_OPCODE_TEXT_FIN: Final = 0x81
_OPCODE_TEXT_FIN_RSV1: Final = 0xC1  # RSV1: a permessage-deflate compressed message (RFC 7692 6)
_OPCODE_PONG_FIN: Final = 0x8A
_pack_u16: Final = struct.Struct("!BBH").pack
_pack_u64: Final = struct.Struct("!BBQ").pack


def text_frame_header(payload_length: int, first_byte: int = _OPCODE_TEXT_FIN) -> bytes:
    if payload_length < 126:
        return bytes((first_byte, payload_length))
    if payload_length < 65536:
        return _pack_u16(first_byte, 126, payload_length)
    return _pack_u64(first_byte, 127, payload_length)


def pong_frame(payload: bytes) -> bytes:
    """A complete unmasked pong carrying a ping's payload (at most 125 bytes, RFC 6455 5.5)."""
    payload = payload[:125]
    return bytes((_OPCODE_PONG_FIN, len(payload))) + payload


def text_frame(payload: bytes) -> bytes:
    """A complete unmasked text frame carrying ``payload``."""
    return text_frame_header(len(payload)) + payload


def compressed_text_frame(payload: bytes) -> bytes:
    """A complete unmasked text frame carrying a permessage-deflate compressed ``payload``."""
    return text_frame_header(len(payload), _OPCODE_TEXT_FIN_RSV1) + payload


def event_array_payloads(events: Sequence[RawEvent], max_payload: int) -> list[bytes]:
    """``events`` as JSON arrays, in order, each under ``max_payload`` bytes.

    Massive's official clients reject frames over 1 MiB by default. One event
    alone larger than the limit still goes out whole: an event is never cut.
    """
    size = 2 + sum(map(len, events)) + len(events)
    if size <= max_payload:
        return [b"[" + b",".join(events) + b"]"]
    payloads: list[bytes] = []
    batch: list[bytes] = []
    batch_size = 2
    for event in events:
        if batch and batch_size + len(event) + 1 > max_payload:
            payloads.append(b"[" + b",".join(batch) + b"]")
            batch = []
            batch_size = 2
        batch.append(event)
        batch_size += len(event) + 1
    payloads.append(b"[" + b",".join(batch) + b"]")
    return payloads


def event_array_frames(events: Sequence[RawEvent], max_payload: int) -> list[bytes]:
    """Complete WebSocket frames carrying ``events`` (see ``event_array_payloads``)."""
    return [text_frame(payload) for payload in event_arrays(events, max_payload)]


def event_arrays(events: Sequence[RawEvent], max_payload: int) -> list[bytes]:
    """``event_array_payloads`` with the common case first: one event under a firehose."""
    if len(events) == 1:  # skip the size pass
        event = events[0]
        if len(event) + 2 <= max_payload:
            return [b"[" + event + b"]"]
    return event_array_payloads(events, max_payload)


def tag_market(event: RawEvent, market: str) -> bytes:
    """The event with a leading ``"market"`` key, for /api/socket clients.

    The bytes after the opening brace are kept as they came, so no market
    value is re-encoded; only events of ambiguous markets (futures) get this.
    """
    data = bytes(event)
    if data[:1] != b"{" or data[1:2] == b"}":
        return data
    return b'{"market":' + orjson.dumps(market) + b"," + data[1:]
