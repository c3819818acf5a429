"""The bench's failover scenario without processes: its plan, the probes' checks around an outage
(bench/loadclient.py) and the figures bench/run.py and bench/report.py make of them."""

from __future__ import annotations

from typing import Any

import orjson

from bench import report
from bench.loadclient import LoadClient, Process, Totals
from bench.run import LeaderStop, failover_metrics, nearest_rank, pool_failovers
from bench.scenarios import DEFAULT_REPEATS, SCENARIOS, Server, plan, repeats_of

FAILOVER = SCENARIOS["scaleout-failover"]


def test_failover_runs_five_times_on_the_scaleout_only() -> None:
    assert FAILOVER.ingests == 2 and FAILOVER.failovers == ("kill-9", "sigterm")
    assert repeats_of(FAILOVER, None) == 5 and repeats_of(FAILOVER, 2) == 2
    assert repeats_of(SCENARIOS["scaleout-firehose"], None) == DEFAULT_REPEATS
    assert repeats_of(SCENARIOS["idle"], 5) == 1  # max_repeats still caps
    runs = list(plan([FAILOVER, SCENARIOS["reconnect"]], None, None))
    assert [c.scenario.key for _, c in runs].count("scaleout-failover") == 5
    assert [c.scenario.key for _, c in runs].count("reconnect") == 2
    # A failover needs several ingests: a single process is not planned for it.
    chosen = list(plan([FAILOVER], [Server("fastrelay"), Server("scaleout")], 1))
    assert [c.server.kind for _, c in chosen] == ["scaleout"]


def trade(q: int, sent: int) -> dict[str, Any]:
    return {"sim_ns": sent, "ev": "T", "sym": "S0001", "q": q}


def status(word: str) -> dict[str, Any]:
    if word == "interrupted":
        message = "stocks feed interrupted (ingest): reconnecting; events during the outage are not replayed"
        return {"ev": "status", "status": "error", "message": message}
    return {"ev": "status", "status": "success", "message": "stocks feed restored: subscriptions resumed"}


def test_probe_sorts_gaps_duplicates_and_data_around_an_outage() -> None:
    """Gaps across an outage are explained, others are not; an old event written after the
    interrupted status is told from new data before restored; the first event sent after the
    status is the new source's."""
    process = Process()
    client = LoadClient(process, "T.*", "probe", lambda: None)
    client.subscribed = True
    process.totals = totals = Totals(window=(0, 10_000))

    def read(at: int, *events: dict[str, Any]) -> None:
        client._probe(orjson.dumps(list(events)), at)

    read(100, trade(1, 90), trade(2, 95))
    read(200, status("interrupted"), trade(3, 150))  # held by the relay, written after the status
    read(300, trade(4, 250))  # sent after the status, before restored: must not happen
    read(400, status("restored"), trade(8, 390))  # the new source: q 5..7 lost in the outage
    read(500, trade(8, 490), trade(10, 495))  # a duplicate, then a gap with no outage
    assert (totals.old_after_interrupted, totals.data_in_outage) == (1, 1)
    assert (totals.gaps_in_outage, totals.gaps_unexplained, totals.dup_q) == (3, 1, 1)
    # The first event sent after the interrupted status arrived (at 200) came at 300.
    assert client.statuses == [("interrupted", 200), ("data", 300), ("restored", 400)]


def test_failover_figures_count_from_the_signal() -> None:
    stop = LeaderStop(
        "kill-9", "ingest1", 7, kill_ns=1_000_000_000, dead_ns=1_010_000_000, exit_code=-9, final_cpu=1.0
    )
    ms = 1_000_000
    clients = [
        {
            "recovered_at_ns": stop.kill_ns + 2_000 * ms,
            "statuses": [
                ["interrupted", stop.kill_ns - 5_000 * ms],  # an earlier outage: not this one
                ["interrupted", stop.kill_ns + 900 * ms],
                ["restored", stop.kill_ns + 1_900 * ms],
                ["data", stop.kill_ns + 1_950 * ms],
            ],
        },
        {"recovered_at_ns": 0, "statuses": [["interrupted", stop.kill_ns + 950 * ms]]},  # never back
    ]
    counts = {k: 0 for k in ("dup_q", "gaps_in_outage", "gaps_unexplained", "data_in_outage")}
    results = [{"clients": clients, **counts, "old_after_interrupted": 2}]
    found = failover_metrics(
        stop, results, {"dropped_fenced": 1.0}, {"dropped_fenced": 3.0, "leader_changes": 2}
    )
    assert found["time_to_data_ms"] == [1950.0] and found["time_to_restored_ms"] == [1900.0]
    assert found["time_to_interrupted_ms"] == [900.0, 950.0]
    assert found["time_to_data_after_exit_ms"] == [2000.0]
    assert (found["not_recovered"], found["not_restored"], found["interruptions"]) == (1, 1, 2)
    assert found["exit_ms"] == 10.0 and found["old_after_interrupted"] == 2
    assert found["edges"] == {"dropped_fenced": 2.0, "leader_changes": 2.0}

    pooled = pool_failovers([found, {**found, "time_to_data_ms": [1000.0, 3000.0]}])
    assert pooled["runs"] == 2 and pooled["not_recovered"] == 2
    assert pooled["time_to_data_ms"]["p50"] == 1950.0 and pooled["time_to_data_ms"]["max"] == 3000.0
    assert pooled["time_to_data_ms"]["per_run_max"] == [1950.0, 3000.0]
    assert nearest_rank([float(v) for v in range(1, 101)], 0.99) == 99.0

    summary = {"scenario": "scaleout-failover", "step": "kill-9", "server": "scaleout", "t_rate": 1000.0}
    summary |= {"clients": 20, "window_s": 8.0, "failover": pooled}
    block = report.failover([summary])
    assert "kill -9" in block and "1950 / 3000 / 3000" in block
    (target,) = report.targets([summary])
    assert target["status"] == "missed" and target["limit"] == 3000.0  # a client never got data
