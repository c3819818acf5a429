"""The bench's compression scenarios: servers with +deflate, the watchlist's channels, and the
whole machinery (load clients offering permessage-deflate and inflating) on a tiny load."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bench import report
from bench.run import Options, Run, medians
from bench.scenarios import SCENARIOS, Config, Server, channel_key, parse_server

WATCHLIST = SCENARIOS["deflate-watchlist"]


def test_deflate_servers_parse_and_label() -> None:
    assert parse_server("fastrelay+deflate") == Server("fastrelay", deflate=True)
    assert parse_server("node-ws+deflate").label == "node-ws+deflate"
    assert parse_server("fastrelay+deflate@0").flush == 0
    for bad in ("ceiling+deflate", "scaleout+deflate", "fastrelay+gzip"):
        with pytest.raises(ValueError):
            parse_server(bad)


def test_watchlist_clients_take_trades_and_quotes_of_their_tickers() -> None:
    subscriptions = WATCHLIST.subscriptions()
    assert len(subscriptions) == WATCHLIST.clients
    first = subscriptions[0].split(",")
    assert len(first) == 2 * WATCHLIST.watchlist and first[:2] == ["T.S0001", "Q.S0001"]
    # 100 different watchlists (one per starting ticker), each on two clients.
    assert len(set(subscriptions)) == WATCHLIST.symbols
    fanout = WATCHLIST.fanout()
    # Every ticker is on 40 watchlists (200 clients x 20 tickers / 100 tickers), both evs.
    assert fanout["S0001"] == fanout["Q.S0001"] == 40
    assert channel_key("T", "S0001") == "S0001" and channel_key("Q", "S0001") == "Q.S0001"


@pytest.mark.parametrize("deflate", [False, True])
async def test_firehose_with_and_without_compression_on_a_tiny_load(tmp_path: Path, deflate: bool) -> None:
    """10 clients on T.*: everything delivered either way; offering compression, the frames come
    compressed and fewer bytes cross the wire per event."""
    scenario = dataclasses.replace(SCENARIOS["deflate-firehose"], clients=10, t_rates=(500,), client_procs=1)
    options = Options(
        warmup=0.5, settle=0.5, duration=1.5, grace=1.0, client_procs=None, pin=False, verbose=False,
        steps=None,
    )  # fmt: skip
    server = Server("fastrelay", deflate=deflate)
    (step,) = await Run(Config(scenario, server), options, tmp_path, "t", profile=False).execute()
    assert step["delivery_ratio"] == 1.0 and step["gaps"] == 0, step
    if deflate:
        assert step["deflated_frame_share"] > 0.5
        assert step["wire_bytes_per_event"] < 100  # a trade is ~130 bytes on the wire uncompressed
    else:
        assert step["deflated_frame_share"] == 0.0
        assert step["wire_bytes_per_event"] > 100
    summary = medians([step])
    assert "deflate-firehose" in report.compression([summary, {**summary, "server": "fastrelay"}])
