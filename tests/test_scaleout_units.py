"""The scale-out contract without sockets: subjects, envelopes, messages, the edge registry."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastrelay.config import redact
from fastrelay.protocol import parse_channel
from fastrelay.scaleout import messages
from fastrelay.scaleout.registry import EdgeRegistry
from fastrelay.scaleout.subjects import (
    BATCH,
    EVENT,
    NO_TICKER,
    Subjects,
    VersionError,
    escape_token,
    open_envelope,
    seal,
    unescape_token,
)
from tests.sinks import make_core

SUBJECT_SPECIALS = set(".*> \t\r\n")


@given(st.text(min_size=1, max_size=30))
def test_any_ticker_is_one_safe_token_and_comes_back(ticker: str) -> None:
    token = escape_token(ticker)
    assert token, "an empty token would break the subject"
    assert not SUBJECT_SPECIALS & set(token)
    assert all(0x21 <= ord(c) <= 0x7E for c in token)
    assert unescape_token(token) == ticker


def test_plain_tickers_travel_unchanged_and_specials_are_escaped() -> None:
    assert escape_token("AAPL") == "AAPL"
    assert escape_token("O:SPY251219C00600000") == "O:SPY251219C00600000"
    assert escape_token("C:EUR/USD") == "C:EUR/USD"
    assert escape_token("BRK.B") == "BRK%2EB"
    assert escape_token("A*B>C%") == "A%2AB%3EC%25"
    assert escape_token(None) == escape_token("") == NO_TICKER
    assert unescape_token(NO_TICKER) is None


def test_subjects_express_channels_per_granularity() -> None:
    subjects = Subjects("fastrelay.prod")
    assert subjects.for_channel("stocks", "T.AAPL", BATCH) == "fastrelay.prod.data.stocks.T"
    assert subjects.for_channel("stocks", "T.*", BATCH) == "fastrelay.prod.data.stocks.T"
    assert subjects.for_channel("stocks", "T.BRK.B", EVENT) == "fastrelay.prod.data.stocks.T.BRK%2EB"
    # NATS' own wildcard is the relay's EV.*: it matches every escaped ticker of the ev.
    assert subjects.for_channel("stocks", "T.*", EVENT) == "fastrelay.prod.data.stocks.T.*"
    assert subjects.event("stocks", "T", "BRK.B") == subjects.for_channel("stocks", "T.BRK.B", EVENT)
    assert subjects.market_of(subjects.event("futures/cme", "T", "ES.Z5")) == "futures/cme"
    assert subjects.market_of(subjects.batch("options", "Q")) == "options"


@pytest.mark.parametrize("prefix", ["", "a..b", "a.*", "fast relay", "x.>"])
def test_bad_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="invalid NATS subject prefix"):
        Subjects(prefix)


def test_envelope_round_trip_short_messages_and_versions() -> None:
    """The term and the read time travel with the events; version 1 (no term) is still read,
    as term 0; a version this process does not know is a VersionError."""
    term, read_at, body = open_envelope(seal(b'[{"ev":"T"}]', 1700000000.25, 42))
    assert (term, read_at, bytes(body)) == (42, 1700000000.25, b'[{"ev":"T"}]')
    old = struct.pack("<d", 1700000000.5) + b'[{"ev":"Q"}]'
    term, read_at, body = open_envelope(old)
    assert (term, read_at, bytes(body)) == (0, 1700000000.5, b'[{"ev":"Q"}]')
    newer = bytearray(seal(b"[]", 1.0, 7))
    newer[1] = messages.VERSION + 1
    with pytest.raises(VersionError, match=f"version {messages.VERSION + 1}"):
        open_envelope(bytes(newer))
    for torn in (b"12345678", b"short", seal(b'{"not":"an array"}', 1.0, 1)):
        with pytest.raises(ValueError, match="not an envelope"):
            open_envelope(torn)


def test_control_messages_round_trip_and_reject_garbage() -> None:
    """Each control message decodes to its own type (a tagged union); garbage is a MessageError."""
    interest = messages.EdgeInterest("edge-1", {"stocks": ["T.AAPL", "Q.*"]}, seq=3)
    assert messages.decode(messages.encode(interest)) == interest
    state = messages.IngestState("ingest-1", BATCH, {"stocks": messages.LIVE, "options": "drop"})
    assert messages.decode(messages.encode(state)) == state
    request = messages.SnapshotRequest("stocks", last=["Q.AAPL"])
    assert messages.decode(messages.encode(request)) == request
    deep = b'{"type":"state","x":' + b"[" * 3000 + b"]" * 3000 + b"}"
    for bad in (b"", b"[]", b'{"edge": 1}', b'{"type":"interest","edge":1}', b"\xff", deep):
        with pytest.raises(messages.MessageError):
            messages.decode(bad)


def test_registry_diffs_heartbeats_and_expires_silent_edges() -> None:
    registry = EdgeRegistry(timeout=5.0)
    first = registry.update("a", {("stocks", "T.AAPL"), ("stocks", "Q.MSFT")}, now=0.0)
    assert first.added == [("stocks", "Q.MSFT"), ("stocks", "T.AAPL")] and not first.removed
    assert not registry.update("a", {("stocks", "T.AAPL"), ("stocks", "Q.MSFT")}, now=1.0)
    change = registry.update("a", {("stocks", "T.AAPL"), ("stocks", "T.TSLA")}, now=2.0)
    assert change.added == [("stocks", "T.TSLA")] and change.removed == [("stocks", "Q.MSFT")]
    registry.update("b", {("stocks", "T.AAPL")}, now=4.0)
    assert registry.next_expiry() == 7.0
    assert registry.expire(now=7.0) == {}  # exactly at the timeout: not yet
    expired = registry.expire(now=7.5)
    assert list(expired) == ["a"] and expired["a"].removed == [("stocks", "T.AAPL"), ("stocks", "T.TSLA")]
    assert registry.wants("a") == frozenset() and registry.wants("b") and registry.expired_total == 1


def test_registry_grace_forgives_silence_while_the_ingest_was_cut_off() -> None:
    registry = EdgeRegistry(timeout=5.0)
    registry.update("a", {("stocks", "T.AAPL")}, now=0.0)
    registry.grace(now=100.0)
    assert registry.expire(now=104.0) == {}
    assert len(registry) == 1


def test_registry_rejected_channels_come_back_as_new() -> None:
    registry = EdgeRegistry(timeout=5.0)
    registry.update("a", {("options", "Q.O:X1"), ("options", "Q.O:X2")}, now=0.0)
    registry.reject("a", [("options", "Q.O:X2")])
    assert registry.wants("a") == {("options", "Q.O:X1")}
    again = registry.update("a", {("options", "Q.O:X1"), ("options", "Q.O:X2")}, now=1.0)
    assert again.added == [("options", "Q.O:X2")] and not again.removed
    assert registry.remove("a").removed == [("options", "Q.O:X1"), ("options", "Q.O:X2")]


def test_held_references_count_like_clients_and_keep_history() -> None:
    """An ingest holds one reference per edge: the upstream wants what any edge wants."""
    core = make_core(markets=("stocks",))
    aapl = parse_channel("AM.AAPL", "stocks")
    core.demand.add(aapl)
    core.demand.add(aapl)  # a second edge
    assert core.sync() == {"stocks": ["AM.AAPL"]}
    candle = b'{"ev":"AM","sym":"AAPL","s":1,"e":2,"q":1}'
    core.route("stocks", b"[" + candle + b"]")
    aapl, msft = parse_channel("AM.AAPL", "stocks"), parse_channel("AM.MSFT", "stocks")
    last, history = core.cache["stocks"].snapshot([aapl, msft], [aapl])
    assert last == {"AM.AAPL": candle} and history == {"AM.AAPL": [candle]}
    core.demand.remove(aapl)
    assert core.sync() == {}
    core.demand.remove(aapl)
    assert core.sync() == {"stocks": ["-AM.AAPL"]}


def test_redact_hides_credentials_in_urls_and_messages() -> None:
    assert redact("nats://user:s3cret@host:4222") == "nats://***@host:4222"
    assert redact("nats://tok3n@a:1,nats://b:2") == "nats://***@a:1,nats://b:2"
    assert "s3cret" not in redact("error connecting to tls://u:s3cret@h:1: refused")


def test_snapshot_histories_are_cut_to_their_newest_part_to_fit_one_message() -> None:
    from fastrelay.scaleout.ingest import _newest_within

    events = [b'{"ev":"AM","s":%d}' % i for i in range(100)]  # 17-19 bytes each
    history = {"AM.AAPL": events, "AM.MSFT": events}
    assert {k: len(v) for k, v in _newest_within(history, 10**6).items()} == {"AM.AAPL": 100, "AM.MSFT": 100}
    cut = _newest_within(history, 500)
    assert list(cut) == ["AM.AAPL"]
    assert [bytes(e) for e in cut["AM.AAPL"]] == events[-len(cut["AM.AAPL"]) :]
    assert 10 < len(cut["AM.AAPL"]) < 20
    assert _newest_within(history, 0) == {}
