"""One load-generator process: many Massive-protocol clients on one uvloop loop.

Run by ``bench.run``, one process per share of the clients, and driven over
stdin/stdout with one JSON object per line:

    stdin   {"url": ..., "subscriptions": ["T.*", ...], ...}   (the spec)
    stdout  {"type": "ready", ...}                              (all subscribed, or given up)
    stdin   {"start_ns": ..., "end_ns": ...}                    (the measured window)
    stdout  {"type": "result", ...}                             (after end_ns + grace)

The window is defined on the simulator's clock stamp ``sim_ns`` (the send time
of each event), not on arrival: an event belongs to the window when it was
*sent* in it, so the count compares exactly with what the simulator sent in
the same interval, and a late event is still counted (with its latency) if it
arrives within the grace period. Closing stdin (the parent died) ends the process.

The load generator must never be the bottleneck, so the per-event work is a
handful of dict operations: msgspec decodes only the four fields used, the
clock is read once per frame, and latencies go into a bucketed histogram that
the parent merges across processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec
import orjson
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

# Before the window arrives nothing is in it: start > any stamp, end < any stamp.
_NEVER = (1 << 62, 0)


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
    """What every client of this process adds to; reported once at the end."""

    window: tuple[int, int] = _NEVER
    received: int = 0  # events sent by the simulator inside the window and received
    frames: int = 0  # frames carrying at least one event sent inside the window
    late: int = 0  # events sent after the window end (received during the grace period)
    gaps: int = 0  # events missing between two consecutive q of one channel (in-window events)
    reordered: int = 0  # a q not above the previous one of its channel: duplicate or out of order
    unstamped: int = 0  # data events without sim_ns (the relay should pass every field through)
    slow_consumer: int = 0
    disconnects: int = 0  # connections lost after they were subscribed
    close_codes: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # first few error statuses
    hist: dict[int, int] = field(default_factory=dict)  # latency bucket (us) -> events
    # Per channel (ticker), the lowest and highest q received in the window by
    # any client here: the parent's union of these gives what was sent.
    ranges: dict[str, list[int]] = field(default_factory=dict)


class LoadClient(WSListener):
    """One Massive client: handshake, subscribe, then count and time every event."""

    def __init__(self, totals: Totals, params: str, on_settled: Any) -> None:
        self.totals = totals
        self.params = params
        self.expected_acks = len([p for p in params.split(",") if p.strip()])
        self.acks = 0
        self.subscribed = False
        self.failed: str | None = None
        self.stopping = False
        self.received = 0
        self.last_q: dict[str, int] = {}
        self.transport: WSTransport | None = None
        self._on_settled = on_settled  # called once, when subscribed or failed

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        now = time.time_ns()
        msg_type = frame.msg_type
        if msg_type is not WSMsgType.TEXT:
            if msg_type is WSMsgType.CLOSE:
                code = str(frame.get_close_code())
                codes = self.totals.close_codes
                codes[code] = codes.get(code, 0) + 1
            return
        events = _decode(frame.get_payload_as_memoryview())
        if not self.subscribed:
            self._handshake(events)
            return
        totals = self.totals
        start, end = totals.window
        hist = totals.hist
        ranges = totals.ranges
        last_q = self.last_q
        counted = 0
        for event in events:
            sent = event.sim_ns
            if sent is None:
                if event.ev == "status":
                    self._status(event)
                else:
                    totals.unstamped += 1
                continue
            sym = event.sym
            q = event.q
            if sym is None or q is None:
                totals.unstamped += 1
                continue
            previous = last_q.get(sym)
            last_q[sym] = q
            if start <= sent < end:
                counted += 1
                us = (now - sent) // 1000
                key = latency_bucket(us)
                hist[key] = hist.get(key, 0) + 1
                if previous is not None and q != previous + 1:
                    if q > previous:
                        totals.gaps += q - previous - 1
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
        if counted:
            self.received += counted
            totals.received += counted
            totals.frames += 1

    def _handshake(self, events: list[_Event]) -> None:
        transport = self.transport
        assert transport is not None
        for event in events:
            status = event.status
            if event.ev != "status":
                continue  # data before the last ack: the warm-up absorbs it
            if status == "connected":
                transport.send(WSMsgType.TEXT, orjson.dumps({"action": "auth", "params": "bench"}))
            elif status == "auth_success":
                transport.send(WSMsgType.TEXT, orjson.dumps({"action": "subscribe", "params": self.params}))
            elif status == "success":
                self.acks += 1
                if self.acks >= self.expected_acks:
                    self.subscribed = True
                    self._on_settled()
            else:
                self._status(event)
                self.failed = f"{status}: {event.message}"
                self._on_settled()
                return

    def _status(self, event: _Event) -> None:
        totals = self.totals
        if event.status == "slow_consumer":
            totals.slow_consumer += 1
        if event.status != "success" and len(totals.errors) < 10:
            totals.errors.append(f"{event.status}: {event.message}")

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if not self.stopping:
            if self.subscribed:
                self.totals.disconnects += 1
            elif self.failed is None:
                self.failed = "disconnected during the handshake"
                self._on_settled()


def _emit(message: dict[str, Any]) -> None:
    sys.stdout.buffer.write(orjson.dumps(message) + b"\n")
    sys.stdout.buffer.flush()


async def _read_json_line(reader: asyncio.StreamReader) -> dict[str, Any]:
    line = await reader.readline()
    if not line:
        raise SystemExit(0)  # the parent is gone: stop at once
    message: dict[str, Any] = orjson.loads(line)
    return message


async def main() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    spec = await _read_json_line(reader)
    url: str = spec["url"]
    subscriptions: list[str] = spec["subscriptions"]
    concurrency: int = spec.get("connect_concurrency", 50)
    settle_timeout: float = spec.get("settle_timeout", 30.0)
    grace: float = spec.get("grace", 1.0)

    totals = Totals()
    clients: list[LoadClient] = []
    pending = len(subscriptions)
    all_settled = asyncio.Event()

    def settled() -> None:
        nonlocal pending
        pending -= 1
        if pending <= 0:
            all_settled.set()

    # The relay's listen backlog is finite: a burst of hundreds of SYNs makes
    # the kernel drop some and retry them a second later.
    gate = asyncio.Semaphore(concurrency)
    connect_errors: list[str] = []

    async def open_one(params: str) -> None:
        client = LoadClient(totals, params, settled)
        clients.append(client)
        async with gate:
            try:
                await ws_connect(
                    lambda: client,
                    url,
                    use_aiofastnet=False,
                    websocket_handshake_timeout=10,
                    max_frame_size=64 * 1024 * 1024,
                )
            except Exception as exc:
                client.failed = f"{type(exc).__name__}: {exc}"
                if len(connect_errors) < 5:
                    connect_errors.append(client.failed)
                settled()

    tasks = [loop.create_task(open_one(params)) for params in subscriptions]
    with contextlib.suppress(TimeoutError):  # report who did not make it, rather than fail
        await asyncio.wait_for(all_settled.wait(), settle_timeout)
    for task in tasks:
        task.cancel()
    # The load generator's own pauses would read as relay latency: nothing
    # it allocates from here on forms cycles, so the collector can rest.
    gc.collect()
    gc.freeze()
    gc.disable()
    subscribed = sum(1 for c in clients if c.subscribed)
    failures = [c.failed for c in clients if c.failed]
    _emit(
        {
            "type": "ready",
            "pid": os.getpid(),
            "clients": len(subscriptions),
            "subscribed": subscribed,
            "failures": len(failures),
            "failure_samples": (connect_errors + failures)[:5],
        }
    )

    window = await _read_json_line(reader)
    start_ns, end_ns = int(window["start_ns"]), int(window["end_ns"])
    totals.window = (start_ns, end_ns)
    await asyncio.sleep(max(0.0, (end_ns - time.time_ns()) / 1e9 + grace))
    totals.window = _NEVER
    for client in clients:
        client.stopping = True
    per_client = [c.received for c in clients if c.subscribed]
    _emit(
        {
            "type": "result",
            "pid": os.getpid(),
            "clients": len(subscriptions),
            "subscribed": subscribed,
            "received": totals.received,
            "frames": totals.frames,
            "late": totals.late,
            "gaps": totals.gaps,
            "reordered": totals.reordered,
            "unstamped": totals.unstamped,
            "slow_consumer": totals.slow_consumer,
            "disconnects": totals.disconnects,
            "close_codes": totals.close_codes,
            "errors": totals.errors,
            "per_client_min": min(per_client, default=0),
            "per_client_max": max(per_client, default=0),
            "hist": {str(k): v for k, v in totals.hist.items()},
            "ranges": totals.ranges,
        }
    )
    for client in clients:
        if client.transport is not None:
            client.transport.disconnect(graceful=False)


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
