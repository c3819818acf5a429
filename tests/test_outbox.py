"""The one write path: frames built once, counted, written, backlogs checked (no sockets)."""

from __future__ import annotations

import zlib

import orjson

from fastrelay.closes import CloseReason
from fastrelay.deflate import SharedDeflater
from fastrelay.protocol import Channel, status_frame
from tests.sinks import make_core


def event(q: int, pad: int = 0) -> bytes:
    return orjson.dumps({"ev": "T", "sym": "AAPL", "q": q, "pad": "x" * pad})


def test_fan_out_builds_each_frame_once_and_counts_it_per_member() -> None:
    """Every member gets the same bytes objects; statistics count events, frames and bytes per member."""
    core = make_core()
    members = [core.member() for _ in range(3)]
    core.outbox.fan_out([m for m, _ in members], [event(1), event(2)])
    first = members[0][1].writes
    assert len(first) == 1 and all(sink.writes[0] is first[0] for _, sink in members)
    stats = core.outbox.stats
    assert (stats.deliveries, stats.frames, stats.bytes) == (6, 3, 3 * len(first[0]))


def test_events_to_one_member_are_split_under_the_frame_cap_in_order() -> None:
    """Last values or history larger than the frame cap leave in several frames, in order."""
    core = make_core(max_frame_payload=1024)
    m, sink = core.member()
    core.outbox.send_events(m, [event(q, pad=100) for q in range(40)])
    assert len(sink.writes) > 1
    assert all(len(p) <= 1024 for p in sink.payloads())
    assert [e["q"] for e in sink.events()] == list(range(40))


def test_replies_and_broadcasts_count_frames_and_bytes_but_no_deliveries() -> None:
    """Statuses are frames and bytes on the wire, not events delivered."""
    core = make_core()
    a, a_sink = core.member()
    b, b_sink = core.member()
    core.outbox.send(a, [status_frame("success", "one"), status_frame("success", "two")])
    core.outbox.broadcast([a, b], status_frame("error", "stocks feed interrupted (drop)"))
    assert a_sink.statuses() == [
        ("success", "one"),
        ("success", "two"),
        ("error", "stocks feed interrupted (drop)"),
    ]
    assert b_sink.statuses() == [("error", "stocks feed interrupted (drop)")]
    stats = core.outbox.stats
    assert stats.deliveries == 0 and stats.frames == 4
    assert stats.bytes == sum(map(len, a_sink.writes + b_sink.writes))


def test_every_kind_of_write_checks_the_backlog() -> None:
    """A reply to a client that does not read drops it, as a data frame would: the limit covers every byte."""
    core = make_core(max_client_buffer=1000)
    m, sink = core.member()
    sink.backlog = 5000
    core.outbox.send(m, [status_frame("error", "rate limit")])
    assert sink.closes == [(CloseReason.SLOW_CONSUMER, "slow consumer")]
    assert sink.statuses()[-1][0] == "slow_consumer"
    assert core.dropped == [m] and m.closed
    assert core.outbox.stats.slow_consumers == 1


def test_a_closed_member_gets_nothing_more() -> None:
    """After the drop nothing is written to the member again, and it is not dropped twice."""
    core = make_core(max_client_buffer=1000)
    m, sink = core.member()
    sink.backlog = 5000
    core.outbox.send(m, [status_frame("error", "x")])
    written = len(sink.writes)
    core.outbox.send(m, [status_frame("error", "y")])
    core.outbox.send_events(m, [event(1)])
    assert len(sink.writes) == written and len(sink.closes) == 1


def test_the_largest_backlog_is_kept_until_read() -> None:
    """The backlog gauge is the peak since the last reading, then starts over."""
    core = make_core()
    a, a_sink = core.member()
    b, b_sink = core.member()
    a_sink.backlog, b_sink.backlog = 300, 700
    core.outbox.fan_out([a, b], [event(1)])
    b_sink.backlog = 10
    core.outbox.fan_out([a, b], [event(2)])
    assert core.outbox.take_max_backlog() == 700
    core.outbox.fan_out([a, b], [event(3)])
    assert core.outbox.take_max_backlog() == 300


def test_a_slow_consumer_dropped_mid_flush_leaves_the_hub_consistent() -> None:
    """Dropping a member while its audience is being written does not disturb the others or the index."""
    core = make_core(max_client_buffer=1000)
    fast, fast_sink = core.member()
    slow, slow_sink = core.member()
    for m in (fast, slow):
        core.hub.subscribe(m, [Channel("stocks", "T", "*")])
    slow_sink.backlog = 5000
    core.route("stocks", b'[{"ev":"T","sym":"AAPL","q":1}]')
    core.hub.flush()
    core.route("stocks", b'[{"ev":"T","sym":"AAPL","q":2}]')
    core.hub.flush()
    assert [e["q"] for e in fast_sink.events()] == [1, 2]
    assert [e["q"] for e in slow_sink.events()] == [1]
    assert core.hub.members == 1 and core.hub.audience_count() == 1


def _inflate(frame: bytes) -> bytes:
    """A compressed frame's payload, inflated alone (a client without context takeover)."""
    assert frame[0] == 0xC1  # FIN, RSV1, text
    length = frame[1] & 0x7F
    start = 2 if length < 126 else 4 if length == 126 else 10
    return zlib.decompressobj(-15).decompress(frame[start:] + b"\x00\x00\xff\xff")


def test_compressed_once_for_every_member_that_negotiated_it() -> None:
    """One audience, two clients with compression and one without: the two get the same
    compressed bytes (RSV1), which inflate to the plain frame's payload; bytes are counted as
    written, and per market before and after compression."""
    core = make_core(deflater=SharedDeflater(level=6, threshold=256, cpu_per_second=10.0))
    deflating = [core.member(deflate=True) for _ in range(2)]
    plain, plain_sink = core.member()
    events = [event(q, pad=20) for q in range(10)]
    core.outbox.fan_out([m for m, _ in deflating] + [plain], events, "stocks")
    (packed,) = deflating[0][1].writes
    assert deflating[1][1].writes[0] is packed
    (frame,) = plain_sink.writes
    assert frame[0] == 0x81 and _inflate(packed) == plain_sink.payloads()[0]
    assert len(packed) < len(frame) / 2
    stats = core.outbox.stats
    assert stats.bytes == 2 * len(packed) + len(frame)
    assert stats.deflate_before == {"stocks": 2 * len(frame)}
    assert stats.deflate_after == {"stocks": 2 * len(packed)}
    assert core.outbox.deflater is not None and core.outbox.deflater.stats.frames == 1


def test_small_frames_and_pongs_go_plain_to_members_that_negotiated_compression() -> None:
    core = make_core(deflater=SharedDeflater(level=6, threshold=256, cpu_per_second=10.0))
    m, sink = core.member(deflate=True)
    core.outbox.fan_out([m], [event(1)], "stocks")  # one event: under the threshold
    core.outbox.pong(m, b"ping")
    core.outbox.send(m, [status_frame("success", "x" * 400)])  # replies compress too
    small, pong, reply = sink.writes
    assert small[0] == 0x81 and pong[0] == 0x8A and reply[0] == 0xC1
    assert orjson.loads(_inflate(reply))[0]["message"] == "x" * 400
    assert core.outbox.stats.deflate_after["replies"] == len(reply)  # a pong is never compressible
