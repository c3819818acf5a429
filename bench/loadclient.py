"""One load-generator process: many Massive-protocol clients on one uvloop loop.

Run by ``bench.run``, one process per share of the clients, and driven over
stdin/stdout with one JSON object per line:

    stdin   {"url": ..., "clients": [["T.*", "probe"], ["T.*", "count", url], ...], ...}   (the spec)
    stdout  {"type": "ready", ...}                        (all subscribed, or given up)
    stdin   {"cmd": "window", "start_ns": ..., "end_ns": ...}   (a measured window)
    stdin   {"cmd": "mark", "ns": ...}                     (optional, inside a window: an upstream drop,
                                                          or a leader ingest's death: events sent from
                                                          then on came through the next leader)
    stdout  {"type": "result", ...}                       (after end_ns + grace)
    ...     more windows (a rising-rate ladder runs several on one set of connections)
    stdin   {"cmd": "history", "phase": "cold", "at_ns": ..., "timeout": ...}   (chart clients: a crowd
                                                          opens its charts at at_ns; with
                                                          "one_per_chart": one client per chart)
    stdout  {"type": "history_done", ...}                 (every chart client has its answer, or timed out)
    stdin   {"cmd": "collect"}                            (after the last phase and a live tail)
    stdout  {"type": "charts", ...}                       (per chart client and phase: the times, N, live)
    stdin   {"cmd": "stop"} or end of file                 (the parent is done, or gone)

A client's optional third field is its own URL (the scale-out's clients are
split over its edges); without it the client connects to ``url``. The spec's
``token`` is every client's auth (default ``bench``: a relay in open mode takes any).

The window is defined on the simulator's clock stamp ``sim_ns`` (the send time
of each event), not on arrival: an event belongs to the window when it was
*sent* in it, so the count compares exactly with what the simulator sent in
the same interval, and a late event is still counted (with its latency) if it
arrives within the grace period.

Client modes, so that the load generator is never the bottleneck:

* ``probe``: decodes every event (msgspec, only the fields used) for latency,
  per-channel ``q`` gaps and the channel ranges the parent turns into the
  expected count. A few hundred thousand events/s per process at most.
* ``count``: counts the events of each frame with one ``bytes.count`` and
  reads the ``sim_ns`` of the first and last event at fixed places; only a
  frame that straddles a window edge, or a status frame, is decoded. Costs per
  frame, not per event: at 10,000 events/s to each of 100 clients the relay
  writes 1,000,000 events/s, which full decoding in Python could not follow.
  Every client's count is checked against the expected total, so a count
  client that misses events still shows in the delivery ratio.
* ``slow``: subscribes, then stops reading at the window start (and shrinks
  its receive buffer so the backlog builds in the server, not in the kernel);
  reads again at the window end, to see whether the server dropped it.

* ``link``: a client whose link carries ``link_rate`` bytes/s (the spec's): it reads no
  faster (reading paused while over its budget), from the start, with a receive buffer locked
  at 64 KiB (see ``on_ws_connected``). It
  decodes everything it reads, for the conflation scenario: trades in the window and any gap
  in their ``q``, quotes and any out of order, the age of the quotes it gets (``sim_ns`` to
  arrival), ``conflating`` and ``caught_up`` statuses, whether it was dropped.

* ``chart``: a browser opening a chart (the charts scenario): subscribed to a live
  aggregate channel and its minute bars (``A.X,AM.X``); at each ``history`` command it
  sends ``{"action":"history","params":"AM.X"}`` and times the first history event and
  the ``history: AM.X (N events)`` status, counts the events (N as counted must be N as
  said), and counts the live events that arrive after the status (a chart that got its
  history but no live data is a failure). History events are told from live ones
  without decoding: Massive's REST bars carry no ``sim_ns`` (every live event does), and
  a bar the relay kept from the live feed, joined into the answer, was sent before the
  request. Live events are decoded (one a second per client): their latency while a
  crowd's charts open, and the ``q`` of the ``A`` channel (gaps, repeats).

Around an outage (the scale-out's failover scenario) the probes also keep, per client, every
``feed interrupted`` and ``feed restored`` status with its arrival time, and the arrival of the
first event the simulator sent after an ``interrupted`` status arrived (``data``: the relay's
source had stopped before it said so, so that event came through its next source), and check
the order of each channel's ``q``: a ``q`` not above the highest seen is a duplicate
(``dup_q``); a gap is explained (``gaps_in_outage``) when an outage ended (a ``restored``
status) between the channel's previous event and this one, else it is a loss
(``gaps_unexplained``).
An event received between an ``interrupted`` and its ``restored`` is either sent after the
``interrupted`` (``data_in_outage``: data before ``restored``, which relays must not do) or
before it (``old_after_interrupted``: events the relay held, e.g. in its flush window, and
wrote after the status).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import re
import resource
import socket
import sys
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

import msgspec
import orjson
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from bench.scenarios import channel_key

# Before the window arrives nothing is in it: start > any stamp, end < any stamp.
_NEVER = (1 << 62, 0)
# Every data event the simulator stamps begins with this key (--stamp true puts
# it first), and every server under test forwards events byte for byte or
# re-serialised with the key order kept.
_STAMP = b'{"sim_ns":'
_STAMP_LEN = len(_STAMP)
_FRAME_HEAD = b"[" + _STAMP
# time.time_ns() has 19 digits until the year 2286.
_NS_DIGITS = 19
# Statuses (the relay's answers) begin so; history bars from REST begin with their ev.
_STATUS_HEAD = b'[{"ev":"status"'
_AM_EVENT = b'"ev":"AM"'
_HISTORY_STATUS = re.compile(r"^history: (\S+) \((\d+) events\)")
# A slow client's receive buffer: the server's backlog must build in the
# server (where its limit applies), not in a kernel buffer of megabytes.
_SLOW_RCVBUF = 4096
# What browsers offer (the compression scenarios); the client limits only its own window.
_DEFLATE_OFFER = {"Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"}
_DEFLATE_TAIL = b"\x00\x00\xff\xff"  # RFC 7692 7.2.2: appended before inflating
_LINK_RCVBUF = 64 * 1024


class _Event(msgspec.Struct, gc=False):
    """The fields the bench reads; msgspec skips the others without building them."""

    ev: str = ""
    sym: str | None = None
    q: int | None = None
    sim_ns: int | None = None
    status: str | None = None
    message: str | None = None


_decode = msgspec.json.Decoder(list[_Event]).decode


def latency_bucket(us: int) -> int:
    """A histogram key with at most 1 % error: exact below 1 ms, then 2-3 significant digits."""
    if us < 1_000:
        return us if us > 0 else 0
    if us < 10_000:
        return us - us % 10
    if us < 100_000:
        return us - us % 100
    return us - us % 1_000


@dataclass
class Totals:
    """What every client of this process adds to during one window; reported at its end."""

    window: tuple[int, int] = _NEVER
    received: int = 0  # events sent by the simulator inside the window and received
    # Text frames that arrived inside the window, as on the wire (compressed where they were):
    # header and payload bytes, and how many were compressed.
    wire_bytes: int = 0
    wire_frames: int = 0
    deflated_frames: int = 0
    frames: int = 0  # frames carrying at least one event sent inside the window
    probe_received: int = 0  # of which by probe clients (they alone give latency and gaps)
    late: int = 0  # events sent after the window end (received during the grace period)
    gaps: int = 0  # events missing between two consecutive q of one channel (in-window events)
    outage_gaps: int = 0  # of which at the first event of a channel after the mark (an upstream drop)
    reordered: int = 0  # a q not above the previous one of its channel: duplicate or out of order
    unstamped: int = 0  # data events without sim_ns (the relay should pass every field through)
    slow_consumer: int = 0
    disconnects: int = 0  # normal (not slow) connections lost after they were subscribed
    slow_dropped: int = 0  # slow clients the server disconnected
    # Link clients (throttled reads), in-window events: trades and gaps in their q, quotes
    # and quotes older than one already received, quote age (us bucket -> quotes), statuses.
    link_bytes: int = 0  # read by link clients during the window (what their links carried)
    link_trades: int = 0
    link_trade_gaps: int = 0
    link_quotes: int = 0
    link_quotes_reordered: int = 0
    link_quote_age: dict[int, int] = field(default_factory=dict)
    link_conflating: int = 0
    link_caught_up: int = 0
    close_codes: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # first few error statuses
    hist: dict[int, int] = field(default_factory=dict)  # latency bucket (us) -> events
    # Per channel (ticker), the lowest and highest q received in the window by
    # any probe client here: the parent's union of these gives what was sent.
    ranges: dict[str, list[int]] = field(default_factory=dict)
    mark_ns: int = 0  # the upstream drop, if any (0: none)
    # Order of each channel's q around outages (probes, in-window events).
    dup_q: int = 0  # a q not above the highest seen on its channel (a duplicate, or older)
    gaps_in_outage: int = 0  # missing q across an outage (a restored status since the channel's last event)
    gaps_unexplained: int = 0  # missing q with no outage between
    data_in_outage: int = 0  # events sent after an interrupted status, received before its restored
    old_after_interrupted: int = 0  # events sent before an interrupted status, received after it


@dataclass
class ChartPhase:
    """One chart client's history request in one phase (cold, warm): wall clock ns."""

    sent_ns: int = 0  # the history message written
    first_ns: int = 0  # the first history event arrived (0: none)
    status_ns: int = 0  # the ``history: ... (N events)`` status arrived (0: not yet)
    n_status: int = -1  # N as the status says it
    n_counted: int = 0  # history events as counted here
    live_after: int = 0  # live events that arrived after the status (until collect)
    errors: list[str] = field(default_factory=list)  # error statuses while it was out

    def row(self) -> list[Any]:
        return [
            self.sent_ns, self.first_ns, self.status_ns, self.n_status, self.n_counted,
            self.live_after, self.errors,
        ]  # fmt: skip


