"""Matching Massive's refusals to the channels of the relay's upstream subscribes (no sockets)."""

from __future__ import annotations

from fastrelay.rejections import SubscribeTracker


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


NOT_AUTHORIZED = "not authorized"
CAP = "Subscription limit reached for feed. Please remove some subscriptions and try again."


def tracker() -> tuple[SubscribeTracker, Clock]:
    clock = Clock()
    return SubscribeTracker(settle=0.5, clock=clock), clock


def test_every_channel_acknowledged_refuses_nothing() -> None:
    """All acks: the batch settles at once, nothing refused."""
    t, _ = tracker()
    t.sent(["T.AAPL", "Q.AAPL"])
    t.answered("success", "subscribed to: T.AAPL")
    t.answered("success", "subscribed to: Q.AAPL")
    verdict = t.poll()
    assert verdict.refused == [] and verdict.retry_singly == [] and t.due() is None


def test_one_error_per_unacknowledged_channel_refuses_exactly_those() -> None:
    """Massive's "not authorized" names no channel; with one per missing ack the match is exact."""
    t, _ = tracker()
    t.sent(["T.AAPL", "NOI.*", "LULD.*"])
    t.answered("success", "subscribed to: T.AAPL")
    t.answered("error", NOT_AUTHORIZED)
    assert t.poll().refused == []  # one error, two channels unacknowledged: not settled yet
    t.answered("error", NOT_AUTHORIZED)
    assert t.poll().refused == [("NOI.*", NOT_AUTHORIZED), ("LULD.*", NOT_AUTHORIZED)]


def test_one_error_for_a_whole_message_is_found_out_one_channel_at_a_time() -> None:
    """The cap refuses the whole message with one error: the channels go again one by one, and
    each single answer says exactly which ones Massive takes."""
    t, clock = tracker()
    t.sent(["Q.O:A", "Q.O:B", "Q.O:C"])
    t.answered("error", CAP)
    assert t.poll().retry_singly == []  # wait for what else comes
    clock.now += 0.5
    verdict = t.poll()
    assert verdict.refused == [] and verdict.retry_singly == ["Q.O:A", "Q.O:B", "Q.O:C"]
    for name in verdict.retry_singly:
        t.sent([name])
    t.answered("success", "subscribed to: Q.O:A")
    t.answered("error", CAP)
    t.answered("error", CAP)
    assert t.poll().refused == [("Q.O:B", CAP), ("Q.O:C", CAP)]


def test_a_single_channel_batch_is_refused_by_its_error() -> None:
    """One channel, one error: refused, never retried (no loop)."""
    t, _ = tracker()
    t.sent(["NOI.AAPL"])
    t.answered("error", NOT_AUTHORIZED)
    assert t.poll().refused == [("NOI.AAPL", NOT_AUTHORIZED)]


def test_silence_refuses_nothing_and_answers_go_to_the_oldest_open_batch() -> None:
    """No error at all (an unknown ticker is acknowledged, or silence): nothing refused. An error
    belongs to the oldest batch still waiting for answers."""
    t, clock = tracker()
    t.sent(["T.AAPL", "T.MSFT"])
    t.sent(["NOI.*"])
    t.answered("success", "subscribed to: T.AAPL")
    t.answered("success", "subscribed to: T.MSFT")
    t.answered("error", NOT_AUTHORIZED)
    assert t.poll().refused == [("NOI.*", NOT_AUTHORIZED)]
    t.sent(["T.TSLA"])
    clock.now += 1.0
    assert t.poll().refused == [] and t.due() is None


def test_a_reconnection_forgets_unanswered_batches() -> None:
    t, _ = tracker()
    t.sent(["T.AAPL"])
    t.reset()
    t.answered("error", NOT_AUTHORIZED)
    assert t.poll().refused == [] and t.due() is None
