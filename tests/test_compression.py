"""permessage-deflate through a real relay: negotiated, each frame compressed once and
decodable by an independent inflater, client messages inflated under the caps."""

from __future__ import annotations

import zlib
from typing import Any

import orjson

from bench.attacks import CONTINUATION, PING, TEXT, RawClient, client_frame
from fastrelay.app import RunningRelay, running_relay
from fastrelay.sim import Simulator
from tests.conftest import sim_config
from tests.test_metrics import scrape, value
from tests.utils import TIMEOUT, Client, fast_relay_config

OFFER = {"Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"}
ACCEPTED = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
RSV1 = 4  # client_frame's rsv argument: RSV1 is the highest of the three bits


def _compress(payload: bytes) -> bytes:
    """A client's compressed message: raw deflate, the trailing 00 00 ff ff removed (RFC 7692 7.2.1)."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return data[:-4]


def _extensions_header(client: RawClient) -> str | None:
    for line in client.head.decode("latin-1").split("\r\n"):
        name, _, value = line.partition(":")
        if name.strip().lower() == "sec-websocket-extensions":
            return value.strip()
    return None


async def _authed(relay: RunningRelay, headers: dict[str, str] | None) -> RawClient:
    client = await RawClient.connect("127.0.0.1", relay.port, headers=headers)
    assert client.upgraded, client.status_line
    await client.send(client_frame(TEXT, b'{"action":"auth","params":"x"}'))
    return client


async def _events(client: RawClient, count: int, inflated: list[bool]) -> list[dict[str, Any]]:
    """At least ``count`` events; each frame inflated alone (a fresh window) when RSV1 is set."""
    events: list[dict[str, Any]] = []
    while len(events) < count:
        frame = await client.next_frame(TIMEOUT)
        assert frame is not None, f"only {len(events)} events"
        opcode, payload = frame
        assert opcode == TEXT
        inflated.append(client.rsv1)
        if client.rsv1:
            payload = zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff")
        events.extend(m for m in orjson.loads(payload) if m.get("ev") != "status")
    return events


def _key(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event, option=orjson.OPT_SORT_KEYS)


async def test_compressed_stream_equals_the_plain_one() -> None:
    """Two clients of one audience, one offering compression: the frames it gets with RSV1
    inflate, each alone, to exactly the events the plain client gets, in the same order."""
    async with (
        Simulator(sim_config(events_per_frame=8, rate=200.0)) as sim,
        running_relay(
            fast_relay_config(sim.base_url, "sim-key", flush_interval=5.0, metrics_interval=0.05)
        ) as relay,
    ):
        compressed = await _authed(relay, OFFER)
        plain = await _authed(relay, None)
        assert _extensions_header(compressed) == ACCEPTED
        assert _extensions_header(plain) is None
        for client in (compressed, plain):
            await client.send(client_frame(TEXT, b'{"action":"subscribe","params":"T.*,Q.*"}'))
        flags: list[bool] = []
        got = [_key(e) for e in await _events(compressed, 400, flags)]
        reference = [_key(e) for e in await _events(plain, 500, [])]
        # Align on the first event both have (they subscribed a moment apart).
        start = next(i for i, key in enumerate(got) if key in reference)
        offset = reference.index(got[start])
        overlap = min(len(got) - start, len(reference) - offset)
        assert overlap >= 300
        assert got[start : start + overlap] == reference[offset : offset + overlap]
        assert any(flags), "no frame came compressed"
        compressed.close()
        plain.close()
        page = await scrape(relay)
        assert value(page, "fastrelay_client_deflate_connections_total") == 1
        before = value(page, "fastrelay_client_deflate_input_bytes_total", market="stocks")
        after = value(page, "fastrelay_client_deflate_output_bytes_total", market="stocks")
        assert 0 < after < before
        assert value(page, "fastrelay_compression_frames_total") > 0


async def test_compressed_client_messages_are_inflated(relay: RunningRelay) -> None:
    """auth and subscribe sent compressed (RSV1) are answered as plain ones are, in whole
    messages and in fragments (RSV1 on the first fragment only)."""
    client = await RawClient.connect("127.0.0.1", relay.port, headers=OFFER)
    await client.send(client_frame(TEXT, _compress(b'{"action":"auth","params":"x"}'), rsv=RSV1))
    message = _compress(b'{"action":"subscribe","params":"T.AAPL"}')
    await client.send(client_frame(TEXT, message[:5], fin=False, rsv=RSV1))
    await client.send(client_frame(CONTINUATION, message[5:]))
    statuses = []
    while not any(s.get("status") == "success" for s in statuses):
        frame = await client.next_frame(TIMEOUT)
        assert frame is not None, statuses
        payload = frame[1]
        if client.rsv1:
            payload = zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff")
        statuses.extend(m for m in orjson.loads(payload) if m.get("ev") == "status")
    assert [s["status"] for s in statuses][:2] == ["connected", "auth_success"]
    client.close()


async def test_bad_compressed_messages_close_the_client(relay: RunningRelay) -> None:
    """A decompression bomb past --max-message-size: 1009; data that does not inflate, RSV1 on
    a control frame or a continuation: 1002 (RFC 7692 6.1, 6.2)."""
    bomb = _compress(b"[" + b" " * (2 * relay.relay.config.max_message_size) + b"]")
    assert len(bomb) < 4096
    cases = [
        ([client_frame(TEXT, bomb, rsv=RSV1)], 1009),
        ([client_frame(TEXT, b"\xff\xff\xff\xff", rsv=RSV1)], 1002),
        ([client_frame(PING, b"", rsv=RSV1)], 1002),
        (
            [client_frame(TEXT, b"[", fin=False), client_frame(CONTINUATION, b"]", rsv=RSV1)],
            1002,
        ),
    ]
    for frames, code in cases:
        client = await RawClient.connect("127.0.0.1", relay.port, headers=OFFER)
        for frame in frames:
            await client.send(frame)
        assert await client.wait_closed(TIMEOUT) == code, frames[0][:2]
        client.close()
    # The relay goes on serving everyone else.
    other = await Client.connect(f"ws://127.0.0.1:{relay.port}/stocks")
    await other.close()


async def test_compression_off_negotiates_nothing(sim: Simulator) -> None:
    async with running_relay(fast_relay_config(sim.base_url, "sim-key", compression="off")) as relay:
        client = await RawClient.connect("127.0.0.1", relay.port, headers=OFFER)
        assert client.upgraded and _extensions_header(client) is None
        await client.send(client_frame(TEXT, _compress(b'{"action":"auth","params":"x"}'), rsv=RSV1))
        assert await client.wait_closed(TIMEOUT) == 1002
        client.close()


async def test_offers_the_relay_cannot_honour_get_a_plain_connection(relay: RunningRelay) -> None:
    """A smaller server window than the relay's one size is declined, not refused."""
    client = await RawClient.connect(
        "127.0.0.1",
        relay.port,
        headers={"Sec-WebSocket-Extensions": "permessage-deflate; server_max_window_bits=9"},
    )
    assert client.upgraded and _extensions_header(client) is None
    frame = await client.next_frame(TIMEOUT)
    assert frame is not None and b"connected" in frame[1] and not client.rsv1
    client.close()


async def test_the_official_python_client_negotiates_compression(relay: RunningRelay) -> None:
    """websockets (under Massive's Python client and tests.utils.Client) offers it by default."""
    client = await Client.connect(f"ws://127.0.0.1:{relay.port}/stocks")
    assert client.ws.protocol.extensions, "websockets negotiated no extension"
    await client.subscribe("T.AAPL")
    await client.wait_events(3)
    await client.close()
