"""RFC 6455 where picows leaves it to the relay (versions, reserved bits, closes, fragments, pongs),
and the budget that every frame and every answer comes out of."""

from __future__ import annotations

import orjson

from bench.attacks import BINARY, CLOSE, CONTINUATION, PING, PONG, TEXT, RawClient, client_frame, text
from fastrelay.app import RunningRelay, running_relay
from fastrelay.sim import Simulator
from tests.utils import TIMEOUT, fast_relay_config


async def connected(relay: RunningRelay, path: str = "/stocks") -> RawClient:
    client = await RawClient.connect("127.0.0.1", relay.port, path=path)
    assert client.upgraded, client.status_line
    frame = await client.next_frame(TIMEOUT)
    assert frame is not None and b"connected" in frame[1]
    return client


async def test_other_websocket_versions_get_426_naming_13(relay: RunningRelay) -> None:
    """A client asking for another version is told which one the relay speaks (RFC 6455 4.2.2)."""
    for version in ("8", "12"):
        client = await RawClient.connect("127.0.0.1", relay.port, version=version)
        assert b" 426 " in client.status_line, client.status_line
        client.close()
        assert b"\r\nsec-websocket-version: 13\r\n" in client.head.lower()


async def test_reserved_bits_without_an_extension_close_with_1002(relay: RunningRelay) -> None:
    """RSV1-3 mean nothing until an extension is negotiated: a protocol error."""
    for rsv in (4, 2, 1):
        client = await connected(relay)
        await client.send(client_frame(TEXT, b'{"action":"auth","params":"x"}', rsv=rsv))
        assert await client.wait_closed(TIMEOUT) == 1002
        client.close()


async def test_closes_are_answered_with_codes_that_may_be_sent(relay: RunningRelay) -> None:
    """An empty close gets an empty close; a valid code is echoed; 1005, 1006 and codes out
    of range are never echoed: they get 1002."""
    expectations = [
        (b"", 0),
        (b"\x03\xe8", 1000),
        (b"\x0b\xb8bye", 3000),
        (b"\x03\xee", 1002),
        (b"\x13\x88", 1002),
    ]
    for payload, answer in expectations:
        client = await connected(relay)
        await client.send(client_frame(CLOSE, payload))
        assert await client.wait_closed(TIMEOUT) == answer, payload
        client.close()


async def test_fragmented_messages_are_reassembled(relay: RunningRelay) -> None:
    """A message in three fragments, with a ping between them, is one message (RFC 6455 5.4)."""
    client = await connected(relay)
    await client.send(text({"action": "auth", "params": "x"}))
    message = orjson.dumps({"action": "subscribe", "params": "T.AAPL,Q.MSFT"})
    await client.send(
        client_frame(TEXT, message[:10], fin=False)
        + client_frame(CONTINUATION, message[10:20], fin=False)
        + client_frame(PING, b"between")
        + client_frame(CONTINUATION, message[20:])
    )
    seen: list[tuple[int, bytes]] = []
    while len([f for f in seen if f[0] == TEXT]) < 2:
        frame = await client.next_frame(TIMEOUT)
        assert frame is not None, seen
        seen.append(frame)
    assert (PONG, b"between") in seen
    acks = orjson.loads([p for op, p in seen if op == TEXT][-1])
    assert [a["message"] for a in acks] == ["subscribed to: T.AAPL", "subscribed to: Q.MSFT"]
    client.close()


async def test_fragments_past_the_message_cap_close_with_1009_and_strays_with_1002(
    relay: RunningRelay,
) -> None:
    """Fragments may not add up past --max-message-size; a continuation with nothing to
    continue, or a new message inside a fragmented one, is a protocol error."""
    limit = relay.relay.config.max_message_size
    client = await connected(relay)
    chunk = b"x" * (limit // 4 + 1)
    await client.send(
        client_frame(TEXT, chunk, fin=False)
        + b"".join(client_frame(CONTINUATION, chunk, fin=False) for _ in range(4))
    )
    assert await client.wait_closed(TIMEOUT) == 1009
    client.close()
    for frames in (
        client_frame(CONTINUATION, b"x"),
        client_frame(TEXT, b"{", fin=False) + client_frame(BINARY, b"x"),
    ):
        client = await connected(relay)
        await client.send(frames)
        assert await client.wait_closed(TIMEOUT) == 1002
        client.close()


async def test_pings_are_answered_through_the_relay(relay: RunningRelay) -> None:
    """The relay answers a ping with a pong carrying its payload, and counts what it sent."""
    before = relay.relay.outbox.stats.frames
    client = await connected(relay)
    await client.send(client_frame(PING, b"are you there"))
    frame = await client.next_frame(TIMEOUT)
    assert frame == (PONG, b"are you there")
    assert relay.relay.outbox.stats.frames >= before + 2  # connected, then the pong
    client.close()


async def test_answers_come_out_of_the_client_budget(sim: Simulator) -> None:
    """Unsubscribes of many channels bring as many acknowledgements: a client whose answers pass
    its byte budget is cut off (1008) instead of being answered at ten times what it sends."""
    config = fast_relay_config(sim.base_url, "sim-key", max_bytes_per_second=10_000, byte_burst=50_000)
    async with running_relay(config) as relay:
        client = await RawClient.connect("127.0.0.1", relay.port)
        await client.send(text({"action": "auth", "params": "x"}))
        message = text({"action": "unsubscribe", "params": ",".join(f"T.S{i:05d}" for i in range(500))})
        assert len(message) < 5_000  # each one sends about 4 KB and is answered with about 20 KB
        for _ in range(5):
            await client.send(message)
        assert await client.wait_closed(TIMEOUT) == 1008 or client.reset
        assert client.received < 3 * 50_000
        assert relay.server.stats.closed["flood"] == 1
        client.close()