@dataclass
class ChartTotals:
    """This process's chart clients: who still waits, and the live events around the openings."""

    phase: str | None = None  # the latest phase (its crowd's requests went out at ``opened_ns``)
    opened_ns: int = 1 << 62
    closed_ns: int = 1 << 62  # its last answer here arrived (until then: never)
    waiting: int = 0  # chart clients whose answer of ``phase`` has not come
    on_done: Any = None  # called when ``waiting`` reaches 0
    # Latency of the live events the simulator sent while a phase's answers were coming here
    # (from its crowd's requests to its last answer), received whenever: phase -> latency
    # bucket (us) -> events. A relay that stops relaying while it answers shows here.
    hists: dict[str, dict[int, int]] = field(default_factory=dict)
    live_events: int = 0  # live events since the connections were made
    live_gaps: int = 0  # q missing on a client's A channel
    live_repeats: int = 0  # a q not above the previous one of a client's A channel
    stray: int = 0  # unstamped events with no history request out
    other_errors: dict[str, int] = field(default_factory=dict)  # error statuses with nothing out

    def settled_one(self) -> None:
        self.waiting -= 1
        if self.waiting <= 0 and self.on_done is not None:
            self.on_done()


class LoadClient(WSListener):
    """One Massive client: handshake, subscribe, then count (and time) every event."""

    __slots__ = (
        "_on_settled",
        "acks",
        "chart_channels",
        "chart_phases",
        "chart_q",
        "chart_waiting",
        "expected_acks",
        "failed",
        "inflater",
        "last_q",
        "link_allowance",
        "link_at",
        "link_past_end",
        "link_paused",
        "link_rate",
        "max_q",
        "mode",
        "outage_since",
        "params",
        "process",
        "received",
        "recovered_ns",
        "restorations",
        "restored_at",
        "seen_after_mark",
        "statuses",
        "stopping",
        "subscribed",
        "transport",
        "waiting_since",
    )

    def __init__(self, process: Process, params: str, mode: str, on_settled: Any) -> None:
        self.process = process
        self.params = params
        self.mode = mode
        self.expected_acks = len([p for p in params.split(",") if p.strip()])
        self.acks = 0
        self.subscribed = False
        self.failed: str | None = None
        self.stopping = False
        self.received = 0
        self.last_q: dict[str, int] = {}
        self.recovered_ns = 0  # arrival of the first event sent after the mark
        self.seen_after_mark: set[str] = set()
        # Outages as the client sees them: feed interrupted / feed restored statuses, and the
        # first event sent after an interrupted status: ("interrupted" | "restored" | "data",
        # arrival ns), this window.
        self.statuses: list[tuple[str, int]] = []
        self.restorations = 0  # restored statuses since the start (outages ended)
        self.outage_since = 0  # arrival of the interrupted status not yet followed by restored (0: none)
        self.waiting_since = 0  # arrival of an interrupted status no event sent after it has followed
        self.max_q: dict[str, int] = {}  # the highest q seen per channel
        self.restored_at: dict[str, int] = {}  # self.restorations when the channel's last event came
        self.transport: WSTransport | None = None
        # permessage-deflate: one inflater for the connection, which serves servers with and
        # without context takeover alike (made at the first compressed frame).
        self.inflater: Any = None
        self._on_settled = on_settled  # called once, when subscribed or failed
        # Chart clients: the channels their history asks for (the AM ones), their requests
        # by phase, the one still out, and the last q of their live A channel.
        self.chart_channels = ",".join(p for p in params.split(",") if p.startswith("AM."))
        self.chart_phases: dict[str, ChartPhase] = {}
        self.chart_waiting: ChartPhase | None = None
        self.chart_q: int | None = None
        # Link clients: bytes/s their link carries, the budget left, when it was topped up.
        self.link_rate = process.link_rate
        self.link_allowance = 0.0
        self.link_at = time.monotonic()
        self.link_paused = False
        self.link_past_end = False  # read an event sent after the window: the window is all in

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        if self.mode == "link":
            # Locked: Linux would grow a slowly read buffer to megabytes (tcp_rmem), seconds of
            # data queued in this kernel, not in the server; a tiny one (the slow mode's 4 KiB)
            # stalls on the server's zero-window probes. The link's own queue: about 0.5 s.
            sock = transport.underlying_transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _LINK_RCVBUF)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        now = time.time_ns()
        msg_type = frame.msg_type
        if msg_type is not WSMsgType.TEXT:
            if msg_type is WSMsgType.CLOSE:
                code = str(frame.get_close_code())
                codes = self.process.totals.close_codes
                codes[code] = codes.get(code, 0) + 1
            return
        totals = self.process.totals
        size = frame.payload_size
        if totals.window[0] <= now <= totals.window[1]:
            totals.wire_frames += 1
            totals.wire_bytes += size + (2 if size < 126 else 4 if size < 65536 else 10)
        if frame.rsv1:
            payload = self._inflate(frame.get_payload_as_bytes())
            if totals.window[0] <= now <= totals.window[1]:
                totals.deflated_frames += 1
        elif not self.subscribed or self.mode == "probe":
            payload = frame.get_payload_as_memoryview()
        else:
            payload = frame.get_payload_as_bytes()
        if not self.subscribed:
            self._handshake(_decode(payload))
            return
        if self.mode == "probe":
            self._probe(payload, now)
            return
        if self.mode == "chart":
            self._chart(payload, now)
            return
        if self.mode == "link":
            self._link(payload, now)
            return
        if self.mode == "slow":
            # Not measured: only statuses matter (slow_consumer, if it ever gets through).
            self.received += 1  # frames, for the log
            if not payload.startswith(_FRAME_HEAD):
                for event in _decode(payload):
                    if event.ev == "status":
                        self._status(event, now)
            return
        start, end = totals.window
        if payload.startswith(_FRAME_HEAD):
            first = int(payload[1 + _STAMP_LEN : 1 + _STAMP_LEN + _NS_DIGITS])
            last_at = payload.rfind(_STAMP) + _STAMP_LEN
            last = int(payload[last_at : last_at + _NS_DIGITS])
            if totals.mark_ns and not self.recovered_ns and last >= totals.mark_ns:
                self.recovered_ns = now
            if start <= first and last < end:
                count = payload.count(_STAMP)
                self.received += count
                totals.received += count
                totals.frames += 1
                return
            if first >= end:
                totals.late += payload.count(_STAMP)
                return
            if last < start:
                return
        # A frame across a window edge, or statuses: decode it.
        self._probe(payload, now, record=False)

    def _inflate(self, payload: bytes) -> bytes:
        if self.inflater is None:
            self.inflater = zlib.decompressobj(-15)
        data: bytes = self.inflater.decompress(payload + _DEFLATE_TAIL)
        return data

    def _link(self, payload: bytes, now: int) -> None:
        """A frame through the throttled link: counted, then reading waits for its bytes."""
        totals = self.process.totals
        start, end = totals.window
        if start <= now < end:
            totals.link_bytes += len(payload)
        for event in _decode(payload):
            if event.ev == "status":
                if event.status == "conflating":
                    totals.link_conflating += 1
                elif event.status == "caught_up":
                    totals.link_caught_up += 1
                self._status(event, now)
                continue
            sym, q, sent = event.sym or "", event.q, event.sim_ns
            if q is None or sent is None:
                continue
            if sent >= end:
                self.link_past_end = True
            inside = start <= sent < end
            if event.ev == "T":
                last = self.last_q.get(sym)
                if inside:
                    totals.link_trades += 1
                    if last is not None and q > last + 1:
                        totals.link_trade_gaps += q - last - 1
                self.last_q[sym] = q
            elif event.ev == "Q":
                highest = self.max_q.get(sym, 0)
                if inside:
                    totals.link_quotes += 1
                    if q <= highest:
                        totals.link_quotes_reordered += 1
                    bucket = latency_bucket((now - sent) // 1000)
                    totals.link_quote_age[bucket] = totals.link_quote_age.get(bucket, 0) + 1
                self.max_q[sym] = max(highest, q)
        self._link_take(len(payload))

    def _link_take(self, size: int) -> None:
        self._link_refill()
        self.link_allowance -= size
        if self.link_allowance < 0 and not self.link_paused and self.transport is not None:
            self.link_paused = True
            with contextlib.suppress(RuntimeError):
                self.transport.underlying_transport.pause_reading()
            asyncio.get_running_loop().call_later(-self.link_allowance / self.link_rate, self._link_resume)

    def _link_refill(self) -> None:
        now = time.monotonic()
        self.link_allowance = min(self.link_allowance + (now - self.link_at) * self.link_rate, 16 * 1024)
        self.link_at = now

    def _link_resume(self) -> None:
        # Frames of the read that paused it kept coming after the pause: wait for them too.
        self._link_refill()
        if self.link_allowance < 0:
            asyncio.get_running_loop().call_later(-self.link_allowance / self.link_rate, self._link_resume)
            return
        self.link_paused = False
        if self.transport is not None and not self.transport.is_disconnected:
            with contextlib.suppress(RuntimeError):
                self.transport.underlying_transport.resume_reading()

    def _probe(self, payload: Any, now: int, record: bool = True) -> None:
        """Every event: count, latency, q gaps and ranges (``record``: this is a probe client)."""
        events = _decode(payload)
        totals = self.process.totals
        start, end = totals.window
        mark = totals.mark_ns
        hist = totals.hist
        ranges = totals.ranges
        last_q = self.last_q
        counted = 0
        for event in events:
            sent = event.sim_ns
            if sent is None:
                if event.ev == "status":
                    self._status(event, now)
                else:
                    totals.unstamped += 1
                continue
            if mark and sent >= mark and not self.recovered_ns:
                self.recovered_ns = now
            if not record:
                if start <= sent < end:
                    counted += 1
                elif sent >= end:
                    totals.late += 1
                continue
            q = event.q
            if event.sym is None or q is None:
                totals.unstamped += 1
                continue
            sym = channel_key(event.ev, event.sym)
            previous = last_q.get(sym)
            last_q[sym] = q
            inside = start <= sent < end
            if self.waiting_since and sent >= self.waiting_since:
                self.waiting_since = 0
                self.statuses.append(("data", now))
            self._order(sym, q, sent, inside)
            if inside:
                counted += 1
                us = (now - sent) // 1000
                key = latency_bucket(us)
                hist[key] = hist.get(key, 0) + 1
                if previous is not None and q != previous + 1:
                    if q > previous:
                        totals.gaps += q - previous - 1
                        if mark and sent >= mark and sym not in self.seen_after_mark:
                            totals.outage_gaps += q - previous - 1
                    else:
                        totals.reordered += 1
                span = ranges.get(sym)
                if span is None:
                    ranges[sym] = [q, q]
                elif q < span[0]:
                    span[0] = q
                elif q > span[1]:
                    span[1] = q
            elif sent >= end:
                totals.late += 1
            if mark and sent >= mark:
                self.seen_after_mark.add(sym)
        if counted:
            self.received += counted
            totals.received += counted
            totals.frames += 1
            if record:
                totals.probe_received += counted

    def _order(self, sym: str, q: int, sent: int, inside: bool) -> None:
        """Duplicates, gaps inside or outside an outage (the statuses), data between interrupted
        and restored; counted for events sent inside the window (``inside``), followed for all."""
        totals = self.process.totals
        top = self.max_q.get(sym)
        if inside:
            if self.outage_since:
                if sent >= self.outage_since:
                    totals.data_in_outage += 1
                else:
                    totals.old_after_interrupted += 1
            if top is not None:
                if q <= top:
                    totals.dup_q += 1
                elif q > top + 1:
                    if self.restorations > self.restored_at.get(sym, 0):
                        totals.gaps_in_outage += q - top - 1
                    else:
                        totals.gaps_unexplained += q - top - 1
        if top is None or q > top:
            self.max_q[sym] = q
        self.restored_at[sym] = self.restorations

    def ask_history(self, phase: str) -> None:
        """Open the chart: one history request for the AM channel(s), timed from its write."""
        transport = self.transport
        assert transport is not None
        state = ChartPhase(sent_ns=time.time_ns())
        self.chart_phases[phase] = state
        self.chart_waiting = state
        self.process.chart.waiting += 1
        transport.send(WSMsgType.TEXT, orjson.dumps({"action": "history", "params": self.chart_channels}))

    def _chart(self, payload: bytes, now: int) -> None:
        """A chart client's frame: statuses, history bars (counted, not decoded) or live events."""
        waiting = self.chart_waiting
        if payload.startswith(_STATUS_HEAD):
            for event in _decode(payload):
                if event.ev == "status":
                    self._chart_status(event, now)
            return
        if not payload.startswith(_FRAME_HEAD):
            # No sim_ns: Massive's REST bars (every live event carries one).
            if waiting is None:
                self.process.chart.stray += 1
                return
            waiting.n_counted += payload.count(_AM_EVENT)
            waiting.first_ns = waiting.first_ns or now
            return
        chart = self.process.chart
        for event in _decode(payload):
            sent = event.sim_ns
            if sent is None:
                if event.ev == "status":
                    self._chart_status(event, now)
                continue
            if waiting is not None and event.ev == "AM" and sent < waiting.sent_ns:
                # A bar the relay kept from the live feed, joined into the history answer.
                waiting.n_counted += 1
                waiting.first_ns = waiting.first_ns or now
                continue
            chart.live_events += 1
            if chart.phase is not None and chart.opened_ns <= sent < chart.closed_ns:
                hist = chart.hists.setdefault(chart.phase, {})
                key = latency_bucket((now - sent) // 1000)
                hist[key] = hist.get(key, 0) + 1
            for state in self.chart_phases.values():
                if state.status_ns:
                    state.live_after += 1
            if event.ev == "A" and event.q is not None:
                last = self.chart_q
                if last is not None:
                    if event.q > last + 1:
                        chart.live_gaps += event.q - last - 1
                    elif event.q <= last:
                        chart.live_repeats += 1
                if last is None or event.q > last:
                    self.chart_q = event.q

    def _chart_status(self, event: _Event, now: int) -> None:
        message = event.message or ""
        waiting = self.chart_waiting
        if waiting is None:
            if event.status != "success":
                errors = self.process.chart.other_errors
                errors[f"{event.status}: {message}"] = errors.get(f"{event.status}: {message}", 0) + 1
            return
        if event.status == "success" and message.startswith("history: "):
            found = _HISTORY_STATUS.match(message)
            waiting.n_status = int(found.group(2)) if found else -1
            waiting.status_ns = now
            self.chart_waiting = None
            self.process.chart.settled_one()
        elif event.status != "success":
            waiting.errors.append(f"{event.status}: {message}")

    def _handshake(self, events: list[_Event]) -> None:
        transport = self.transport
        assert transport is not None
        for event in events:
            status = event.status
            if event.ev != "status":
                continue  # data before the last ack: the warm-up absorbs it
            if status == "connected":
                transport.send(WSMsgType.TEXT, orjson.dumps({"action": "auth", "params": self.process.token}))
            elif status == "auth_success":
                transport.send(WSMsgType.TEXT, orjson.dumps({"action": "subscribe", "params": self.params}))
            elif status == "success":
                self.acks += 1
                if self.acks >= self.expected_acks:
                    self.subscribed = True
                    self._on_settled()
            else:
                self._status(event, time.time_ns())
                self.failed = f"{status}: {event.message}"
                self._on_settled()
                return

    def _status(self, event: _Event, now: int) -> None:
        totals = self.process.totals
        message = event.message or ""
        if " feed interrupted" in message:
            self.outage_since = self.outage_since or now
            self.waiting_since = self.waiting_since or now
            self.statuses.append(("interrupted", now))
        elif " feed restored" in message:
            self.outage_since = 0
            self.restorations += 1
            self.statuses.append(("restored", now))
        if event.status == "slow_consumer":
            totals.slow_consumer += 1
        # conflating / caught_up tell a slow link what it gets (the link clients count them).
        informational = event.status in ("success", "conflating", "caught_up")
        if not informational and len(totals.errors) < 10:
            totals.errors.append(f"{event.status}: {event.message}")

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if self.stopping:
            return
        if self.chart_waiting is not None:
            self.chart_waiting = None  # its answer will not come: the phase waits no more for it
            self.process.chart.settled_one()
        if self.subscribed:
            if self.mode == "slow":
                self.process.totals.slow_dropped += 1
            else:
                self.process.totals.disconnects += 1
        elif self.failed is None:
            self.failed = "disconnected during the handshake"
            self._on_settled()

    def pause(self) -> None:
        if self.transport is not None and not self.transport.is_disconnected:
            # The window already advertised stays (TCP never takes it back),
            # but it stops growing: the backlog builds in the server.
            sock = self.transport.underlying_transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SLOW_RCVBUF)
            with contextlib.suppress(RuntimeError):
                self.transport.underlying_transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and not self.transport.is_disconnected:
            # A large buffer again, or draining what the server's kernel still
            # holds (megabytes) through a 4 KiB window takes many seconds.
            sock = self.transport.underlying_transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
            with contextlib.suppress(RuntimeError):
                self.transport.underlying_transport.resume_reading()
            self.poke()

    def poke(self) -> None:
        """Send a ping: a server that closed the socket answers with a reset at once.

        Without it, a dropped client may wait many seconds: the server's
        kernel keeps sending what it had buffered, but only when its
        zero-window probe (backed off exponentially during the pause) next
        fires, and our window update may not come before that.
        """
        if self.transport is not None and not self.transport.is_disconnected:
            with contextlib.suppress(RuntimeError, OSError):
                self.transport.send_ping()

    @property
    def connected(self) -> bool:
        return self.transport is not None and not self.transport.is_disconnected


class Process:
    """This process's clients and the totals of the current window."""

    def __init__(self, token: str = "bench", link_rate: float = 0.0) -> None:
        self.totals = Totals()
        self.link_rate = link_rate  # bytes/s of each link client's link
        self.clients: list[LoadClient] = []
        self.token = token  # every client's auth (a relay in open mode takes any)
        self.chart = ChartTotals()


def _emit(message: dict[str, Any]) -> None:
    sys.stdout.buffer.write(orjson.dumps(message) + b"\n")
    sys.stdout.buffer.flush()


async def _read_json_line(reader: asyncio.StreamReader) -> dict[str, Any]:
    line = await reader.readline()
    if not line:
        raise SystemExit(0)  # the parent is gone: stop at once
    message: dict[str, Any] = orjson.loads(line)
    return message


def _raise_fd_limit() -> None:
    """Thousands of sockets per process: the soft limit up to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _connect_all(
    process: Process,
    url: str,
    clients: list[list[str]],
    concurrency: int,
    settle_timeout: float,
    deflate: bool = False,
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    pending = len(clients)
    all_settled = asyncio.Event()
    settled_ns = 0

    def settled() -> None:
        nonlocal pending, settled_ns
        pending -= 1
        settled_ns = time.time_ns()
        if pending <= 0:
            all_settled.set()

    # The server's listen backlog is finite: a burst of hundreds of SYNs makes
    # the kernel drop some and retry them a second later.
    gate = asyncio.Semaphore(concurrency)
    connect_errors: list[str] = []

    async def open_one(params: str, mode: str, url: str) -> None:
        client = LoadClient(process, params, mode, settled)
        process.clients.append(client)
        async with gate:
            try:
                await ws_connect(
                    lambda: client,
                    url,
                    use_aiofastnet=False,
                    websocket_handshake_timeout=10,
                    max_frame_size=64 * 1024 * 1024,
                    enable_auto_pong=True,
                    extra_headers=_DEFLATE_OFFER if deflate else None,
                )
            except Exception as exc:
                client.failed = f"{type(exc).__name__}: {exc}"
                if len(connect_errors) < 5:
                    connect_errors.append(client.failed)
                settled()

    started_ns = time.time_ns()
    tasks = [loop.create_task(open_one(c[0], c[1], c[2] if len(c) > 2 else url)) for c in clients]
    with contextlib.suppress(TimeoutError):  # report who did not make it, rather than fail
        await asyncio.wait_for(all_settled.wait(), settle_timeout)
    for task in tasks:
        task.cancel()
    subscribed = sum(1 for c in process.clients if c.subscribed)
    failures = [c.failed for c in process.clients if c.failed]
    return {
        "type": "ready",
        "pid": os.getpid(),
        "clients": len(clients),
        "subscribed": subscribed,
        "failures": len(failures),
        "failure_samples": (connect_errors + failures)[:5],
        "connect_started_ns": started_ns,
        "connect_settled_ns": settled_ns or time.time_ns(),
    }


async def _measure(
    process: Process, reader: asyncio.StreamReader, command: dict[str, Any], grace: float, slow_drain: float
) -> None:
    """One window: slow clients stop reading inside it; a mark may come meanwhile."""
    loop = asyncio.get_running_loop()
    start_ns, end_ns = int(command["start_ns"]), int(command["end_ns"])
    process.totals = totals = Totals(window=(start_ns, end_ns))
    for client in process.clients:
        client.received = 0
        client.recovered_ns = 0
        client.seen_after_mark = set()
        client.statuses = []
        client.link_past_end = False
    slow = [c for c in process.clients if c.mode == "slow" and c.subscribed]

    def pause_all() -> None:
        for client in slow:
            client.pause()

    def resume_all() -> None:
        for client in slow:
            client.resume()

    if slow:
        loop.call_later(max(0.0, (start_ns - time.time_ns()) / 1e9), pause_all)
        loop.call_later(max(0.0, (end_ns - time.time_ns()) / 1e9), resume_all)
    deadline = end_ns + int(grace * 1e9)
    # Marks may arrive during the window; read them until the deadline.
    while True:
        remaining = (deadline - time.time_ns()) / 1e9
        if remaining <= 0:
            break
        try:
            message = await asyncio.wait_for(_read_json_line(reader), remaining)
        except TimeoutError:
            break
        if message.get("cmd") == "mark":
            totals.mark_ns = int(message["ns"])
    # Link clients lag by design: wait (up to slow_drain) until each has read past the window.
    links = [c for c in process.clients if c.mode == "link" and c.subscribed]
    drain_until = time.monotonic() + slow_drain
    while any(c.connected and not c.link_past_end for c in links) and time.monotonic() < drain_until:
        await asyncio.sleep(0.05)
    # A dropped slow client sees its end only once it has read what the
    # server's kernel had buffered for it (the server closed behind that).
    drain_until = time.monotonic() + slow_drain
    poked = time.monotonic()
    while any(c.connected for c in slow) and time.monotonic() < drain_until:
        await asyncio.sleep(0.05)
        if time.monotonic() - poked > 0.5:
            poked = time.monotonic()
            for client in slow:
                client.poke()
    if slow:
        still = sum(1 for c in slow if c.connected)
        print(f"slow clients: {totals.slow_dropped} dropped, {still} still connected", file=sys.stderr)
        for client in slow:
            if client.connected:
                assert client.transport is not None
                raw = client.transport.underlying_transport
                print(
                    f"  still connected: {client.received} frames read since the window start, reading"
                    f" {raw.is_reading()}",
                    file=sys.stderr,
                )
    process.totals = Totals()  # nothing more counts in this window
    measured = [c for c in process.clients if c.subscribed and c.mode not in ("slow", "link")]
    per_client = [c.received for c in measured]
    recovered = [c.recovered_ns - totals.mark_ns for c in measured if totals.mark_ns and c.recovered_ns]
    _emit(
        {
            "type": "result",
            "pid": os.getpid(),
            "received": totals.received,
            "probe_received": totals.probe_received,
            "frames": totals.frames,
            "wire_bytes": totals.wire_bytes,
            "wire_frames": totals.wire_frames,
            "deflated_frames": totals.deflated_frames,
            "late": totals.late,
            "gaps": totals.gaps,
            "outage_gaps": totals.outage_gaps,
            "reordered": totals.reordered,
            "unstamped": totals.unstamped,
            "slow_consumer": totals.slow_consumer,
            "disconnects": totals.disconnects,
            "slow_clients": len(slow),
            "slow_dropped": totals.slow_dropped,
            "link_clients": len(links),
            "link_connected": sum(1 for c in links if c.connected),
            "link_bytes": totals.link_bytes,
            "link_trades": totals.link_trades,
            "link_trade_gaps": totals.link_trade_gaps,
            "link_quotes": totals.link_quotes,
            "link_quotes_reordered": totals.link_quotes_reordered,
            "link_quote_age": {str(k): v for k, v in totals.link_quote_age.items()},
            "link_conflating": totals.link_conflating,
            "link_caught_up": totals.link_caught_up,
            "link_dropped": len(links) - sum(1 for c in links if c.connected),  # since they connected
            "close_codes": totals.close_codes,
            "errors": totals.errors,
            "per_client_min": min(per_client, default=0),
            "per_client_max": max(per_client, default=0),
            "hist": {str(k): v for k, v in totals.hist.items()},
            "ranges": totals.ranges,
            "recovered_ns": recovered,
            "not_recovered": sum(1 for c in measured if totals.mark_ns and not c.recovered_ns),
            "dup_q": totals.dup_q,
            "gaps_in_outage": totals.gaps_in_outage,
            "gaps_unexplained": totals.gaps_unexplained,
            "data_in_outage": totals.data_in_outage,
            "old_after_interrupted": totals.old_after_interrupted,
            # Per measured client: the first event sent after the mark (arrival, 0: none), and
            # its outage statuses in this window, [kind, arrival ns].
            "clients": [
                {"recovered_at_ns": c.recovered_ns, "statuses": c.statuses}
                for c in measured
                if c.mode == "probe"
            ],
        }
    )


async def _history_phase(process: Process, command: dict[str, Any]) -> None:
    """A crowd opens its charts: at ``at_ns`` every chart client sends its history request;
    reported once every answer is in (or ``timeout`` s passed, or the client is gone)."""
    phase = str(command["phase"])
    chart = process.chart
    clients = [c for c in process.clients if c.mode == "chart" and c.subscribed and c.connected]
    if command.get("one_per_chart"):
        # A scout per chart (the first client of each history channel here): it fills the
        # relay's cache before a crowd.
        clients = list({c.chart_channels: c for c in reversed(clients)}.values())
    done = asyncio.Event()
    chart.phase, chart.waiting, chart.on_done = None, 0, done.set
    await asyncio.sleep(max(0.0, (int(command["at_ns"]) - time.time_ns()) / 1e9))
    first_sent = time.time_ns()
    chart.phase, chart.opened_ns, chart.closed_ns = phase, first_sent, 1 << 62
    for client in clients:
        client.ask_history(phase)
    last_sent = time.time_ns()
    if chart.waiting > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), float(command.get("timeout", 60.0)))
    states = [c.chart_phases[phase] for c in clients if phase in c.chart_phases]
    _emit(
        {
            "type": "history_done",
            "pid": os.getpid(),
            "phase": phase,
            "asked": len(clients),
            "first_sent_ns": first_sent,
            "last_sent_ns": last_sent,
            "last_status_ns": max((s.status_ns for s in states), default=0),
            "waiting": chart.waiting,  # still without an answer (timed out)
        }
    )
    chart.closed_ns, chart.on_done = time.time_ns(), None


def _chart_report(process: Process) -> dict[str, Any]:
    """Every chart client's requests by phase, the live events around them, and the faults."""
    chart = process.chart
    charts = [c for c in process.clients if c.mode == "chart"]
    return {
        "type": "charts",
        "pid": os.getpid(),
        "clients": [{phase: state.row() for phase, state in c.chart_phases.items()} for c in charts],
        "subscribed": sum(1 for c in charts if c.subscribed),
        "connected": sum(1 for c in charts if c.connected),
        "hists": {phase: {str(k): v for k, v in hist.items()} for phase, hist in chart.hists.items()},
        "live_events": chart.live_events,
        "live_gaps": chart.live_gaps,
        "live_repeats": chart.live_repeats,
        "stray": chart.stray,
        "other_errors": chart.other_errors,
        "disconnects": process.totals.disconnects,
        "close_codes": process.totals.close_codes,
    }


async def main() -> None:
    _raise_fd_limit()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=64 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    spec = await _read_json_line(reader)
    grace: float = spec.get("grace", 1.0)
    process = Process(spec.get("token", "bench"), spec.get("link_rate", 0.0))
    ready = await _connect_all(
        process,
        spec["url"],
        spec["clients"],
        spec.get("connect_concurrency", 50),
        spec.get("settle_timeout", 60.0),
        spec.get("deflate", False),
    )
    # The load generator's own pauses would read as relay latency: nothing
    # it allocates from here on forms cycles, so the collector can rest.
    gc.collect()
    gc.freeze()
    gc.disable()
    _emit(ready)
    while True:
        command = await _read_json_line(reader)
        if command.get("cmd") == "window":
            await _measure(process, reader, command, grace, spec.get("slow_drain", 5.0))
        elif command.get("cmd") == "history":
            await _history_phase(process, command)
        elif command.get("cmd") == "collect":
            _emit(_chart_report(process))
        elif command.get("cmd") == "stop":
            break
    for client in process.clients:
        client.stopping = True
        if client.transport is not None:
            client.transport.disconnect(graceful=False)


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
