"""Decoding Massive upstream frames: only what routing needs, raw bytes kept.

A frame is a JSON array of event objects. The relay needs each event's ``ev``,
its ticker (under ``sym``, ``T``, ``pair`` or ``p`` depending on market and
ev, docs/protocol.md "Events by market") and its timestamp for latency; the rest
passes through untouched as ``msgspec.Raw`` so no market value is re-encoded
or re-typed. Decoders are built once (msgspec performance tips).
"""

from __future__ import annotations

from typing import Any, Final, TypeAlias

import msgspec


class EventHead(msgspec.Struct, gc=False):
    """The routing fields of one event. ``Any`` everywhere: real data drifts
    in type (forex ``x`` as a string, crypto ``i`` int or string), and a relay
    that routes must not reject an event for it."""

    ev: Any = None
    sym: Any = None
    T: Any = None
    pair: Any = None
    p: Any = None
    t: Any = None
    # Status objects (ev == "status") ride in the same frames as data.
    status: Any = None
    message: Any = None


# One event's bytes as the upstream sent them: a slice of its frame (``msgspec.Raw``)
# or a copy (``bytes``); either joins into a frame without re-encoding.
RawEvent: TypeAlias = msgspec.Raw | bytes


class FrameError(ValueError):
    """An upstream frame the relay cannot route; counted, logged and skipped."""


_heads_decoder: Final = msgspec.json.Decoder(list[EventHead])
_raws_decoder: Final = msgspec.json.Decoder(list[msgspec.Raw])


def decode_frame(payload: bytes | memoryview) -> tuple[list[EventHead], list[msgspec.Raw]]:
    """Routing heads and raw slices of every event of a frame, index-aligned.

    Two passes in C beat one Python call per event: the raw pass only scans.
    """
    try:
        heads = _heads_decoder.decode(payload)
        raws = _raws_decoder.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise FrameError(f"undecodable frame ({len(payload)} bytes): {exc}") from None
    return heads, raws


def ticker_of(head: EventHead) -> str | None:
    """The event's ticker, whichever key its market and ev put it under.

    ``sym`` for most events, ``pair`` for crypto and forex aggregates, ``T``
    for LULD, NOI and index values, ``p`` for forex quotes. ``p`` is a price
    elsewhere, but those events all carry ``sym`` or ``pair`` first.
    """
    for value in (head.sym, head.pair, head.T, head.p):
        if value.__class__ is str:
            return value
    return None


def timestamp_ms(head: EventHead) -> float | None:
    """The event's own time in Unix ms, when it is given in ms (most events)."""
    t = head.t
    # 1e12 ms is 2001, 1e13 ms is 2286: outside that, the unit is µs or ns.
    if (t.__class__ is int or t.__class__ is float) and 1e12 <= t < 1e13:
        return float(t)
    return None
